"""Compiling before step 1 what the steps will run, so that no step waits for XLA (`train.warmup_compile`).

The sampler pads a step's prompts to the bucket of its longest prompt (`Sampler.prompt_buckets`), and the
update's batch is prompt bucket + generation budget wide, so each prompt bucket a step can reach is one
sampler executable and one update executable (plus the log-prob pass where old or reference log-probs are
needed); with `rl.update_prompt_buckets` the update has widths of its own (the sampler's batch trimmed to
the longest real prompt's bucket), and each reachable width of either kind is compiled. Compiled lazily,
a step whose prompts first reach a new bucket pays for both in the middle of the run, which shows up as a
slow step and, on a busy machine, as a stall of minutes. Here every reachable bucket is compiled up
front, one progress line per compile, and the total goes to the first step's metrics as `time/compile_s`.

Nothing runs on the device: the sampler and the log-prob pass are compiled ahead of time through
`jit(...).lower(...).compile()`, which fills the jitted functions' own caches (the later real call with
that bucket finds it there), and the update through `CompiledUpdate.compile`, whose executables the
steps call. The batch itself is built from zero rows by the very functions a step uses, which also
compiles the few small eager operations (concatenations) that depend on the bucket.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rlvr_jax.config import update_prompt_buckets
from rlvr_jax.generate.sampler import bucket
from rlvr_jax.rl.batch import rollout_rows
from rlvr_jax.trainer.setup import Run
from rlvr_jax.trainer.step import make_batch


def reachable_buckets(lengths: Sequence[int], buckets: Sequence[int], batch: int) -> list[int]:
    """The prompt buckets a step of `batch` prompts can be padded to, smallest first.

    A step is padded to its longest prompt's bucket, so bucket b is reachable when some prompt falls in
    it and `batch` prompts fit in it (a batch of short prompts only is needed for a small bucket); the
    largest bucket the prompts fall in is always reachable. A bucket that only a batch repeating prompts
    across an epoch boundary could reach is left out: such a step compiles it then, as without warm-up.
    """
    if not lengths:
        return []
    own = np.asarray([bucket(int(n), buckets) for n in lengths])
    reached = sorted({int(b) for b in own})
    return [b for b in reached if b == reached[-1] or int(np.sum(own <= b)) >= batch]


def warm_up(run: Run) -> float:
    """Compiles the sampler and the update for every prompt bucket the training prompts can reach;
    returns the seconds spent. One line per compile on the console, and one for the total."""
    from rlvr_jax.evaluation.generate_and_score import prompt_lengths

    config, sampler, say = run.config, run.sampler, run.console.say
    t_start = time.perf_counter()
    G, prompts, N = config.rl.group_size, config.rl.prompts_per_step, config.sampling.max_new_tokens
    lengths = prompt_lengths(sampler, run.task, run.train_samples, config.data.chat)
    widths = reachable_buckets(lengths, sampler.prompt_buckets, prompts)
    # rl.update_prompt_buckets: the update trims the sampler's width to its own buckets (step.make_batch).
    own = update_prompt_buckets(config) or sampler.prompt_buckets
    update_widths = reachable_buckets(lengths, own, prompts)
    if update_widths == widths:
        say(f"warm-up: compiling {len(widths)} prompt bucket(s) ({_join(widths)} tokens) before step 1")
    else:
        say(f"warm-up: compiling the sampler for {len(widths)} prompt bucket(s) ({_join(widths)} tokens) and "
            f"the update for {len(update_widths)} ({_join(update_widths)}) before step 1")  # fmt: skip
    for width in sorted({*widths, *update_widths}):
        shape = f"{prompts * G} rows x {width} + {N} tokens"
        if width in widths:
            _, seconds = sampler.compile_bucket(
                prompts, width, run.sampling, seed=jax.random.key(config.seed), group_size=G
            )
            say(f"  compiled the sampler ({shape}): {seconds:.1f}s")
        if width not in update_widths:
            continue
        t0 = time.perf_counter()
        zero_rows = _zero_rows(prompts, width, N, G)
        batch = make_batch(run, zero_rows, run.advantage_fn(jnp.asarray(zero_rows["rewards"]), G))
        for name, (key, params) in _logprob_params(run).items():
            run.logprob_fn.lower(params, batch).compile()
            say(f"  compiled the {name} log-probs ({shape}): {time.perf_counter() - t0:.1f}s")
            t0 = time.perf_counter()
            # The update's batch carries them (another executable than without); one forward on zeros
            # gives them with the very layout the step's will have.
            batch = {**batch, key: run.logprob_fn(params, batch)}
        run.train_step.compile(run.state, batch)
        say(f"  compiled the update ({shape}): {time.perf_counter() - t0:.1f}s")
    total = time.perf_counter() - t_start
    say(f"warm-up done in {total:.1f}s", compile_s=total)
    return total


def _join(widths: Sequence[int]) -> str:
    return ", ".join(map(str, widths))


def _logprob_params(run: Run) -> dict[str, tuple[str, Any]]:
    """The log-prob passes of a step, {what: (batch key, parameters)}, as `update_on_rollout` runs them:
    old log-probs with the sampling parameters (rl.async_rollouts) or the state's (rl.mu > 1), and
    reference log-probs with the frozen reference (rl.beta > 0)."""
    rl, out = run.config.rl, {}
    if rl.async_rollouts:
        out["old (sampling parameters)"] = ("old_logprobs", run.sampler.params)
    elif rl.mu > 1:
        out["old"] = ("old_logprobs", run.state.params)
    if run.ref_params is not None:
        out["reference"] = ("ref_logprobs", run.ref_params)
    return out


def _zero_rows(prompts: int, width: int, new_tokens: int, group_size: int) -> dict[str, np.ndarray]:
    """A step's rollout rows of the given shape, all zeros: the batch the update compiles for."""
    from rlvr_jax.generate.sampler import GenerateOutput

    rows = prompts * group_size
    out = GenerateOutput(
        tokens=np.zeros((rows, new_tokens), np.int32),
        logprobs=np.zeros((rows, new_tokens), np.float32),
        mask=np.zeros((rows, new_tokens), bool),
        lengths=np.zeros(rows, np.int32),
        finished=np.zeros(rows, bool),
        steps=np.int32(0),
    )
    ids = np.zeros((prompts, width), np.int32)
    return rollout_rows(ids, np.ones_like(ids, bool), out, np.zeros(rows, np.float32), group_size)
