"""GRPO on GSM8K with Qwen2.5-0.5B-Instruct (the default model, from the Hugging Face hub).

    python scripts/train.py --config=configs/gsm8k.py --workdir=runs/gsm8k
    python scripts/train.py --config=configs/gsm8k.py --workdir=runs/gsm8k \
        --config.model.path=../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --config.data.path=../shared/data/gsm8k

Rewards: the `numeric` answer match on the text after `####` (or \\boxed{}, or the last number).
Presets: `:small` (short rollouts for a first look).

Timing on one H100 80GB (2026-11-26, jax 0.11.2; `benchmarks/results/train_gsm8k_smollm2_h100.json`), with
SmolLM2-135M-Instruct in place of the default model (the hub is out of reach there): 1.24-1.29 s per
step (128 rollouts of up to 384 tokens: rollout + reward 0.89-0.93 s, update 0.34 s); the first step
compiles for about 35 s and each new prompt-length bucket for about 20 s. So 200 steps take about 5
minutes plus evaluations. Qwen2.5-0.5B (4x the parameters) is not measured yet.
Layers are rematerialised (`model.remat = "full"`): without it the update needs 84 GB at this batch.
"""

from rlvr_jax.config import base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.model.path = "Qwen/Qwen2.5-0.5B-Instruct"
    c.model.remat = "full"  # 128 rows x 640 tokens: 84 GB of activations without remat (H100, measured)
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
