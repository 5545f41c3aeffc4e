"""Choosing the micro-batch count: XLA's compile-time memory estimate against a budget, cached per setting.

Design choices, and why:
- The probe compiles, it does not run. `jax.jit(step).lower(abstract args).compile().memory_analysis()`
  is XLA's buffer assignment for the executable: argument, output and temporary bytes per device and the
  bytes that donation lets outputs share with arguments. Lowering takes `jax.ShapeDtypeStruct`s, so no
  parameter, optimizer moment or batch is allocated to ask. Running candidates instead would find the
  limit by crashing into it, and an out-of-memory error on a GPU can leave the process (or the
  allocator's pool) unusable, so the answer could not be taken back to the run that asked.
- The estimate is `argument + output + temp - alias`: what the executable needs while it runs. On GPU
  XLA allocates the temporaries as one buffer of exactly `temp` bytes, so this is the allocation the step
  makes, not a bound on it; it leaves out the executable's code and allocator fragmentation, hence the
  headroom fraction on the budget. On CPU the same buffer assignment is computed, so the estimates track
  what a GPU would allocate for the same program but are not GPU measurements.
- Candidates are the counts m that divide the rows and leave micro-batches of rows / m that split over the
  mesh's batch shards (data * fsdp), tried from the fewest (largest micro-batch, fastest step) upwards;
  the first that fits wins. Fewer, larger micro-batches make better use of the matmul units, so the
  smallest count that fits is the right one, not merely a safe one.
- The cache stores the estimates, not only the answer: keyed by what shapes the compiled program (model
  architecture and dtypes, the train state's dtypes and size, batch shapes, the loss's structure, the
  mesh, device kind and count, jax version), each candidate's estimate is kept. The budget is deliberately
  not in the key: on a GPU it depends on what else is resident and moves by a few bytes from run to run,
  and a stored estimate answers "does m fit?" for any budget. A lookup compiles only candidates it has no
  estimate for, so a repeated run compiles nothing. The file is JSON (readable, diffable), rewritten
  atomically (temp file + rename) after merging with what is on disk, so runs sharing it do not corrupt
  it; an unreadable or unwritable cache is logged and ignored, never a reason for a run to fail.
- The budget, unless given: on a device that reports memory statistics (GPU, TPU), `headroom *
  bytes_limit` minus the bytes held by buffers that are not the step's own arguments (the sampler's copy
  of the weights, the frozen reference, the loaded checkpoint): `bytes_in_use` minus what the train state
  occupies. CPUs report no statistics; there the default is `headroom *` physical RAM divided among the
  process's CPU devices, a rough figure for a shared resource, so pass a budget
  (`optim.memory_budget_gb`) whenever the number matters.
- A token budget (`micro_batches_for_tokens`) is the deterministic alternative when the limit is known in
  tokens per micro-batch rather than in bytes: no compile at all.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from rlvr_jax import sharding
from rlvr_jax.models.config import ModelConfig
from rlvr_jax.models.decoder import abstract_model
from rlvr_jax.optim.state import TrainState, partition_trainable, stored_params
from rlvr_jax.rl.losses import LossConfig
from rlvr_jax.rl.update import make_train_step

logger = logging.getLogger(__name__)

CACHE_ENV = "RLVR_CACHE_DIR"
CACHE_FILE = "micro_batches.json"
CACHE_VERSION = 1
DEFAULT_HEADROOM = 0.9
HOST_MEMORY_KINDS = ("pinned_host", "unpinned_host")


def format_bytes(n: float) -> str:
    """1536 -> '1.50 KiB': estimates span KiB (test models) to hundreds of GiB."""
    if abs(n) < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB"):
        n /= 1024
        if abs(n) < 1024:
            return f"{n:.2f} {unit}"
    return f"{n / 1024:.2f} GiB"


# ------------------------------------------------------------------------------------------ estimates


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """XLA's compile-time memory use of one executable, bytes per device.

    total: argument + output + temp - alias, what the executable needs while it runs (aliased outputs
    reuse donated argument buffers, so they are not counted twice).
    """

    argument_bytes: int
    output_bytes: int
    temp_bytes: int
    alias_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.argument_bytes + self.output_bytes + self.temp_bytes - self.alias_bytes

    def to_json(self) -> dict[str, int]:
        return dataclasses.asdict(self) | {"total_bytes": self.total_bytes}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MemoryEstimate:
        return cls(*(int(data[f.name]) for f in dataclasses.fields(cls)))


def estimate_memory(compiled: Any) -> MemoryEstimate:
    """The estimate of a `jax.stages.Compiled` (`jax.jit(f).lower(...).compile()`)."""
    stats = compiled.memory_analysis()
    if stats is None:
        raise RuntimeError(
            "this backend reports no compile-time memory analysis; set the micro-batch count explicitly "
            "(optim.micro_batches) or use micro_batches_for_tokens"
        )
    return MemoryEstimate(
        argument_bytes=int(stats.argument_size_in_bytes),
        output_bytes=int(stats.output_size_in_bytes),
        temp_bytes=int(stats.temp_size_in_bytes),
        alias_bytes=int(stats.alias_size_in_bytes),
    )


# ------------------------------------------------------------------------------------------ candidates


def valid_micro_batches(rows: int, shards: int = 1) -> tuple[int, ...]:
    """Micro-batch counts m, ascending, with rows % m == 0 and (rows / m) % shards == 0.

    The second condition is what `train_step` needs on a mesh: every micro-batch is split by rows over
    the data * fsdp devices, so each must hold a whole number of rows per device.
    """
    if rows < 1 or shards < 1:
        raise ValueError(f"rows and shards must be >= 1, got rows={rows}, shards={shards}")
    return tuple(m for m in range(1, rows + 1) if rows % m == 0 and (rows // m) % shards == 0)


def _no_valid_count(rows: int, shards: int) -> ValueError:
    return ValueError(
        f"{rows} rows cannot be split into micro-batches that divide over the {shards} batch shards "
        f"(mesh data * fsdp): the rows per step (rl.prompts_per_step * rl.group_size) must be a multiple "
        f"of {shards}"
    )


def micro_batches_for_tokens(
    rows: int, seq_len: int, max_tokens_per_micro_batch: int, shards: int = 1
) -> int:
    """The fewest valid micro-batches whose micro-batch holds at most `max_tokens_per_micro_batch` tokens.

    Tokens of one micro-batch = its rows (over all devices) * seq_len, padding included: padded positions
    cost the same memory and compute as real ones. For a per-device budget, pass it times `shards`.
    """
    if seq_len < 1 or max_tokens_per_micro_batch < 1:
        raise ValueError(
            "seq_len and max_tokens_per_micro_batch must be >= 1, got "
            f"{seq_len}, {max_tokens_per_micro_batch}"
        )
    candidates = valid_micro_batches(rows, shards)
    if not candidates:
        raise _no_valid_count(rows, shards)
    for m in candidates:
        if rows // m * seq_len <= max_tokens_per_micro_batch:
            return m
    smallest = rows // candidates[-1]
    raise ValueError(
        f"the smallest micro-batch that divides over {shards} batch shards has {smallest} rows x {seq_len} "
        f"tokens = {smallest * seq_len} tokens, over the budget of {max_tokens_per_micro_batch}; raise the "
        f"token budget, shorten the sequences (sampling.max_new_tokens, prompt length) or use more devices"
    )


# -------------------------------------------------------------------------------------------- budget


def per_device_bytes(tree: Any, device: Any = None) -> int:
    """Bytes that the concrete jax Arrays of `tree` hold on `device` (default: the first local device).

    Abstract leaves (ShapeDtypeStructs), numpy arrays and arrays offloaded to host memory kinds count 0:
    they occupy no device memory.
    """
    device = device or jax.local_devices()[0]
    total = 0
    for leaf in jax.tree.leaves(tree):
        if isinstance(leaf, jax.Array) and leaf.sharding.memory_kind not in HOST_MEMORY_KINDS:
            total += sum(s.data.nbytes for s in leaf.addressable_shards if s.device == device)
    return total


def host_budget_bytes(headroom: float = DEFAULT_HEADROOM) -> int:
    """`headroom` * physical RAM / the process's CPU devices: the CPU default (a rough, shared figure)."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(headroom * ram / max(len(jax.local_devices()), 1))


def default_budget_bytes(
    headroom: float = DEFAULT_HEADROOM, *, step_arguments: Any = None, device: Any = None
) -> tuple[int, str]:
    """(bytes per device the train step may use, where the figure came from).

    With memory statistics: headroom * bytes_limit minus the bytes in use by buffers other than
    `step_arguments` (the state the step will be given: its bytes are in the estimate already). Without
    (CPU): `host_budget_bytes`.
    """
    if not 0.0 < headroom <= 1.0:
        raise ValueError(f"headroom must be in (0, 1], got {headroom}")
    device = device or jax.local_devices()[0]
    stats = device.memory_stats() or {}
    if "bytes_limit" not in stats:
        return host_budget_bytes(headroom), f"{headroom:g} x physical RAM (no device memory statistics)"
    others = max(int(stats.get("bytes_in_use", 0)) - per_device_bytes(step_arguments, device), 0)
    budget = int(headroom * stats["bytes_limit"]) - others
    source = f"{headroom:g} x bytes_limit {format_bytes(stats['bytes_limit'])} - {format_bytes(others)} held"
    return budget, source


def to_memory_kind(tree: Any, kind: str) -> Any:
    """The same arrays with the same shardings in another memory kind: "pinned_host" to offload (e.g. the
    frozen reference parameters between their once-per-step log-prob passes), "device" to bring back.

    An offloaded reference costs a host-to-device copy per step instead of its bytes on the device for
    the whole run; `jax.devices()[0].addressable_memories()` lists the kinds a backend has.
    """
    return jax.tree.map(lambda x: jax.device_put(x, x.sharding.with_memory_kind(kind)), tree)


# --------------------------------------------------------------------------------------------- cache


def cache_path(path: str | Path | None = None) -> Path:
    """The cache file: `path`, else $RLVR_CACHE_DIR/micro_batches.json, else ~/.cache/rlvr-jax/..."""
    if path is not None:
        return Path(path).expanduser()
    folder = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "rlvr-jax"
    return Path(folder).expanduser() / CACHE_FILE


def key_digest(fields: Mapping[str, Any]) -> str:
    """A stable short id for a key: sha256 of its canonical JSON (Python's hash() changes per process)."""
    text = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


class EstimateCache:
    """Per-candidate memory estimates in one JSON file: {"version", "entries": {digest: entry}}.

    entry = {"key": the readable key fields, "estimates": {"m": MemoryEstimate.to_json()}, "updated"}.
    """

    def __init__(self, path: str | Path | None = None):
        self.path = cache_path(path)

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            logger.warning("micro-batch cache %s is unreadable (%s): ignoring it", self.path, e)
            return {}
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
            return {}
        entries = data.get("entries")
        return entries if isinstance(entries, dict) else {}

    def load(self, digest: str) -> dict[int, MemoryEstimate]:
        """The stored estimates for a key ({} when none); a malformed entry is dropped, not fatal."""
        entry = self._read().get(digest) or {}
        try:
            return {int(m): MemoryEstimate.from_json(e) for m, e in entry.get("estimates", {}).items()}
        except (KeyError, TypeError, ValueError):
            logger.warning("malformed micro-batch cache entry %s in %s: ignoring it", digest, self.path)
            return {}

    def store(self, digest: str, fields: Mapping[str, Any], estimates: Mapping[int, MemoryEstimate]) -> None:
        """Merges `estimates` into the entry and rewrites the file atomically; failures are logged only."""
        try:
            entries = self._read()
            old = (entries.get(digest) or {}).get("estimates", {})
            merged = dict(old) | {str(m): e.to_json() for m, e in estimates.items()}
            entries[digest] = {
                "key": dict(fields),
                "estimates": dict(sorted(merged.items(), key=lambda kv: int(kv[0]))),
                "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            self.path.parent.mkdir(parents=True, exist_ok=True)
            text = json.dumps({"version": CACHE_VERSION, "entries": entries}, indent=1, default=str)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(text)
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as e:
            logger.warning("could not write the micro-batch cache %s (%s)", self.path, e)


# ----------------------------------------------------------------------------------------------- pick


class MemoryBudgetError(RuntimeError):
    """No micro-batch count fits the memory budget."""


@dataclasses.dataclass(frozen=True)
class MicroBatchChoice:
    """The probe's answer and how it was reached.

    estimates: every candidate examined, in the order tried (from the cache or compiled), bytes per device.
    from_cache: True when no compile was needed. compiles: how many candidates were compiled.
    """

    micro_batches: int
    rows: int
    shards: int
    budget_bytes: int
    estimates: dict[int, MemoryEstimate]
    from_cache: bool
    compiles: int
    cache_key: str | None = None
    budget_source: str = "given"

    @property
    def micro_batch_rows(self) -> int:
        return self.rows // self.micro_batches

    @property
    def estimate_bytes(self) -> int:
        return self.estimates[self.micro_batches].total_bytes

    def summary(self) -> str:
        tried = ", ".join(f"{m}: {format_bytes(e.total_bytes)}" for m, e in self.estimates.items())
        return (
            f"micro-batches {self.micro_batches} ({self.micro_batch_rows} of {self.rows} rows): estimated "
            f"{format_bytes(self.estimate_bytes)} per device of a {format_bytes(self.budget_bytes)} budget "
            f"({self.budget_source}); estimates by count tried {{{tried}}}; "
            + ("from the cache" if self.from_cache else f"{self.compiles} compile(s)")
        )

    def to_json(self) -> dict[str, Any]:
        """For the run's records (e.g. WORKDIR/memory_probe.json)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "estimates"}
        return fields | {"estimates": {str(m): e.to_json() for m, e in self.estimates.items()}}

    def metrics(self) -> dict[str, float]:
        """Numbers for the metrics log (e.g. written once at step 0)."""
        return {
            "memory/micro_batches": float(self.micro_batches),
            "memory/step_estimate_gb": self.estimate_bytes / 1e9,
            "memory/budget_gb": self.budget_bytes / 1e9,
        }


def pick_micro_batches(
    compile_for: Callable[[int], Any],
    rows: int,
    shards: int = 1,
    budget_bytes: int | None = None,
    *,
    headroom: float = DEFAULT_HEADROOM,
    cache: EstimateCache | None = None,
    key: Mapping[str, Any] | None = None,
    budget_source: str = "given",
) -> MicroBatchChoice:
    """The fewest micro-batches whose compiled step fits `budget_bytes` (per device).

    compile_for(m) -> a jax `Compiled` for the step with m micro-batches (lowered from abstract arguments,
    so compiling allocates nothing). Candidates come from `valid_micro_batches(rows, shards)`, tried from
    the fewest upward; the first whose `estimate_memory(...).total_bytes` is within the budget is chosen.
    budget_bytes: used as given; None = `default_budget_bytes(headroom)`. cache / key: with both, estimates
    stored for `key` are used instead of compiling, and new ones are added. budget_source: where a given
    budget came from, for the summary.
    Raises ValueError when no count divides the rows over the shards, MemoryBudgetError when even the
    smallest micro-batch does not fit.
    """
    if (cache is None) != (key is None):
        raise ValueError("pass both cache and key, or neither")
    candidates = valid_micro_batches(rows, shards)
    if not candidates:
        raise _no_valid_count(rows, shards)
    source = budget_source
    if budget_bytes is None:
        budget_bytes, source = default_budget_bytes(headroom)
    digest = key_digest(key) if key is not None else None
    known = cache.load(digest) if cache is not None and digest is not None else {}
    tried: dict[int, MemoryEstimate] = {}
    new: dict[int, MemoryEstimate] = {}
    chosen = None
    for m in candidates:
        if m not in known:
            t0 = time.perf_counter()
            known[m] = new[m] = estimate_memory(compile_for(m))
            logger.info(
                "micro-batches %d: estimated %s (compiled in %.1fs)",
                m,
                format_bytes(known[m].total_bytes),
                time.perf_counter() - t0,
            )
        tried[m] = known[m]
        if known[m].total_bytes <= budget_bytes:
            chosen = m
            break
    if new and cache is not None and digest is not None:
        cache.store(digest, key or {}, new)
    if chosen is None:
        last = tried[candidates[-1]]
        raise MemoryBudgetError(
            f"no micro-batch count fits: even {candidates[-1]} micro-batches of {rows // candidates[-1]} "
            f"rows need an estimated {format_bytes(last.total_bytes)} per device (arguments, i.e. the "
            f"train state and batch, {format_bytes(last.argument_bytes)}; temporaries "
            f"{format_bytes(last.temp_bytes)}), over the budget of {format_bytes(budget_bytes)} "
            f"({source}). To fit: rematerialise layers (model.remat='full' or 'dots'), shorten sequences "
            "(sampling.max_new_tokens), shard parameters and optimizer state over more devices "
            "(mesh.fsdp), or raise the budget (optim.memory_budget_gb) if it is too low"
        )
    return MicroBatchChoice(
        micro_batches=chosen,
        rows=rows,
        shards=shards,
        budget_bytes=int(budget_bytes),
        estimates=tried,
        from_cache=not new,
        compiles=len(new),
        cache_key=digest,
        budget_source=source,
    )


# ---------------------------------------------------------------------------------- the train step


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs for every array leaf (concrete or abstract): something to lower against.

    Shardings are dropped on purpose: the jitted step declares its own `in_shardings`, and an abstract
    argument carrying a different one would be a lowering error rather than a reshard.
    """
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), tree)


def abstract_train_state(
    cfg: ModelConfig, optimizer: optax.GradientTransformation, master_dtype: str | Any | None = "float32"
) -> TrainState:
    """The TrainState `init_train_state` would build, as shapes only (nothing allocated).

    master_dtype: as `init_train_state`'s: floating parameters are widened to it (never narrowed), and
    optax's Adam moments follow the parameters' dtype.
    """
    params = nnx.state(abstract_model(cfg))
    params = jax.eval_shape(lambda p: stored_params(p, master_dtype, cfg), params)
    counter = jax.ShapeDtypeStruct((), jnp.int32)
    opt_state = jax.eval_shape(optimizer.init, partition_trainable(params)[0])  # LoRA: adapters only
    return TrainState(params, opt_state, counter, counter)


def train_batch_spec(
    rows: int,
    prompt_len: int,
    completion_len: int,
    *,
    sampler_logprobs: bool = True,
    old_logprobs: bool = False,
    ref_logprobs: bool = False,
) -> dict[str, jax.ShapeDtypeStruct]:
    """The abstract batch the train step receives (`batch_from_rollout`'s layout and dtypes).

    old_logprobs: present when one rollout feeds several updates (rl.mu > 1); ref_logprobs: when the KL
    term is on (beta > 0). Both are added by `update_on_rollout` before the step sees the batch.
    """
    L, N = prompt_len + completion_len, completion_len
    spec = {
        "tokens": jax.ShapeDtypeStruct((rows, L), jnp.int32),
        "attn_mask": jax.ShapeDtypeStruct((rows, L), jnp.bool_),
        "completion_mask": jax.ShapeDtypeStruct((rows, N), jnp.bool_),
        "advantages": jax.ShapeDtypeStruct((rows,), jnp.float32),
    }
    for name, present in (
        ("sampler_logprobs", sampler_logprobs),
        ("old_logprobs", old_logprobs),
        ("ref_logprobs", ref_logprobs),
    ):
        if present:
            spec[name] = jax.ShapeDtypeStruct((rows, N), jnp.float32)
    return spec


def random_train_batch(
    rows: int, prompt_len: int, completion_len: int, vocab_size: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """A concrete batch of `train_batch_spec`'s layout with random tokens and advantages, for running and
    timing the step at a shape (benchmarks, tests): speed and memory do not depend on the values."""
    rng = np.random.default_rng(seed)
    L, N = prompt_len + completion_len, completion_len
    return {
        "tokens": rng.integers(1, vocab_size, (rows, L)).astype(np.int32),
        "attn_mask": np.ones((rows, L), bool),
        "completion_mask": np.ones((rows, N), bool),
        "advantages": rng.standard_normal(rows).astype(np.float32),
        "sampler_logprobs": np.full((rows, N), -2.0, np.float32),
    }


def _tree_summary(tree: Any) -> dict[str, Any]:
    """Dtypes and total bytes of a tree: enough to tell two optimizers or master dtypes apart."""
    leaves = jax.tree.leaves(tree)
    return {
        "dtypes": sorted({str(jnp.dtype(x.dtype)) for x in leaves}),
        "leaves": len(leaves),
        "bytes": int(sum(np.prod(np.shape(x), dtype=np.int64) * jnp.dtype(x.dtype).itemsize for x in leaves)),
    }


def _loss_structure(cfg: LossConfig) -> dict[str, Any]:
    """The parts of a LossConfig that change the compiled program's shape (clip values do not)."""
    return {
        "ratio_type": cfg.ratio_type,
        "aggregation": cfg.aggregation,
        "kl": cfg.beta > 0,
        "kl_estimator": cfg.kl_estimator if cfg.beta > 0 else None,
        "tis": cfg.tis_cap is not None,
        "dual_clip": cfg.clip_c is not None,
        "entropy": cfg.entropy_coef != 0.0,
    }


def train_step_key(
    cfg: ModelConfig,
    state: TrainState,
    batch: Mapping[str, jax.ShapeDtypeStruct],
    loss_config: LossConfig,
    *,
    devices: Sequence[Any],
    mesh_shape: Mapping[str, int] | None = None,
    step_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The cache key's fields: everything that changes the compiled step's memory (see module docstring).

    devices: those the step runs on (the mesh's, or the one default device); mesh_shape: the mesh's axes.
    """
    step_options = dict(step_options or {})
    try:
        import jaxlib

        jaxlib_version = jaxlib.__version__
    except (ImportError, AttributeError):
        jaxlib_version = None
    return {
        "model": dataclasses.asdict(cfg),
        "params": _tree_summary(state.params),
        "opt_state": _tree_summary(state.opt_state),
        "batch": {k: [list(v.shape), str(jnp.dtype(v.dtype))] for k, v in sorted(batch.items())},
        "loss": _loss_structure(loss_config),
        "step": {k: str(v) for k, v in sorted(step_options.items()) if k != "schedule"}
        | {"schedule": step_options.get("schedule") is not None},
        "mesh": dict(mesh_shape) if mesh_shape is not None else None,
        "device": {
            "platform": devices[0].platform,
            "kind": devices[0].device_kind,
            "count": len(devices),
        },
        "versions": {"jax": jax.__version__, "jaxlib": jaxlib_version},
    }


def _agree_across_processes(choice: MicroBatchChoice) -> MicroBatchChoice:
    """Process 0's count on every process: budgets (bytes in use) can differ by host, the program cannot."""
    if jax.process_count() == 1:
        return choice
    from jax.experimental import multihost_utils

    m = int(multihost_utils.broadcast_one_to_all(np.int32(choice.micro_batches)))
    if m == choice.micro_batches:
        return choice
    logger.warning("process 0 chose %d micro-batches, this process %d: using %d", m, choice.micro_batches, m)
    return dataclasses.replace(choice, micro_batches=m)


def probe_train_step_micro_batches(
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    loss_config: LossConfig,
    *,
    state: TrainState,
    rows: int,
    prompt_len: int,
    completion_len: int,
    temperature: float = 1.0,
    mesh: Mesh | None = None,
    rules: sharding.Rules = sharding.DEFAULT_RULES,
    old_logprobs: bool = False,
    ref_logprobs: bool | None = None,
    budget_bytes: int | None = None,
    headroom: float = DEFAULT_HEADROOM,
    cache: EstimateCache | bool = True,
    compiled: dict[int, Any] | None = None,
    **step_options: Any,
) -> MicroBatchChoice:
    """The micro-batch count for `make_train_step(graphdef, optimizer, loss_config, ...)` at the worst
    case batch shape: rows x (prompt_len + completion_len), with the longest prompt bucket and the full
    generation budget (shorter batches need less).

    state: the train state the step will be given, concrete or abstract (`abstract_train_state`); only its
      shapes and dtypes are used to compile, and, when concrete, its bytes are not counted twice against
      the device's bytes in use. rows: rows per update (rl.prompts_per_step * rl.group_size, divided by
      update_on_rollout's minibatches). old_logprobs / ref_logprobs: the optional batch keys the step will
      see (rl.mu > 1 / beta > 0; ref defaults to loss_config.beta > 0).
    budget_bytes: per device, used as given; None = `default_budget_bytes(headroom, step_arguments=state)`
      (device statistics, or physical RAM on CPU).
    cache: True = the default file (`cache_path()`), False = none, or an EstimateCache.
    compiled: a dict that receives each executable the probe compiled, by micro-batch count (a caller
      running the same step at that shape can use it instead of compiling it again).
    step_options: the other keyword arguments given to `make_train_step` (chunk, remat, log_entropy,
      schedule): the probe must compile the same program the run will.
    On several processes every process runs the probe (the compiles are collective-free) and process 0's
    answer is used everywhere.
    """
    if ref_logprobs is None:
        ref_logprobs = loss_config.beta > 0
    abstract_state = abstract_like(state)
    batch = train_batch_spec(
        rows, prompt_len, completion_len, old_logprobs=old_logprobs, ref_logprobs=ref_logprobs
    )
    cfg = nnx.merge(graphdef, abstract_state.params).cfg
    shards = sharding.batch_shards(mesh, rules) if mesh is not None else 1

    def compile_for(m: int) -> Any:
        step = make_train_step(
            graphdef,
            optimizer,
            loss_config,
            temperature=temperature,
            micro_batches=m,
            mesh=mesh,
            rules=rules,
            **step_options,
        )
        executable = step.lower(abstract_state, batch).compile()
        if compiled is not None:
            compiled[m] = executable
        return executable

    source = "given"
    if budget_bytes is None:
        budget_bytes, source = default_budget_bytes(headroom, step_arguments=state)
    store = EstimateCache() if cache is True else (cache or None)
    key = None
    if store is not None:
        devices = list(mesh.devices.flat) if mesh is not None else jax.local_devices()[:1]
        key = train_step_key(
            cfg,
            abstract_state,
            batch,
            loss_config,
            devices=devices,
            mesh_shape=dict(mesh.shape) if mesh is not None else None,
            step_options=step_options | ({"rules": rules} if mesh is not None else {}),
        )
    choice = pick_micro_batches(
        compile_for, rows, shards, budget_bytes, cache=store, key=key, budget_source=source
    )
    logger.info("memory probe: %s", choice.summary())
    return _agree_across_processes(choice)
