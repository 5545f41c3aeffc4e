"""GRPO on IMDb sentiment with Qwen2.5-0.5B-Instruct; reward: the predicted label matches.

    python scripts/train.py --config=configs/imdb.py --workdir=runs/imdb \
        --config.data.path=../shared/data/imdb

Reviews are long (prompt buckets up to 2048 tokens), so layers are rematerialised: without remat the update
asked for 64 GB on an H100 and failed (SmolLM2, 64 rows). Timing with remat on one H100: not measured yet.
"""

from rlvr_jax.config import base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.model.remat = "full"  # long reviews: the update needed 64 GB without it (H100, measured)
    c.data.task = "imdb"
    c.data.eval_split = "test"
    c.data.eval_limit = 100
    c.sampling.max_new_tokens = 32
    c.train.steps = 50
    if arg not in (None, ""):
        raise ValueError(f"unknown preset {arg!r} for imdb; this config has no presets")
    return c
