"""Compiling before step 1 what the steps will run, so that no step waits for XLA (`train.warmup_compile`).

The sampler pads a step's prompts to the bucket of its longest prompt (`Sampler.prompt_buckets`), and the
update's batch is prompt bucket + generation budget wide, so each prompt bucket a step can reach is one
sampler executable and one update executable (plus the log-prob pass where old or reference log-probs are
needed); with `rl.update_prompt_buckets` the update has widths of its own (the sampler's batch trimmed to
the longest real prompt's bucket), and each reachable width of either kind is compiled. Compiled lazily,
a step whose prompts first reach a new bucket pays for both in the middle of the run, which shows up as a
slow step and, on a busy machine, as a stall of minutes. Here every reachable bucket is compiled up
front, one progress line per compile, and the total goes to the first step's metrics as `time/compile_s`.

With `train.warmup_threads` > 1 every compile (each sampler bucket, each update width) runs in a pool of
that many threads (XLA compiles outside Python's lock), and the lines come in a fixed order once each
is done. The default stays one by one: at GSM8K's shape (qwen2.5-0.5b, 3 buckets) on an H100, 6 at a time
took 46.5 s against 50.8 s one by one: each of the six compiles then took 42-44 s of wall time, so they
ran one after another in effect (each takes 6-11 s alone); on a 2-core CPU threads gained nothing. (Before the
sampler's prefill scanned its layers the same warm-up took 140.5 s on an H200.)

Almost nothing runs on the device: the sampler's two programs and the log-prob pass are compiled ahead of
time through `jit(...).lower(...).compile()`, which fills the jitted functions' own caches (the later real
call with that bucket finds it there; the sampler's prefill runs once on the zero rows, so that its decode
loop is compiled for exactly the outputs a real call hands over), and the update through
`CompiledUpdate.compile`, whose executables the steps call. The batch itself is built from zero rows by
the very functions a step uses, which also compiles the few small eager operations (concatenations) that
depend on the bucket.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
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
    G, prompts = config.rl.group_size, config.rl.prompts_per_step
    lengths = prompt_lengths(sampler, run.task, run.train_samples, config.data.chat)
    widths = reachable_buckets(lengths, sampler.prompt_buckets, prompts)
    # rl.update_prompt_buckets: the update trims the sampler's width to its own buckets (step.make_batch).
    own = update_prompt_buckets(config) or sampler.prompt_buckets
    update_widths = reachable_buckets(lengths, own, prompts)
    threads = int(config.train.warmup_threads)
    when = "before step 1" + (f", up to {threads} at a time" if threads > 1 else "")
    if update_widths == widths:
        say(f"warm-up: compiling {len(widths)} prompt bucket(s) ({_join(widths)} tokens) {when}")
    else:
        say(f"warm-up: compiling the sampler for {len(widths)} prompt bucket(s) ({_join(widths)} tokens) and "
            f"the update for {len(update_widths)} ({_join(update_widths)}) {when}")  # fmt: skip

    def compile_sampler(width: int) -> list[str]:
        key = jax.random.key(config.seed)
        seconds = sampler.compile_bucket(prompts, width, run.sampling, seed=key, group_size=G)[1]
        return [f"  compiled the sampler ({_shape(config, width)}): {seconds:.1f}s"]

    jobs = [(compile_sampler, w) for w in widths] + [
        (functools.partial(_compile_update, run), w) for w in update_widths
    ]
    if threads <= 1:  # one by one, each line as it is done
        for job, width in sorted(jobs, key=lambda j: j[1]):
            for line in job(width):
                say(line)
    else:  # all at once (the sampler's, the longest, first); the lines in that order
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="warm-up") as pool:
            pending: list[Future] = [pool.submit(job, width) for job, width in jobs]
            try:
                for future in pending:
                    for line in future.result():
                        say(line)
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    total = time.perf_counter() - t_start
    say(f"warm-up done in {total:.1f}s", compile_s=total)
    return total


def _compile_update(run: Run, width: int) -> list[str]:
    """The update (and the log-prob passes it needs) for one prompt width, on a batch of zero rows;
    returns a progress line per compile."""
    config, lines = run.config, []
    G, prompts, N = config.rl.group_size, config.rl.prompts_per_step, config.sampling.max_new_tokens
    shape = _shape(config, width)
    t0 = time.perf_counter()
    zero_rows = _zero_rows(prompts, width, N, G)
    batch = make_batch(run, zero_rows, run.advantage_fn(jnp.asarray(zero_rows["rewards"]), G))
    for name, (key, params) in _logprob_params(run).items():
        run.logprob_fn.lower(params, batch).compile()
        lines.append(f"  compiled the {name} log-probs ({shape}): {time.perf_counter() - t0:.1f}s")
        t0 = time.perf_counter()
        # The update's batch carries them (another executable than without); one forward on zeros
        # gives them with the very layout the step's will have.
        batch = {**batch, key: run.logprob_fn(params, batch)}
    run.train_step.compile(run.state, batch)
    lines.append(f"  compiled the update ({shape}): {time.perf_counter() - t0:.1f}s")
    return lines


def _shape(config: Any, width: int) -> str:
    """A compile's shape in its progress line: rows x prompt width + generation budget."""
    rows = config.rl.prompts_per_step * config.rl.group_size
    return f"{rows} rows x {width} + {config.sampling.max_new_tokens} tokens"


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
