"""A config file for the `--config` flag that stands for a training run's saved config:
`--config=rlvr_jax/run_config.py:WORKDIR` gives WORKDIR/config.json laid over the base config.

`scripts/evaluate.py --checkpoint=WORKDIR` adds it when no `--config` is given
(`rlvr_jax.cli.with_run_config`), so evaluating a run needs only its folder; `--config.a.b=v` overrides
apply to it as to any config file.
"""

from rlvr_jax.config import saved_config


def get_config(workdir: str):
    return saved_config(workdir)
