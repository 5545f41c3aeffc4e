"""One step after the rollouts: advantages -> the update -> the new parameters to the sampler, and the
step's metrics, all built in `step_metrics`."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rlvr_jax import sharding
from rlvr_jax.config import RunStopped, update_prompt_buckets
from rlvr_jax.evaluation.metrics import PASS_THRESHOLD, truncation_rate
from rlvr_jax.monitoring.metrics import flops_metrics, model_flops
from rlvr_jax.rl.batch import Rollout, batch_from_rows, fit_prompt_width
from rlvr_jax.rl.update import update_on_rollout
from rlvr_jax.trainer.rollouts import Rollouts
from rlvr_jax.trainer.setup import Run


@dataclasses.dataclass
class Update:
    """What an update leaves for the metrics: its batch, the last optimizer update's metrics (on the host),
    the number of updates, and where the time went: advantages and the batch (host), the updates until
    the new state is ready (device), the hand-over of the parameters to the sampler."""

    batch: dict[str, Any]
    metrics: dict[str, Any]
    updates: int
    seconds: dict[str, float]
    tokens: int  # tokens the updates trained on: the batch's real (unpadded) tokens, times rl.mu

    @property
    def total_s(self) -> float:
        return sum(self.seconds.values())


class UpdateOutOfMemory(MemoryError):
    """The policy update did not fit on the device; the message says which knobs make it fit (the command
    line prints it as `error: ...`; XLA's allocator report is the exception's cause)."""


class SkippedUpdates:
    """Watches the updates skipped for a non-finite loss or gradient (`rlvr_jax.optim.accumulate` leaves the
    parameters unchanged and counts them in `train/skipped_updates`).

    A skipped update is said on the console the first time; after `limit` steps in a row whose updates
    were all skipped (0 = never) the run stops with `RunStopped`: such a run trains nothing, and finishing
    it anyway would end in an "after" evaluation that is the base model again (the NQ runs of 2026-12-06
    ran 100 steps that way). The checkpoints hold the parameters of the last applied update.
    """

    def __init__(self, limit: int, start_count: int, say: Any) -> None:
        self.limit, self.count, self.say = limit, start_count, say
        self.in_a_row, self.last_applied, self.warned = 0, None, False

    def check(self, step: int, metrics: dict[str, Any], updates: int) -> None:
        count = int(metrics.get("train/skipped_updates", self.count))
        new, self.count = count - self.count, count
        loss, norm = metrics.get("train/loss"), metrics.get("train/grad_norm")
        if new and not self.warned:
            self.warned = True
            self.say(
                f"step {step}: {new} of {updates} update(s) skipped for a non-finite loss or gradient (loss "
                f"{loss}, grad norm {norm}); the parameters are unchanged. train/skipped_updates counts them."
            )
        if new < updates:
            self.in_a_row, self.last_applied = 0, step
            return
        self.in_a_row += 1
        if self.limit and self.in_a_row >= self.limit:
            since = "the start of this process" if self.last_applied is None else f"step {self.last_applied}"
            raise RunStopped(
                f"the updates of the last {self.in_a_row} steps (to step {step}) were all skipped for a "
                f"non-finite loss or gradient (last: loss {loss}, grad norm {norm}), so the policy has not "
                f"changed since {since}. What usually helps: a lower optim.learning_rate, float32 compute "
                "(model.dtype=float32) to rule out a bf16 overflow, the reference attention "
                "(model.attention=xla) to rule out the GPU's fused kernels, another model.remat or "
                "optim.micro_batches; JAX_DEBUG_NANS=True stops at the first NaN and shows where. The "
                "checkpoints hold the last applied update (resume with the same --workdir); "
                "train.max_skipped_in_a_row=0 runs on anyway."
            )


class DegeneratePolicy:
    """Watches for a policy that degenerated into text that never ends: almost every rollout running to
    `sampling.max_new_tokens` when, earlier in this process, fewer than half did.

    Such a policy has stopped answering (the NQ run of 2026-12-07 at lr 1e-5: from step 32 on, 95-100% of
    the 256 samples of every step were 64 tokens of backticks and braces, and it trained on them for 68
    more steps). A task whose answers are long from the start (over half cut off at step 1) never triggers it.
    After `limit` steps in a row at or above `threshold` (0 = never) the run stops with `RunStopped`,
    naming the steps and the checkpoints from before them; the current parameters are not checkpointed.
    """

    threshold = 0.95
    healthy = 0.5

    def __init__(self, limit: int, checkpoint_every: int) -> None:
        self.limit, self.checkpoint_every = limit, checkpoint_every
        self.fewest: tuple[float, int] | None = None  # (lowest truncation rate, its step) in this process
        self.in_a_row = 0

    def check(self, step: int, metrics: dict[str, Any]) -> None:
        rate = metrics.get("response/truncation_rate")
        if rate is None:
            return
        if self.fewest is None or rate < self.fewest[0]:
            self.fewest = (rate, step)
        was_healthy = self.fewest[0] < self.healthy
        self.in_a_row = self.in_a_row + 1 if rate >= self.threshold and was_healthy else 0
        if not self.limit or self.in_a_row < self.limit:
            return
        first = step - self.in_a_row + 1
        before = (first - 1) // self.checkpoint_every * self.checkpoint_every
        if before:
            kept = (
                f"checkpoints up to step {before} predate it, where train.keep_checkpoints kept them "
                f"(scripts/evaluate.py --checkpoint=WORKDIR --checkpoint_step={before})"
            )
        else:
            kept = f"no checkpoint predates it (the first is written at step {self.checkpoint_every})"
        raise RunStopped(
            f"the policy degenerated: in each of the last {self.in_a_row} steps (steps {first}-{step}) at "
            f"least {self.threshold:.0%} of the rollouts ran to the token budget (sampling.max_new_tokens), "
            f"against {self.fewest[0]:.0%} at step {self.fewest[1]}; mean reward now "
            f"{metrics.get('reward/mean', float('nan')):.3g}. Read a few of its samples: text that never "
            "ends is usually a collapsed policy, not a hard task. What usually helps: a lower "
            "optim.learning_rate, a KL penalty to the reference (rl.beta > 0), unscaled advantages "
            f"(rl.advantage=dr_grpo) where most groups score alike. Of this run, {kept}. "
            "train.max_truncated_in_a_row=0 runs on anyway."
        )


def out_of_memory_advice(config: Any, rows: dict[str, Any]) -> str:
    """What to change when one update does not fit: the batch's shape and the memory knobs, in order of
    what they cost (micro-batches cost nothing in results; remat costs compute; a smaller batch changes
    the experiment)."""
    n_rows, width = rows["prompt_mask"].shape[0], rows["prompt_mask"].shape[1] + rows["mask"].shape[1]
    micro = config.optim.micro_batches
    return (
        f"the policy update ran out of device memory: {n_rows} rows x {width} tokens in "
        f"{micro if micro else 'auto'} micro-batch(es), remat {config.model.remat!r}. Make it fit with "
        f"--config.optim.micro_batches={max(2, 2 * micro)} (same result, smaller passes; 0 picks the fewest "
        "that fit from XLA's estimate), --config.model.remat=full (recompute activations), or fewer rows "
        "(rl.prompts_per_step x rl.group_size) or tokens (sampling.max_new_tokens). A checkpoint is written "
        "only after a finished step, so the last one is intact: rerun with the same --workdir to resume."
    )


def make_batch(run: Run, rows: Rollout, advantages: Any) -> dict[str, Any]:
    """The update's batch from a step's rows and advantages, on the mesh (the warm-up builds its
    compile-time batch with this very function, so the shapes and placements it compiles are the step's).

    With `rl.update_prompt_buckets` the prompt columns are first trimmed to the finer width the rows need
    (the rows are the same on every host, so every host picks the same width)."""
    widths = update_prompt_buckets(run.config)
    if widths:
        rows = fit_prompt_width(rows, widths)
    return sharding.shard_batch(batch_from_rows(rows, advantages), run.mesh)


def update_policy(run: Run, rollouts: Rollouts, step: int) -> Update:
    """Advantages from the rewards, `rl.mu` epochs of updates on the rows, then the sampler gets the new
    parameters (the next step donates the state's buffers).

    Rows generated by other parameters than the state's (`rl.async_rollouts`: those before the previous
    update) carry them in `rollouts.weights`; the old log-probs of the importance ratio are computed with
    them, so the ratio and its clipping measure exactly the policy's lag, even with a single update."""
    t0 = time.perf_counter()
    scores = rollouts.rows["rewards"]
    advantages = run.advantage_fn(jnp.asarray(scores), run.config.rl.group_size)
    batch = make_batch(run, rollouts.rows, advantages)
    waited = 0.0  # for the warm-up's background compile of this width, if it is still running
    if run.compiles is not None:
        waited = run.compiles.wait("update", batch["tokens"].shape[1] - batch["completion_mask"].shape[1])
    t1 = time.perf_counter()
    try:
        run.state, history = update_on_rollout(
            run.train_step, run.state, batch, epochs=run.config.rl.mu, logprob_fn=run.logprob_fn,
            ref_params=run.ref_params, mesh=run.mesh, behaviour_params=rollouts.weights,
        )  # fmt: skip
        metrics = jax.device_get(history[-1])  # waits for the last update
        rollouts.weights = None  # old log-probs are computed: no need to keep older weights alive longer
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        raise UpdateOutOfMemory(out_of_memory_advice(run.config, rollouts.rows)) from e
    t2 = time.perf_counter()
    run.hand_params_to_sampler(step)
    seconds = {"batch": t1 - t0 - waited, "update": t2 - t1, "handover": time.perf_counter() - t2}
    rows = rollouts.rows
    tokens = int(rows["prompt_mask"].sum() + rows["mask"].sum()) * run.config.rl.mu  # the batch's attn_mask
    return Update(batch, metrics, len(history), seconds, tokens)


def step_metrics(run: Run, rollouts: Rollouts, update: Update, step_s: float) -> dict[str, Any]:
    """Everything logged for one step: rewards, lengths, groups, timing, the update's own metrics, FLOPs."""
    G = run.config.rl.group_size
    scores = rollouts.rows["rewards"]
    lengths = rollouts.rows["mask"].sum(axis=1)
    collect_s = rollouts.rollout_s + rollouts.reward_s
    train_s = update.total_s
    ds = rollouts.dynamic_sampling
    off_policy = run.config.rl.async_rollouts
    group_means = scores.reshape(-1, G).mean(axis=1)
    return {
        "reward/mean": float(np.mean(scores)),
        "reward/std": float(np.std(scores)),
        # The standard error of the mean with the prompts as the units (a prompt's completions are
        # correlated); NaN with one prompt. With min / max it draws the reward curve's band.
        "reward/stderr": float(np.std(group_means, ddof=1) / np.sqrt(len(group_means)))
        if len(group_means) > 1
        else float("nan"),
        "reward/min": float(np.min(scores)),
        "reward/max": float(np.max(scores)),
        "accuracy": float(np.mean(scores >= PASS_THRESHOLD)),
        "response/length_mean": float(lengths.mean()),
        "response/length_max": int(lengths.max()),
        "response/truncation_rate": truncation_rate(rollouts.rows["finished"]),
        "groups/zero_variance_fraction": float(np.mean(np.std(scores.reshape(-1, G), axis=1) == 0)),
        **(
            {
                "groups/dropped_fraction": ds["dropped_fraction"],
                "groups/generation_rounds": ds["rounds"],
                "groups/padded": ds["groups_padded"],
            }
            if ds
            else {}
        ),
        # rl.async_rollouts: how many updates the sampling parameters are behind the updated ones (1; 0 at
        # the first step of a process); its rollout phases overlap the previous update, and the step waited
        # time/rollout_wait_s for them.
        **({"rollout/policy_lag": run.params_step - 1 - rollouts.params_step} if off_policy else {}),
        "time/rollout_and_reward_s": collect_s,
        "time/rollout_s": rollouts.rollout_s,  # sampling + detokenising, all rounds
        "time/reward_s": rollouts.reward_s,
        "time/train_s": update.total_s,
        "time/step_s": step_s,
        **{f"time/{phase}_s": s for phase, s in rollouts.seconds.items() if phase != "reward"},
        **{f"time/{phase}_s": s for phase, s in update.seconds.items()},
        # Host work, waits and hand-overs: the step's time not spent sampling or updating on the device.
        "time/overhead_fraction": max(step_s - rollouts.seconds["sample"] - update.seconds["update"], 0.0)
        / max(step_s, 1e-9),
        "optim/micro_batches": run.micro_batches,
        "throughput/rollout_tokens_per_s": int(lengths.sum()) / max(collect_s, 1e-9),
        "throughput/train_tokens_per_s": update.tokens / max(train_s, 1e-9),
        **{f"train/{k}": float(np.asarray(v)) for k, v in update.metrics.items()},
        # Cumulative (the per-update flag is train/skipped): alerts count its increase.
        "train/skipped_updates": int(jax.device_get(run.state.skipped)),
        **flops_metrics(
            model_flops(run.model.cfg, update.batch["tokens"].shape),
            run.train_step.flops(update.batch),
            update.updates,
            train_s,
            1 if run.mesh is None else run.mesh.size,
        ),
    }
