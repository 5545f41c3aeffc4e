"""The memory probe: which micro-batch counts are valid, how the budget picks one, the estimate cache, the
token-budget alternative, and, on the tiny model, the real train step: its estimate falls with more
micro-batches, the probe's choice follows the budget, and the step the run compiles with that choice is
the program the probe measured."""

from __future__ import annotations

import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rlvr_jax import sharding
from rlvr_jax.models import abstract_model
from rlvr_jax.optim import OptimConfig, init_train_state, make_optimizer
from rlvr_jax.optim import memory as mem
from rlvr_jax.rl.losses import LossConfig
from rlvr_jax.rl.update import make_train_step
from tests.tiny import TINY, numpy_model

# --------------------------------------------------------------------------------- a fake compiler


def _compiled(total: int, arguments: int = 100) -> types.SimpleNamespace:
    """Something with `memory_analysis()` as a jax Compiled has, totalling `total` bytes."""
    stats = types.SimpleNamespace(
        argument_size_in_bytes=arguments,
        output_size_in_bytes=arguments,
        temp_size_in_bytes=total - arguments,
        alias_size_in_bytes=arguments,
    )
    return types.SimpleNamespace(memory_analysis=lambda: stats)


class FakeStep:
    """compile_for(m): a fixed state plus bytes per micro-batch row, counting its calls."""

    def __init__(self, rows: int, fixed: int = 1000, per_row: int = 100):
        self.rows, self.fixed, self.per_row = rows, fixed, per_row
        self.calls: list[int] = []

    def bytes_for(self, m: int) -> int:
        return self.fixed + self.per_row * (self.rows // m)

    def __call__(self, m: int) -> types.SimpleNamespace:
        self.calls.append(m)
        return _compiled(self.bytes_for(m))


# --------------------------------------------------------------------------------------- candidates


def test_valid_micro_batches_divide_rows_and_shards():
    assert mem.valid_micro_batches(12) == (1, 2, 3, 4, 6, 12)
    assert mem.valid_micro_batches(12, shards=2) == (1, 2, 3, 6)  # micro-batches of 12, 6, 4, 2 rows
    assert mem.valid_micro_batches(12, shards=4) == (1, 3)
    assert mem.valid_micro_batches(6, shards=4) == ()
    with pytest.raises(ValueError, match="must be >= 1"):
        mem.valid_micro_batches(0)


def test_pick_is_monotonic_in_the_budget():
    step = FakeStep(rows=64)
    budgets = [step.bytes_for(m) for m in (1, 2, 4, 8, 16, 32, 64)]
    chosen = [mem.pick_micro_batches(step, 64, 1, b).micro_batches for b in budgets]
    assert chosen == [1, 2, 4, 8, 16, 32, 64]  # exactly the count whose estimate meets the budget
    between = mem.pick_micro_batches(step, 64, 1, budgets[2] + 1)
    assert between.micro_batches == 4 and between.estimate_bytes <= budgets[2] + 1
    assert list(between.estimates) == [1, 2, 4]  # tried from the fewest upward, stopped at the first fit
    assert between.compiles == 3 and not between.from_cache


def test_pick_respects_shard_divisibility():
    step = FakeStep(rows=16)
    choice = mem.pick_micro_batches(step, 16, shards=4, budget_bytes=step.bytes_for(4))
    assert choice.micro_batches == 4 and choice.micro_batch_rows == 4
    assert step.calls == [1, 2, 4]  # never 8 or 16: 2 or 1 rows do not split over 4 shards
    with pytest.raises(mem.MemoryBudgetError, match="even 4 micro-batches of 4 rows"):
        mem.pick_micro_batches(step, 16, shards=4, budget_bytes=step.bytes_for(8))


def test_errors_say_what_is_wrong_and_what_to_do():
    step = FakeStep(rows=6)
    with pytest.raises(ValueError, match=r"6 rows .* 4 batch shards.*multiple of 4"):
        mem.pick_micro_batches(step, 6, shards=4, budget_bytes=10**9)
    assert step.calls == []
    with pytest.raises(mem.MemoryBudgetError) as err:
        mem.pick_micro_batches(step, 6, shards=1, budget_bytes=step.fixed)  # not even the state fits
    message = str(err.value)
    assert "even 6 micro-batches of 1 rows" in message and "over the budget" in message
    assert "model.remat" in message and "optim.memory_budget_gb" in message and "mesh.fsdp" in message
    with pytest.raises(RuntimeError, match="no compile-time memory analysis"):
        mem.pick_micro_batches(lambda m: types.SimpleNamespace(memory_analysis=lambda: None), 4, 1, 10)
    with pytest.raises(ValueError, match="both cache and key"):
        mem.pick_micro_batches(step, 6, 1, 10**9, key={"a": 1})


def test_default_budget_on_cpu_is_a_share_of_ram():
    budget, source = mem.default_budget_bytes(0.5)
    assert budget == mem.host_budget_bytes(0.5) > 0 and "physical RAM" in source
    with pytest.raises(ValueError, match="headroom"):
        mem.default_budget_bytes(1.5)


# -------------------------------------------------------------------------------------------- cache


def test_cache_hit_compiles_nothing(tmp_path):
    cache, key = mem.EstimateCache(tmp_path / "mb.json"), {"model": "m", "batch": [64, 640]}
    step = FakeStep(rows=64)
    budget = step.bytes_for(8)
    first = mem.pick_micro_batches(step, 64, 1, budget, cache=cache, key=key)
    assert (first.micro_batches, first.compiles, first.from_cache) == (8, 4, False)

    again = mem.pick_micro_batches(step, 64, 1, budget, cache=cache, key=key)
    assert (again.micro_batches, again.compiles, again.from_cache) == (8, 0, True)
    assert again.estimates == first.estimates and again.cache_key == first.cache_key
    assert json.loads(json.dumps(again.to_json()))["estimates"]["8"]["total_bytes"] == budget
    # A larger budget is answered from the stored estimates too: the budget is not part of the key.
    assert mem.pick_micro_batches(step, 64, 1, step.bytes_for(2), cache=cache, key=key).from_cache
    # A smaller one compiles only the counts not yet estimated, and stores them.
    lower = mem.pick_micro_batches(step, 64, 1, step.bytes_for(32), cache=cache, key=key)
    assert (lower.micro_batches, lower.compiles) == (32, 2)
    assert step.calls == [1, 2, 4, 8, 16, 32]
    stored = json.loads(cache.path.read_text())["entries"][first.cache_key]
    assert stored["key"] == key and sorted(map(int, stored["estimates"])) == [1, 2, 4, 8, 16, 32]


def test_cache_location_and_damage(tmp_path, monkeypatch):
    monkeypatch.setenv(mem.CACHE_ENV, str(tmp_path / "env"))
    assert mem.cache_path() == tmp_path / "env" / "micro_batches.json"
    assert mem.cache_path(tmp_path / "x.json") == tmp_path / "x.json"
    cache = mem.EstimateCache()
    cache.path.parent.mkdir(parents=True)
    cache.path.write_text("{not json")  # a damaged cache is ignored, then replaced by a valid one
    step = FakeStep(rows=4)
    choice = mem.pick_micro_batches(step, 4, 1, step.bytes_for(2), cache=cache, key={"k": 1})
    assert choice.micro_batches == 2 and not choice.from_cache
    assert json.loads(cache.path.read_text())["version"] == mem.CACHE_VERSION
    assert [p.name for p in cache.path.parent.iterdir()] == ["micro_batches.json"]  # no temp file left


def _key(cfg=TINY, rows=8, completion=8, devices=None, loss=None, **options):
    optimizer = make_optimizer(OptimConfig())
    state = mem.abstract_train_state(cfg, optimizer)
    batch = mem.train_batch_spec(rows, 4, completion)
    devices = devices or jax.local_devices()[:1]
    loss = loss or LossConfig()
    return mem.key_digest(mem.train_step_key(cfg, state, batch, loss, devices=devices, step_options=options))


def test_cache_keys_differ_by_model_shape_and_device():
    base = _key()
    assert _key() == base  # stable
    gpu = types.SimpleNamespace(platform="gpu", device_kind="NVIDIA H100 80GB HBM3")
    others = {
        "rows": _key(rows=16),
        "completion length": _key(completion=16),
        "hidden size": _key(cfg=TINY.replace(hidden_size=64)),
        "layers": _key(cfg=TINY.replace(num_layers=3)),
        "vocab": _key(cfg=TINY.replace(vocab_size=48)),
        "compute dtype": _key(cfg=TINY.replace(dtype="bfloat16")),
        "param dtype": _key(cfg=TINY.replace(param_dtype="bfloat16")),
        "remat": _key(cfg=TINY.replace(remat="full")),
        "device kind": _key(devices=[gpu]),
        "device count": _key(devices=jax.local_devices()[:1] * 2),
        "entropy term": _key(loss=LossConfig(entropy_coef=0.01)),
        "step options": _key(chunk=64),
    }
    assert all(k != base for k in others.values()), [n for n, k in others.items() if k == base]
    assert len(set(others.values())) == len(others)
    assert _key(loss=LossConfig(clip_high=0.28)) == base  # a clip value is a constant, not a new program


# ------------------------------------------------------------------------------------- token budget


def test_micro_batches_for_tokens():
    assert mem.micro_batches_for_tokens(128, 640, 128 * 640) == 1
    assert mem.micro_batches_for_tokens(128, 640, 128 * 640 - 1) == 2
    assert mem.micro_batches_for_tokens(128, 640, 16 * 640) == 8
    assert mem.micro_batches_for_tokens(96, 100, 2500) == 4  # 24 rows x 100 tokens
    assert mem.micro_batches_for_tokens(12, 10, 50, shards=2) == 3  # 4 rows; 6 (2 rows) not needed
    assert mem.micro_batches_for_tokens(12, 10, 30, shards=2) == 6  # not 4: 3 rows do not split over 2
    with pytest.raises(ValueError, match=r"smallest micro-batch .* 2 rows x 10 tokens"):
        mem.micro_batches_for_tokens(12, 10, 19, shards=2)
    with pytest.raises(ValueError, match="multiple of 4"):
        mem.micro_batches_for_tokens(6, 10, 100, shards=4)
    with pytest.raises(ValueError, match=">= 1"):
        mem.micro_batches_for_tokens(8, 0, 100)


# --------------------------------------------------------------------------- the real train step

ROWS, PROMPT, COMPLETION = 8, 4, 8


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    """run(budget_bytes): the probe on the tiny model's train step, one cache file for the module."""
    optimizer = make_optimizer(OptimConfig())
    graphdef = nnx.graphdef(abstract_model(TINY))
    cache = mem.EstimateCache(tmp_path_factory.mktemp("probe") / "micro_batches.json")
    mesh = sharding.make_mesh()

    def run(budget_bytes: int) -> mem.MicroBatchChoice:
        return mem.probe_train_step_micro_batches(
            graphdef,
            optimizer,
            LossConfig(max_len=COMPLETION),
            state=mem.abstract_train_state(TINY, optimizer),
            rows=ROWS,
            prompt_len=PROMPT,
            completion_len=COMPLETION,
            temperature=0.8,
            mesh=mesh,
            budget_bytes=budget_bytes,
            cache=cache,
        )

    return types.SimpleNamespace(run=run, optimizer=optimizer, graphdef=graphdef, mesh=mesh)


@pytest.fixture(scope="module")
def choices(probe):
    """Budgets just below each estimate: the probe moves to 2, then 4 micro-batches, one compile each."""
    ample = probe.run(10**12)
    tighter = probe.run(ample.estimate_bytes - 1)
    tightest = probe.run(tighter.estimate_bytes - 1)
    return ample, tighter, tightest


def test_real_step_estimate_falls_with_micro_batches(choices):
    tightest = choices[-1]
    estimates = {m: e.total_bytes for m, e in tightest.estimates.items()}
    assert list(estimates) == [1, 2, 4]
    assert estimates[1] > estimates[2] > estimates[4]
    state_bytes = tightest.estimates[4].argument_bytes
    assert all(e.argument_bytes == state_bytes for e in tightest.estimates.values())  # same state, batch


def test_real_step_probe_follows_the_budget_and_caches(probe, choices):
    ample = choices[0]
    assert [c.micro_batches for c in choices] == [1, 2, 4]
    assert [c.compiles for c in choices] == [1, 1, 1]  # each reuses the estimates stored before it
    repeat = probe.run(ample.budget_bytes)
    assert repeat.from_cache and repeat.compiles == 0 and repeat.micro_batches == 1


def test_the_run_uses_the_chosen_count(probe, choices):
    """The trainer's path: the step made with the probe's count, compiled at the probed shape from the
    real state (as `_CompiledSteps` does), is the program the probe measured; and it trains."""
    chosen = choices[1]
    m = chosen.micro_batches
    state = init_train_state(numpy_model(TINY, 0.3), probe.optimizer, mesh=probe.mesh)
    step = make_train_step(
        probe.graphdef,
        probe.optimizer,
        LossConfig(max_len=COMPLETION),
        temperature=0.8,
        micro_batches=m,
        mesh=probe.mesh,
    )
    batch = mem.random_train_batch(ROWS, PROMPT, COMPLETION, TINY.vocab_size)
    batch = sharding.shard_batch(batch, probe.mesh)
    compiled = step.lower(state, batch).compile()
    assert mem.estimate_memory(compiled) == chosen.estimates[m]
    state, metrics = compiled(state, batch)
    assert np.isfinite(float(metrics["loss"])) and int(state.step) == 1 and int(state.skipped) == 0


def test_offload_round_trip():
    tree = {"w": jnp.arange(6.0).reshape(2, 3), "n": jnp.ones(3, jnp.int32)}
    assert mem.per_device_bytes(tree) == 6 * 4 + 3 * 4
    host = mem.to_memory_kind(tree, "pinned_host")
    assert {x.sharding.memory_kind for x in jax.tree.leaves(host)} == {"pinned_host"}
    assert mem.per_device_bytes(host) == 0  # offloaded: nothing left on the device
    assert mem.per_device_bytes(mem.abstract_like(tree)) == 0
    back = mem.to_memory_kind(host, "device")
    assert {x.sharding.memory_kind for x in jax.tree.leaves(back)} == {"device"}
    jax.tree.map(np.testing.assert_array_equal, back, tree)
