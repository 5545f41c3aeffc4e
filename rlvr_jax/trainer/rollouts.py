"""One step's rollouts: prompts -> the sampler -> rewards, as row-aligned arrays (`rlvr_jax.rl.batch`).

`RolloutSource` owns the prompt iterator (its position is checkpointed) and the reward worker processes.
With DAPO's dynamic sampling it asks for further generation rounds until the batch holds enough groups
whose rewards differ (`rlvr_jax.rl.dynamic_sampling.fill_batch`). On several processes every host draws the
same global batch, generates and scores its part (`sharding.host_part`), and the rows are gathered
(`sharding.gather_host_parts`) in the main thread, so the rest of the step sees the global batch, as one
process would.

With `rl.async_rollouts` (one-step off-policy) the loop calls `start` for step n + 1 before step n's
update and `take` at step n + 1 instead of `collect`: `start` draws the prompts, encodes them and
dispatches the sampler with the parameters the sampler holds then (step n's, before its update), in the
main thread, so the device samples before it updates and all device work keeps one dispatch order; a
worker thread waits for the tokens, detokenises them and scores them (the reward workers, the code
sandbox) while the device runs the update. The rows carry those parameters (`Rollouts.weights`) for the
old log-probs of the importance ratio, and the step that made them (`Rollouts.params_step`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import jax
import numpy as np

from rlvr_jax import sharding
from rlvr_jax.data.pipeline import batches
from rlvr_jax.evaluation.generate_and_score import encode_prompts
from rlvr_jax.rewards.pool import RewardPool
from rlvr_jax.rl.batch import Rollout, rollout_rows
from rlvr_jax.rl.dynamic_sampling import fill_batch
from rlvr_jax.trainer.setup import Run


@dataclasses.dataclass
class Rollouts:
    """A step's training rows, the dynamic-sampling statistics (None when it is off), and where the time
    went, summed over generation rounds: encoding prompts, sampling (the device's work and the copy of
    its output to the host), detokenising, and the reward workers."""

    rows: Rollout
    dynamic_sampling: dict[str, float] | None
    seconds: dict[str, float]
    params_step: int = 0  # the step whose update made the parameters that generated the rows
    # Those parameters when they are not the train state's at the update (rl.async_rollouts), else None.
    weights: Any = None

    @property
    def rollout_s(self) -> float:
        return self.seconds["encode"] + self.seconds["sample"] + self.seconds["detokenize"]

    @property
    def reward_s(self) -> float:
        return self.seconds["reward"]


class RolloutSource:
    """Generates and scores the rows of each step: now (`collect`), or in the background while the
    previous step updates (`start`, then `take`; `rl.async_rollouts`)."""

    def __init__(self, run: Run, iterator_state: dict[str, Any] | None = None):
        self.run = run
        self.iterator = batches(run.pipeline, iterator_state)
        reward = run.config.reward
        self.reward_pool = RewardPool(timeout_s=reward.timeout_s, on_error=reward.on_error)
        self._worker: ThreadPoolExecutor | None = None
        self._pending: Future | None = None
        self._state_before_pending: dict[str, Any] | None = None

    def collect(self, step_key: jax.Array) -> Rollouts:
        """The step's rows: one generation round, or as many as dynamic sampling needs."""
        config, G = self.run.config, self.run.config.rl.group_size
        timing = dict.fromkeys(("encode", "sample", "detokenize", "reward"), 0.0)
        rounds = iter(range(1, config.rl.dynamic_sampling_rounds + 2))
        params_step = self.run.params_step

        def generate_round(_: int) -> Rollout:
            # Round 1 samples with the step's key; refill rounds (dynamic sampling) fold from it.
            index = next(rounds)
            key = step_key if index == 1 else jax.random.fold_in(step_key, index)
            return self._round(key, timing)

        if not config.rl.dynamic_sampling:
            return Rollouts(generate_round(config.rl.prompts_per_step), None, timing, params_step)
        filled = fill_batch(
            generate_round, config.rl.prompts_per_step, G, max_rounds=config.rl.dynamic_sampling_rounds
        )
        rows = filled.rollouts
        rows["mask"] = rows["mask"] & filled.kept[:, None]  # padding groups carry no loss
        return Rollouts(rows, filled.stats, timing, params_step)

    def start(self, step_key: jax.Array) -> None:
        """Begins a step's rollout with the sampler's current parameters: prompts, encoding and the
        sampler's dispatch here; waiting for the tokens, detokenising and the rewards in a worker thread.
        `take` returns it. Until then `iterator_state` is the position before its prompts, so that a
        checkpoint taken meanwhile regenerates this rollout on resume (from the checkpoint's parameters:
        the resumed run's next step is on-policy, where the uninterrupted run's was one step behind)."""
        if self._pending is not None:
            raise RuntimeError("a rollout is already in flight: take it before starting another")
        if jax.process_count() > 1:  # its worker thread would gather the hosts' rows beside the update
            raise NotImplementedError("rl.async_rollouts runs on one process; turn it off on several")
        run, G = self.run, self.run.config.rl.group_size
        self._state_before_pending = self.iterator.get_state()
        weights, params_step = run.sampler.params, run.params_step
        t0 = time.perf_counter()
        prompts = next(self.iterator)
        ids, mask = encode_prompts(run.sampler, run.task, prompts, run.config.data.chat)
        waited = self._wait_for_compile(ids)
        t1 = time.perf_counter()
        wait = run.sampler.submit_ids(ids, mask, run.sampling, seed=step_key, group_size=G, weights=weights)
        t2 = time.perf_counter()

        def finish() -> Rollouts:
            out = wait()
            timing = {"encode": t1 - t0 - waited, "sample": t2 - t1 + time.perf_counter() - t2}
            rows = self._score(prompts, ids, mask, out, timing)
            return Rollouts(rows, None, timing, params_step, weights)

        if self._worker is None:
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollouts")
        self._pending = self._worker.submit(finish)

    def take(self) -> Rollouts:
        """The rollout `start` began, once scored; `seconds["rollout_wait"]` is how long this waited."""
        if self._pending is None:
            raise RuntimeError("no rollout in flight: start one first")
        t0 = time.perf_counter()
        try:
            rollouts = self._pending.result()
        finally:
            self._pending, self._state_before_pending = None, None
        rollouts.seconds["rollout_wait"] = time.perf_counter() - t0
        return rollouts

    def _round(self, key: jax.Array, timing: dict[str, float]) -> Rollout:
        run, G = self.run, self.run.config.rl.group_size
        t0 = time.perf_counter()
        # The same global batch on every host (encoded whole, so every host pads to one prompt width);
        # each host generates and scores its own part, and the parts are gathered at the end.
        prompts = next(self.iterator)
        ids, mask = encode_prompts(run.sampler, run.task, prompts, run.config.data.chat)
        waited = self._wait_for_compile(ids)
        prompts, ids, mask = (sharding.host_part(x) for x in (prompts, ids, mask))
        t1 = time.perf_counter()
        out = jax.device_get(run.sampler.generate_ids(ids, mask, run.sampling, seed=key, group_size=G))
        t2 = time.perf_counter()
        timing["encode"] += t1 - t0 - waited
        timing["sample"] += t2 - t1
        # In this (main) thread: a collective on several processes, in the same order as the device's.
        return sharding.gather_host_parts(self._score(prompts, ids, mask, out, timing))

    def _wait_for_compile(self, ids: Any) -> float:
        """Waits while the warm-up still compiles the sampler for these prompts' bucket in the background
        (`BackgroundCompiles`); returns the seconds waited."""
        compiles = self.run.compiles
        return 0.0 if compiles is None else compiles.wait("sampler", int(np.shape(ids)[1]))

    def peek(self) -> list:
        """The next step's prompts, left for it to take (the warm-up compiles their bucket first)."""
        state = self.iterator.get_state()
        prompts = next(self.iterator)
        self.iterator.set_state(state)
        return prompts

    def _score(self, prompts: list, ids: Any, mask: Any, out: Any, timing: dict[str, float]) -> Rollout:
        """Detokenises a round's completions and scores them (adds to `timing`); its rows."""
        run, G = self.run, self.run.config.rl.group_size
        t0 = time.perf_counter()
        tokenizer = run.tokenizer
        completions = [
            tokenizer.decode(tokenizer.truncate_at_stop(out.tokens[r, : out.lengths[r]]))
            for r in range(len(out.tokens))
        ]
        # Each row's token count travels with its sample, for the length rewards (overlong,
        # length_penalty) alone or inside a weighted_sum, and whether the budget cut it off (a number at
        # the end of a cut-off text may be cut too).
        samples = [
            {**prompts[r // G], "completion_length": int(out.lengths[r]), "finished": bool(out.finished[r])}
            for r in range(len(completions))
        ]
        t1 = time.perf_counter()
        rewards = self.reward_pool.submit(
            run.reward_name, completions, samples, **dict(run.config.reward.options)
        ).result()
        timing["detokenize"] = timing.get("detokenize", 0.0) + t1 - t0
        timing["reward"] = timing.get("reward", 0.0) + time.perf_counter() - t1
        return rollout_rows(ids, mask, out, np.asarray(rewards.scores), G)

    def iterator_state(self) -> dict[str, Any]:
        """The prompt iterator's position for a checkpoint: before the prompts of a rollout in flight."""
        if self._state_before_pending is not None:
            return dict(self._state_before_pending)
        return self.iterator.get_state()

    def close(self) -> None:
        """Waits for a rollout in flight (an error or a preemption left it; its result is dropped) and
        stops the worker thread and the reward workers."""
        if self._pending is not None:
            self._pending.cancel()
            with contextlib.suppress(Exception):  # its own failure does not matter: it is discarded
                self._pending.result()
            self._pending = None
        if self._worker is not None:
            self._worker.shutdown(wait=True)
        self.reward_pool.close()
