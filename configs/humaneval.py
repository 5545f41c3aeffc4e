"""GRPO on HumanEval with Qwen2.5-Coder-0.5B-Instruct; completions run against the tests in the sandbox.

    python scripts/train.py --config=configs/humaneval.py --workdir=runs/humaneval

Local data: --config.data.path=../shared/data/humaneval; a local model: --config.model.path=FILE.gguf
(../shared/tools/fetch-qwen-coder assembles the Qwen2.5-Coder GGUF).
Not trained on HumanEval on the GPU yet: its 131 training problems are few. What was measured there
(2026-11-27, `benchmarks/results/learning/qwen_coder_mbpp/humaneval`): Qwen2.5-Coder-0.5B-Instruct trained
120 steps on MBPP with configs/mbpp.py, then evaluated on all 164 HumanEval problems with
`scripts/evaluate.py --config=configs/humaneval.py --split=test`: 51.2% -> 56.7% (exact McNemar p = 0.21),
scored strictly (the whole code block as the program); with the solution extracted 56.1% -> 56.7%.
Today that takes --checkpoint=RUN (or, for the base model, --train_config=configs/mbpp.py): the held-out
check then compares with MBPP's training prompts, not this config's. MBPP nearly copies some HumanEval
items; --exclude=benchmarks/results/mbpp_humaneval_near_duplicates.json also reports accuracy without them.
The learning rate and micro-batches below are the MBPP run's.

Evaluation budget: 768 tokens, as configs/mbpp.py: at 384 the base model's answers on all 164 problems
were 23% cut off (`qwen_coder_mbpp/humaneval/before`); at 768 it finished 98.8% of them greedy (95% within
545 tokens) and 99.2% of 10 samples each at T 0.8 (2026-12-07, H100,
`benchmarks/results/learning/qwen_mbpp_extracted_h100/humaneval/before*`). Scored with the solution
extracted (the default), the base model passes 59.8% greedy, pass@1 49.7% and pass@10 82.9% sampled.
After 40 MBPP steps of 16 x 8 (configs/mbpp.py, lr 2e-6): 53.0% greedy (p = 0.09), pass@1 47.8%, pass@10
75.6%: no gain, and less varied samples.

Held out: `validation`, the 33 problems of the seeded 80/20 split that training does not read; `test`
(all 164) overlaps training with this config, and evaluating it removes the 131 trained ones.
"""

from rlvr_jax.config import base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.model.path = "Qwen/Qwen2.5-Coder-0.5B-Instruct"
    c.data.task = "humaneval"
    # HumanEval has only its 164 test problems; train / validation are a seeded 80/20 split of them.
    c.data.eval_split = "validation"
    c.data.eval_limit = 128
    c.sampling.max_new_tokens = 384
    c.sampling.eval_max_new_tokens = 768  # at 384, 23% of the base model's answers were cut off
    c.model.remat = "full"  # long sequences: see configs/gsm8k.py
    c.rl.prompts_per_step = 8
    c.rl.group_size = 8
    c.optim.learning_rate = 2e-6
    c.optim.micro_batches = 2
    c.train.steps = 100
    if arg not in (None, ""):
        raise ValueError(f"unknown preset {arg!r} for humaneval; this config has no presets")
    return c
