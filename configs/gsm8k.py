"""GRPO on GSM8K with Qwen2.5-0.5B-Instruct (the default model, from the Hugging Face hub).

    python scripts/train.py --config=configs/gsm8k.py --workdir=runs/gsm8k
    python scripts/train.py --config=configs/gsm8k.py --workdir=runs/gsm8k \
        --config.model.path=../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --config.data.path=../shared/data/gsm8k

Rewards: the `numeric` answer match on the text after `####` (or \\boxed{}, or the last number).
Presets: `:small` (short rollouts for a first look).

Measured on one H100 80GB (2026-11-27, jax 0.11.2; `benchmarks/results/learning/qwen_coder_gsm8k`) with
Qwen2.5-Coder-0.5B-Instruct (same architecture as the default model; the hub is out of reach there) and
this config plus `--config.data.eval_limit=1319 --config.train.eval_every=0`: 2.05 s per step (rollout of
128 x up to 384 tokens 1.21 s, reward 0.005 s, update 0.84 s), 200 steps in 8 minutes plus about 25 s per
full-test-set evaluation; GSM8K test accuracy 26.4% -> 37.3% (n=1319, exact McNemar p = 1.3e-14).
The update runs in 4 micro-batches (`optim.micro_batches`): in one, the 152k-vocabulary log-softmax of
128 rows asks for more than the 80 GB. Layers are rematerialised (`model.remat = "full"`): without it the
update needs 84 GB at this batch.

Evaluation budget: 512 tokens (`sampling.eval_max_new_tokens`). Qwen2.5-Coder-0.5B-Instruct, greedy on all
1,319 test items at 1,024 tokens, finished 97.8% of its answers, 95% within 483 tokens (2026-12-05, H100,
`benchmarks/results/learning/qwen_gsm8k_h100/eval/before`); at the old 384, 16% were cut off and scored 0.
Run of 2026-12-05 on one H100 (`qwen_gsm8k_h100`: 120 steps of 32 prompts x 8, 512 training tokens,
lr 3e-6, 8 micro-batches): 3.3 s a step, 11 minutes; 26.2% -> 33.6% (n=1319, p = 1.7e-7), 2.2% -> 1.5% cut
off, and among answers finished in both runs 27.1% -> 34.6% (p = 2.6e-7).

Held out: `test`, GSM8K's own test split (1,319), which training (its train split) never reads; no
question is in both, so the held-out check removes none.
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
    c.sampling.eval_max_new_tokens = 512  # the base model finishes 95% of test answers within 483 (docstring)
    c.rl.prompts_per_step = 16
    c.rl.group_size = 8
    c.optim.learning_rate = 2e-6  # the H100 run above; 1e-6 was not tried there
    c.optim.micro_batches = 4  # 128 rows x 152k vocabulary: out of memory on an 80 GB card in one pass
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
