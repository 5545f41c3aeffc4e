"""One step's rollouts: prompts -> the sampler -> rewards, as row-aligned arrays (`rlvr_jax.rl.batch`).

`RolloutSource` owns the prompt iterator (its position is checkpointed) and the reward worker processes.
With DAPO's dynamic sampling it asks for further generation rounds until the batch holds enough groups
whose rewards differ (`rlvr_jax.rl.dynamic_sampling.fill_batch`). On several processes every host draws the
same global batch, generates and scores its part (`sharding.host_part`), and the rows are gathered
(`sharding.gather_host_parts`), so the rest of the step sees the global batch, as one process would.
"""

from __future__ import annotations

import dataclasses
import time
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

    @property
    def rollout_s(self) -> float:
        return self.seconds["encode"] + self.seconds["sample"] + self.seconds["detokenize"]

    @property
    def reward_s(self) -> float:
        return self.seconds["reward"]


class RolloutSource:
    """Generates and scores the rows of each step."""

    def __init__(self, run: Run, iterator_state: dict[str, Any] | None = None):
        self.run = run
        self.iterator = batches(run.pipeline, iterator_state)
        reward = run.config.reward
        self.reward_pool = RewardPool(timeout_s=reward.timeout_s, on_error=reward.on_error)

    def collect(self, step_key: jax.Array) -> Rollouts:
        """The step's rows: one generation round, or as many as dynamic sampling needs."""
        config, G = self.run.config, self.run.config.rl.group_size
        timing = dict.fromkeys(("encode", "sample", "detokenize", "reward"), 0.0)
        rounds = iter(range(1, config.rl.dynamic_sampling_rounds + 2))

        def generate_round(_: int) -> Rollout:
            # Round 1 samples with the step's key; refill rounds (dynamic sampling) fold from it.
            index = next(rounds)
            key = step_key if index == 1 else jax.random.fold_in(step_key, index)
            return self._round(key, timing)

        if not config.rl.dynamic_sampling:
            return Rollouts(generate_round(config.rl.prompts_per_step), None, timing)
        filled = fill_batch(
            generate_round, config.rl.prompts_per_step, G, max_rounds=config.rl.dynamic_sampling_rounds
        )
        rows = filled.rollouts
        rows["mask"] = rows["mask"] & filled.kept[:, None]  # padding groups carry no loss
        return Rollouts(rows, filled.stats, timing)

    def _round(self, key: jax.Array, timing: dict[str, float]) -> Rollout:
        run, G = self.run, self.run.config.rl.group_size
        t0 = time.perf_counter()
        # The same global batch on every host (encoded whole, so every host pads to one prompt width);
        # each host generates and scores its own part, and the parts are gathered at the end.
        prompts = next(self.iterator)
        ids, mask = encode_prompts(run.sampler, run.task, prompts, run.config.data.chat)
        prompts, ids, mask = (sharding.host_part(x) for x in (prompts, ids, mask))
        t1 = time.perf_counter()
        out = jax.device_get(run.sampler.generate_ids(ids, mask, run.sampling, seed=key, group_size=G))
        t2 = time.perf_counter()
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
        t3 = time.perf_counter()
        rewards = self.reward_pool.submit(
            run.reward_name, completions, samples, **dict(run.config.reward.options)
        ).result()
        for phase, seconds in zip(timing, (t1 - t0, t2 - t1, t3 - t2, time.perf_counter() - t3), strict=True):
            timing[phase] += seconds
        return sharding.gather_host_parts(rollout_rows(ids, mask, out, np.asarray(rewards.scores), G))

    def iterator_state(self) -> dict[str, Any]:
        return self.iterator.get_state()

    def close(self) -> None:
        self.reward_pool.close()
