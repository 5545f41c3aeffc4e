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

Integrity (what a crash, a full disk or a flipped bit can do to a checkpoint on disk):
- Orbax reads back whatever bytes are there: random bytes in an array file restore as garbage weights
  without a word. So once orbax has committed a step, a background thread writes `integrity.json` into
  it: the size and SHA-256 of every file of the step (arrays, orbax metadata, meta). It is written only
  after the commit (the arrays are final then) and atomically (temporary file, fsync, rename), so a step
  without a readable manifest is one whose write did not finish: it counts as incomplete.
- `restore()` (no step given) checks the newest step's files against its manifest and falls back, step
  by step, to the newest intact one, logging a warning that names each damaged step and file; if none is
  intact it stops with one `CheckpointError` line naming them: it never restores unverified bytes.
  Asked for a given step, it restores that step or raises. `all_steps()` / `latest_step()` list complete
  steps only. A later `save` by the same `Checkpointer` (the resumed run) first moves the damaged and
  incomplete steps to `<directory>/damaged/` (kept for inspection, out of orbax's way: orbax will not
  save a step at or below one it still sees).
- Retention never deletes the newest complete step before the step being written has its manifest (with
  keep=1 two steps are on disk until the next save), so a crash at any moment leaves one to resume from.
- A write that fails (no space left on device, an I/O error) raises `CheckpointError` from the next
  `save`, `wait` or `close`, naming the step, the directory, the free space and the intact step to resume
  from; the half-written temporary directory is removed. Training should stop there rather than go on for
  hours without a checkpoint.

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
import dataclasses
import errno
import hashlib
import json
import logging
import math
import os
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm

log = logging.getLogger(__name__)


class _UnrankedSaveIsExpected(logging.Filter):
    """Steps saved between evaluations carry no metric on purpose (they count towards the latest N only);
    orbax warns about each such save, once per checkpoint, in every run's output."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Requested `tracked_metric`; did not provide metrics" not in record.getMessage()


logging.getLogger("absl").addFilter(_UnrankedSaveIsExpected())

PyTree = Any

MANIFEST = "integrity.json"  # in each step directory: size and SHA-256 of every file of the step
DAMAGED = "damaged"  # under the checkpoint directory: steps set aside by a resumed run


class CheckpointError(ValueError):
    """A checkpoint that could not be written, or read back intact; the message names the step, the file
    and what to do. A ValueError, so the command-line scripts print it as one line (`cli.fail_cleanly`)."""


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


# --------------------------------------------------------------------------------------------- integrity


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _step_files(step_dir: Path) -> list[Path]:
    return sorted(p for p in step_dir.rglob("*") if p.is_file() and not p.name.startswith(MANIFEST))


def write_manifest(step_dir: str | Path) -> Path:
    """Writes `step_dir/integrity.json` (size and SHA-256 of every other file below it) atomically.

    Call it only once the step's files are final (after orbax's commit): the manifest is what makes a step
    count as complete.
    """
    step_dir = Path(step_dir)
    files = {
        str(p.relative_to(step_dir)): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
        for p in _step_files(step_dir)
    }
    target = step_dir / MANIFEST
    tmp = step_dir / f"{MANIFEST}.tmp"
    with open(tmp, "w") as f:
        json.dump({"version": 1, "algorithm": "sha256", "files": files}, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)
    fd = os.open(step_dir, os.O_RDONLY)
    try:  # the rename itself must reach the disk before the step counts as complete
        os.fsync(fd)
    finally:
        os.close(fd)
    return target


def check_manifest(step_dir: str | Path) -> str | None:
    """None when every file `step_dir/integrity.json` lists is there with its size and SHA-256; otherwise
    what is wrong, naming the first damaged file (relative to the step directory)."""
    step_dir = Path(step_dir)
    path = step_dir / MANIFEST
    if not path.is_file():
        return f"it has no {MANIFEST}: its write did not finish (killed while saving?)"
    try:
        files = json.loads(path.read_text())["files"]
        expected = [(name, int(e["bytes"]), str(e["sha256"])) for name, e in sorted(files.items())]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return f"{MANIFEST} is unreadable ({type(e).__name__}: {e})"
    if not expected:
        return f"{MANIFEST} lists no files"
    for name, size, digest in expected:
        file = step_dir / name
        if not file.is_file():
            return f"{name} is missing"
        actual = file.stat().st_size
        if actual != size:
            how = "truncated" if actual < size else "grown"
            return f"{name} is {how}: {actual} bytes, {size} were written"
        if _sha256(file) != digest:
            return f"{name} does not match its SHA-256: its bytes changed after the write"
    return None


def _use_coordination_barriers() -> None:
    """Makes orbax's barriers go through jax.distributed's coordination service, not device collectives.

    Why: orbax's default barrier is a tiny all-reduce over the devices (`sync_global_devices`), and an
    async save runs some of its barriers on orbax's finalize thread while the training thread runs the
    next step's collectives. The two threads interleave differently on each host, so the hosts' collectives
    meet out of order: on CPU (gloo) a "collective mismatch" abort, seen in a two-process `train()` run;
    on GPUs a hang. Coordination-service barriers are matched by name, whatever the thread, and time out.
    The switch is orbax's absl flag `experimental_orbax_use_distributed_barrier`; it is set as present,
    since a library user may never parse absl flags (orbax reads an unparsed flag as False).
    """
    from absl import flags

    flag = flags.FLAGS["experimental_orbax_use_distributed_barrier"]
    flag.value = True
    flag.present = 1


def _is_disk_full(error: BaseException) -> bool:
    """Whether `error` (or what it wraps) is ENOSPC: Python's OSError, or tensorstore's message for it."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(e) or "os_error_code='28'" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def _bytes_text(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


@dataclasses.dataclass
class _NewestComplete:
    """Orbax preservation policy: keeps the newest step that has its manifest. Orbax deletes old steps as
    soon as a new one is committed, before our manifest is written; with keep=1 a crash in that moment
    would leave no complete step at all."""

    is_complete: Callable[[int], bool]

    def should_preserve(self, checkpoints: Sequence[Any], *, context: Any) -> Sequence[bool]:
        newest = max((c.step for c in checkpoints if self.is_complete(c.step)), default=None)
        return [c.step == newest for c in checkpoints]


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
      verify: check each step against its integrity manifest before restoring it (module docstring).
        False restores steps unchecked, e.g. ones written before manifests existed.
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
        verify: bool = True,
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
        self.verify = verify
        self._async = async_save
        self._writer: threading.Thread | None = None  # waits for orbax's commit, then writes the manifest
        self._write_error: CheckpointError | None = None
        self._damaged: dict[int, str] = {}  # step -> what `restore` found wrong with it
        self._tidied = False  # damaged / incomplete steps moved aside (done by the first save)
        policies: list[Any] = [ocm.LatestN(n=keep), _NewestComplete(self._has_manifest)]
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
        if jax.process_count() > 1:
            _use_coordination_barriers()
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
        metric is missing or not finite is kept only as one of the latest. Raises `CheckpointError` when
        the previous write failed (e.g. the disk is full): nothing is started then.
        """
        step = int(step)
        self._finish_write()
        if not self._tidied:
            self._set_aside_unusable()
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
        try:
            started = bool(
                self._manager.save(step, args=ocp.args.Composite(**items), metrics=ranked, force=force)
            )
        except Exception as e:  # a synchronous part of the write failed (creating its directory, ...)
            self._remove_partial(step)
            raise self._write_failed(step, e) from e
        if started:
            self._writer = threading.Thread(
                target=self._commit, args=(step,), name=f"checkpoint-{step}-manifest", daemon=True
            )
            self._writer.start()
            if not self._async:
                self._finish_write()
        return started

    def save_and_wait(self, step: int, state: PyTree, meta: Mapping[str, Any] | None = None) -> bool:
        """A forced save that returns once it (and any earlier async save) is on disk: for preemption."""
        started = self.save(step, state, meta, force=True)
        self.wait()
        return started or step in self._manager.all_steps()

    def _commit(self, step: int) -> None:
        """Writer thread: waits for orbax's commit of `step`, then writes its manifest (primary host)."""
        try:
            self._manager.wait_until_finished()
            step_dir = self.directory / str(step)
            if jax.process_index() == 0 and step_dir.is_dir():
                write_manifest(step_dir)
        except Exception as e:
            self._remove_partial(step)
            self._write_error = self._write_failed(step, e)
            self._write_error.__cause__ = e

    def _finish_write(self) -> None:
        """Joins the writer thread; raises the CheckpointError of a failed write (once)."""
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        error, self._write_error = self._write_error, None
        if error is not None:
            with contextlib.suppress(Exception):  # orbax raises a failed save once in each waiting thread
                self._manager.wait_until_finished()
            raise error

    def _write_failed(self, step: int, error: BaseException) -> CheckpointError:
        intact = self.latest_step()
        then = f"checkpoint {intact} is intact" if intact is not None else "there is no earlier checkpoint"
        if _is_disk_full(error):
            free = _bytes_text(shutil.disk_usage(self.directory).free)
            return CheckpointError(
                f"checkpoint {step} could not be written to {self.directory}: no space left on device "
                f"({free} free); {then}. Free some space (or use a larger disk) and run again"
                + (f" to resume from checkpoint {intact}" if intact is not None else "")
            )
        cause = (str(error).strip().splitlines() or [""])[0][:500]
        return CheckpointError(
            f"checkpoint {step} could not be written to {self.directory}: {type(error).__name__}: {cause}; "
            f"{then}"
        )

    def _remove_partial(self, step: int) -> None:
        """Deletes orbax's temporary directory of a failed write of `step` (it may hold most of the space)."""
        if jax.process_index() == 0:
            for tmp in self.directory.glob(f"{step}.orbax-checkpoint-tmp*"):
                shutil.rmtree(tmp, ignore_errors=True)

    def _set_aside_unusable(self) -> None:
        """Moves damaged and incomplete steps to `directory/damaged/` so the resumed run can save again."""
        self._tidied = True
        unusable = {s: self._damaged.get(s) for s in self._manager.all_steps()}
        unusable = {
            s: why or check_manifest(self.directory / str(s))
            for s, why in unusable.items()
            if why is not None or (self.verify and not self._has_manifest(s))
        }
        if jax.process_index() == 0:
            for step, why in sorted(unusable.items()):
                target = self.directory / DAMAGED / str(step)
                n = 1
                while target.exists():
                    target, n = self.directory / DAMAGED / f"{step}-{n}", n + 1
                target.parent.mkdir(exist_ok=True)
                (self.directory / str(step)).rename(target)
                log.warning("checkpoint %d is unusable (%s): moved it to %s", step, why, target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("rlvr_jax.checkpointing: damaged steps set aside")
        if unusable:
            self._manager.reload()
            self._damaged.clear()

    # ------------------------------------------------------------------------------------------ restore

    def restore(
        self, step: int | None = None, abstract_state: PyTree = None
    ) -> tuple[PyTree, dict[str, Any]]:
        """(state, meta) of checkpoint `step`, default the newest intact one (see the module docstring).

        abstract_state: the target structure, a pytree like the saved state whose leaves are live arrays or
          `jax.ShapeDtypeStruct`s (e.g. `nnx.eval_shape` + `nnx.split`, or `abstract_like(state)`); each
          restored array gets that leaf's dtype and sharding, and typed PRNG keys come back typed. None
          restores the arrays as saved (nested dicts; keys as raw uint32 key data).

        Raises FileNotFoundError when there is no such step, CheckpointError when it (or, with no step
        given, every step) fails its integrity check.
        """
        step = self._intact(step)
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
        """Only the JSON meta of `step` (default: the newest intact): e.g. to rebuild the data iterator."""
        step = self._intact(step)
        out = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(out["meta"] or {})

    def restore_params(self, step: int | None, abstract_params: PyTree) -> PyTree:
        """Only the parameters (`state.params`) of checkpoint `step` (None: the newest intact one), in the
        dtype and sharding of each leaf of `abstract_params`: what evaluation and serving need, without
        allocating (or even building) an optimizer state. The step passes the same integrity check as a
        full restore. A separate manager reads it, since orbax fixes an item's handler at first use.
        """
        step = self._intact(step)
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

    def verify_step(self, step: int) -> str | None:
        """None when `step`'s files match its integrity manifest; otherwise what is wrong (names the file)."""
        return check_manifest(self.directory / str(int(step)))

    def _intact(self, step: int | None) -> int:
        """`step` after its integrity check; with None, the newest step that passes (warning on the rest)."""
        if self._writer is not None:  # our own write in flight: let it finish (its error waits for `save`)
            self._writer.join()
            self._writer = None
        saved = sorted(self._manager.all_steps(), reverse=True)
        if step is not None:
            step = int(step)
            if step not in saved:
                raise FileNotFoundError(f"no checkpoint {step} in {self.directory}; have {self.all_steps()}")
            problem = self.verify_step(step) if self.verify else None
            if problem is not None:
                raise CheckpointError(
                    f"checkpoint {step} in {self.directory} is damaged: {problem}; "
                    f"intact steps to restore instead: {self._intact_steps() or 'none'}"
                )
            return step
        if not saved:
            raise FileNotFoundError(f"no checkpoint in {self.directory} to restore")
        problems: dict[int, str] = {}
        for candidate in saved:
            problem = self.verify_step(candidate) if self.verify else None
            if problem is None:
                if problems:
                    log.warning("restoring checkpoint %d, the newest intact one", candidate)
                return candidate
            problems[candidate] = self._damaged[candidate] = problem
            log.warning("checkpoint %d in %s is damaged: %s", candidate, self.directory, problem)
        listed = "; ".join(f"step {s}: {why}" for s, why in problems.items())
        raise CheckpointError(
            f"no intact checkpoint in {self.directory} ({listed}); move the directory away to start afresh"
        )

    def _intact_steps(self) -> list[int]:
        return [s for s in self.all_steps() if self.verify_step(s) is None]

    # ------------------------------------------------------------------------------------------ queries

    def _has_manifest(self, step: int) -> bool:
        return (self.directory / str(step) / MANIFEST).is_file()

    def latest_step(self) -> int | None:
        """The newest complete step (its manifest written; not known to be damaged), or None."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def best_step(self) -> int | None:
        """The best step by `best_metric` (the latest step when not ranking), or None."""
        return self._manager.best_step()

    def all_steps(self) -> list[int]:
        """The complete steps, oldest first: a step still being written, or whose write never finished,
        is not listed (without `verify`, every step orbax committed is)."""
        steps = sorted(self._manager.all_steps())
        if not self.verify:
            return steps
        return [s for s in steps if s not in self._damaged and self._has_manifest(s)]

    def wait(self) -> None:
        """Blocks until every started save is committed with its manifest (and old steps are deleted);
        raises CheckpointError when a write failed."""
        self._finish_write()
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases orbax's threads (raising, after that, a failed write)."""
        try:
            self.wait()
        finally:
            with contextlib.suppress(Exception):  # a failed write was raised by wait(), once is enough
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
