"""GRPO on GSM8K with Qwen2.5-0.5B-Instruct (the default model, from the Hugging Face hub).

    python scripts/train.py --config=configs/gsm8k.py --workdir=runs/gsm8k
    python scripts/train.py --config=configs/gsm8k.py --workdir=runs/gsm8k \
        --config.model.path=../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --config.data.path=../shared/data/gsm8k

Rewards: the `numeric` answer match on the text after `####` (or \\boxed{}, or the last number).
Presets: `:small` (short rollouts for a first look). Timing on one H100: not yet measured (issue 7).
"""

from rlvr_jax.config import base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.model.path = "Qwen/Qwen2.5-0.5B-Instruct"
    c.data.task = "gsm8k"
    c.data.eval_split = "test"
    c.data.eval_limit = 256
    c.sampling.max_new_tokens = 384
    c.rl.prompts_per_step = 16
    c.rl.group_size = 8
    c.optim.learning_rate = 1e-6
    c.optim.warmup_steps = 10
    c.train.steps = 200
    c.train.eval_every = 25
    if arg == "small":
        c.sampling.max_new_tokens = 192
        c.rl.prompts_per_step = 8
        c.train.steps = 50
    elif arg not in (None, ""):
        raise ValueError(f"unknown preset {arg!r} for gsm8k; presets: small")
    return c
