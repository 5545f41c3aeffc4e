"""Scoring in a pool of worker processes, overlapped with device work.

Pure-Python verifiers (math-verify's sympy, regex parsing) hold the GIL: in threads they run one at a
time. `RewardPool` splits a batch into chunks and scores them in separate processes, returning a Future
so the trainer can start the next device step while the host scores the last one. Workers start with
the "spawn" method: forking a process that has initialised JAX is unsafe. Rewards are passed by
registered name (functions of this package pickle by reference too), and each worker imports the
registry once.

Workers ignore SIGINT and SIGTERM. Ctrl-C, `timeout` and most schedulers signal the whole process group;
a worker that died of it would break the pool under the trainer, which is at that moment finishing its
step to save a checkpoint (`checkpointing.PreemptionHandler`). The parent owns shutdown: `close()` ends
the workers, and they die with it if it is killed outright.

Code rewards already run every program in its own sandboxed subprocess from a thread pool; they gain
nothing from this pool, and `submit` sends them to `sandbox.score_async` instead.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import multiprocessing
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from rlvr_jax.rewards.base import RewardResult

# Rewards whose work already happens in subprocesses (the sandbox); scoring them in a thread is enough.
_SUBPROCESS_REWARDS = ("code_humaneval", "code_mbpp")


def _outside_package(fn: Callable[..., Any]) -> bool:
    """A reward the workers' own registry lacks: it must travel to them (as a reference to its module)."""
    return not getattr(fn, "__module__", "").startswith("rlvr_jax.")


def _ignore_interrupts() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _score_chunk(
    reward: str | Callable[..., RewardResult],
    completions: list[Any],
    samples: list[Mapping[str, Any]],
    options: dict,
    components: Mapping[str, Callable[..., RewardResult]] | None = None,
) -> tuple:
    if isinstance(reward, str):
        import rlvr_jax.rewards  # noqa: F401  (registers every reward in this worker)
        from rlvr_jax.rewards.base import get_reward, register_reward, registered_rewards

        for name, fn in (components or {}).items():  # rewards registered outside this package
            if name not in registered_rewards():
                register_reward(name)(fn)
        reward = get_reward(reward)
    result = reward(completions, samples, **options)
    return result.scores, result.reasons


class RewardPool:
    """A process pool for host-side reward scoring. Use as a context manager or call `close()`."""

    def __init__(self, workers: int | None = None, min_chunk: int = 32):
        self.workers = workers or max(1, (os.cpu_count() or 1))
        self.min_chunk = min_chunk
        self._processes = cf.ProcessPoolExecutor(
            self.workers, mp_context=multiprocessing.get_context("spawn"), initializer=_ignore_interrupts
        )
        # Combines chunk results without blocking the caller.
        self._threads = cf.ThreadPoolExecutor(max_workers=2, thread_name_prefix="reward-pool")

    def submit(
        self,
        reward: str | Callable[..., RewardResult],
        completions: Sequence[Any],
        samples: Sequence[Mapping[str, Any]],
        **options: Any,
    ) -> cf.Future:
        """Scores the batch in the background; the Future yields a RewardResult in input order.

        `reward` is a registered name or a module-level function (sent to the workers by reference, so
        rewards registered outside this package work as long as their module imports).
        """
        if len(completions) != len(samples):
            raise ValueError(f"{len(completions)} completions for {len(samples)} samples")
        if isinstance(reward, str) and reward in _SUBPROCESS_REWARDS:
            from rlvr_jax.rewards.sandbox import score_async

            return score_async(reward, completions, samples, **options)
        components: dict[str, Callable[..., RewardResult]] = {}
        if isinstance(reward, str):
            from rlvr_jax.rewards.base import get_reward

            fn = get_reward(reward)
            # Ours are re-registered in each worker by name; others travel as a reference to their module.
            if _outside_package(fn):
                reward = fn
            # A combination (weighted_sum) looks its parts up by name in the worker: send the parts that
            # were registered outside this package along, the same way.
            parts = {name: get_reward(name) for name in options.get("components") or {}}
            components = {name: part for name, part in parts.items() if _outside_package(part)}
        n = len(completions)
        chunks = max(1, min(self.workers, n // self.min_chunk))
        bounds = np.linspace(0, n, chunks + 1).astype(int)
        lengths = options.pop("lengths", None)
        futures = []
        for lo, hi in itertools.pairwise(bounds):
            chunk_options = dict(options)
            if lengths is not None:
                chunk_options["lengths"] = list(lengths[lo:hi])
            futures.append(
                self._processes.submit(
                    _score_chunk,
                    reward,
                    list(completions[lo:hi]),
                    list(samples[lo:hi]),
                    chunk_options,
                    components,
                )
            )
        return self._threads.submit(_gather, futures)

    def close(self) -> None:
        self._threads.shutdown(wait=True)
        self._processes.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> RewardPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _gather(futures: list[cf.Future]) -> RewardResult:
    scores, reasons = [], []
    for future in futures:
        s, r = future.result()
        scores.append(np.asarray(s, np.float32))
        reasons.extend(r)
    return RewardResult(np.concatenate(scores) if scores else np.zeros((0,), np.float32), reasons)
