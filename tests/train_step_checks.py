"""Sharded train-step checks that need several (fake CPU) devices, run as subprocesses by
tests/test_train_step.py (the pytest process already initialised jax with one device).

  python tests/train_step_checks.py mesh OUT.npz         # 8 devices, a (data=2, fsdp=2, tensor=2) mesh
  python tests/train_step_checks.py distributed OUT      # one of two processes: writes OUT.<pid>.npz

Both run two updates on one rollout batch (`run`: update_on_rollout with epochs=2, so old log-probs are
computed once, then two optimizer steps of two micro-batches each), save the final parameters and optimizer
state as npz, and print one JSON object. The test compares them with `run(None, rollout_batch())` on its
own single device, computed once for both checks.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from rlvr_jax import sharding  # noqa: E402
from rlvr_jax.generate import GenerateOutput  # noqa: E402
from rlvr_jax.optim.optimizer import OptimConfig, make_optimizer  # noqa: E402
from rlvr_jax.optim.state import TrainState, init_train_state  # noqa: E402
from rlvr_jax.rl.batch import batch_from_rollout  # noqa: E402
from rlvr_jax.rl.losses import LossConfig  # noqa: E402
from rlvr_jax.rl.update import make_logprob_fn, make_train_step, update_on_rollout  # noqa: E402
from tests.tiny import TINY, numpy_model, use_compilation_cache  # noqa: E402

CFG = TINY
PAD, G, N = 0, 2, 6
PROMPTS = np.array([[0, 0, 5, 6, 7], [0, 8, 9, 10, 11], [12, 13, 14, 15, 16], [0, 0, 0, 3, 4]], np.int32)
TEMPERATURE = 0.8
OPTIM = OptimConfig(learning_rate=2e-3, warmup_steps=1, total_steps=4, schedule="cosine", weight_decay=0.1)
LOSS = LossConfig(clip_low=0.2, clip_high=0.28, beta=0.0)
MICRO = 2


def _model() -> nnx.Module:
    return numpy_model(CFG, 0.3)


def rollout_batch() -> dict[str, np.ndarray]:
    """A rollout of 8 rows (4 prompts x G=2) with uneven completion lengths, as the sampler reports it."""
    rng = np.random.default_rng(7)
    rows = len(PROMPTS) * G
    lengths = np.array([6, 3, 5, 6, 1, 4, 6, 2])
    mask = np.arange(N)[None, :] < lengths[:, None]
    tokens = np.where(mask, rng.integers(2, CFG.vocab_size, (rows, N)), PAD).astype(np.int32)
    sampler_lp = np.where(mask, -rng.uniform(0.5, 4.0, (rows, N)), 0.0).astype(np.float32)
    out = GenerateOutput(tokens, sampler_lp, mask, lengths, lengths < N, np.int32(N))
    advantages = rng.standard_normal(rows).astype(np.float32)
    batch = batch_from_rollout(PROMPTS, PROMPTS != PAD, out, advantages)
    return {k: np.asarray(v) for k, v in batch.items()}


def run(mesh: Any, batch: dict[str, Any]) -> tuple[TrainState, list[dict[str, float]]]:
    """Two updates on one rollout batch, on `mesh` or (None) on the default device."""
    model = _model()
    graphdef = nnx.graphdef(model)
    opt = make_optimizer(OPTIM)
    state = init_train_state(model, opt, mesh)
    kw = dict(temperature=TEMPERATURE, chunk=4, mesh=mesh)
    step = make_train_step(graphdef, opt, LOSS, micro_batches=MICRO, **kw)
    logprobs = make_logprob_fn(graphdef, **kw)
    state, history = update_on_rollout(step, state, batch, epochs=2, logprob_fn=logprobs)
    return state, [{k: float(v) for k, v in m.items()} for m in history]


def _spec(x: jax.Array) -> list:
    return [list(a) if isinstance(a, tuple) else a for a in x.sharding.spec]


def save_leaves(path: str, state: TrainState) -> None:
    """Every parameter and optimizer-state leaf, gathered to this host, in tree order."""
    leaves = jax.tree.leaves((state.params, state.opt_state))
    np.savez(path, *[np.asarray(x) for x in leaves])


def load_leaves(path: str) -> list[np.ndarray]:
    with np.load(path) as data:
        return [data[f"arr_{i}"] for i in range(len(data.files))]


def _summary(history: list[dict[str, float]]) -> dict[str, list[float]]:
    return {name: [m[name] for m in history] for name in ("loss", "grad_norm", "ratio_mean", "skipped")}


def check_mesh(out: str) -> dict[str, Any]:
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    sharded_batch = sharding.shard_batch(rollout_batch(), mesh)
    state, history = run(mesh, sharded_batch)
    save_leaves(out, state)

    # Donation: the state passed in is consumed (its buffers become the new state's).
    opt = make_optimizer(OPTIM)
    model = _model()
    donor = init_train_state(model, opt, mesh)
    step = make_train_step(
        nnx.graphdef(model), opt, LOSS, temperature=TEMPERATURE, micro_batches=MICRO, mesh=mesh
    )
    step(donor, sharded_batch)
    q = state.params["layers"]["q"][...]
    mu = state.opt_state[1][0].mu["layers"]["q"][...]
    return {
        "devices": jax.device_count(),
        "mesh": dict(mesh.shape),
        **_summary(history),
        "q_spec": _spec(q),
        "q_shard_shape": list(q.addressable_shards[0].data.shape),
        "mu_q_spec": _spec(mu),
        "embed_spec": _spec(state.params["embed"][...]),
        "batch_spec": _spec(sharded_batch["tokens"]),
        "step": int(state.step),
        "donated_deleted": donor.params["layers"]["q"][...].is_deleted(),
        "model_still_valid": not model.layers.q[...].is_deleted(),
    }


def check_distributed(out: str) -> dict[str, Any]:
    """One of two processes: each feeds only its own half of the rows."""
    sharding.initialize_distributed()
    mesh = sharding.make_mesh(data=1, fsdp=2, tensor=2)
    pid, nproc = jax.process_index(), jax.process_count()
    batch = rollout_batch()
    rows = len(batch["advantages"]) // nproc
    local = {k: v[pid * rows : (pid + 1) * rows] for k, v in batch.items()}
    global_batch = sharding.host_local_to_global(local, mesh)
    gather = jax.jit(lambda x: x, out_shardings=NamedSharding(mesh, PartitionSpec()))
    batch_equal = all(
        np.array_equal(np.asarray(gather(global_batch[k]).addressable_data(0)), batch[k]) for k in batch
    )
    state, history = run(mesh, global_batch)
    q = state.params["layers"]["q"][...]
    gathered = jax.tree.map(lambda x: x.addressable_data(0), gather(state))
    save_leaves(f"{out}.{pid}.npz", gathered)
    return {
        "process": [pid, nproc],
        "devices": [jax.local_device_count(), jax.device_count()],
        "mesh": dict(mesh.shape),
        "batch_fully_addressable": global_batch["tokens"].is_fully_addressable,
        "batch_global_equal": batch_equal,
        "q_spec": _spec(q),
        "q_fully_addressable": q.is_fully_addressable,
        **_summary(history),
    }


if __name__ == "__main__":
    use_compilation_cache()
    checks = {"mesh": check_mesh, "distributed": check_distributed}
    print("RESULT " + json.dumps(checks[sys.argv[1]](sys.argv[2])), flush=True)
