"""Dynamic batching: a bounded queue in front of one worker thread that owns the sampler.

Requests arrive on the event loop; the worker waits for the first one, then collects more for up to
`wait_s` or until `max_batch` rows are waiting, and runs them as one batch. Results go back through
each job's `deliver` callback (thread-safe, never blocking), once per streamed chunk, so a streaming
client sees tokens as they are decoded and a short request is answered as soon as its own rows are done,
not when the batch's longest row is.

Why a thread and a bounded queue: the sampler blocks (it waits on the device), and the event loop must
keep answering /health, /metrics and 429s while it does; the bound on waiting jobs (plus the per-request
limits checked at the edge) bounds memory whatever the load.

Requests share batches but not fates: a job is checked on its own (`Runner.check`) before it is queued,
every job carries its own seed (the client's, or the next of the server's), which the runner turns into
per-row keys, and when a batch fails the jobs it had not finished are run again one at a time, so only the
job at fault gets the error.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

from rlvr_jax.serving.metrics import ServerMetrics

log = logging.getLogger(__name__)


TopLogprobs = tuple[tuple[int, float], ...]  # (token id, log-prob) pairs, most probable first


@dataclasses.dataclass(frozen=True)
class RowState:
    """One choice's progress: its generated ids so far (at most its max_tokens, the stop token included),
    whether it ended on a stop token, and whether it is over (stop token or max_tokens).

    Log-probs (what the OpenAI `logprobs` fields are built from):
    - `logprobs[i]` is token_ids[i]'s log-prob under softmax(logits / T) before top-k/top-p filtering
      (T = 1 for greedy rows): the sampler's own number (`rlvr_jax.generate.sampling.sample_tokens`),
      always filled, one per token id.
    - `top_logprobs[i]` holds the job's `top_logprobs` most probable tokens of that same distribution at
      position i, best first; empty when the job asked for none (k = 0), else one entry per token id.
    - `prompt_logprobs` / `prompt_top_logprobs`: only when the job asked for them (`Job.prompt_logprobs`,
      the completions `echo` with `logprobs`): one entry per prompt token, from one forward pass of the
      model over the prompt at T = 1; the first token has no context, so its entries are None and ().
      They do not change while the row decodes.
    """

    token_ids: tuple[int, ...]
    stop_token: bool
    done: bool
    logprobs: tuple[float, ...] = ()
    top_logprobs: tuple[TopLogprobs, ...] = ()
    prompt_logprobs: tuple[float | None, ...] = ()
    prompt_top_logprobs: tuple[TopLogprobs, ...] = ()


@dataclasses.dataclass(frozen=True)
class Update:
    """What a job's `deliver` receives: every row's state, or an error that ends the job."""

    rows: tuple[RowState, ...] = ()
    error: str | None = None


@dataclasses.dataclass(eq=False)
class Job:
    """One request as the batcher sees it: token-id prompts (one per row, i.e. per choice) and sampling.

    top_logprobs: how many most-probable alternatives to report per generated token (0: none; see
    `RowState`). prompt_logprobs: also score the prompt tokens (`RowState.prompt_logprobs`); only then may
    max_tokens be 0 (score the prompt, generate nothing).
    """

    prompts: list[list[int]]
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    deliver: Callable[[Update], None]
    seed: int | None = None
    top_logprobs: int = 0
    prompt_logprobs: bool = False
    enqueued_at: float = dataclasses.field(default_factory=time.monotonic)
    cancelled: threading.Event = dataclasses.field(default_factory=threading.Event)
    delivered: tuple[RowState, ...] = ()  # the last row states handed to `deliver`

    @property
    def rows(self) -> int:
        return len(self.prompts)


class Runner(Protocol):
    """Checks one job, and runs jobs as one batch, yielding every job's row states after each chunk."""

    def check(self, job: Job) -> None:
        """Raises InvalidJob when this job cannot run (a limit, a value out of range): it fails alone."""

    def run(self, jobs: Sequence[Job]) -> Iterator[list[tuple[RowState, ...]]]: ...


class InvalidJob(ValueError):
    """A job that `Runner.check` refused; the message says what is wrong (the app answers 400)."""


class QueueFull(Exception):
    """The queue holds `max_queue` jobs; `retry_after` is a guess (seconds) at when there is room."""

    def __init__(self, retry_after: int, max_queue: int):
        super().__init__(
            f"the server is at capacity ({max_queue} requests already waiting); retry after "
            f"{retry_after} s or send fewer concurrent requests"
        )
        self.retry_after = retry_after


class ShuttingDown(Exception):
    """The server is draining for shutdown and takes no new work."""


class Batcher:
    """The bounded queue and the worker thread. `submit` from any thread; `start` / `stop` once."""

    def __init__(
        self,
        runner: Runner,
        *,
        max_batch: int,
        max_queue: int,
        wait_s: float,
        seed: int = 0,
        metrics: ServerMetrics | None = None,
    ):
        self.runner = runner
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.wait_s = wait_s
        self.metrics = metrics
        self._seed = seed
        self._queue: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._batch_seconds = 1.0  # running mean, for Retry-After
        self.batches_run = 0
        if metrics is not None:
            metrics.queue_capacity.set(max_queue)

    # -- producer side -------------------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        """Checks and queues a job, or raises InvalidJob / QueueFull / ShuttingDown (400 / 429 / 503).

        A job without a seed gets the next of the server's seeds here, so that it, too, samples with keys
        of its own rather than whatever its batch mates asked for.
        """
        if not 0 < job.rows <= self.max_batch:
            raise InvalidJob(f"a job has {job.rows} rows; it needs 1 to max_batch ({self.max_batch})")
        self.runner.check(job)
        with self._cond:
            if self._stopping:
                raise ShuttingDown("the server is shutting down and accepts no new requests")
            if len(self._queue) >= self.max_queue:
                if self.metrics is not None:
                    self.metrics.rejected.labels("queue_full").inc()
                raise QueueFull(self._retry_after(), self.max_queue)
            if job.seed is None:
                self._seed += 1
                job.seed = self._seed
            self._queue.append(job)
            self._set_depth()
            self._cond.notify()

    def cancel(self, job: Job) -> None:
        """Marks a job cancelled (timed out, client gone); a job still waiting leaves the queue at once."""
        job.cancelled.set()
        with self._cond:
            # A job already collected into a batch is not in the queue: the worker skips it from the next
            # chunk on.
            with contextlib.suppress(ValueError):
                self._queue.remove(job)
            self._set_depth()

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def _retry_after(self) -> int:
        batches_ahead = len(self._queue) / self.max_batch + 1
        return max(1, math.ceil(batches_ahead * self._batch_seconds))

    def _set_depth(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(len(self._queue))

    # -- worker side ---------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("Batcher.start called twice")
        self._thread = threading.Thread(target=self._loop, name="batcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> bool:
        """Refuses new jobs, finishes the queued and running ones, and joins the worker.

        Returns False when the worker was still busy after `timeout` seconds.
        """
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _loop(self) -> None:
        while True:
            jobs = self._collect()
            if jobs is None:
                return
            if jobs:
                self._run(jobs)

    def _collect(self) -> list[Job] | None:
        """Blocks for the first job, then gathers up to max_batch rows for at most wait_s (None: stop)."""
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if not self._queue:
                return None  # stopping, and nothing left to drain
            deadline = time.monotonic() + self.wait_s
            while not self._stopping and sum(j.rows for j in self._queue) < self.max_batch:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            jobs: list[Job] = []
            rows = 0
            # First come, first served: stop at the first job that does not fit, so none is overtaken.
            while self._queue and rows + self._queue[0].rows <= self.max_batch:
                job = self._queue.popleft()
                if not job.cancelled.is_set():
                    jobs.append(job)
                    rows += job.rows
            self._set_depth()
            return jobs

    def _run(self, jobs: list[Job]) -> None:
        """Runs a batch; when it fails, its unfinished jobs run again one by one, so that a job that makes
        the batch fail fails alone. Per-job keys make the rerun give the same tokens, and updates are
        cumulative, so a client that already had part of its answer sees it continue, not restart."""
        failed, error = self._run_batch(jobs)
        if len(jobs) > 1 and failed:
            log.warning("re-running %d unfinished job(s) of a failed batch one at a time", len(failed))
            for job in failed:
                if not job.cancelled.is_set():
                    self._run([job])
            return
        for job in failed:
            _deliver(job, Update(error=error))

    def _run_batch(self, jobs: list[Job]) -> tuple[list[Job], str]:
        """One batch through the runner; returns the jobs it failed to finish and the error's message."""
        start = time.monotonic()
        active = set(range(len(jobs)))
        generated = 0
        failed: list[Job] = []
        error = ""
        if self.metrics is not None:
            self.metrics.batch_size.observe(sum(j.rows for j in jobs))
            self.metrics.prompt_tokens.inc(sum(len(p) for j in jobs for p in j.prompts))
        updates: Iterator[list[tuple[RowState, ...]]] | None = None
        try:
            updates = self.runner.run(jobs)
            for states in updates:
                for i in list(active):
                    job, rows = jobs[i], states[i]
                    if job.cancelled.is_set():
                        active.discard(i)
                        continue
                    news = _news(job.delivered, rows)
                    if news is None:  # a rerun that disagrees with what the client already has
                        active.discard(i)
                        _deliver(job, Update(error="generation failed and its retry gave different tokens"))
                        continue
                    if not news:
                        continue  # nothing new for this job in this chunk
                    first = not any(r.token_ids for r in job.delivered) and any(r.token_ids for r in rows)
                    if first and self.metrics is not None:
                        self.metrics.ttft.observe(time.monotonic() - job.enqueued_at)
                    if all(r.done for r in rows):
                        active.discard(i)
                        generated += sum(len(r.token_ids) for r in rows)
                    job.delivered = rows
                    _deliver(job, Update(rows=rows))
                if not active:
                    break  # every job is answered or gone: stop decoding this batch
            for i in active:  # the sampler stopped without finishing them: say so instead of hanging
                _deliver(jobs[i], Update(error="generation ended before the request was complete"))
        except Exception as e:
            log.exception("batch of %d jobs failed", len(jobs))
            failed = [jobs[i] for i in sorted(active)]
            error = f"generation failed: {type(e).__name__}: {e}"
        finally:
            updates_close = getattr(updates, "close", None)
            if updates_close is not None:
                updates_close()
        self._account(start, generated)
        return failed, error

    def _account(self, start: float, generated: int) -> None:
        seconds = time.monotonic() - start
        self.batches_run += 1
        self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * seconds
        if self.metrics is not None:
            self.metrics.batch_duration.observe(seconds)
            self.metrics.generated_tokens.inc(generated)
            self.metrics.tokens_per_second.set(generated / seconds if seconds > 0 else 0.0)


def _news(before: tuple[RowState, ...], rows: tuple[RowState, ...]) -> bool | None:
    """Whether `rows` tell the client something new: True when they extend what it had (or it had
    nothing), False when they add nothing (a chunk without progress, or a rerun still catching up), None
    when they contradict it."""
    if not before:
        return True
    for old, new in zip(before, rows, strict=True):
        shorter = min(len(old.token_ids), len(new.token_ids))
        if old.token_ids[:shorter] != new.token_ids[:shorter]:
            return None
    pairs = zip(before, rows, strict=True)
    return any(len(n.token_ids) > len(o.token_ids) or (n.done and not o.done) for o, n in pairs)


def _deliver(job: Job, update: Update) -> None:
    """Hands an update to a job's consumer; a consumer that is gone (loop closed) is not our failure."""
    try:
        job.deliver(update)
    except Exception:
        log.warning("could not deliver an update (client gone?)", exc_info=True)
        job.cancelled.set()
