"""Compiling what the steps will run, so that no step waits for XLA (`train.warmup_compile`).

The sampler pads a step's prompts to the bucket of its longest prompt (`Sampler.prompt_buckets`), and the
update's batch is prompt bucket + generation budget wide, so each prompt bucket a step can reach is one
sampler executable and one update executable (plus the log-prob pass where old or reference log-probs are
needed); with `rl.update_prompt_buckets` the update has widths of its own (the sampler's batch trimmed to
the longest real prompt's bucket), and each reachable width of either kind is compiled. Compiled lazily,
a step whose prompts first reach a new bucket pays for both in the middle of the run, which shows up as a
slow step and, on a busy machine, as a stall of minutes.

Before step 1 only step 1's own bucket is compiled (its prompts are known: the prompt iterator is peeked
at), one progress line per compile, and that time goes to the first step's metrics as `time/compile_s`.
Every other reachable bucket compiles in a background thread (`train.warmup_background`; the likeliest
first) while the run evaluates and steps; a step whose prompts reach a bucket still compiling waits for it
(`time/compile_wait_s`), and the background's lines come after the steps they finished in. At GSM8K's
shape (qwen2.5-0.5b, 3 buckets) on an H100 that took the time before step 1 from 53.0 s to 24.0 s
(`benchmarks/README.md`, "The warm-up in the background"). With `train.warmup_background=False` every
compile happens before step 1, `train.warmup_threads` at a time.

Every compile is made from shapes alone (`rlvr_jax.compiled`): the batch of zero rows the update compiles
for is built by the step's own `make_batch` (in the main thread, with the very placements a step's will
have) and then reduced to shapes; the sampler's two programs and the update are compiled ahead of time
and their executables are what later calls run (`Sampler.bucket_compile`, `CompiledUpdate.compile_job`);
the log-prob pass fills its jitted function's own cache. Nothing runs on the device in the background and
no buffer is held there, so the main thread's dispatch order stays the only one, on a mesh and across
processes, and a donating step cannot free what a compile still reads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rlvr_jax.compiled import abstract, outputs
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


class BackgroundCompiles:
    """The compiles step 1 does not need, in a pool of threads while the run evaluates and steps.

    Every job only compiles (from shapes, `rlvr_jax.compiled`): nothing runs on the device and no buffer
    is held, so the main thread's dispatch order is untouched (on a mesh, and across processes). A step
    whose prompts reach a bucket still compiling waits for it (`wait`) rather than compiling it a second
    time; the seconds it waited go to `time/compile_wait_s`. A job that fails is said once and left to the
    step that needs it, which then compiles it itself as without warm-up.
    """

    def __init__(self, threads: int):
        self._pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="compile")
        self._jobs: dict[tuple[str, int], Future] = {}
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._start = time.perf_counter()
        self._reported_done = False
        self._last_done = self._start  # when the latest job ended
        self.waited_s = 0.0  # all steps' waits so far

    def submit(self, kind: str, width: int, job: Callable[[], list[str]]) -> None:
        """Queues `job` (which returns its progress lines) for the (kind, width) a step waits on."""
        self._jobs[(kind, width)] = self._pool.submit(self._run, kind, width, job)

    def _run(self, kind: str, width: int, job: Callable[[], list[str]]) -> None:
        """Runs a job and keeps its lines (a failure's too) before its future is done, so that a step that
        waited for it finds them in `report`."""
        try:
            lines = [f"{line} (in the background)" for line in job()]
        except Exception as error:  # said; the step that needs it compiles it itself, as without warm-up
            lines = [
                f"  the background compile of the {kind} for prompt width {width} failed "
                f"({type(error).__name__}: {error}); the step that needs it compiles it itself"
            ]
        with self._lock:
            self._lines.extend(lines)
            self._last_done = time.perf_counter()

    def wait(self, kind: str, width: int) -> float:
        """Blocks until the (kind, width) compile is done, if one was queued; returns the seconds waited."""
        future = self._jobs.get((kind, width))
        if future is None or future.done():
            return 0.0
        t0 = time.perf_counter()
        future.result()  # a failed job returns too: `report` says it, and the step compiles it itself
        waited = time.perf_counter() - t0
        self.waited_s += waited
        return waited

    def report(self) -> list[str]:
        """The progress lines of the jobs finished since the last call, then one line once all are."""
        with self._lock:
            lines, self._lines = self._lines, []
        if not self._reported_done and all(f.done() for f in self._jobs.values()):
            self._reported_done = True
            dropped = sum(f.cancelled() for f in self._jobs.values())
            done = f"{len(self._jobs) - dropped} of {len(self._jobs)}" if dropped else f"{len(self._jobs)}"
            lines.append(
                f"  background compiles done: {done} in {self._last_done - self._start:.1f}s"
                + (f" ({dropped} not started before the run ended)" if dropped else "")
                + f"; the steps waited {self.waited_s:.1f}s for them"
            )
        return lines

    def close(self) -> list[str]:
        """Drops the jobs not started and waits for the running ones (a compile cannot be interrupted);
        returns the lines not reported yet."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        return self.report()


def warm_up(run: Run, first_prompts: Sequence[Any] | None = None) -> tuple[float, BackgroundCompiles | None]:
    """Compiles the sampler and the update for the prompt buckets the training prompts can reach; returns
    the seconds spent before step 1, and the compiles left to the background (None when none is).

    With `train.warmup_background` and step 1's prompts (`first_prompts`) only step 1's sampler bucket
    and update width are compiled now; the other reachable ones go to `BackgroundCompiles`, the likeliest
    first (a step is padded to its longest prompt's bucket: with many prompts a step, mostly the largest).
    Otherwise all of them now. One line per compile on the console, and one for the total."""
    from rlvr_jax.evaluation.generate_and_score import encode_prompts, prompt_lengths

    config, sampler, say = run.config, run.sampler, run.console.say
    t_start = time.perf_counter()
    prompts = config.rl.prompts_per_step
    lengths = prompt_lengths(sampler, run.task, run.train_samples, config.data.chat)
    widths = reachable_buckets(lengths, sampler.prompt_buckets, prompts)
    # rl.update_prompt_buckets: the update trims the sampler's width to its own buckets (step.make_batch).
    own = update_prompt_buckets(config) or sampler.prompt_buckets
    update_widths = reachable_buckets(lengths, own, prompts)
    threads = int(config.train.warmup_threads)
    jobs = [("sampler", w, _sampler_job(run, w)) for w in widths]
    jobs += [("update", w, _update_job(run, w)) for w in update_widths]
    first: set[tuple[str, int]] = set()
    if config.train.warmup_background and first_prompts:
        ids, mask = encode_prompts(sampler, run.task, first_prompts, config.data.chat)
        longest = int(np.asarray(mask).sum(axis=1).max())  # as make_batch's fit_prompt_width measures it
        first = {("sampler", ids.shape[1]), ("update", bucket(longest, own))}
    now = [job for job in jobs if not first or job[:2] in first]
    later = [job for job in jobs if job not in now]
    shapes = _describe(widths, update_widths)
    if later:
        sampled, updated = (_join(w) for w in _widths(now))
        width = f"{sampled} tokens" if sampled == updated else f"sampler {sampled}, update {updated} tokens"
        say(f"warm-up: compiling step 1's prompt bucket ({width}) before it; the other {len(later)} "
            f"compile(s) of {shapes} go on in the background")  # fmt: skip
    else:
        at_once = f", up to {threads} at a time" if threads > 1 else ""
        say(f"warm-up: compiling {shapes} before step 1{at_once}")
    _run_now(now, 1 if later else threads, say)
    total = time.perf_counter() - t_start
    say(f"warm-up done in {total:.1f}s" + (" (the rest in the background)" if later else ""), compile_s=total)
    if not later:
        return total, None
    background = BackgroundCompiles(threads)
    likely = {
        **_likelihood(lengths, sampler.prompt_buckets, prompts, "sampler"),
        **_likelihood(lengths, own, prompts, "update"),
    }
    for kind, width, job in sorted(later, key=lambda j: (-likely.get(j[:2], 0.0), j[0] != "sampler")):
        background.submit(kind, width, job)
    return total, background


def _run_now(jobs: list, threads: int, say: Callable[..., None]) -> None:
    """The jobs in this thread one by one (each line as it is done), or in a pool (lines in order)."""
    if threads <= 1:
        for _, _, job in sorted(jobs, key=lambda j: j[1]):
            for line in job():
                say(line)
        return
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="warm-up") as pool:
        pending: list[Future] = [pool.submit(job) for _, _, job in jobs]
        try:
            for future in pending:
                for line in future.result():
                    say(line)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _likelihood(lengths: Sequence[int], buckets: Sequence[int], batch: int, kind: str) -> dict:
    """{(kind, bucket): the chance that a step of `batch` prompts drawn at random is padded to it}: its
    longest prompt falls in that bucket, P(longest <= b) - P(longest <= the bucket below)."""
    own = np.asarray([bucket(int(n), buckets) for n in lengths])
    out, below = {}, 0.0
    for b in sorted({int(x) for x in own}):
        at_most = float(np.mean(own <= b)) ** batch
        out[(kind, b)], below = at_most - below, at_most
    return out


def _sampler_job(run: Run, width: int) -> Callable[[], list[str]]:
    """The sampler's compile for one prompt bucket, its shapes read now (`Sampler.bucket_compile`)."""
    config = run.config
    _, compile_now = run.sampler.bucket_compile(
        config.rl.prompts_per_step, width, run.sampling, seed=jax.random.key(config.seed),
        group_size=config.rl.group_size,
    )  # fmt: skip
    return lambda: [f"  compiled the sampler ({_shape(config, width)}): {compile_now():.1f}s"]


def _update_job(run: Run, width: int) -> Callable[[], list[str]]:
    """The update (and the log-prob passes it needs) for one prompt width: the shapes of a batch of zero
    rows built now by the step's own `make_batch`; the compiles run when the job is called."""
    config = run.config
    G, prompts, N = config.rl.group_size, config.rl.prompts_per_step, config.sampling.max_new_tokens
    zero_rows = _zero_rows(prompts, width, N, G)
    batch = abstract(make_batch(run, zero_rows, run.advantage_fn(jnp.asarray(zero_rows["rewards"]), G)))
    passes = {name: (key, abstract(params)) for name, (key, params) in _logprob_params(run).items()}
    state, shape = abstract(run.state), _shape(config, width)

    def job() -> list[str]:
        lines, full = [], dict(batch)
        for name, (key, params) in passes.items():
            t0 = time.perf_counter()
            # Fills the jitted pass's own cache (on the mesh it has shardings); the update's batch carries
            # its outputs, whose shapes and placements the compiled pass gives.
            compiled = run.logprob_fn.lower(params, batch).compile()
            full[key] = outputs(compiled, committed=run.mesh is not None)
            lines.append(f"  compiled the {name} log-probs ({shape}): {time.perf_counter() - t0:.1f}s")
        lines.append(f"  compiled the update ({shape}): {run.train_step.compile_job(state, full)():.1f}s")
        return lines

    return job


def _widths(jobs: list) -> tuple[list[int], list[int]]:
    return [w for k, w, _ in jobs if k == "sampler"], [w for k, w, _ in jobs if k == "update"]


def _describe(widths: Sequence[int], update_widths: Sequence[int]) -> str:
    """The prompt buckets compiled, as the progress lines name them."""
    if list(widths) == list(update_widths):
        return f"{len(widths)} prompt bucket(s) of {_join(widths)} tokens"
    return (
        f"the sampler for {len(widths)} prompt bucket(s) ({_join(widths)} tokens) and the update for "
        f"{len(update_widths)} ({_join(update_widths)})"
    )


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
