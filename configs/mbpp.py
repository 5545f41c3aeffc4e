"""GRPO on MBPP with Qwen2.5-Coder-0.5B-Instruct; completions run against the tests in the sandbox.

    python scripts/train.py --config=configs/mbpp.py --workdir=runs/mbpp

Local data: --config.data.path=../shared/data/mbpp; a local model: --config.model.path=FILE.gguf
(../shared/tools/fetch-qwen-coder assembles the Qwen2.5-Coder GGUF).
Measured on one H100 80GB (2026-11-27; `benchmarks/results/learning/qwen_coder_mbpp`, MBPP with lr 2e-6 and
2 micro-batches, the sandbox scoring on the host's 16 cores): median step 0.96 s (rollout 0.38 s, waiting
for the sandbox 0.12 s, update 0.42 s), mean 3.1 s with compiles and slow programs; 120 steps in about 6
minutes. MBPP held-out 28% -> 44% (n=50, p = 0.057); HumanEval, not trained on, 51.2% -> 56.7% (n=164,
p = 0.21): a gain, but not a significant one at that size. For 8 HumanEval problems an MBPP training item's
reference solution passes HumanEval's tests (HumanEval/59 is MBPP 32, largest prime factor;
benchmarks/results/mbpp_humaneval_near_duplicates.json); without them HumanEval went 50.0% -> 54.5% (n=156,
p = 0.34).

Evaluation budget: 768 tokens. At 768 the base model finished 94% of the 50 held-out answers (the 3 others
are repetition loops, which no budget ends: 2026-12-05 and again 2026-12-07, H100,
`benchmarks/results/learning/qwen_mbpp_h100`, `qwen_mbpp_extracted_h100`); at the old 384, 23% of its
HumanEval answers were cut off, at 768 1.2%.
With extracted scoring (the default since 2026-12-05) the 2026-12-07 run, 40 steps of 16 x 8 at lr 2e-6,
did not learn: MBPP held-out 40% -> 36% (p = 0.73), HumanEval 59.8% -> 53.0% (p = 0.09). With groups of 16
over 8 prompts (40 steps at lr 2e-6, 2026-12-07, H200, `qwen_mbpp_g16_h200`; 60% of that run's groups of 8
had no reward spread): 40% -> 42% (p = 1), HumanEval 59.8% -> 61.0% (p = 0.85), while its answers grew
(173 -> 455 tokens on MBPP held-out, up to 70% of training samples at the 384-token budget).

Held out: `validation`, a seeded 10% carved from the split training reads and apart from it (the hub:
MBPP's train split; the local copy in ../shared/data/mbpp has only MBPP's test split, so train and
validation are both carved from it and `test` overlaps training there).
"""

from rlvr_jax.config import base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.model.path = "Qwen/Qwen2.5-Coder-0.5B-Instruct"
    c.data.task = "mbpp"
    c.data.eval_split = "validation"  # apart from train on the hub and in the local copy (docstring)
    c.data.eval_limit = 128
    c.sampling.max_new_tokens = 384
    c.sampling.eval_max_new_tokens = 768  # 94% of the base model's held-out answers finish (docstring)
    c.model.remat = "full"  # long sequences: see configs/gsm8k.py
    c.rl.prompts_per_step = 8
    c.rl.group_size = 8
    c.optim.learning_rate = 2e-6
    c.optim.micro_batches = 2
    c.train.steps = 100
    if arg not in (None, ""):
        raise ValueError(f"unknown preset {arg!r} for mbpp; this config has no presets")
    return c
