"""Continuous batching: the bounded queue of `serving.batcher` in front of a slot scheduler.

With static batches a request that arrives while a batch decodes waits for the whole batch, so latency
under load grows with the longest answer in flight. Here the worker thread owns `ContinuousEngine`'s S
decode slots and, between device calls:
- admits queued jobs into free slots (first come, first served; a job's rows all at once), prefilled in
  prompt-bucket groups;
- dispatches one decode call that advances every slot in use by up to `stream_chunk_tokens` tokens;
- reads the previous call's tokens while that decode runs (`overlap`: one call in flight, so the device
  does not wait for the host's bookkeeping), streams each job its rows, and frees the slot of every row
  that ended (stop token, max_tokens) and of every job cancelled (timeout, client gone, a stop string).
Overlap has a price: a request that arrives is prefilled behind the call already queued, so its first
token comes up to one decode call later. It pays on an accelerator, where the host's work per call (a few
ms for hundreds of rows) would otherwise leave the device idle; on a CPU backend host and "device" share
the same cores, nothing overlaps, and it is off by default.
Every row reports its tokens' log-probs, and the top alternatives when its job asks (decode calls then
compute them: a static switch). A job that asks for its prompt's log-probs (`echo`) is scored by the
engine's `PromptScorer` before it is admitted; one with max_tokens 0 is then answered without a slot.
The queue, its limit (429 with Retry-After), the per-job checks, the seeds and the drain at shutdown are
the static batcher's. When the server is idle the first admission waits up to `wait_s` for company, as a
static batch does; once slots are busy a request joins at the next call.

Failures: a job whose prefill raises before anything reaches the device (a prompt no int32 holds) is
retried alone, so it fails alone. A call that fails on the device leaves the slots' state unusable (it was
donated): every running job gets the error and the slots start empty.
"""

from __future__ import annotations

import collections
import dataclasses
import heapq
import logging
import math
import time
from typing import Any, NamedTuple

import jax
import numpy as np

from rlvr_jax.generate.sampler import bucket
from rlvr_jax.serving.batcher import Batcher, Job, RowState, TopLogprobs, Update, _deliver
from rlvr_jax.serving.engine import _prompt_fields, _scored_rows
from rlvr_jax.serving.metrics import ServerMetrics
from rlvr_jax.serving.slot_engine import ContinuousEngine, NewRow

log = logging.getLogger(__name__)


_FAILED = object()  # a job whose prompt could not be scored (it has had its error)


def _slots_needed(job: Job) -> int:
    """Slots a job takes: one per row, none when it only scores its prompt (max_tokens 0)."""
    return job.rows if job.max_tokens > 0 else 0


class SlotEvent(NamedTuple):
    """One entry of the scheduler's log: at decode call `call` (calls dispatched so far), `job` was
    admitted into `slot`, one of its rows finished there, or a cancelled job released it."""

    call: int
    kind: str  # "admit" | "finish" | "release"
    job: Job
    slot: int


@dataclasses.dataclass(eq=False)
class _Row:
    """One choice of a running job, in its slot, with what it generated so far."""

    job: Job
    choice: int
    slot: int
    tokens: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[float] = dataclasses.field(default_factory=list)
    top: list[TopLogprobs] = dataclasses.field(default_factory=list)
    stop_token: bool = False
    done: bool = False
    prompt: dict[str, tuple] = dataclasses.field(default_factory=dict)  # its prompt's scores, when asked

    def state(self) -> RowState:
        return RowState(
            token_ids=tuple(self.tokens), stop_token=self.stop_token, done=self.done,
            logprobs=tuple(self.logprobs), top_logprobs=tuple(self.top), **self.prompt,
        )  # fmt: skip


@dataclasses.dataclass(eq=False)
class _Running:
    job: Job
    rows: list[_Row]
    admitted: float


@dataclasses.dataclass(eq=False)
class _Call:
    """A dispatched device call whose tokens have not been read: output row i belongs to rows[i]."""

    out: Any  # slots.Emitted of device arrays
    rows: list[_Row | None]
    decode: bool
    dispatched: float
    index: int  # decode calls dispatched up to and including this one


class ContinuousBatcher(Batcher):
    """`Batcher`'s queue with a worker that schedules rows into `engine`'s slots (see the module doc)."""

    def __init__(
        self,
        engine: ContinuousEngine,
        *,
        max_queue: int,
        wait_s: float,
        seed: int = 0,
        metrics: ServerMetrics | None = None,
        log_events: int = 4096,
        overlap: bool | None = None,
    ):
        super().__init__(
            engine, max_batch=engine.slots, max_queue=max_queue, wait_s=wait_s, seed=seed, metrics=metrics
        )
        self.engine = engine
        self.stop_ids = engine.stop_ids
        self.overlap = jax.default_backend() != "cpu" if overlap is None else overlap
        self._free = list(range(engine.slots))  # a heap: the lowest free slot first keeps the prefix short
        self._slots: list[_Row | None] = [None] * engine.slots
        self._running: dict[Job, _Running] = {}
        self._pending: collections.deque[_Call] = collections.deque()
        self._last_read = time.monotonic()
        self._row_seconds = 1.0  # running mean of a job's time in the slots, for Retry-After
        self.decode_calls = 0
        self.events: collections.deque[SlotEvent] = collections.deque(maxlen=log_events)
        if metrics is not None:
            metrics.slots.set(engine.slots)

    # -- the queue ------------------------------------------------------------------------------------------
    def _retry_after(self) -> int:
        rows_ahead = sum(_slots_needed(j) for j in self._queue)
        return max(1, math.ceil((rows_ahead / self.engine.slots + 1) * self._row_seconds))

    @property
    def busy(self) -> bool:
        """Rows in the slots, or device calls not read yet."""
        return bool(self._running or self._pending)

    def _take(self) -> list[Job] | None:
        """Jobs to admit now (possibly none); None once stopping with nothing queued or running. Blocks only
        when idle: for the first job, then up to wait_s for the slots to fill."""
        with self._cond:
            while not self._queue and not self._stopping and not self.busy:
                self._cond.wait()
            if not self._queue:
                return None if self._stopping and not self.busy else []
            if not self.busy:
                deadline = time.monotonic() + self.wait_s
                while not self._stopping and sum(_slots_needed(j) for j in self._queue) < len(self._free):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
            jobs: list[Job] = []
            free = len(self._free)
            # First come, first served: stop at the first job that does not fit, so none is overtaken.
            while self._queue and _slots_needed(self._queue[0]) <= free:
                job = self._queue.popleft()
                if not job.cancelled.is_set():
                    jobs.append(job)
                    free -= _slots_needed(job)
            self._set_depth()
            return jobs

    # -- the worker -----------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            self._release_cancelled()  # first, so that their slots take queued jobs at once
            jobs = self._take()
            if jobs is None:
                return
            try:
                self._admit(jobs)
                # Read every call but (with overlap) a decode just dispatched: the device runs it meanwhile.
                keep = 1 if self._dispatch_decode() and self.overlap else 0
                while len(self._pending) > keep:
                    self._read(self._pending.popleft())
            except Exception as e:  # a device call failed: the slots' state is gone with it
                log.exception("a device call failed; failing the %d running job(s)", len(self._running))
                self._fail_all(f"generation failed: {type(e).__name__}: {e}")

    def _release_cancelled(self) -> None:
        for running in [r for r in self._running.values() if r.job.cancelled.is_set()]:
            self._finish_job(running, "release")

    def _admit(self, jobs: list[Job]) -> None:
        """Puts the jobs' rows into free slots and dispatches their prefills, one call per prompt bucket
        (split at the largest batch bucket). A group whose prefill raises is retried job by job. Prompts
        are scored first for the jobs that ask; a job that generates nothing is answered then."""
        scores = self._prompt_scores(jobs)
        groups: dict[int, list[tuple[_Row, NewRow]]] = collections.defaultdict(list)
        for job in jobs:
            job_scores = scores.get(job)
            if job_scores is _FAILED:
                continue
            if self.metrics is not None:
                self.metrics.prompt_tokens.inc(sum(len(p) for p in job.prompts))
            if job.max_tokens == 0:
                job.delivered = _scored_rows(job, job_scores)
                _deliver(job, Update(rows=job.delivered))
                continue
            running = _Running(job, [], time.monotonic())
            self._running[job] = running
            for choice, prompt in enumerate(job.prompts):
                slot = heapq.heappop(self._free)
                fields = _prompt_fields(job, job_scores[choice] if job_scores else None)
                row = _Row(job, choice, slot, prompt=fields)
                self._slots[slot] = row
                running.rows.append(row)
                self.events.append(SlotEvent(self.decode_calls, "admit", job, slot))
                new = NewRow(
                    prompt, slot, job.seed or 0, choice, job.temperature, job.top_k, job.top_p, job.max_tokens
                )
                groups[bucket(len(prompt), self.engine.config.prompt_buckets)].append((row, new))
        self._set_active()
        largest = self.engine.config.batch_buckets[-1]
        for group in groups.values():
            for start in range(0, len(group), largest):
                self._prefill(group[start : start + largest])

    def _prompt_scores(self, jobs: list[Job]) -> dict[Job, Any]:
        """Per job that asks, its rows' prompt scores (one forward pass for all of them; when that raises,
        one per job, and a job whose own scoring fails gets the error and is marked _FAILED)."""
        asking = [job for job in jobs if job.prompt_logprobs]
        if not asking:
            return {}
        try:
            flat = iter(self.engine.scorer.score([p for job in asking for p in job.prompts]))
            return {job: [next(flat) for _ in job.prompts] for job in asking}
        except Exception as e:
            if len(asking) == 1:
                log.warning("scoring a prompt failed: %s", e)
                _deliver(asking[0], Update(error=f"generation failed: {type(e).__name__}: {e}"))
                return {asking[0]: _FAILED}
            out: dict[Job, Any] = {}
            for job in asking:
                out.update(self._prompt_scores([job]))
            return out

    def _prefill(self, group: list[tuple[_Row, NewRow]]) -> None:
        rows = [row for row, _ in group if not row.job.cancelled.is_set()]
        if not rows:
            return
        try:
            out = self.engine.admit([new for row, new in group if row in rows])
        except Exception as e:
            if self.engine.broken():
                raise
            jobs = list(dict.fromkeys(row.job for row in rows))
            if len(jobs) == 1:
                log.warning("a prefill failed: %s", e)
                self._error(self._running[jobs[0]], f"generation failed: {type(e).__name__}: {e}")
                return
            log.warning("re-running the prefills of %d job(s) one at a time after: %s", len(jobs), e)
            for job in jobs:
                self._prefill([(row, new) for row, new in group if row.job is job])
            return
        self._pending.append(_Call(out, list(rows), False, time.monotonic(), self.decode_calls))

    def _dispatch_decode(self) -> bool:
        """Dispatches a decode call over the slots in use, if any (returns whether it did)."""
        live_rows = [row for row in self._slots if row is not None and not row.done]
        if not live_rows:
            return False
        live = np.asarray([row is not None and not row.done for row in self._slots])
        prefix = self.engine.rows_bucket(max(row.slot for row in live_rows) + 1)
        top = any(row.job.top_logprobs > 0 for row in live_rows)
        prefix = self.engine.slots if top else prefix
        out = self.engine.decode(live, prefix, top)
        self.decode_calls += 1
        self._pending.append(_Call(out, self._slots[:prefix], True, time.monotonic(), self.decode_calls))
        if self.metrics is not None:
            self.metrics.batch_size.observe(len(live_rows))
        return True

    def _read(self, call: _Call) -> None:
        """Hands a finished call's tokens to their rows, streams the jobs, frees the slots of ended rows."""
        out = jax.device_get(call.out)
        now = time.monotonic()
        touched: dict[Job, _Running] = {}
        emitted = 0
        for i, row in enumerate(call.rows):
            if row is None or row.done or row.job not in self._running or row.job.cancelled.is_set():
                continue  # an empty slot, a row already over, or one whose job left
            k = row.job.top_logprobs
            steps = np.flatnonzero(out.emitted[i])
            for t in steps:
                token = int(out.tokens[i, t])
                row.tokens.append(token)
                row.logprobs.append(float(out.logprobs[i, t]))
                if k:
                    ids, lps = out.top_ids[i, t, :k].tolist(), out.top_logprobs[i, t, :k].tolist()
                    row.top.append(tuple(zip(ids, lps, strict=True)))
                emitted += 1
                row.stop_token = token in self.stop_ids
                if row.stop_token or len(row.tokens) >= row.job.max_tokens:
                    row.done = True
                    self._free_slot(row, "finish", call.index)
                    break
            if len(steps):
                touched[row.job] = self._running[row.job]
        for running in touched.values():
            self._deliver(running, now)
        if call.decode:
            self._account(call, now, emitted)

    def _deliver(self, running: _Running, now: float) -> None:
        job = running.job
        rows = tuple(row.state() for row in running.rows)
        if self.metrics is not None and not any(r.token_ids for r in job.delivered):
            self.metrics.ttft.observe(now - job.enqueued_at)
        job.delivered = rows
        _deliver(job, Update(rows=rows))
        if all(r.done for r in rows):
            self._finish_job(running, None)

    def _account(self, call: _Call, now: float, emitted: int) -> None:
        """Per decode call: its wall time (from dispatch, or from the last read if it queued behind one)
        and the tokens it generated for clients."""
        seconds = now - max(call.dispatched, self._last_read)
        self._last_read = now
        if self.metrics is not None:
            self.metrics.batch_duration.observe(seconds)
            self.metrics.generated_tokens.inc(emitted)
            self.metrics.tokens_per_second.set(emitted / seconds if seconds > 0 else 0.0)

    # -- slots ----------------------------------------------------------------------------------------------
    def _free_slot(self, row: _Row, kind: str, call: int | None = None) -> None:
        if self._slots[row.slot] is row:
            self._slots[row.slot] = None
            heapq.heappush(self._free, row.slot)
            call = self.decode_calls if call is None else call
            self.events.append(SlotEvent(call, kind, row.job, row.slot))

    def _finish_job(self, running: _Running, kind: str | None) -> None:
        """The job leaves: its rows still in slots are released (kind "release"); finished rows were
        freed as they ended."""
        for row in running.rows:
            if not row.done:
                row.done = True
                self._free_slot(row, kind or "release")
        self._running.pop(running.job, None)
        self._row_seconds = 0.8 * self._row_seconds + 0.2 * (time.monotonic() - running.admitted)
        self._set_active()

    def _error(self, running: _Running, message: str) -> None:
        self._finish_job(running, "release")
        _deliver(running.job, Update(error=message))

    def _fail_all(self, message: str) -> None:
        self._pending.clear()
        for running in list(self._running.values()):
            self._error(running, message)
        self.engine.reset()

    def _set_active(self) -> None:
        if self.metrics is not None:
            self.metrics.active_slots.set(self.engine.slots - len(self._free))
