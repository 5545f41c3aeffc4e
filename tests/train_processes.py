"""The config file of tests/test_multiprocess_training.py's runs of scripts/train.py, with two test hooks.

    python scripts/train.py --config=tests/train_processes.py --workdir=... --config.model.path=...

test_trainer's tiny config at 4 prompts x 2 completions of 4 tokens. Loading this file (which
scripts/train.py does before anything else) installs:
- an audit hook that prints a `WRITE path` line for every file this process opens for writing, creates,
  renames or removes, as it happens (a process that ends through os._exit runs no exit handler; the test
  checks which process writes what);
- with DIE_AT_UPDATE=N, a SIGKILL of process DIE_PROCESS (default 1) as it enters its N-th update, the
  way a lost host goes: no exception, no clean-up.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _audit(event: str, args: tuple[Any, ...]) -> None:
    path = None
    if event == "open":
        target, mode, flags = args
        writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & _WRITE_FLAGS)
        if writing and isinstance(target, str | bytes | os.PathLike):
            path = target
    elif event in ("os.mkdir", "os.rename", "os.remove", "os.rmdir", "shutil.rmtree"):
        path = args[0]
    if path is not None:
        sys.stdout.write(f"WRITE {os.fsdecode(path)}\n")
        sys.stdout.flush()


def _die_at_update(n: int, process: int) -> None:
    from rlvr_jax.trainer import loop

    update_policy, calls = loop.update_policy, []

    def dying_update(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == n and int(os.environ.get("JAX_PROCESS_ID", "0")) == process:
            print(f"process {process}: SIGKILL at update {n}", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return update_policy(*args, **kwargs)

    loop.update_policy = dying_update


sys.addaudithook(_audit)
if os.environ.get("DIE_AT_UPDATE"):
    _die_at_update(int(os.environ["DIE_AT_UPDATE"]), int(os.environ.get("DIE_PROCESS", "1")))


def get_config(arg: str | None = None):
    from tests.test_trainer import _tiny_config  # also registers the digits_test task and reward
    from tests.tiny import use_compilation_cache

    # The test suite's persistent cache, small compiles included (importing test_trainer set the suite's
    # 0.5 s floor): the launches after the first find every program the first process 0 compiled.
    use_compilation_cache()

    c = _tiny_config(Path("set-by---config.model.path"), **{"train.steps": 3, "train.checkpoint_every": 1})
    c.train.export_hf = False
    c.rl.prompts_per_step = 4
    c.rl.group_size = 2
    c.sampling.max_new_tokens = 4
    c.sampling.eval_max_new_tokens = 4
    c.data.eval_limit = 4
    return c
