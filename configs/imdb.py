"""GRPO on IMDb sentiment with Qwen2.5-0.5B-Instruct; reward: the predicted label matches.

    python scripts/train.py --config=configs/imdb.py --workdir=runs/imdb \
        --config.data.path=../shared/data/imdb

Timing on one H100 80GB (2026-11-26, SmolLM2-135M-Instruct in place of the default model, 6 steps;
`benchmarks/results/train_configs_smollm2_h100.json`): 0.85-0.86 s per step (rollout + reward 0.15 s, update
0.71 s, MFU 0.24) once compiled; the first three steps compile 20-29 s each (new review-length buckets).
Reviews are long, so layers are rematerialised: without remat the update asked for 64 GB and failed.

Held out: `validation`, a seeded 10% carved from the split training reads and apart from it (the local
sample.jsonl is IMDb's test split, so there train and validation are carved from it, 180 / 20 reviews,
and `test` overlaps training; on the hub validation is 2,500 of the 25,000 training reviews).
"""

from rlvr_jax.config import base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.model.remat = "full"  # long reviews: the update needed 64 GB without it (H100, measured)
    c.data.task = "imdb"
    c.data.eval_split = "validation"  # apart from train, locally too (docstring)
    c.data.eval_limit = 100
    c.sampling.max_new_tokens = 32
    c.train.steps = 50
    if arg not in (None, ""):
        raise ValueError(f"unknown preset {arg!r} for imdb; this config has no presets")
    return c
