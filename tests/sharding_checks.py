"""Sharded checks that need several (fake CPU) devices, run as a separate process by tests/test_sharding.py.

The device count is fixed when jax initialises its backend, and the pytest process has already done that
with one device, so these checks run here, under XLA_FLAGS=--xla_force_host_platform_device_count=N,
and print one JSON object for the test to assert on.

  python tests/sharding_checks.py model        # 8 devices: shard_model, logits, the sharded sampler
  python tests/sharding_checks.py distributed  # one of several processes (JAX_NUM_PROCESSES, ...)
"""

from __future__ import annotations

import functools
import json
import os
import sys
import types
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from rlvr_jax import sharding  # noqa: E402
from rlvr_jax.generate import GenerateOutput, RowParams, Sampler, SamplingParams, generate  # noqa: E402
from rlvr_jax.models.decoder import apply  # noqa: E402
from tests.tiny import TINY, numpy_model, use_compilation_cache  # noqa: E402

CFG = TINY
PAD, STOP = 0, 1
PROMPTS = np.array(
    [[0, 0, 5, 6, 7], [0, 8, 9, 10, 11], [12, 13, 14, 15, 16], [0, 0, 0, 3, 4]],
    np.int32,
)


def _model() -> nnx.Module:
    return numpy_model(CFG, 0.1, {"embed": 0.8, "lm_head": 0.5})  # sharp logits: clear greedy winners


def _forward(graphdef: nnx.GraphDef, state: Any, tokens: jax.Array, mask: jax.Array) -> jax.Array:
    return apply(CFG, nnx.merge(graphdef, state).arrays(), tokens, mask=mask)[0]


def _spec(x: jax.Array) -> list:
    return [list(a) if isinstance(a, tuple) else a for a in x.sharding.spec]


def check_model() -> dict[str, Any]:
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    model = _model()
    sharded = sharding.shard_model(model, mesh)
    mask = PROMPTS != PAD
    graphdef, state = nnx.split(model)
    _, sharded_state = nnx.split(sharded)

    # One forward pass: unsharded on one device vs. sharded parameters and rows.
    forward = jax.jit(functools.partial(_forward, graphdef))
    ref_logits = forward(state, PROMPTS, mask)
    ids, ids_mask = sharding.shard_batch((PROMPTS, mask), mesh)
    logits = forward(sharded_state, ids, ids_mask)

    # The pure sampler, greedy, G=2: on one device, then under jit with named shardings on the mesh.
    G, N = 2, 8
    kw = dict(max_new_tokens=N, stop_ids=(STOP,), pad_id=PAD, group_size=G)
    rows = RowParams.broadcast(SamplingParams(temperature=0.0), len(PROMPTS) * G)
    key = jax.random.key(0)
    ref = jax.jit(functools.partial(generate, graphdef, **kw))(state, PROMPTS, mask, key, rows, N)

    by_row, replicated = sharding.batch_sharding(mesh), NamedSharding(mesh, PartitionSpec())
    sharded_generate = jax.jit(
        functools.partial(generate, graphdef, **kw),
        in_shardings=(
            sharding.param_shardings(sharded_state, mesh),
            by_row,
            by_row,
            replicated,
            RowParams(by_row, by_row, by_row),
            replicated,
        ),
        out_shardings=GenerateOutput(by_row, by_row, by_row, by_row, by_row, replicated),
    )
    out = sharded_generate(sharded_state, ids, ids_mask, key, sharding.shard_batch(rows, mesh), N)

    try:
        sharding.shard_batch(np.zeros((3, 2)), mesh)
        uneven_error = ""
    except ValueError as e:
        uneven_error = str(e)

    # The host-side Sampler, unchanged, given a sharded model (prompts go in replicated).
    tokenizer = types.SimpleNamespace(pad_id=PAD, stop_ids=(STOP,))
    sampled = Sampler(sharded, tokenizer).generate_ids(
        PROMPTS, mask, SamplingParams(temperature=0.0, max_new_tokens=N), group_size=G
    )
    # The Sampler given the mesh: rows split over (data, fsdp); an odd prompt count is padded and cut.
    mesh_sampler = Sampler(model, tokenizer, mesh=mesh)
    odd = len(PROMPTS) - 1
    mesh_sampled = mesh_sampler.generate_ids(
        PROMPTS[:odd], mask[:odd], SamplingParams(temperature=0.0, max_new_tokens=N), group_size=G
    )
    return {
        "mesh_sampler_tokens": np.asarray(mesh_sampled.tokens).tolist(),
        "mesh_sampler_rows": odd * G,
        "mesh_sampler_q_spec": _spec(mesh_sampler.params["layers"]["q"][...]),
        "devices": jax.device_count(),
        "mesh": dict(mesh.shape),
        "q_spec": _spec(sharded.layers.q[...]),
        "k_spec": _spec(sharded.layers.k[...]),
        "embed_spec": _spec(sharded.embed[...]),
        "q_shard_shape": list(sharded.layers.q[...].addressable_shards[0].data.shape),
        "logits_max_abs_diff": float(np.max(np.abs(np.asarray(logits) - np.asarray(ref_logits)))),
        "logits_spec": _spec(logits),
        "ref_tokens": np.asarray(ref.tokens).tolist(),
        "sharded_tokens": np.asarray(out.tokens).tolist(),
        "sharded_tokens_spec": _spec(out.tokens),
        "sharded_mask_equal": bool(np.array_equal(np.asarray(out.mask), np.asarray(ref.mask))),
        "sampler_tokens": np.asarray(sampled.tokens).tolist(),
        "uneven_batch_error": uneven_error,
    }


def check_distributed() -> dict[str, Any]:
    """One of several processes: join, build the global mesh, assemble per-host rows, run a forward."""
    first = sharding.initialize_distributed()
    again = sharding.initialize_distributed()  # a second call must be a harmless no-op
    mesh = sharding.make_mesh(data=-1, fsdp=2)
    pid, nproc = jax.process_index(), jax.process_count()

    # Each host holds only its own prompts; the global batch is their concatenation in process order.
    per_host = len(PROMPTS) // nproc
    local = PROMPTS[pid * per_host : (pid + 1) * per_host]
    ids = sharding.host_local_to_global(local, mesh)
    mask = sharding.host_local_to_global(local != PAD, mesh)

    model = _model()  # the same seed on every host: each copies in the slices its devices hold
    graphdef, state = nnx.split(model)
    _, sharded_state = nnx.split(sharding.shard_model(model, mesh))
    replicated = NamedSharding(mesh, PartitionSpec())
    gather = jax.jit(lambda x: x, out_shardings=replicated)
    forward = jax.jit(functools.partial(_forward, graphdef), out_shardings=replicated)
    logits = np.asarray(forward(sharded_state, ids, mask).addressable_data(0))
    # Reference: this host alone, with every prompt, on one of its own devices.
    local_state = jax.device_put(state, jax.local_devices()[0])
    ref = np.asarray(jax.jit(functools.partial(_forward, graphdef))(local_state, PROMPTS, PROMPTS != PAD))

    # The Sampler on the global mesh, fed this host's prompts only (one fewer on the last host, so that
    # hosts disagree on row counts), returns this host's rows; compared with one device doing them all.
    tokenizer = types.SimpleNamespace(pad_id=PAD, stop_ids=(STOP,))
    mine = local[:-1] if pid == nproc - 1 else local
    params = SamplingParams(temperature=1.0, max_new_tokens=6)
    sampler = Sampler(model, tokenizer, mesh=mesh)
    out = sampler.generate_ids(mine, mine != PAD, params, seed=3, group_size=2)
    with jax.default_device(jax.local_devices()[0]):
        alone = Sampler(_model(), tokenizer).generate_ids(
            PROMPTS, PROMPTS != PAD, params, seed=3, group_size=2
        )
    return {
        "sampler_multihost": sampler.multihost,
        "sampler_rows": list(np.shape(out.tokens)),
        "sampler_tokens": np.asarray(out.tokens).tolist(),
        "sampler_logprobs": np.asarray(out.logprobs).tolist(),
        "alone_tokens": np.asarray(alone.tokens).tolist(),
        "alone_logprobs": np.asarray(alone.logprobs).tolist(),
        "rows_per_host": per_host,
        "initialized": [first, again],
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "process": [pid, nproc],
        "devices": [jax.local_device_count(), jax.device_count()],
        "mesh": dict(mesh.shape),
        "ids_shape": list(ids.shape),
        "ids_fully_addressable": ids.is_fully_addressable,
        "ids_global_equal": bool(np.array_equal(np.asarray(gather(ids).addressable_data(0)), PROMPTS)),
        "logits_max_abs_diff": float(np.max(np.abs(logits - ref))),
    }


if __name__ == "__main__":
    use_compilation_cache()
    checks = {"model": check_model, "distributed": check_distributed}
    print("RESULT " + json.dumps(checks[sys.argv[1]]()), flush=True)
