"""GRPO on Natural Questions (open) with Qwen2.5-0.5B-Instruct; reward: token F1 over the accepted answers.

    python scripts/train.py --config=configs/nq.py --workdir=runs/nq --config.data.path=../shared/data/nq_open

Timing on one H100: not yet measured.
"""

from rlvr_jax.config import base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.data.task = "nq_open"
    c.data.eval_split = "test"
    c.reward.name = "qa_f1"
    c.sampling.max_new_tokens = 64
    c.rl.prompts_per_step = 16
    c.train.steps = 100
    if arg not in (None, ""):
        raise ValueError(f"unknown preset {arg!r} for nq; this config has no presets")
    return c
