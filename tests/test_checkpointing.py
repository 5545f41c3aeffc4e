"""Checkpointer (orbax): exact round trips, retention, refusing bad states, sharded restore, preemption.

The sharded restore and the SIGTERM test run in subprocesses: one needs several fake CPU devices (this
process already initialised jax with one), the other must receive a real signal while a loop runs.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from rlvr_jax.checkpointing import (
    Checkpointer,
    PreemptionHandler,
    abstract_like,
    all_finite,
    preemption_guard,
)
from rlvr_jax.data.pipeline import batches, make_pipeline, take
from rlvr_jax.models import ModelConfig, abstract_model, init_model
from tests.multiprocess import subprocess_env, xla_flags

REPO = Path(__file__).resolve().parent.parent
CFG = ModelConfig(
    family="llama",
    vocab_size=32,
    hidden_size=16,
    num_layers=2,
    num_heads=2,
    num_kv_heads=1,
    head_dim=8,
    intermediate_size=32,
)


def small_state(seed: int = 0, step: int = 0) -> dict:
    _, params = nnx.split(init_model(CFG, seed))
    opt_state = optax.adamw(1e-3).init(params)
    return {"params": params, "opt": opt_state, "step": jnp.asarray(step), "rng": jax.random.key(seed)}


def tiny(value: float = 1.0) -> dict:
    return {"w": jnp.full((3,), value), "step": jnp.asarray(0)}


def assert_trees_equal(a, b) -> None:
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb, strict=True):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            assert jax.random.key_impl(x) == jax.random.key_impl(y)
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_model_optimizer_key_and_iterator_state(tmp_path: Path) -> None:
    samples = [{"id": i} for i in range(20)]
    pipeline = make_pipeline(samples, 3, seed=1, num_epochs=None, process_index=0, process_count=1)
    iterator = batches(pipeline)
    take(iterator, 4)
    state = small_state(seed=3, step=7)
    state["rbg"] = jax.random.key(5, impl="rbg")
    meta = {"data": iterator.get_state(), "config": {"lr": 1e-3}, "run_id": "r1"}
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.save(7, state, meta)
    expected_batches = take(iterator, 3)

    # A fresh process would build the abstract state from the config, never from the live arrays.
    _, abstract_params = nnx.split(abstract_model(CFG))
    target = {
        "params": abstract_params,
        "opt": jax.eval_shape(optax.adamw(1e-3).init, abstract_params),
        "step": jax.ShapeDtypeStruct((), jnp.int32),
        "rng": jax.eval_shape(jax.random.key, 0),
        "rbg": jax.eval_shape(lambda: jax.random.key(0, impl="rbg")),
    }
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.latest_step() == 7
        restored, restored_meta = ckpt.restore(abstract_state=target)
    assert_trees_equal(restored, state)
    assert isinstance(restored["params"], nnx.State)
    assert restored_meta["config"] == {"lr": 1e-3} and restored_meta["run_id"] == "r1"
    assert take(batches(pipeline, restored_meta["data"]), 3) == expected_batches


def test_keep_latest_n(tmp_path: Path) -> None:
    with Checkpointer(tmp_path, keep=2) as ckpt:
        for step in range(1, 6):
            assert ckpt.save(step, tiny(step))
        ckpt.wait()
        assert ckpt.all_steps() == [4, 5]
    assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == [4, 5]


@pytest.mark.parametrize(("mode", "best"), [("max", 2), ("min", 1)])
def test_best_metric_kept_with_the_latest(tmp_path: Path, mode: str, best: int) -> None:
    accuracy = {1: 0.3, 2: 0.9, 3: 0.5, 4: 0.4, 5: 0.6}
    with Checkpointer(tmp_path, keep=2, best_metric="accuracy", best_mode=mode) as ckpt:
        for step, acc in accuracy.items():
            ckpt.save(step, tiny(step), metrics={"accuracy": acc})
        ckpt.save(6, tiny(6))  # e.g. a preemption save between evals: no metric, kept as a latest one
        ckpt.wait()
        assert ckpt.all_steps() == sorted({best, 5, 6})
        assert ckpt.best_step() == best
    # Ranking survives a restart: orbax reads the stored metrics back.
    with Checkpointer(tmp_path, keep=2, best_metric="accuracy", best_mode=mode) as ckpt:
        assert ckpt.best_step() == best
        ckpt.save(7, tiny(7), metrics={"accuracy": 0.55})  # neither best nor worst
        ckpt.wait()
        assert ckpt.all_steps() == sorted({best, 6, 7})


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_state_is_never_written(tmp_path: Path, bad: float) -> None:
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.save(1, tiny(1.0))
        state = small_state()
        up = state["params"]["layers"]["up"]
        up[...] = up[...].at[1, 2, 3].set(bad)
        assert not all_finite(state)
        assert not ckpt.save(2, state)
        ckpt.wait()
        assert ckpt.all_steps() == [1]
    assert not any(p.name.startswith("2") for p in tmp_path.iterdir())
    assert all_finite({"x": jnp.ones(2, jnp.bfloat16), "i": jnp.arange(3), "k": jax.random.key(0)})
    assert not all_finite({"x": np.array([1.0, np.nan])}) and not all_finite({"x": float("inf")})


def test_async_saves_complete_after_wait_and_restore_latest(tmp_path: Path) -> None:
    ckpt = Checkpointer(tmp_path, keep=None, async_save=True)
    states = {step: small_state(seed=step, step=step) for step in (10, 20, 30)}
    for step, state in states.items():
        assert ckpt.save(step, state, {"step": step})
    assert not ckpt.save(30, states[30]), "a step is saved once"
    ckpt.close()
    assert all((tmp_path / str(s) / "state").is_dir() for s in states)
    assert not [p for p in tmp_path.iterdir() if "tmp" in p.name]
    with Checkpointer(tmp_path) as again:
        restored, meta = again.restore(abstract_state=abstract_like(states[10]))
        assert meta == {"step": 30}
        assert_trees_equal(restored, states[30])
        restored, meta = again.restore(20, abstract_state=abstract_like(states[10]))
        assert meta == {"step": 20}
        assert_trees_equal(restored, states[20])
        assert again.restore_meta(10) == {"step": 10}
        with pytest.raises(FileNotFoundError, match="no checkpoint 15"):
            again.restore(15, abstract_state=abstract_like(states[10]))
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        Checkpointer(tmp_path / "empty").restore()


def run_python(code: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
    )


SHARDED = """
import sys
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from rlvr_jax.checkpointing import Checkpointer, all_finite

mesh = jax.make_mesh((4,), ("d",))
x = jax.device_put(jnp.arange(32.0).reshape(8, 4), NamedSharding(mesh, P("d")))
key = jax.device_put(jax.random.key(1), NamedSharding(mesh, P()))
with Checkpointer("{dir}") as ckpt:
    ckpt.save(1, {{"x": x, "key": key}})
# Restore onto another layout (2 x 2 mesh, columns split) and dtype, as a resized run would.
mesh2 = jax.make_mesh((2, 2), ("a", "b"))
target = {{
    "x": jax.ShapeDtypeStruct((8, 4), jnp.bfloat16, sharding=NamedSharding(mesh2, P(None, ("a", "b")))),
    "key": jax.ShapeDtypeStruct((), key.dtype, sharding=NamedSharding(mesh2, P())),
}}
with Checkpointer("{dir}") as ckpt:
    out, _ = ckpt.restore(abstract_state=target)
assert out["x"].dtype == jnp.bfloat16 and out["x"].sharding == target["x"].sharding, out["x"].sharding
np.testing.assert_array_equal(np.asarray(out["x"], np.float32), np.arange(32.0).reshape(8, 4))
assert out["key"].sharding == target["key"].sharding
np.testing.assert_array_equal(jax.random.key_data(out["key"]), jax.random.key_data(jax.random.key(1)))
# The finiteness check spans arrays on different device sets (one jitted reduction per set).
other = jax.device_put(jnp.ones(2), jax.devices()[3])
assert all_finite({{"x": x, "other": other, "out": out["x"]}})
assert not all_finite({{"x": x, "other": other.at[0].set(jnp.nan)}})
print("sharded ok")
"""


def test_sharded_restore_onto_another_mesh(tmp_path: Path) -> None:
    result = run_python(SHARDED.format(dir=tmp_path), XLA_FLAGS=xla_flags(4))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sharded ok" in result.stdout


def test_handler_sets_a_flag_and_restores_previous_handler() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with preemption_guard() as handler:
        assert not handler.should_stop(0)
        os.kill(os.getpid(), signal.SIGTERM)
        assert handler.requested and handler.should_stop(1)
        assert handler.received == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before
    manual = PreemptionHandler(install=False)
    assert signal.getsignal(signal.SIGTERM) is before
    manual.request()
    assert manual.should_stop(3)
    installed = PreemptionHandler()  # installs on construction, as a trainer without a `with` block uses it
    try:
        assert signal.getsignal(signal.SIGTERM) == installed._handle
    finally:
        installed.uninstall()
    assert signal.getsignal(signal.SIGTERM) is before


LOOP = """
import faulthandler, sys, time
faulthandler.dump_traceback_later(80, exit=True)  # bounded even if something hangs
import jax, jax.numpy as jnp
from rlvr_jax.checkpointing import Checkpointer, preemption_guard

@jax.jit
def train_step(state):
    key, sub = jax.random.split(state["rng"])
    return {"w": state["w"] + jax.random.normal(sub, (4,)), "step": state["step"] + 1, "rng": key}

state = {"w": jnp.zeros(4), "step": jnp.asarray(0), "rng": jax.random.key(0)}
deadline = time.monotonic() + 60
with Checkpointer(sys.argv[1], keep=2) as ckpt, preemption_guard() as handler:
    step = 0
    while time.monotonic() < deadline:
        state = train_step(state)
        step += 1
        if step == 3:
            print("ready", flush=True)
        if handler.should_stop(step):
            ckpt.save_and_wait(step, state, {"step": step})
            print(f"preempted: saved checkpoint {step} to {ckpt.directory}; exiting", flush=True)
            sys.exit(0)
print("no signal arrived", flush=True)
sys.exit(3)
"""


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", LOOP, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert proc.stdout.readline().strip() == "ready"  # the loop is running: no sleep needed
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=90)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert "SIGTERM received" in err and "preempted: saved checkpoint" in out
    step = int(out.split("saved checkpoint ")[1].split()[0])
    assert step >= 3
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.latest_step() == step
        target = {"w": jnp.zeros(4), "step": jnp.asarray(0), "rng": jax.random.key(0)}
        restored, meta = ckpt.restore(abstract_state=target)
    assert meta == {"step": step} and int(restored["step"]) == step


MULTIHOST_LOOP = """
import faulthandler, os, sys, time
faulthandler.dump_traceback_later(80, exit=True)  # a host stuck in a collective must not hang the tests
import jax, jax.numpy as jnp, numpy as np
jax.distributed.initialize(os.environ["COORDINATOR"], 2, int(os.environ["PROCESS_ID"]))
from jax.sharding import NamedSharding, PartitionSpec as P
from rlvr_jax.checkpointing import Checkpointer, preemption_guard

mesh = jax.make_mesh((4,), ("d",))
x = jax.make_array_from_process_local_data(NamedSharding(mesh, P("d")), np.ones((2, 3), np.float32))
train_step = jax.jit(lambda x: x * 1.0001)
deadline = time.monotonic() + 60
with Checkpointer(sys.argv[1]) as ckpt, preemption_guard() as handler:
    step = 0
    while time.monotonic() < deadline:
        x = train_step(x)
        step += 1
        float(jnp.sum(x))  # a cross-host result every step, as a real loop has
        if step == 3:
            print("ready", flush=True)
        if handler.should_stop(step):
            ckpt.save_and_wait(step, {"x": x}, {"step": step})
            print(f"preempted at {step}", flush=True)
            sys.exit(0)
sys.exit(3)
"""


def test_two_processes_stop_and_save_at_the_same_step(tmp_path: Path) -> None:
    """SIGTERM to one host: JAX's coordination service catches it and both hosts stop at one sync step."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = subprocess_env(2, PYTHONPATH=str(REPO), COORDINATOR=f"127.0.0.1:{port}")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", MULTIHOST_LOOP, str(tmp_path)],
            env={**env, "PROCESS_ID": str(i)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    try:
        for proc in procs:
            lines = (line.strip() for line in iter(proc.stdout.readline, ""))
            assert "ready" in lines, "a process ended before its loop ran"
        procs[1].send_signal(signal.SIGTERM)
        outputs = [proc.communicate(timeout=90) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-3000:]
    steps = {int(out.split("preempted at ")[1].split()[0]) for out, _ in outputs}
    assert len(steps) == 1, f"the hosts stopped at different steps: {steps}"
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.latest_step() == steps.pop()
