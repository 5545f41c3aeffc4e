"""The tiny model the unit tests share, and helpers for check scripts that run as separate processes."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlvr_jax.models import ModelConfig, abstract_model

REPO = Path(__file__).resolve().parent.parent

# Two KV heads, so that a tensor=2 mesh axis splits them; small enough to compile in seconds.
TINY = ModelConfig(
    family="llama",
    vocab_size=24,
    hidden_size=32,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    intermediate_size=64,
)


@contextlib.contextmanager
def lowerings(this_thread: bool = False) -> Iterator[list[str]]:
    """The names of the functions JAX lowers inside the block, through `jax.monitoring`'s public event
    listeners. A lowering is a miss of a jitted function's in-memory cache: a compile (or a load from the
    persistent compilation cache) that the call waited for; none means every call found its executable.
    this_thread: only the lowerings of the thread that entered the block (the trainer's warm-up lowers in
    a thread of its own meanwhile)."""
    names: list[str] = []
    owner = threading.get_ident()

    def listener(event: str, seconds: float, **kwargs: object) -> None:
        if this_thread and threading.get_ident() != owner:
            return
        if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
            names.append(str(kwargs.get("fun_name", "?")))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield names
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def use_compilation_cache() -> None:
    """The test suite's persistent cache, also for small compiles: a cold start is mostly compiling."""
    jax.config.update("jax_compilation_cache_dir", os.environ.get("RLVR_JAX_CACHE", str(REPO / ".jax_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


def numpy_model(
    cfg: ModelConfig, scale: float, scales: dict[str, float] | None = None, seed: int = 3
) -> nnx.Module:
    """A model with deterministic weights drawn by numpy: N(0, scale) (per parameter name from `scales`),
    norms centred on 1. Identical in every process, and without jax's random initialisers, which compile
    once per parameter shape (that dominates a cold start on CPU, and a second process of a multi-process
    run never writes the persistent compilation cache)."""
    graphdef, state = nnx.split(abstract_model(cfg))
    rng = np.random.default_rng(seed)
    scales = scales or {}

    def fill(path: tuple, var: nnx.Variable) -> nnx.Variable:
        name = str(getattr(path[-1], "key", path[-1]))
        value = rng.standard_normal(var.shape) * scales.get(name, scale) + (
            1.0 if name.endswith("norm") else 0.0
        )
        return var.replace(jnp.asarray(value, var.dtype))

    state = jax.tree_util.tree_map_with_path(fill, state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return nnx.merge(graphdef, state)
