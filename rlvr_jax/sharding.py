"""Device meshes, logical-axis rules and multi-host start-up: how the model and the batches meet devices.

Design choices, and why:
- One mesh with three named axes, ('data', 'fsdp', 'tensor'), on every platform. One CPU device, eight
  fake CPU devices and a TPU pod slice run the same jitted code; only the axis sizes change. Computation is
  `jax.jit` over `NamedSharding`s (the modern form of pjit); XLA's propagation shards everything in
  between, so the mesh axes are `AxisType.Auto` (jax's own default is now Explicit, which would make
  sharding part of every array's type and every op in the model would have to agree with it).
- Parameters carry logical axis names ('embed', 'q_heads', ...) and one rule table maps them to mesh axes.
  Changing the parallelism layout means changing the table, never the model.
- A dimension that does not divide over its mesh axes is replicated rather than rejected: 2 KV heads on a
  4-way tensor axis is the common case and replicating those small kernels is the right answer. Each such
  fallback is recorded, so it can be logged once, rather than silently costing memory.
- Batches are sharded over ('data', 'fsdp') together: FSDP devices hold different rows as well as
  different parameter slices, so every device does useful work.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

import jax
import numpy as np
from flax import nnx
from jax.sharding import AbstractMesh, AxisType, Mesh, NamedSharding, PartitionSpec

logger = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

MeshAxes = str | tuple[str, ...] | None
Rules = Sequence[tuple[str, MeshAxes]]

# Logical axis name -> mesh axes. The first entry for a name wins, so a variant is `(("mlp", None),) + rules`.
DEFAULT_RULES: tuple[tuple[str, MeshAxes], ...] = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
    ("positions", None),
    ("lora_rank", None),  # LoRA adapters' rank axis: A and B shard along their base weight's other axes
)


# --------------------------------------------------------------------------------------------------- mesh


def mesh_shape(data: int, fsdp: int, tensor: int, num_devices: int) -> tuple[int, int, int]:
    """Resolves a -1 axis to "all remaining devices" and checks the product; pure, so it is testable."""
    sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
    free = [name for name, size in sizes.items() if size == -1]
    bad = {name: size for name, size in sizes.items() if size != -1 and size < 1}
    if bad or len(free) > 1:
        raise ValueError(f"mesh axis sizes must be >= 1, with at most one -1 (= the rest); got {sizes}")
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if free:
        if num_devices % fixed:
            raise ValueError(
                f"cannot fill axis {free[0]!r}: {num_devices} devices do not divide by the other axes' "
                f"product {fixed} ({sizes})"
            )
        sizes[free[0]] = num_devices // fixed
    elif fixed != num_devices:
        raise ValueError(
            f"mesh data={data} x fsdp={fsdp} x tensor={tensor} = {fixed} devices, but {num_devices} are "
            "available; make the product match (use -1 on one axis for 'all remaining devices')"
        )
    return sizes["data"], sizes["fsdp"], sizes["tensor"]


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[Any] | None = None) -> Mesh:
    """A ('data', 'fsdp', 'tensor') mesh over `devices` (default: every device of every process).

    `jax.make_mesh` orders the devices for the physical topology (rings on TPU), which a plain reshape of
    `jax.devices()` does not. It would silently use only the first devices when the product is smaller, so
    the sizes are checked here first.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(data, fsdp, tensor, len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


# ------------------------------------------------------------------------------------------ logical rules


class Fallback(NamedTuple):
    """A dimension the rules asked to shard that stays replicated instead, and why."""

    dim: int
    logical: str
    size: int
    mesh_axes: tuple[str, ...]
    reason: str


def _as_tuple(target: MeshAxes) -> tuple[str, ...]:
    if target is None:
        return ()
    return (target,) if isinstance(target, str) else tuple(target)


def _rule_lookup(rules: Rules) -> dict[str, tuple[str, ...]]:
    table: dict[str, tuple[str, ...]] = {}
    for name, target in rules:
        table.setdefault(name, _as_tuple(target))  # the first rule for a name wins
    return table


def _axis_sizes(mesh: Mesh | AbstractMesh | Mapping[str, int]) -> dict[str, int]:
    """Mesh (or AbstractMesh) -> {axis: size}; a plain mapping passes through (unit tests need no devices)."""
    return dict(mesh.shape) if hasattr(mesh, "axis_names") else dict(mesh)


def resolve_spec(
    axes: Sequence[str | None],
    shape: Sequence[int],
    mesh: Mesh | AbstractMesh | Mapping[str, int],
    rules: Rules = DEFAULT_RULES,
) -> tuple[PartitionSpec, tuple[Fallback, ...]]:
    """Logical axis names + shape -> (PartitionSpec, the dimensions that fell back to replication).

    A dimension is replicated when its logical name has no rule (or maps to None), when its size does not
    divide by the product of its mesh axes' sizes, or when one of those mesh axes already shards an
    earlier dimension (a mesh axis may appear only once in a spec).
    """
    if len(axes) != len(shape):
        raise ValueError(f"{len(axes)} axis names {tuple(axes)} for a {len(shape)}-d shape {tuple(shape)}")
    sizes = _axis_sizes(mesh)
    table = _rule_lookup(rules)
    used: set[str] = set()
    entries: list[MeshAxes] = []
    fallbacks: list[Fallback] = []
    for dim, (name, size) in enumerate(zip(axes, shape, strict=True)):
        targets = table.get(name, ()) if name is not None else ()
        unknown = [a for a in targets if a not in sizes]
        if unknown:
            raise ValueError(
                f"rule {name!r} -> {targets} names mesh axes {unknown} that the mesh {sizes} does not have"
            )
        if not targets:
            entries.append(None)
            continue
        taken = [a for a in targets if a in used]
        shards = math.prod(sizes[a] for a in targets)
        if taken:
            reason = f"mesh axis {', '.join(taken)} already shards another dimension"
        elif size % shards:
            reason = f"size {size} does not divide over {shards} devices"
        else:
            used.update(targets)
            entries.append(targets[0] if len(targets) == 1 else targets)
            continue
        fallbacks.append(Fallback(dim, name, size, targets, reason))
        entries.append(None)
    return PartitionSpec(*entries), tuple(fallbacks)


def logical_to_spec(
    axes: Sequence[str | None],
    shape: Sequence[int],
    mesh: Mesh | AbstractMesh | Mapping[str, int],
    rules: Rules = DEFAULT_RULES,
) -> PartitionSpec:
    """The PartitionSpec for one array; see `resolve_spec` for the fallbacks it applies."""
    return resolve_spec(axes, shape, mesh, rules)[0]


# ----------------------------------------------------------------------------------------- parameters


class ShardingPlan(NamedTuple):
    """Shardings for a parameter tree, and every fallback keyed by the parameter's dotted path."""

    shardings: Any
    fallbacks: dict[str, tuple[Fallback, ...]]


def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def _path_str(path: tuple[Any, ...]) -> str:
    parts = []
    for key in path:
        name = getattr(key, "key", getattr(key, "name", getattr(key, "idx", key)))
        parts.append(str(name))
    return ".".join(parts)


def plan_param_shardings(
    model_or_state: Any, mesh: Mesh | AbstractMesh, rules: Rules = DEFAULT_RULES
) -> ShardingPlan:
    """Pure: a NamedSharding per parameter (from its `axes` metadata) plus the recorded fallbacks.

    Accepts a module, its `nnx.state`, or an abstract model (`nnx.eval_shape`): only shapes and metadata
    are read, so shardings can be planned before any weight is loaded (and on an AbstractMesh, before any
    device exists). Each Variable is replaced by the same Variable holding a NamedSharding (the form
    `nnx.get_partition_spec` uses), so the result has exactly the state's tree structure and can be given
    to `jax.device_put` or `jax.jit(in_shardings=...)`. Variables without `axes` metadata are replicated.
    """
    state = nnx.state(model_or_state) if isinstance(model_or_state, nnx.Module) else model_or_state
    fallbacks: dict[str, tuple[Fallback, ...]] = {}

    def one(path: tuple[Any, ...], leaf: Any) -> Any:
        axes = leaf.get_metadata().get("axes") if _is_variable(leaf) else None
        if axes is None:
            spec = PartitionSpec()
        else:
            spec, fell_back = resolve_spec(axes, leaf.shape, mesh, rules)
            if fell_back:
                fallbacks[_path_str(path)] = fell_back
        sharding = NamedSharding(mesh, spec)
        return leaf.replace(sharding) if _is_variable(leaf) else sharding

    shardings = jax.tree_util.tree_map_with_path(one, state, is_leaf=_is_variable)
    return ShardingPlan(shardings, fallbacks)


def describe_fallbacks(fallbacks: Mapping[str, Sequence[Fallback]]) -> str:
    """One line per fallback, for a single log message."""
    return "\n".join(
        f"  {path} dim {f.dim} ({f.logical}={f.size} over {'x'.join(f.mesh_axes)}): {f.reason}"
        for path, items in sorted(fallbacks.items())
        for f in items
    )


_LOGGED: set[str] = set()  # fallback reports already logged: the trainer and sampler plan the same tree


def _log_once(fallbacks: Mapping[str, Sequence[Fallback]], mesh: Mesh) -> None:
    if not fallbacks:
        return
    text = f"replicating {len(fallbacks)} parameter(s) on mesh {dict(mesh.shape)}:\n" + describe_fallbacks(
        fallbacks
    )
    if text not in _LOGGED:
        _LOGGED.add(text)
        logger.warning(text)


def param_shardings(
    model_or_state: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES, *, pure: bool = False
) -> Any:
    """NamedShardings matching `nnx.state(model)` (or, with pure=True, its `nnx.to_pure_dict` form).

    Replication fallbacks are logged once; use `plan_param_shardings` to get them as data.
    """
    plan = plan_param_shardings(model_or_state, mesh, rules)
    _log_once(plan.fallbacks, mesh)
    return nnx.to_pure_dict(plan.shardings) if pure else plan.shardings


def _put(x: Any, target: NamedSharding) -> jax.Array:
    if target.is_fully_addressable or (isinstance(x, jax.Array) and not x.is_fully_addressable):
        return jax.device_put(x, target)  # one host, or a reshard of an array already spread over hosts
    # Multi-host: each process copies in only the slices its own devices hold. jax.device_put would first
    # all-gather the whole array from every host to check that they agree, once per parameter.
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, target, lambda index: host[index])


def put_on_mesh(tree: Any, shardings: Any) -> Any:
    """`jax.device_put(tree, shardings)` that also scales to many hosts holding the same full values.

    On several processes every process must pass the same values (same seed or same checkpoint); they are
    not compared.
    """
    return jax.tree.map(_put, tree, shardings)


def shard_model(model: nnx.Module, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> nnx.Module:
    """A copy of `model` whose parameters live on `mesh`, each sharded by its logical axes."""
    graphdef, state = nnx.split(model)
    state = put_on_mesh(state, param_shardings(state, mesh, rules))
    return nnx.merge(graphdef, state)


# -------------------------------------------------------------------------------------------- batches


def batch_axes(rules: Rules = DEFAULT_RULES) -> tuple[str, ...]:
    """The mesh axes the leading (row) dimension of batches is split over."""
    return _rule_lookup(rules).get("batch", ())


def batch_sharding(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> NamedSharding:
    """Rows over ('data', 'fsdp'), every other dimension replicated; fits arrays of any rank >= 1."""
    axes = batch_axes(rules)
    return NamedSharding(mesh, PartitionSpec(axes if axes else None))


def batch_shards(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> int:
    """How many ways the rows are split: a global batch must be a multiple of this."""
    sizes = _axis_sizes(mesh)
    return math.prod(sizes[a] for a in batch_axes(rules))


def local_batch_shards(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> int:
    """How many distinct row blocks this process's devices hold: a per-host batch must divide by it."""
    names = list(mesh.axis_names)
    dims = [names.index(a) for a in batch_axes(rules)]
    local = {d.id for d in mesh.local_devices}
    blocks = {tuple(idx[i] for i in dims) for idx, d in np.ndenumerate(mesh.devices) if d.id in local}
    return max(len(blocks), 1)


def _check_rows(x: Any, shards: int, what: str) -> None:
    rows = np.shape(x)[0] if np.ndim(x) else None
    if rows is None or rows % shards:
        raise ValueError(
            f"{what} has shape {np.shape(x)}: its leading (batch) dimension must be a multiple of the "
            f"{shards} {what.removesuffix(' array')} shards over the mesh's batch axes; pad the batch, or "
            "change the mesh"
        )


def shard_batch(batch: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Any:
    """Puts a global batch (an array or a pytree of them, the same on every process) on the mesh by rows.

    Rows that do not divide are an error rather than a silent replication: a replicated batch would do
    every row's work on every device.

    On several processes each one copies in only its own devices' rows, with no collective: jax.device_put
    would all-gather every array to check that the hosts agree, and on CPU (gloo) those checks, several
    small collectives per batch, were where two-process runs aborted with a "collective mismatch" (about
    1 launch in 6 on a loaded 2-core machine). The trainer gathers the rows on every host first, so they
    agree by construction.
    """
    shards = batch_shards(mesh, rules)
    jax.tree.map(lambda x: _check_rows(x, shards, "batch array"), batch)
    target = batch_sharding(mesh, rules)
    return jax.tree.map(lambda x: _put(x, target), batch)


def host_local_to_global(batch: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Any:
    """Assembles each process's own rows (an array or pytree) into global arrays sharded by rows.

    Every host loads only its shard of the data (the grain pipeline shards by process); the global
    batch is the concatenation over processes in process order, and no host ever holds all of it.
    """
    sharding = batch_sharding(mesh, rules)
    shards = local_batch_shards(mesh, rules)
    jax.tree.map(lambda x: _check_rows(x, shards, "process-local batch array"), batch)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


# ---------------------------------------------------------------------------------------- multi-host


def host_part(items: Sequence[Any]) -> Sequence[Any]:
    """This process's contiguous part of a global batch (`items[i*k:(i+1)*k]`, k = len / processes).

    The trainer draws the same global batch of prompts on every host and each host generates and scores
    only its part; the parts in process order are the global batch, so a run's prompts, and with them its
    samples and metrics, do not depend on how many processes share the work.
    """
    n, i = jax.process_count(), jax.process_index()
    if len(items) % n:
        raise ValueError(
            f"a batch of {len(items)} does not split over {n} processes; use a multiple of {n} "
            "(rl.prompts_per_step)"
        )
    k = len(items) // n
    return items[i * k : (i + 1) * k]


def gather_host_parts(tree: Any) -> Any:
    """The global batch on every host: each process's numpy rows (same shapes everywhere), concatenated in
    process order (the inverse of `host_part`). One process: returned as it is."""
    if jax.process_count() == 1:
        return tree
    from jax.experimental import multihost_utils

    dtypes = jax.tree.map(lambda x: np.asarray(x).dtype, tree)
    gathered = multihost_utils.process_allgather(tree, tiled=True)
    # Through the devices and back: 64-bit integers come back as 32-bit (x64 off); keep the host's dtypes.
    return jax.tree.map(lambda x, dtype: np.asarray(x).astype(dtype, copy=False), gathered, dtypes)


def _int_env(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise ValueError(f"{name}={env[name]!r} is not an integer") from None


def _cluster_processes(env: Mapping[str, str]) -> int:
    """Processes a cluster launcher says it started (1 when none is recognised)."""
    counts = [1]
    if "SLURM_STEP_NODELIST" in env:  # inside an `srun` step, where every task runs this program
        counts.append(int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or 1))
    if "OMPI_MCA_orte_hnp_uri" in env:  # mpirun (Open MPI)
        counts.append(int(env.get("OMPI_COMM_WORLD_SIZE") or 1))
    for name in ("TPU_PROCESS_ADDRESSES", "TPU_WORKER_HOSTNAMES"):  # TPU pods on GKE
        if env.get(name):
            counts.append(len(env[name].split(",")))
    if env.get("MEGASCALE_COORDINATOR_ADDRESS"):  # multislice TPU
        counts.append(2)
    return max(counts)


def distributed_settings(env: Mapping[str, str]) -> dict[str, Any] | None:
    """The `jax.distributed.initialize` arguments this environment asks for; None for one process.

    Explicit settings: JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES, JAX_PROCESS_ID.
    Otherwise a recognised launcher (SLURM srun, Open MPI, TPU pods, multislice) with more than one
    process returns {} and jax's own cluster detection fills in everything. RLVR_DISTRIBUTED=1 forces
    that detection (Cloud TPU VM pod slices, whose worker list lives only in the metadata server);
    RLVR_DISTRIBUTED=0 forces a single process.
    """
    force = env.get("RLVR_DISTRIBUTED", "").strip().lower()
    if force in ("0", "false", "no"):
        return None
    if env.get("JAX_NUM_PROCESSES"):
        n = _int_env(env, "JAX_NUM_PROCESSES")
        if n <= 1:
            return None
        missing = [k for k in ("JAX_COORDINATOR_ADDRESS", "JAX_PROCESS_ID") if not env.get(k)]
        if missing:
            raise ValueError(
                f"JAX_NUM_PROCESSES={n} but {' and '.join(missing)} not set: every process needs the "
                f"coordinator's host:port (process 0) and its own JAX_PROCESS_ID in 0..{n - 1}"
            )
        pid = _int_env(env, "JAX_PROCESS_ID")
        if not 0 <= pid < n:
            raise ValueError(f"JAX_PROCESS_ID={pid} must be in 0..{n - 1} for JAX_NUM_PROCESSES={n}")
        return {"coordinator_address": env["JAX_COORDINATOR_ADDRESS"], "num_processes": n, "process_id": pid}
    if env.get("JAX_COORDINATOR_ADDRESS"):  # the rest comes from jax's cluster detection
        settings: dict[str, Any] = {"coordinator_address": env["JAX_COORDINATOR_ADDRESS"]}
        if env.get("JAX_PROCESS_ID"):
            settings["process_id"] = _int_env(env, "JAX_PROCESS_ID")
        return settings
    if force in ("1", "true", "yes", "auto"):
        return {}
    return {} if _cluster_processes(env) > 1 else None


CPU_COLLECTIVE_PASSES = (
    "cpu-all-reduce-combiner",
    "all-reduce-combiner",
    "all-gather-combiner",
    "reduce-scatter-combiner",
)


def _separate_cpu_collectives(
    platforms: str | None = None, env: MutableMapping[str, str] = os.environ
) -> None:
    """On a CPU-only multi-process run, keeps XLA from combining collectives into multi-operand ones.

    Why: XLA:CPU starts one gloo operation per operand of a combined all-reduce at once, and gloo matches
    messages by arrival order, so a combined gradient all-reduce (a few vectors and a dozen scalar
    metrics) could pair one process's scalar with the other's vector: "Received data size doesn't match
    expected size ... collective mismatch", an abort in about 1 of 6 two-process CPU launches on a loaded
    2-core machine, always inside the update. Single-operand collectives run one at a time, in program
    order. XLA_FLAGS is read when the first backend starts, so this runs before that; GPU and TPU runs
    (NCCL, ICI) keep the combiners, which they need for speed.
    """
    if platforms is None:
        platforms = jax.config.jax_platforms or env.get("JAX_PLATFORMS", "")
    if str(platforms).lower().split(",") != ["cpu"]:
        return
    flags = env.get("XLA_FLAGS", "")
    if "--xla_disable_hlo_passes" in flags:  # the user's own choice of passes wins
        return
    env["XLA_FLAGS"] = f"{flags} --xla_disable_hlo_passes={','.join(CPU_COLLECTIVE_PASSES)}".strip()


def initialize_distributed(env: Mapping[str, str] | None = None) -> bool:
    """Joins this process to a multi-process JAX run when launched as one; returns True when it did.

    Call it first thing, before any JAX computation (jax requires that). A single process is a no-op (no
    coordinator service, no backend initialisation), and calling it again after success is a no-op too,
    so library code and entry points may both call it.
    """
    if jax.distributed.is_initialized():
        return True
    settings = distributed_settings(os.environ if env is None else env)
    if settings is None:
        return False
    # XLA:CPU may run two dispatched programs at once, and gloo pairs collectives by arrival order: an
    # update's all-reduce on one process could meet another program's on the other ("collective
    # mismatch", seen in about 1 of 3 two-process CPU runs). Synchronous dispatch on the CPU backend keeps
    # one program at a time, in program order on every process. It is read when the CPU client is made,
    # so it is set here, before any backend starts; GPU and TPU programs are unaffected (their streams
    # order them), and the host CPU client of a GPU run hardly computes.
    jax.config.update("jax_cpu_enable_async_dispatch", False)
    _separate_cpu_collectives()
    jax.distributed.initialize(**settings)
    logger.info(
        "jax.distributed: process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True


def end_failed_process(error: BaseException, workdir: str | os.PathLike[str], code: int = 1) -> NoReturn:
    """Ends this process of a failed multi-process run at once: one `error:` line on stderr, exit `code`.

    Why not a normal exit: a collective fails when another process is gone (a lost host, an OOM kill), and
    Python's exit would then wait for the dead: orbax's in-flight checkpoint at its commit barrier and
    jax.distributed's shutdown at another, until the coordination service's heartbeat timeout (100 s by
    default) aborts the process with a C++ stack trace. `os._exit` skips both, after flushing the output.
    Nothing half-written is read by a resume: a checkpoint step is renamed into place only after every
    process passed orbax's commit barrier, so an interrupted one stays a `<step>.orbax-checkpoint-tmp`
    folder, which is not a step (the next save of that step deletes it); a step orbax committed just before
    the end, whose `integrity.json` this exit cut short, counts as incomplete (`rlvr_jax.checkpointing`):
    the resume starts from the step before it and moves it to `checkpoints/damaged/`. metrics.jsonl is
    flushed line by line and a resume drops the lines after its checkpoint. Where a collective hangs
    instead of failing (NCCL can), the heartbeat timeout is the bound.
    """
    cause = (str(error).strip().splitlines() or [""])[0][:500]
    print(
        f"error: process {jax.process_index()} of {jax.process_count()} stopped: {type(error).__name__}: "
        f"{cause}\nIn a multi-process run this usually means another process ended (see its log). The "
        f"newest complete checkpoint in {Path(workdir) / 'checkpoints'} is intact: relaunch every process "
        "with the same --workdir to resume from it.",
        file=sys.stderr,
    )
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)
