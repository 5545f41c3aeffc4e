"""Training checkpoints with orbax: exact resume, keep-N plus best-by-metric, never from a bad state.

A checkpoint step holds two items:
  state  a pytree of arrays (params, optimizer state, step, RNG keys), written with orbax's StandardSave
         (OCDBT, one shard per process) and restored into an abstract target, so each array comes back
         with the dtype and sharding the live run wants, whatever mesh wrote it.
  meta   a JSON dict: the data iterator state, a config snapshot, metrics, a run id: whatever the trainer
         needs besides arrays to resume exactly.
(and, when ranking by a metric, orbax's own `metrics` item, which it reads back to rank steps after a
restart; and a small `prng` item naming the PRNG implementation of each typed key in `state`.)

Why these choices:
- Typed PRNG keys cannot be serialised; `save` stores `jax.random.key_data` and `restore` re-wraps with
  `wrap_key_data` wherever the target has a key dtype, so callers pass their live state unchanged.
- "A checkpoint is never written from a bad state": `save` first reduces every floating leaf with
  `isfinite` (one small jitted reduction; on a multi-host mesh the answer is the same on every host, so all
  hosts skip together) and refuses a non-finite state: nothing is written for that step.
- Retention: orbax's own `best_fn` + `max_to_keep` keeps only the best N, which can delete the newest
  checkpoint when its metric is worse, and a resume would then go back in time. We instead give orbax a
  preservation policy that is the union of LatestN(keep) and BestN(keep_best): the `keep` newest steps are
  always kept (so the latest is never deleted before a newer one exists), plus the `keep_best` best steps
  among those saved with the metric. Steps saved without the metric (e.g. a preemption save between evals)
  count only towards the latest N.
- Async by default: `save` returns once the arrays are copied off the device; the files are written on a
  background thread while training continues. `wait()` (or `close()`) blocks until they are committed;
  orbax writes into a temporary directory and renames it, so a crash mid-write leaves no half checkpoint.

Preemption (`PreemptionHandler`, `preemption_guard`): a signal handler only sets a flag (raising inside a
running jitted step, or in the middle of an async write, would lose work); the loop calls
`handler.should_stop(step)` after each step and, when it says so, saves with `save_and_wait` and exits
cleanly. On several processes a flag set on one host must not make only that host stop (the others would
hang in the next collective), so `should_stop` there uses JAX's preemption sync point
(`multihost_utils.reached_preemption_sync_point`, the same call orbax's `reached_preemption` makes): the
coordination service catches SIGTERM itself and picks one step at which every host returns True. Without
the preemption service it falls back to an all-gather of the local flags at every step.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm

log = logging.getLogger(__name__)

PyTree = Any


# ----------------------------------------------------------------------------------------------- helpers


def _is_key(x: Any) -> bool:
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _key_impl_name(key: jax.Array) -> str:
    impl = jax.random.key_impl(key)
    return getattr(impl, "name", None) or str(impl)


def all_finite(tree: PyTree) -> bool:
    """True when every floating-point leaf of `tree` is free of NaN and inf (other leaves are ignored).

    Device arrays are reduced on device, one jitted call per mesh (or device set) they live on (a jitted
    call cannot mix arrays committed to different devices or meshes), and only bools come back; numpy
    leaves and Python floats are checked on the host.
    """
    groups: dict[Any, list[jax.Array]] = {}
    for x in jax.tree.leaves(tree):
        if isinstance(x, float) and not math.isfinite(x):
            return False
        if _is_key(x) or not hasattr(x, "dtype") or not jnp.issubdtype(x.dtype, jnp.inexact):
            continue
        if isinstance(x, jax.Array):
            mesh = getattr(x.sharding, "mesh", None)  # explicit-axis meshes must not mix inside one jit
            groups.setdefault(mesh if mesh is not None else frozenset(x.sharding.device_set), []).append(x)
        elif not np.isfinite(np.asarray(x)).all():
            return False
    return all(bool(_device_all_finite(leaves)) for leaves in groups.values())


@jax.jit
def _device_all_finite(leaves: list[jax.Array]) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def _jsonable(value: Any) -> Any:
    """Plain JSON types for orbax's JsonSave: numpy / jax scalars and arrays become numbers and lists."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, jax.Array | np.ndarray | np.generic):
        return np.asarray(value).tolist()
    return value


def _shape_only(x: Any) -> Any:
    """One leaf as a `jax.ShapeDtypeStruct` with its sharding (numpy arrays and scalars stay as they are)."""
    if isinstance(x, jax.Array | jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
    return x  # orbax restores numpy arrays and Python scalars as they were saved


def _restore_target(x: Any) -> Any:
    """What orbax restores one leaf into: `_shape_only`, with raw key data standing in for a typed key."""
    if _is_key(x):
        data = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(x.shape, x.dtype))
        # A key array's sharding spec names its leading axes, so it fits the key data (one more axis).
        return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=getattr(x, "sharding", None))
    return _shape_only(x)


def abstract_like(tree: PyTree) -> PyTree:
    """`tree` with every array replaced by a `jax.ShapeDtypeStruct` keeping its dtype and sharding."""
    return jax.tree.map(_shape_only, tree)


# ------------------------------------------------------------------------------------------ Checkpointer


class Checkpointer:
    """Saves and restores (state, meta) per step under `directory` with an orbax CheckpointManager.

    Args:
      directory: where the step directories go (created if missing).
      keep: how many of the newest steps to keep (None keeps all).
      keep_best: with `best_metric`, how many of the best steps to keep as well (default 1).
      best_metric: a key of the `metrics` passed to `save` to rank steps by; None: no ranking.
      best_mode: "max" or "min": which end of `best_metric` is best.
      async_save: write in a background thread (`wait()` blocks until written).
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        keep: int | None = 3,
        keep_best: int | None = None,
        best_metric: str | None = None,
        best_mode: str = "max",
        async_save: bool = True,
    ):
        if best_mode not in ("max", "min"):
            raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
        if keep is not None and keep < 1:
            raise ValueError(f"keep must be at least 1 (the latest checkpoint) or None for all, got {keep}")
        if keep_best is not None and best_metric is None:
            raise ValueError("keep_best needs best_metric: the metric to rank checkpoints by")
        self.directory = Path(directory).absolute()
        self.best_metric = best_metric
        self.best_mode = best_mode
        policies: list[Any] = [ocm.LatestN(n=keep)]
        best_fn = None
        if best_metric is not None:
            worst = -math.inf if best_mode == "max" else math.inf  # steps ranked by another metric earlier
            best_fn = lambda metrics: float(metrics.get(best_metric, worst))
            policies.append(
                ocm.BestN(
                    get_metric_fn=best_fn,
                    reverse=best_mode == "min",  # BestN keeps the tail of an ascending sort
                    n=1 if keep_best is None else keep_best,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            best_fn=best_fn,  # lets orbax store the metrics and answer best_step()
            best_mode=best_mode,
            preservation_policy=ocm.AnyPreservationPolicy(policies),
            enable_async_checkpointing=async_save,
            create=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    # --------------------------------------------------------------------------------------------- save

    def save(
        self,
        step: int,
        state: PyTree,
        meta: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Any] | None = None,
        force: bool = False,
    ) -> bool:
        """Starts writing `state` and `meta` as checkpoint `step`; True when a write was started.

        Returns False, writing nothing, when the state has a NaN or inf (logged as an error: the caller
        decides whether to stop or roll back), when `step` is already saved, or when orbax's save policy
        declines (`force=True` overrides the policy). `metrics[best_metric]` ranks the step; a step whose
        metric is missing or not finite is kept only as one of the latest.
        """
        step = int(step)
        if step in self._manager.all_steps():
            log.info("checkpoint %d already exists in %s; not saving it again", step, self.directory)
            return False
        if not all_finite(state):
            log.error(
                "not saving checkpoint %d: the state has NaN or inf values (the last good checkpoint is %s)",
                step,
                self.latest_step(),
            )
            return False
        flat, treedef = jax.tree.flatten(state)
        impls = {str(i): _key_impl_name(x) for i, x in enumerate(flat) if _is_key(x)}
        raw = jax.tree.unflatten(treedef, [jax.random.key_data(x) if _is_key(x) else x for x in flat])
        items = {
            "state": ocp.args.StandardSave(raw),
            "meta": ocp.args.JsonSave(_jsonable(dict(meta or {}))),
            "prng": ocp.args.JsonSave({"impls": impls}),
        }
        ranked = None
        if self.best_metric is not None and metrics is not None:
            value = metrics.get(self.best_metric)
            if value is not None and math.isfinite(float(value)):
                ranked = {self.best_metric: float(value)}
            elif value is not None:
                log.warning(
                    "checkpoint %d has %s=%s; it is not ranked as best", step, self.best_metric, value
                )
        return bool(self._manager.save(step, args=ocp.args.Composite(**items), metrics=ranked, force=force))

    def save_and_wait(self, step: int, state: PyTree, meta: Mapping[str, Any] | None = None) -> bool:
        """A forced save that returns once it (and any earlier async save) is on disk: for preemption."""
        started = self.save(step, state, meta, force=True)
        self.wait()
        return started or step in self._manager.all_steps()

    # ------------------------------------------------------------------------------------------ restore

    def restore(
        self, step: int | None = None, abstract_state: PyTree = None
    ) -> tuple[PyTree, dict[str, Any]]:
        """(state, meta) of checkpoint `step` (default: the latest).

        abstract_state: the target structure, a pytree like the saved state whose leaves are live arrays or
          `jax.ShapeDtypeStruct`s (e.g. `nnx.eval_shape` + `nnx.split`, or `abstract_like(state)`); each
          restored array gets that leaf's dtype and sharding, and typed PRNG keys come back typed. None
          restores the arrays as saved (nested dicts; keys as raw uint32 key data).
        """
        step = self._resolve(step)
        if abstract_state is None:
            out = self._manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore())
            )
            return out["state"], dict(out["meta"] or {})
        flat, treedef = jax.tree.flatten(abstract_state)
        target = jax.tree.unflatten(treedef, [_restore_target(x) for x in flat])
        out = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target),
                meta=ocp.args.JsonRestore(),
                prng=ocp.args.JsonRestore(),
            ),
        )
        impls = (out["prng"] or {}).get("impls", {})
        restored = jax.tree.leaves(out["state"])
        if len(restored) != len(flat):
            raise ValueError(f"checkpoint {step} has {len(restored)} arrays, the target {len(flat)}")
        leaves = []
        for i, (want, got) in enumerate(zip(flat, restored, strict=True)):
            if _is_key(want):
                impl = impls.get(str(i))
                if impl is None:
                    if not isinstance(want, jax.Array):
                        raise ValueError(
                            f"checkpoint {step} does not say which PRNG implementation leaf {i} used; "
                            "pass a live key (not a ShapeDtypeStruct) at that place in abstract_state"
                        )
                    impl = _key_impl_name(want)
                got = jax.random.wrap_key_data(got, impl=impl)
            leaves.append(got)
        return jax.tree.unflatten(treedef, leaves), dict(out["meta"] or {})

    def restore_meta(self, step: int | None = None) -> dict[str, Any]:
        """Only the JSON meta of `step` (default: the latest): cheap, e.g. to rebuild the data iterator."""
        step = self._resolve(step)
        out = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(out["meta"] or {})

    def restore_params(self, step: int, abstract_params: PyTree) -> PyTree:
        """Only the parameters (`state.params`) of checkpoint `step`, in the dtype and sharding of each leaf
        of `abstract_params`: what evaluation and serving need, without allocating (or even building) an
        optimizer state. A separate manager reads them, since orbax fixes an item's handler at first use.
        """
        step = self._resolve(step)
        args = jax.tree.map(
            lambda x: ocp.ArrayRestoreArgs(dtype=x.dtype, sharding=x.sharding), abstract_params
        )
        target = jax.tree.map(_restore_target, abstract_params)
        with ocp.CheckpointManager(self.directory) as reader:
            out = reader.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.PyTreeRestore(
                        item={"params": target}, restore_args={"params": args}, partial_restore=True
                    )
                ),
            )
        return out["state"]["params"]

    def _resolve(self, step: int | None) -> int:
        if step is None:
            step = self.latest_step()
            if step is None:
                raise FileNotFoundError(f"no checkpoint in {self.directory} to restore")
        elif step not in self._manager.all_steps():
            raise FileNotFoundError(f"no checkpoint {step} in {self.directory}; have {self.all_steps()}")
        return int(step)

    # ------------------------------------------------------------------------------------------ queries

    def latest_step(self) -> int | None:
        """The newest saved step (including one still being written asynchronously), or None."""
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        """The best step by `best_metric` (the latest step when not ranking), or None."""
        return self._manager.best_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def wait(self) -> None:
        """Blocks until every started save is committed (and old steps are deleted)."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases orbax's threads."""
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -------------------------------------------------------------------------------------------- preemption


class PreemptionHandler:
    """Turns SIGTERM (preemption) and optionally SIGINT into a flag the training loop polls.

    Constructing one installs it (`install=False` to defer); `preemption_guard()` also uninstalls it when
    the loop's `with` block ends. After each step the loop calls
    `should_stop(step)` (on every host, at every step), and when it is True saves with
    `Checkpointer.save_and_wait` and returns. A second signal of the same kind restores the previous handler
    and re-delivers the signal, so a stuck run can still be stopped without a checkpoint.

    On several processes with JAX's preemption service (the default after `jax.distributed.initialize`) the
    coordination service owns SIGTERM, so no handler is installed here (SIGINT keeps its default,
    KeyboardInterrupt: a flag set on one host alone must not stop the run); `should_stop` asks the service
    for the agreed sync step instead. With the service off, the handlers are installed and `should_stop`
    all-gathers the hosts' flags each step (one tiny collective), so all hosts stop at the same step.
    """

    def __init__(self, signals: Sequence[signal.Signals] = (signal.SIGTERM,), *, install: bool = True):
        self.signals = tuple(signals)
        self._flag = threading.Event()
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}
        self._installed = False
        self._multiprocess = jax.process_count() > 1
        self._jax_sync = self._multiprocess and bool(jax.config.jax_enable_preemption_service)
        if install:
            self.install()

    @property
    def requested(self) -> bool:
        """True once this process received one of the signals (local: see `should_stop` for many hosts)."""
        return self._flag.is_set()

    def request(self, signum: signal.Signals = signal.SIGTERM) -> None:
        """Sets the flag as a signal would (tests, or a loop that stops on its own condition)."""
        self.received = signal.Signals(signum)
        self._flag.set()

    def should_stop(self, step: int) -> bool:
        """Whether to save and exit after `step`; agreed by all hosts. Call at every step on every host."""
        if not self._multiprocess:
            return self.requested
        if self._jax_sync:
            from jax.experimental import multihost_utils

            try:  # the local flag is not consulted: one host stopping alone would hang the others
                return bool(multihost_utils.reached_preemption_sync_point(int(step)))
            except RuntimeError:  # the service is off: catch SIGTERM here and compare flags instead
                self._jax_sync = False
                if self._installed:
                    self.install()
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.asarray(self.requested, np.int32))
        return bool(np.any(flags))

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        sig = signal.Signals(signum)
        if self._flag.is_set() and self.received == sig:
            sys.stderr.write(f"{sig.name} again: stopping now, without a checkpoint\n")
            signal.signal(sig, self._previous.get(sig, signal.SIG_DFL))
            signal.raise_signal(sig)
            return
        sys.stderr.write(f"{sig.name} received: saving a checkpoint after the current step, then exiting\n")
        self.request(sig)

    def install(self) -> PreemptionHandler:
        """Installs the handlers (main thread only; elsewhere it warns and polls no signals)."""
        if threading.current_thread() is not threading.main_thread():
            log.warning("preemption handlers need the main thread; signals will not be caught")
            return self
        self._installed = True
        if self._jax_sync:
            return self  # JAX's coordination service catches SIGTERM and syncs the step across hosts
        for sig in self.signals:
            if sig not in self._previous:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        """Restores the handlers that were there before `install`."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()
        self._installed = False


@contextlib.contextmanager
def preemption_guard(*, sigint: bool = False) -> Iterator[PreemptionHandler]:
    """Catches SIGTERM (and SIGINT when `sigint`) for the `with` block; yields the handler to poll."""
    signals = (signal.SIGTERM, signal.SIGINT) if sigint else (signal.SIGTERM,)
    handler = PreemptionHandler(signals)
    try:
        yield handler
    finally:
        handler.uninstall()
