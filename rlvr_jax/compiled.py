"""Compiling ahead of time from shapes alone, and checking that an executable takes given arguments.

Why from shapes: a compile that needs no real array runs nothing on the device, so it can run in a
background thread while the main thread keeps dispatching steps (the trainer's warm-up compiles the
prompt buckets that step 1 does not need that way, `rlvr_jax.trainer.warmup`), and it holds no reference to
buffers that a donating step frees meanwhile. `abstract` turns arrays into `jax.ShapeDtypeStruct`s that
lower to the very program the arrays would; `outputs` gives a compiled program's results as such
structs, so the program that consumes them can be compiled before the first one ever ran.

An executable compiled this way is called directly (`jax.stages.Compiled`), not through the jitted
function's cache: on a mesh, a jit without `in_shardings` lowered for shape structs does not fill the
cache that the later call with committed arrays looks up (it compiled again; jax 0.11). A compiled
executable checks its arguments before it runs and raises (TypeError for another dtype or shape,
ValueError for another placement), so a caller can fall back to the jit; `accepts` asks beforehand.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np


def abstract(tree: Any) -> Any:
    """Each array leaf as a `jax.ShapeDtypeStruct` (shape, dtype, weak type, and the sharding of a
    committed jax.Array: one placed on purpose, which the program is then compiled for); other leaves as
    they are. An uncommitted array (created without a placement) lowers, as a real call would, to the
    default device."""

    def one(x: Any) -> Any:
        if isinstance(x, jax.Array):
            sharding = x.sharding if x.committed else None
            weak = bool(getattr(x, "weak_type", False))  # a typed PRNG key array has none
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding, weak_type=weak)
        if isinstance(x, np.ndarray | np.generic):
            return jax.ShapeDtypeStruct(np.shape(x), x.dtype)
        return x

    return jax.tree.map(one, tree)


def outputs(compiled: jax.stages.Compiled, committed: bool) -> Any:
    """A compiled program's outputs as shape structs: what a program that takes them is compiled for.
    committed: whether the real outputs are (a program with shardings on a mesh gives committed arrays;
    one jitted without any placement gives uncommitted ones, which carry no sharding here)."""
    shardings = compiled.output_shardings

    def one(info: Any, sharding: Any) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(
            info.shape, info.dtype, sharding=sharding if committed else None, weak_type=info.weak_type
        )

    return jax.tree.map(one, compiled.out_info, shardings)


def accepts(compiled: Any, args: tuple) -> bool:
    """Whether a `jax.stages.Compiled` takes exactly these positional arguments: the same tree, and per
    leaf the same shape, dtype and weak type, and (for a jax.Array, or a shape struct that names one) the
    sharding it was compiled for. Anything it cannot tell counts as no."""
    try:
        return _same_signature(compiled, args)
    except Exception:  # an executable that cannot be checked is not used
        return False


def _same_signature(compiled: Any, args: tuple) -> bool:
    leaves, tree = jax.tree.flatten((args, {}))
    if tree != compiled.in_tree:
        return False
    avals = jax.tree.leaves(compiled.in_avals)
    # One per argument leaf, None where the program does not use that argument (XLA drops it).
    shardings = compiled.in_tree.flatten_up_to(compiled.input_shardings)
    if not len(leaves) == len(avals) == len(shardings):
        return False
    for x, aval, want in zip(leaves, avals, shardings, strict=True):
        if np.shape(x) != aval.shape or x.dtype != aval.dtype:  # (jnp.dtype cannot read a PRNG key's)
            return False
        if bool(getattr(x, "weak_type", False)) != bool(getattr(aval, "weak_type", False)):
            return False
        placed = x.sharding if isinstance(x, jax.Array) else getattr(x, "sharding", None)
        if placed is not None and want is not None and not placed.is_equivalent_to(want, np.ndim(x)):
            return False
    return True
