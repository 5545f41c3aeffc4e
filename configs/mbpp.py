"""GRPO on MBPP with Qwen2.5-Coder-0.5B-Instruct; completions run against the tests in the sandbox.

    python scripts/train.py --config=configs/mbpp.py --workdir=runs/mbpp

Local data: --config.data.path=../shared/data/mbpp; a local model: --config.model.path=FILE.gguf
(../shared/tools/fetch-qwen-coder assembles the Qwen2.5-Coder GGUF).
Timing on one H100: not measured (the GPU machine has no bubblewrap for the sandbox).
"""

from rlvr_jax.config import base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.model.path = "Qwen/Qwen2.5-Coder-0.5B-Instruct"
    c.data.task = "mbpp"
    c.data.eval_split = "test"  # MBPP's own 500 test problems; training uses its train split
    c.data.eval_limit = 128
    c.sampling.max_new_tokens = 384
    c.model.remat = "full"  # long sequences: see configs/gsm8k.py
    c.rl.prompts_per_step = 8
    c.rl.group_size = 8
    c.optim.learning_rate = 1e-6
    c.train.steps = 100
    if arg not in (None, ""):
        raise ValueError(f"unknown preset {arg!r} for mbpp; this config has no presets")
    return c
