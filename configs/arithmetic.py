"""GRPO on procedural arithmetic (reasoning-gym), offline, with difficulty presets.

    python scripts/train.py --config=configs/arithmetic.py:hard --workdir=runs/arithmetic \
        --config.model.path=../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf

Presets: easy (1-digit, 2 terms), medium (2-digit, 2-3 terms; default), hard (3-digit, 3-4 terms).
Timing on one H100 80GB (2026-11-26, with SmolLM2-135M-Instruct in place of the default model, 8 steps;
`benchmarks/results/train_configs_smollm2_h100.json`): 0.18-0.19 s per step (medium preset;
rollout + reward 0.12 s, update 0.064 s, MFU 0.16) after a 21 s first step that compiles; a new
prompt-length bucket compiles once more (17 s).

Held out: `test`, generated from seeds training never uses; questions that still repeat, or that the
10,000 training items also ask, are removed before evaluation (rlvr_jax/data/heldout.py; easy: 871 of
1,000 are training questions and 129 remain; medium: 36 and 6 repeats removed; hard: none).
"""

from rlvr_jax.config import base_config

PRESETS = {"easy": (1, 2), "medium": (2, (2, 3)), "hard": (3, (3, 4))}


def get_config(arg: str | None = None):
    c = base_config()
    c.data.task = "arithmetic"
    c.data.eval_split = "test"
    preset = arg or "medium"
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} for arithmetic; presets: {', '.join(PRESETS)}")
    digits, terms = PRESETS[preset]
    c.data.options.digits = digits
    c.data.options.terms = terms
    c.sampling.max_new_tokens = 64
    c.train.steps = 100
    return c
