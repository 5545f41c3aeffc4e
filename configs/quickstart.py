"""Quickstart: GRPO on SST-2 sentiment with SmolLM2-135M-Instruct on a CPU, offline where ../shared is.

    python scripts/train.py --config=configs/quickstart.py --workdir=/tmp/quickstart

The model comes from ../shared/models (or $RLVR_SHARED/models); where that file is missing, the same model
from the Hugging Face hub (model.hub_id, said in one line). The data is GLUE SST-2's validation set from
../shared/data/sst2 (872 labelled sentences; GLUE hides its test labels): 20% of it, seeded, is the held-out
split (`data.eval_split = "validation"`, the first 128 of those 174 items are evaluated) and the other 80%
the training prompts, so no evaluated sentence is ever a training prompt. Where that folder is missing,
`stanfordnlp/sst2` comes from the hub and both are carved from its training split the same way. Ends by
printing held-out accuracy before and after training, the truncated share and accuracy among finished
answers of each, the paired verdict, and where the checkpoint, TensorBoard logs and
reward-curve PNG are.

Measured as `make demo` in a fresh clone on the project's 2-core CPU (2026-12-05): 11 min 21 s with other
jobs on the machine for its first 6 minutes; the steps that ran alone took 30.5 s each, about 8.5 minutes
for the whole run on an idle machine. Held-out accuracy 0.508 -> 0.883 (n=128, exact McNemar p = 1.2e-9),
at an evaluation budget of 16 tokens (22% of the base model's answers cut off). At today's 48 (base model:
95% finish within 35): 0.516 -> 0.883 (p = 2.05e-9), 0% cut off; 8 min 5 s in a fresh clone (make demo).
The same command took 8.3 to 14.3 minutes on later days (the machine's speed varies); with the prompt
buckets below (2026-12-07) the update does 19% fewer FLOPs for the same result: about 9.8 minutes at the
speed of the 11.1-minute day, 7.9 minutes (train.py's own clock) on the fast machine of 2026-12-07 13:00
UTC. Since then the sampler keeps one width and only the update uses the finer ones (two compiles fewer,
the same run step for step; README, "The two commands").

Why this task: the base model answers "The sentiment of this movie review is positive." to 95% of the
sentences (greedy), so it scores about 50% on a balanced set, yet the log-probability of " positive"
against " negative" after that sentence ranks them well (AUC 0.92). After training it answers one word and
gets 91% of the negative and 85% of the positive sentences right. Both before and after, 98-100% of the
answers name a label, so the gain is classification, not a format the reward likes or answers that now
fit the budget (16 new tokens hold the base's 10-token answer; accuracy among finished answers went 62/100
-> 113/128; the `label` reward credits no answer naming both labels). One seed's result: seed 1 of these
settings overshot to answering "negative" (0.508 -> 0.477, p = 0.78), and so did groups of 6 instead of 8
(0.508 -> 0.641, p = 0.11). The runs: benchmarks/results/demo_search_cpu.json.
Presets: `configs/quickstart.py:tiny` (2 steps, for tests).

Held out: `validation`, a seeded 20% of the file, disjoint from the 698 training prompts; the held-out
check (rlvr_jax/data/heldout.py) finds no repeat or training question among its 174 and evaluates the
first 128 (measured in a fresh clone on 2026-12-05, where the demo reproduced 0.508 -> 0.883 with that
check in place and said "The gain holds among answers finished in both runs: 62.0% -> 87.0% on 100 items
(p = 0.000112)").
"""

from rlvr_jax.config import base_config, shared_dir


def get_config(arg: str | None = None):
    c = base_config()
    c.model.path = str(shared_dir() / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf")
    c.model.hub_id = "HuggingFaceTB/SmolLM2-135M-Instruct"  # if the file is missing (unquantised)
    c.model.dtype = "float32"  # bf16 matmuls are slow on CPUs
    c.data.task = "sst2"
    sst2 = shared_dir() / "data" / "sst2"
    c.data.path = str(sst2) if sst2.exists() else None  # None: stanfordnlp/sst2 from the hub
    c.data.eval_split = "validation"  # carved from the training source, disjoint from the training prompts
    c.data.options.validation_fraction = 0.2
    c.data.eval_limit = 128
    c.sampling.temperature = 1.0
    c.sampling.max_new_tokens = 16  # the base's "The sentiment of this movie review is X." is 10 tokens
    c.sampling.eval_max_new_tokens = 48  # the base model finishes 95% of held-out answers within 35 tokens
    # The chat-formatted prompts are 60-117 tokens (median 80): with the default powers of two nearly every
    # step pads to 128. The sampler keeps that one width (each width is a ~12-20 s compile of its unrolled
    # layers), and the update trims each batch to 96, 112 or 128 (cutting its mean width from 144 to 117
    # slots; a compile of the scanned update is ~5 s).
    c.sampling.prompt_buckets = (128,)
    c.rl.update_prompt_buckets = (96, 112, 128)
    c.rl.prompts_per_step = 4
    c.rl.group_size = 8
    c.optim.learning_rate = 5e-5
    c.optim.micro_batches = 2  # peak memory: one pass over all 32 rows took ~14 GB on the CPU
    c.train.steps = 12
    c.train.eval_every = 0
    c.train.checkpoint_every = 12
    if arg == "tiny":
        c.data.eval_limit = 8
        c.sampling.max_new_tokens = 8
        c.sampling.eval_max_new_tokens = 8
        c.rl.prompts_per_step = 2
        c.rl.group_size = 2
        c.optim.micro_batches = 1
        c.sampling.prompt_buckets = ()  # the default widths, one for the update too: fewer compiles in tests
        c.rl.update_prompt_buckets = ()
        c.train.steps = 2
        c.train.checkpoint_every = 1
        c.train.export_hf = False
    elif arg not in (None, ""):
        raise ValueError(f"unknown preset {arg!r} for quickstart; presets: tiny")
    return c
