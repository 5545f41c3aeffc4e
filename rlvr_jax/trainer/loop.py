"""`train`: the GRPO loop as a table of contents; each phase is a function or a small object elsewhere in
`rlvr_jax.trainer`."""

from __future__ import annotations

import time
from pathlib import Path

import jax
import ml_collections

from rlvr_jax import sharding
from rlvr_jax.checkpointing import PreemptionHandler
from rlvr_jax.config import ConfigError, validate, with_hub_fallback
from rlvr_jax.trainer.reporting import (
    RunLog,
    RunSummary,
    describe_evaluation,
    evaluate_held_out,
    finish,
    save_checkpoint,
)
from rlvr_jax.trainer.rollouts import RolloutSource
from rlvr_jax.trainer.setup import Run, resume, setup_run
from rlvr_jax.trainer.step import DegeneratePolicy, SkippedUpdates, step_metrics, update_policy
from rlvr_jax.trainer.warmup import warm_up


def train(config: ml_collections.ConfigDict, workdir: str | Path) -> RunSummary:
    """Runs (or resumes) the experiment described by `config` in `workdir`."""
    sharding.initialize_distributed()
    validate(config, jax.device_count())
    if config.rl.async_rollouts and jax.process_count() > 1:
        raise ConfigError(
            f"rl.async_rollouts runs on one process, this run has {jax.process_count()}: a multi-host "
            "mesh gathers the sampler's rows in a collective that the rollout's own thread cannot join"
        )
    config = with_hub_fallback(config)  # a model.path missing here: its model.hub_id, said in one line
    clock_start = time.perf_counter()  # accelerators are billed from here: loading and compiles included
    run = setup_run(config, workdir)  # policy + sampler on the mesh, data, compiled update
    start, meta = resume(run)  # the newest checkpoint's state, if any
    rollouts = RolloutSource(run, meta.get("data_iterator"))  # prompts -> sampler -> rewards
    warm = config.train.warmup_compile and start < config.train.steps  # a finished run has no step left
    compile_s = None
    try:  # step 1's prompt bucket compiled now, every other one the steps can reach in the background
        if warm:
            compile_s, run.compiles = warm_up(run, rollouts.peek())
        log = RunLog(run, meta, start, clock_start)  # metrics.jsonl, TensorBoard, W&B, Prometheus, cost
    except BaseException:
        _close(run, rollouts)
        raise
    preemption, key, step = PreemptionHandler(), jax.random.key(config.seed), start
    off_policy = config.rl.async_rollouts  # step n + 1 samples (with step n's parameters) while n updates
    skipped_so_far = int(jax.device_get(run.state.skipped))  # a resumed run's count goes on
    skips = SkippedUpdates(config.train.max_skipped_in_a_row, skipped_so_far, run.console.say)
    degenerate = DegeneratePolicy(config.train.max_truncated_in_a_row, config.train.checkpoint_every)
    waited = 0.0  # the steps' waits for background compiles so far
    try:
        eval_before = meta.get("eval_before") or _first_evaluation(run, log)
        run.console.say(f"held-out accuracy before training: {describe_evaluation(eval_before)}")
        if off_policy and start < config.train.steps:
            rollouts.start(jax.random.fold_in(key, start + 1))
        for step in range(start + 1, config.train.steps + 1):
            t0 = time.perf_counter()
            if off_policy:
                collected = rollouts.take()  # started during the previous step's update
                if step < config.train.steps:  # dispatched before this update: the device samples first
                    rollouts.start(jax.random.fold_in(key, step + 1))
            else:
                collected = rollouts.collect(jax.random.fold_in(key, step))  # rollout -> rewards
            update = update_policy(run, collected, step)  # advantages -> update -> parameters to sampler
            metrics = step_metrics(run, collected, update, time.perf_counter() - t0)
            if compile_s is not None:  # the warm-up's compile time, with the first step of this process
                metrics["time/compile_s"], compile_s = compile_s, None
            if run.compiles is not None:  # waits for the warm-up's background compiles, and their lines
                metrics["time/compile_wait_s"], waited = run.compiles.waited_s - waited, run.compiles.waited_s
                for line in run.compiles.report():
                    run.console.say(line)
            evaluated = _periodic_evaluation(run, log, step)
            metrics.update({f"eval/{k}": v for k, v in (evaluated or {}).items()})
            log.step(step, metrics, update.tokens)
            skips.check(step, metrics, update.updates)  # stops a run whose updates are all skipped
            degenerate.check(step, metrics)  # stops a run whose samples all run to the token budget
            stop = preemption.should_stop(step)  # every host calls this every step
            if step % config.train.checkpoint_every == 0 or stop:
                save_checkpoint(run, log, step, rollouts.iterator_state(), eval_before, evaluated)
            if stop:
                run.checkpointer.wait()
                run.console.say(f"preemption signal received: checkpoint saved at step {step}; exiting")
                break
    finally:
        log.progress.close()
        _close(run, rollouts)
    return finish(run, log, step, eval_before, rollouts.iterator_state(), preemption.requested)


def _close(run: Run, rollouts: RolloutSource) -> None:
    """Stops the reward workers and the background compiles (those not started are dropped)."""
    rollouts.close()
    if run.compiles is not None:
        for line in run.compiles.close():
            run.console.say(line)


def _first_evaluation(run: Run, log: RunLog) -> dict[str, float]:
    """The held-out evaluation before any update (a resumed run has it in its checkpoint)."""
    before = evaluate_held_out(run, "before", log, 0)
    log.writer.write(0, {f"eval/{k}": v for k, v in before.items()})
    return before


def _periodic_evaluation(run: Run, log: RunLog, step: int) -> dict[str, float] | None:
    """Every `train.eval_every` steps, except the last (the final evaluation covers it)."""
    every, steps = run.config.train.eval_every, run.config.train.steps
    if every and step % every == 0 and step < steps:
        return evaluate_held_out(run, f"step_{step}", log, step)
    return None
