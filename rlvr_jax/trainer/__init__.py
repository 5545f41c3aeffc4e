"""The GRPO training loop: the one place with side effects. `train(config, workdir)` reads top to bottom:

    set up     setup.py      the policy and its sampler on the mesh, data, optimizer, compiled update
    resume     setup.py      the newest checkpoint's train state, data position, run id and cost so far
    warm up    warmup.py     compile the sampler and the update for step 1's prompt bucket, and for every
                             other reachable one in a background thread (steps wait for one still compiling)
    each step  rollouts.py   prompts (grain, per-host shard) -> sampler (jit, on the mesh) -> rewards
                             (host processes), dynamic sampling's refill rounds; with rl.async_rollouts
                             the next step's rollout, scored in a worker thread during this update
               step.py       advantages -> update (jit, donated, on the mesh) -> parameters to the sampler;
                             the step's metrics, built in one place
               reporting.py  log (metrics.jsonl, TensorBoard, W&B, Prometheus, cost), periodic held-out
                             evaluation, checkpoint, preemption
    finish     reporting.py  final evaluation and checkpoint, before / after report, reward curve, export

`GRPOTrainer` (grpo_trainer.py) is the same loop for Python users: a model, a data set and reward functions
in, a config for the `hf` task out, and `train` on it.

Everything on the device is a pure function of (params, inputs, key); the key of step t is
fold_in(seed, t), so a run resumed from a checkpoint at step k redoes steps k+1.. exactly as an
uninterrupted run would. The algorithm itself is in `rlvr_jax.rl`, its plumbing in `rlvr_jax.optim`.
"""

from rlvr_jax.trainer.grpo_trainer import GRPOTrainer
from rlvr_jax.trainer.loop import train
from rlvr_jax.trainer.reporting import RunSummary, format_cost, print_summary

__all__ = ["GRPOTrainer", "RunSummary", "format_cost", "print_summary", "train"]
