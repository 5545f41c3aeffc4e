"""Train a model with GRPO (and relatives) on a verifiable task.

    python scripts/train.py --config=configs/quickstart.py --workdir=/tmp/quickstart
    python scripts/train.py --config=configs/gsm8k.py:small --workdir=runs/gsm8k \\
        --config.model.path=../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --config.data.path=../shared/data/gsm8k --config.sampling.temperature=0.8

--config takes a config file or a packaged config's name (`--config=gsm8k`), and an optional preset after
a colon; --config.a.b=v overrides any key (unknown keys are an error); --print_config lists every key with
its value and meaning. Re-running with the same --workdir resumes from its latest checkpoint.
Multi-host: launch one process per host with JAX's usual environment (see README, "Multi-host").
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if not __package__:  # run as a file (python scripts/train.py): this checkout's rlvr_jax first
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from absl import app, flags, logging
from ml_collections import config_flags

from rlvr_jax.cli import fail_cleanly, parse_flags, print_config, usage_error

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "experiment config: a file or a packaged config's name, [:preset]", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory (checkpoints, logs, metrics)")
_PRINT_CONFIG = flags.DEFINE_bool(
    "print_config", False, "print every config key with its value and meaning, then exit (no --workdir)"
)
flags.mark_flags_as_required(["config"])


def _parse_flags(argv: list[str]) -> list[str]:
    rest = parse_flags(argv)
    if _WORKDIR.value is None and not _PRINT_CONFIG.value:
        usage_error("flag --workdir is required: the run's folder (checkpoints, logs, metrics)")
    return rest


def _main(argv: list[str]) -> None:
    del argv  # parse_flags refuses stray arguments
    if _PRINT_CONFIG.value:
        print_config()
        return
    if not flags.FLAGS["verbosity"].present:
        # absl prints every library's INFO lines under app.run (orbax: a dozen per checkpoint), which
        # buries the run's own progress; --verbosity=0 brings them back.
        logging.set_verbosity(logging.WARNING)

    def run() -> int:
        import jax

        from rlvr_jax import sharding
        from rlvr_jax.config import ConfigError
        from rlvr_jax.trainer import print_summary, train

        try:
            summary = train(_CONFIG.value, _WORKDIR.value)
        except Exception as e:
            # One process of several: end now rather than wait at exit for processes that may be gone.
            several = jax.distributed.is_initialized() and jax.process_count() > 1
            if several and not os.environ.get("RLVR_DEBUG"):
                sharding.end_failed_process(e, _WORKDIR.value, code=2 if isinstance(e, ConfigError) else 1)
            raise
        if not _CONFIG.value.logging.json_logs:  # with JSON logs the run's "end" event says the same
            print_summary(summary)
        return 0

    code = fail_cleanly(run)
    if code:
        sys.exit(code)


def main() -> None:
    """The `rlvr-train` command."""
    app.run(_main, flags_parser=_parse_flags)


if __name__ == "__main__":
    main()
