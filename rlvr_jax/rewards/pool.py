"""Scoring in a pool of worker processes, overlapped with device work, that survives faulty rewards.

Pure-Python verifiers (math-verify's sympy, regex parsing) hold the GIL: in threads they run one at a
time. `RewardPool` splits a batch into chunks and scores them in separate processes, returning a Future
so the trainer can start the next device step while the host scores the last one. Workers start with
the "spawn" method: forking a process that has initialised JAX is unsafe. This package's rewards are
passed by registered name, and each worker imports the registry once. Any other reward function (and the
parts of a `weighted_sum` registered outside this package) travels pickled by cloudpickle: by reference
when the workers can import its module, by value when they cannot (defined in a notebook, in a script's
`__main__`, a lambda or a closure). The workers never import the parent's `__main__`: spawn would run a
script's top-level code again in every worker (a whole training run, in a script without an
`if __name__ == "__main__":` guard), and nothing there is needed once such functions travel by value.
A reward that cannot be loaded in a worker (its module does not import there) fails like a reward that
raises, with the worker's error in the message.

Faults. A reward is arbitrary code; it can raise, loop forever or kill its process (a segfault in a C
extension, `os._exit`, the OOM killer). `concurrent.futures.ProcessPoolExecutor` can do nothing about a
hung task and turns one dead worker into a broken pool, so the pool manages its processes itself: one
dispatcher thread hands chunks to idle workers over pipes and watches their results, their exit and a
deadline (`timeout_s` per chunk). A hung worker is killed, a dead one replaced. What the batch then gets
is `on_error`'s choice:
  "fail"  the batch's Future raises `RewardError`, naming the reward, the samples and the exception (the
          worker's traceback is chained as its cause): a bug in a reward stops the run where it shows.
  "zero"  the failed chunk is scored again one sample per task, to find the culprits; each sample that
          still fails scores 0 with the reason "reward error: ..." and one warning per batch is logged.
Either way the trainer never waits forever: every chunk ends with a result, an error or its deadline.

Workers ignore SIGINT and SIGTERM. Ctrl-C, `timeout` and most schedulers signal the whole process group;
a worker that died of it would fail the step the trainer is at that moment finishing to save a checkpoint
(`checkpointing.PreemptionHandler`). The parent owns shutdown: `close()` (also run at exit) ends them.
And they die with the parent when it is killed outright (kill -9, the OOM killer), rather than live on
as orphans holding their memory: on Linux the kernel sends them SIGKILL when the dispatcher thread that
started them ends (prctl PR_SET_PDEATHSIG; they are started by the dispatcher, which lives as long as
the pool), and everywhere a watchdog thread in each worker exits when its parent process changes.

Code rewards already run every program in its own sandboxed subprocess from a thread pool; they gain
nothing from this pool, and `submit` sends them to `sandbox.score_async` instead.
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures as cf
import contextlib
import ctypes
import dataclasses
import itertools
import logging
import math
import multiprocessing
import multiprocessing.connection
import multiprocessing.reduction
import multiprocessing.spawn
import multiprocessing.util  # registers its exit handler first, so ours (below) runs before it
import os
import re
import signal
import socket
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from rlvr_jax.rewards.base import RewardResult

log = logging.getLogger(__name__)

# Rewards whose work already happens in subprocesses (the sandbox); scoring them in a thread is enough.
_SUBPROCESS_REWARDS = ("code_humaneval", "code_mbpp")
ON_ERROR = ("fail", "zero")
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_WATCHDOG_INTERVAL_S = 0.25
_PARENT_DEATH = ("pdeathsig", "watchdog")  # how workers notice (tests check each alone)
_WORKER_NAME = "reward-worker"
_LOADED_CACHE = 16  # rewards a worker keeps unpickled (a by-value function is unpickled once, not per chunk)


class RewardError(RuntimeError):
    """A reward raised, hung or killed its worker while `on_error="fail"`; the message says which reward,
    which samples and what happened. The worker's traceback, when there is one, is its `__cause__`."""


class _RemoteTraceback(Exception):
    """The traceback text of an exception raised in a worker process."""

    def __str__(self) -> str:
        return f"\n{self.args[0]}" if self.args else ""


# ------------------------------------------------------------------------------------------------ worker


def _outside_package(fn: Callable[..., Any]) -> bool:
    """A reward the workers' own registry lacks: it must travel to them (pickled, see `_dumps`)."""
    return not (getattr(fn, "__module__", None) or "").startswith("rlvr_jax.")


def _dumps(reward: str | Callable[..., RewardResult], components: Mapping[str, Callable[..., Any]]) -> bytes:
    """A reward and the outside components of a weighted sum as bytes a worker can load with pickle:
    cloudpickle sends what the worker can import by reference and everything else by value."""
    import cloudpickle

    return cloudpickle.dumps((reward, dict(components)))


_loaded: dict[bytes, tuple] = {}


def _loads(blob: bytes) -> tuple:
    """`_dumps`'s (reward, components), unpickled once per worker."""
    if blob not in _loaded:
        import pickle

        if len(_loaded) >= _LOADED_CACHE:
            _loaded.clear()
        _loaded[blob] = pickle.loads(blob)
    return _loaded[blob]


def _skip_main_in_workers() -> None:
    """Reward workers start without importing the parent's `__main__` (module docstring). spawn asks
    `get_preparation_data(process name)` what the child imports; for processes named `_WORKER_NAME` the
    answer leaves the main module out. Other processes are untouched. Idempotent."""
    original = multiprocessing.spawn.get_preparation_data
    if getattr(original, "_skips_reward_workers_main", False):
        return

    def get_preparation_data(name: str) -> dict[str, Any]:
        data = original(name)
        if name == _WORKER_NAME:
            data.pop("init_main_from_path", None)
            data.pop("init_main_from_name", None)
        return data

    get_preparation_data._skips_reward_workers_main = True  # type: ignore[attr-defined]
    multiprocessing.spawn.get_preparation_data = get_preparation_data


class _NotARewardResult(TypeError):
    """A reward function returned something else than a RewardResult; the message says what."""


def _ignore_interrupts() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _die_with_parent(parent_pid: int, mechanisms: Sequence[str]) -> None:
    """Makes this worker end when `parent_pid` does, however the parent ends (see the module docstring)."""
    if "pdeathsig" in mechanisms and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watchdog below still covers it
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        os._exit(1)
    if "watchdog" not in mechanisms:
        return

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(_WATCHDOG_INTERVAL_S)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _score_chunk(
    reward: str | bytes, completions: list[Any], samples: list[Mapping[str, Any]], options: dict
) -> tuple:
    """Scores one chunk in a worker. `reward`: a name registered by this package, or `_dumps` bytes."""
    components: Mapping[str, Callable[..., RewardResult]] = {}
    if isinstance(reward, bytes):
        reward, components = _loads(reward)
    if isinstance(reward, str):
        import rlvr_jax.rewards  # noqa: F401  (registers every reward in this worker)
        from rlvr_jax.rewards.base import REWARDS, get_reward

        for name, fn in components.items():  # rewards registered outside this package
            if name not in REWARDS or REWARDS.get(name) is not fn:
                REWARDS.register(name, fn)  # the parent's registration (a re-defined function replaces)
        reward = get_reward(reward)
    result = reward(completions, samples, **options)
    if not isinstance(result, RewardResult):
        raise _NotARewardResult(
            f"returned a {type(result).__name__}, not a RewardResult(scores, reasons); a function "
            "fn(prompts, completions, **columns) -> list[float] is adapted when passed by itself (not "
            "registered by name): see rlvr_jax.rewards.callables"
        )
    return result.scores, result.reasons


def _worker(
    conn: multiprocessing.connection.Connection, parent_pid: int, parent_death: Sequence[str]
) -> None:
    """A worker process: scores the chunks it receives until it receives None or its parent is gone."""
    _ignore_interrupts()
    _die_with_parent(parent_pid, parent_death)
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        try:
            scores, reasons = _score_chunk(*task)
            reply: tuple = ("ok", np.asarray(scores, np.float32), [str(r) for r in reasons])
        except _NotARewardResult as e:
            reply = ("error", str(e), "")
        except BaseException as e:  # a reward's bug, even SystemExit, is reported, not fatal to the worker
            reply = ("error", f"raised {type(e).__name__}: {str(e)[:500]}", traceback.format_exc())
        try:
            conn.send(reply)
        except Exception as e:  # e.g. a reason that does not pickle
            conn.send(("error", f"returned a result that cannot be sent back ({type(e).__name__}: {e})", ""))


# -------------------------------------------------------------------------------------------------- pool


@dataclasses.dataclass(eq=False)
class _Batch:
    """One `submit` call: the inputs, the scores filled in as chunks finish, and its Future."""

    future: cf.Future
    label: str  # the reward's name, for messages
    reward: str | bytes  # a name registered by this package, or `_dumps` bytes
    completions: list[Any]
    samples: list[Mapping[str, Any]]
    options: dict
    lengths: list[Any] | None
    source: str | None  # the reward function's file (`_where`)
    scores: np.ndarray
    reasons: list[str]
    pending: int = 0  # tasks not finished
    failures: list[str] = dataclasses.field(default_factory=list)
    failed: bool = False

    def payload(self, lo: int, hi: int) -> tuple:
        options = dict(self.options)
        if self.lengths is not None:
            options["lengths"] = list(self.lengths[lo:hi])
        return (self.reward, self.completions[lo:hi], self.samples[lo:hi], options)

    def rows(self, lo: int, hi: int) -> str:
        if hi - lo == 1:
            sample_id = self.samples[lo].get("id") if isinstance(self.samples[lo], Mapping) else None
            return f"sample {lo}" + (f" (id {sample_id})" if sample_id is not None else "")
        return f"{hi - lo} samples (rows {lo}-{hi - 1} of {len(self.samples)})"


@dataclasses.dataclass(eq=False)
class _Task:
    batch: _Batch
    lo: int
    hi: int


@dataclasses.dataclass(eq=False)
class _Worker:
    process: Any  # multiprocessing.Process (spawn context)
    conn: multiprocessing.connection.Connection
    task: _Task | None = None
    deadline: float = math.inf


def _where(worker_traceback: str, by_value_file: str | None = None) -> str:
    """' (at file.py:12 in f)' for the innermost frame of a worker's traceback text, or ''. Code sent by
    value has the file name "<dynamic-code>" there (cloudpickle drops it); `by_value_file` is the
    reward function's own file, named instead."""
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', worker_traceback)
    if not frames:
        return ""
    path, line, function = frames[-1]
    if path == "<dynamic-code>" and by_value_file:
        path = by_value_file
    return f" (at {os.path.basename(path)}:{line} in {function})"


def _source_file(reward: str | Callable[..., Any]) -> str | None:
    """The file that defines a reward function (a registered one's; the function a TRLReward wraps)."""
    if isinstance(reward, str):
        from rlvr_jax.rewards.base import REWARDS

        reward = REWARDS.get(reward) if reward in REWARDS else None
    code = getattr(getattr(reward, "fn", reward), "__code__", None)
    return getattr(code, "co_filename", None)


def _exit_text(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit status {exitcode}"


def _reference(reward: str | Callable[..., RewardResult], options: Mapping[str, Any]) -> str | bytes:
    """What a worker is sent for `reward`: this package's reward as its registered name; any other
    function pickled (`_dumps`), and so a combination (weighted_sum) whose parts it looks up by name in
    the worker, with the parts registered outside this package."""
    from rlvr_jax.rewards.base import get_reward

    if not isinstance(reward, str):
        return _dumps(reward, {})
    fn = get_reward(reward)
    parts = {name: get_reward(name) for name in options.get("components") or {}}
    outside = {name: part for name, part in parts.items() if _outside_package(part)}
    if _outside_package(fn) or outside:
        return _dumps(fn if _outside_package(fn) else reward, outside)
    return reward


_live_pools: weakref.WeakSet[RewardPool] = weakref.WeakSet()


@atexit.register
def _close_live_pools() -> None:
    for pool in list(_live_pools):
        pool.close()


class RewardPool:
    """A process pool for host-side reward scoring. Use as a context manager or call `close()`.

    Args:
      workers: worker processes (default: one per CPU core); started when first needed.
      min_chunk: the fewest samples worth a chunk of their own.
      timeout_s: the longest one worker may spend on one chunk before it is killed (None: no limit).
      on_error: "fail" or "zero": what a chunk that raised, hung or killed its worker does to its batch
        (module docstring).
    """

    def __init__(
        self,
        workers: int | None = None,
        min_chunk: int = 32,
        *,
        timeout_s: float | None = 120.0,
        on_error: str = "fail",
    ):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
        if timeout_s is not None and not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0 (or None: no limit), got {timeout_s}")
        self.workers = workers or max(1, (os.cpu_count() or 1))
        self.min_chunk = min_chunk
        self.timeout_s = timeout_s
        self.on_error = on_error
        self._context = multiprocessing.get_context("spawn")
        _skip_main_in_workers()
        self._lock = threading.Lock()
        self._inbox: collections.deque[_Task] = collections.deque()  # from submit, under the lock
        self._closing = False
        self._stopped = "the reward pool is closed"  # what a submit after that raises
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        # Dispatcher state, touched only by its thread.
        self._queue: collections.deque[_Task] = collections.deque()
        self._idle: list[_Worker] = []
        self._busy: list[_Worker] = []
        self._thread = threading.Thread(target=self._run, name="reward-pool", daemon=True)
        self._thread.start()
        _live_pools.add(self)

    # ------------------------------------------------------------------------------------------- public

    def submit(
        self,
        reward: str | Callable[..., RewardResult],
        completions: Sequence[Any],
        samples: Sequence[Mapping[str, Any]],
        **options: Any,
    ) -> cf.Future:
        """Scores the batch in the background; the Future yields a RewardResult in input order.

        `reward` is a registered name or a reward function (one the workers cannot import travels by
        value: module docstring). With on_error="fail" the Future raises `RewardError` when the reward
        fails on any chunk; a reward that cannot be pickled fails its Future that way, whatever on_error.
        """
        if len(completions) != len(samples):
            raise ValueError(f"{len(completions)} completions for {len(samples)} samples")
        if isinstance(reward, str) and reward in _SUBPROCESS_REWARDS:
            from rlvr_jax.rewards.sandbox import score_async

            return score_async(reward, completions, samples, **options)
        label = reward if isinstance(reward, str) else getattr(reward, "__name__", repr(reward))
        n = len(completions)
        lengths = options.pop("lengths", None)
        batch = _Batch(
            future=cf.Future(),
            label=label,
            reward="",
            completions=list(completions),
            samples=list(samples),
            options=options,
            lengths=None if lengths is None else list(lengths),
            source=_source_file(reward),
            scores=np.zeros((n,), np.float32),
            reasons=[""] * n,
        )
        try:
            batch.reward = _reference(reward, options)
        except Exception as e:  # pickled here, once per batch, so that the error names the reward
            batch.future.set_exception(
                RewardError(
                    f"reward {label!r} could not be sent to a worker ({type(e).__name__}: {e}); rewards run "
                    "in worker processes, so a reward function and what it uses must pickle (cloudpickle): "
                    "create what does not (an open file, a lock, a client) inside the function"
                )
            )
            return batch.future
        if n == 0:
            batch.future.set_result(RewardResult(batch.scores, []))
            return batch.future
        chunks = max(1, min(self.workers, n // self.min_chunk))
        bounds = np.linspace(0, n, chunks + 1).astype(int)
        tasks = [_Task(batch, int(lo), int(hi)) for lo, hi in itertools.pairwise(bounds)]
        batch.pending = len(tasks)
        with self._lock:
            if self._closing:
                raise RuntimeError(self._stopped)
            self._inbox.extend(tasks)
        self._wake()
        return batch.future

    def worker_pids(self) -> list[int]:
        """Process ids of the live worker processes (for monitoring, and tests)."""
        return [w.process.pid for w in list(self._idle) + list(self._busy) if w.process.pid is not None]

    def close(self) -> None:
        """Stops the workers (a chunk still running is abandoned, its batch fails) and the dispatcher."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
        self._wake()
        self._thread.join()
        self._wake_r.close()
        self._wake_w.close()
        _live_pools.discard(self)

    def __enter__(self) -> RewardPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --------------------------------------------------------------------------------------- dispatcher

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # a full buffer: the dispatcher is awake anyway
            self._wake_w.send(b"x")

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    self._queue.extend(self._inbox)
                    self._inbox.clear()
                    closing = self._closing
                if closing:
                    break
                self._dispatch()
                self._collect()
        except BaseException as e:  # a bug here must not leave callers waiting on their Futures
            log.exception("the reward pool's dispatcher failed")
            with self._lock:
                self._closing = True  # later submits raise instead of waiting for a dispatcher
                self._stopped = f"the reward pool's dispatcher failed ({e!r})"
            self._fail_everything(RuntimeError(self._stopped))
        else:
            self._fail_everything(RuntimeError("the reward pool was closed before this batch was scored"))
        finally:
            self._stop_workers()

    def _dispatch(self) -> None:
        """Starts queued tasks on idle workers, starting workers (up to `workers`) as needed."""
        while self._queue:
            task = self._queue[0]
            if task.batch.failed:  # its batch already failed: nothing to score
                self._queue.popleft()
                continue
            if not self._idle:
                if len(self._busy) >= self.workers:
                    return
                self._idle.append(self._start_worker())
            self._queue.popleft()
            try:  # pickled here, so that a payload that does not pickle fails its task, not the worker
                data = multiprocessing.reduction.ForkingPickler.dumps(task.batch.payload(task.lo, task.hi))
            except Exception as e:
                self._failed(task, f"could not be sent to a worker ({type(e).__name__}: {e})", "")
                continue
            worker = self._idle.pop()
            try:
                worker.conn.send_bytes(data)
            except OSError:  # the worker died while idle: replace it and try again
                self._retire(worker, kill=True)
                self._queue.appendleft(task)
                continue
            worker.task = task
            worker.deadline = time.monotonic() + (self.timeout_s or math.inf)
            self._busy.append(worker)

    def _collect(self) -> None:
        """Waits for a result, a worker's exit, a deadline or a new submission, and handles each."""
        timeout = None
        if self._busy:
            nearest = min(w.deadline for w in self._busy)
            timeout = None if math.isinf(nearest) else max(0.0, nearest - time.monotonic())
        watched: list[Any] = [self._wake_r]
        for w in self._busy:
            watched += [w.conn, w.process.sentinel]
        ready = set(multiprocessing.connection.wait(watched, timeout))
        if self._wake_r in ready:
            try:
                while self._wake_r.recv(4096):
                    pass
            except (BlockingIOError, OSError):
                pass
        now = time.monotonic()
        for worker in list(self._busy):
            task = worker.task
            assert task is not None
            if worker.conn in ready or worker.process.sentinel in ready:
                try:
                    reply = worker.conn.recv() if worker.conn.poll() else None
                except (EOFError, OSError):
                    reply = None
                except Exception as e:  # a reply that does not unpickle here
                    reply = ("error", f"returned a result that cannot be read ({type(e).__name__}: {e})", "")
                if reply is None:  # the process ended without answering
                    worker.process.join(timeout=5)
                    how = _exit_text(worker.process.exitcode)
                    self._busy.remove(worker)
                    self._retire(worker, kill=True)
                    self._failed(task, f"killed its worker process ({how})", "")
                    continue
                self._busy.remove(worker)
                worker.task, worker.deadline = None, math.inf
                self._idle.append(worker)
                self._finished(task, reply)
            elif now >= worker.deadline:
                self._busy.remove(worker)
                self._retire(worker, kill=True)
                what = f"did not finish within reward.timeout_s={self.timeout_s:g} s (its worker was killed)"
                self._failed(task, what, "")

    def _start_worker(self) -> _Worker:
        ours, theirs = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=_worker, args=(theirs, os.getpid(), _PARENT_DEATH), name=_WORKER_NAME, daemon=False
        )
        process.start()
        theirs.close()
        return _Worker(process, ours)

    def _retire(self, worker: _Worker, *, kill: bool) -> None:
        if kill and worker.process.is_alive():
            worker.process.kill()
        worker.process.join(timeout=5)
        worker.conn.close()
        if worker in self._idle:
            self._idle.remove(worker)

    def _stop_workers(self) -> None:
        for worker in self._idle:
            with contextlib.suppress(OSError):
                worker.conn.send(None)
        deadline = time.monotonic() + 2.0
        for worker in self._idle:
            worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
        for worker in [*self._idle, *self._busy]:
            if worker.process.is_alive():
                worker.process.kill()
            worker.process.join(timeout=5)
            worker.conn.close()
        self._idle.clear()
        self._busy.clear()

    # ------------------------------------------------------------------------------------------ results

    def _finished(self, task: _Task, reply: tuple) -> None:
        batch = task.batch
        if reply[0] == "ok":
            scores, reasons = reply[1], reply[2]
            size = task.hi - task.lo
            if len(scores) == size and len(reasons) == size:
                batch.scores[task.lo : task.hi] = scores
                batch.reasons[task.lo : task.hi] = reasons
                self._done_one(batch)
                return
            what = f"returned {len(scores)} scores and {len(reasons)} reasons for {size} samples"
            self._failed(task, what, "")
            return
        self._failed(task, reply[1], reply[2])

    def _failed(self, task: _Task, what: str, worker_traceback: str) -> None:
        """Applies `on_error` to a task that raised, hung or lost its worker."""
        batch = task.batch
        if batch.failed:
            return
        if self.on_error == "fail":
            batch.failed = True
            error = RewardError(
                f"reward {batch.label!r} {what}{_where(worker_traceback, batch.source)} while scoring "
                f"{batch.rows(task.lo, task.hi)}; reward.on_error='zero' scores such samples 0 and goes on"
            )
            if worker_traceback:
                error.__cause__ = _RemoteTraceback(worker_traceback)
            batch.future.set_exception(error)
            return
        if task.hi - task.lo > 1:  # find the samples at fault: each alone, ahead of other work
            singles = [_Task(batch, i, i + 1) for i in range(task.lo, task.hi)]
            self._queue.extendleft(reversed(singles))
            batch.pending += len(singles) - 1
            return
        batch.scores[task.lo] = 0.0
        batch.reasons[task.lo] = f"reward error: {what}{_where(worker_traceback, batch.source)}"
        batch.failures.append(f"{batch.rows(task.lo, task.hi)} {what}")
        self._done_one(batch)

    def _done_one(self, batch: _Batch) -> None:
        batch.pending -= 1
        if batch.pending or batch.failed:
            return
        if batch.failures:
            shown = "; ".join(batch.failures[:3]) + ("; ..." if len(batch.failures) > 3 else "")
            log.warning(
                "reward %r failed on %d of %d samples, scored 0 (reward.on_error='zero'): %s",
                batch.label,
                len(batch.failures),
                len(batch.samples),
                shown,
            )
        batch.future.set_result(RewardResult(batch.scores, batch.reasons))

    def _fail_everything(self, error: BaseException) -> None:
        with self._lock:
            queued = [*self._queue, *self._inbox]
            self._inbox.clear()
        pending = {id(t.batch): t.batch for t in queued}
        pending |= {id(w.task.batch): w.task.batch for w in self._busy if w.task is not None}
        for batch in pending.values():
            if not batch.future.done():
                batch.failed = True
                batch.future.set_exception(error)
        self._queue.clear()
