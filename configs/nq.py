"""GRPO on Natural Questions (open) with Qwen2.5-0.5B-Instruct; reward: token F1 over the accepted answers.

    python scripts/train.py --config=configs/nq.py --workdir=runs/nq --config.data.path=../shared/data/nq_open

Timing on one H100 80GB (2026-11-26, with SmolLM2-135M-Instruct in place of the default model, 8 steps;
`benchmarks/results/train_configs_smollm2_h100.json`): 0.28 s per step (rollout + reward 0.16 s,
update 0.11 s, MFU 0.19) after a 29 s first step that compiles; 100 steps take about a minute.

Evaluation budget: the training budget, 64 tokens: Qwen2.5-Coder-0.5B-Instruct finished 99.7% of 361
held-out answers at 128, 95% within 22 tokens (2026-12-05, H100, `benchmarks/results/learning/qwen_nq_h100`).
That model knows little trivia: 0.6% exact match, mean F1 0.05. Its run at 32 prompts x 8 ran out of the
H100's memory at the first update (256 rows x the 152k vocabulary in one pass asked for 104 GiB), hence
`optim.micro_batches = 2` here (128 rows) and 4 at 256 rows.

Learning: not shown yet. At lr 1e-5 (32 x 8, 2026-12-07, H100,
`benchmarks/results/learning/qwen_nq_fixed_h100`) the policy degenerated: from step 11 on, 84-97% of
groups scored 0 on every sample, the sampled tokens' mean -log p fell 1.9 -> 0.2 in 10 steps, and from
step 32 on 95-100% of samples were 64 tokens of junk (held-out F1 0.050 -> 0.004);
`train.max_truncated_in_a_row` now stops such a run. The runs before it applied no update at all
(non-finite gradients, fixed). At lr 3e-6, 50 steps of 32 x 8 (2026-12-07, H200, `qwen_nq_lr3e6_h200`,
`qwen_nq_drgrpo_h200`; `benchmarks/learning_runs_gpu.sh nq_lr3e6`, `nq_drgrpo`) nothing degenerated and
nothing significant was learned: GRPO mean F1 0.050 -> 0.040 (p = 0.14), Dr.GRPO (`rl.advantage=dr_grpo`)
0.050 -> 0.063 (p = 0.11); exact match 0.6% -> 0.0% and 0.6% -> 0.6%. This config keeps the base learning
rate, 1e-6.
How far exact match can move: with 8 samples at T 1.0 the model answers 5 of the 361 held-out questions
exactly at least once (pass@8 1.4%, greedy 0.6%; `benchmarks/results/nq_base_passk_cpu/`), and a few
greedy answers are a format away from exact ('10 episodes' for '10'): a handful of items, so a run shows
itself in mean F1 (the reward) more than in exact match.

Held out: `validation`, a seeded 10% carved from the split training reads and apart from it (the local
copy has only NQ-open's validation file, which is also `test`, so there `test` overlaps training; on the
hub `test` is NQ-open's validation split and held out too).
"""

from rlvr_jax.config import base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.data.task = "nq_open"
    c.data.eval_split = "validation"  # apart from train, locally too (docstring)
    c.reward.name = "qa_f1"
    c.sampling.max_new_tokens = 64
    c.optim.micro_batches = 2  # 128 rows x 152k vocabulary: one pass wants ~52 GiB (docstring)
    c.rl.prompts_per_step = 16
    c.train.steps = 100
    if arg not in (None, ""):
        raise ValueError(f"unknown preset {arg!r} for nq; this config has no presets")
    return c
