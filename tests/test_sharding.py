"""Meshes, logical-axis rules, sharded models and the sharded sampler, multi-host start-up.

The rules and the launch-environment parsing are pure and are tested here directly (an AbstractMesh or a
plain {axis: size} mapping stands in for devices). The checks that need several devices run in separate
processes with fake CPU devices (tests/sharding_checks.py): this process already initialised jax with one.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AbstractMesh, AxisType, PartitionSpec

from rlvr_jax import sharding
from rlvr_jax.models import abstract_model
from tests.multiprocess import result, run_processes, subprocess_env
from tests.tiny import TINY

CHECKS = Path(__file__).resolve().parent / "sharding_checks.py"
SIZES = {"data": 2, "fsdp": 2, "tensor": 4}
CFG = TINY


# ------------------------------------------------------------------------------------------------ mesh


def test_mesh_shape_fills_the_free_axis_and_names_the_numbers_when_it_cannot():
    assert sharding.mesh_shape(-1, 2, 2, 8) == (2, 2, 2)
    assert sharding.mesh_shape(1, -1, 4, 8) == (1, 2, 4)
    assert sharding.mesh_shape(2, 1, 4, 8) == (2, 1, 4)
    with pytest.raises(ValueError, match=r"data=2 x fsdp=2 x tensor=1 = 4 devices, but 8"):
        sharding.mesh_shape(2, 2, 1, 8)
    with pytest.raises(ValueError, match=r"8 devices do not divide by the other axes' product 3"):
        sharding.mesh_shape(-1, 3, 1, 8)
    with pytest.raises(ValueError, match="at most one -1"):
        sharding.mesh_shape(-1, -1, 1, 8)
    with pytest.raises(ValueError, match=">= 1"):
        sharding.mesh_shape(0, 1, 1, 8)


def test_make_mesh_on_this_process_devices():
    mesh = sharding.make_mesh()
    assert mesh.axis_names == sharding.MESH_AXES
    assert dict(mesh.shape) == {"data": jax.device_count(), "fsdp": 1, "tensor": 1}
    assert mesh.axis_types == (AxisType.Auto,) * 3  # jax.make_mesh alone would give Explicit axes
    with pytest.raises(ValueError, match=rf"= 64 devices, but {jax.device_count()} are available"):
        sharding.make_mesh(data=16, tensor=4)


# ----------------------------------------------------------------------------------------------- rules


def test_parameters_map_to_mesh_axes_by_logical_name():
    spec = sharding.logical_to_spec
    assert spec(("layers", "embed", "q_heads", "head_dim"), (2, 32, 4, 8), SIZES) == PartitionSpec(
        None, "fsdp", "tensor", None
    )
    assert spec(("vocab", "embed"), (24, 32), SIZES) == PartitionSpec("tensor", "fsdp")
    assert spec(("layers", "mlp", "embed"), (2, 64, 32), SIZES) == PartitionSpec(None, "tensor", "fsdp")
    assert spec(("layers", "norm"), (2, 32), SIZES) == PartitionSpec(None, None)
    assert spec(("batch", None), (8, 5), SIZES) == PartitionSpec(("data", "fsdp"), None)
    assert spec(("something_new",), (8,), SIZES) == PartitionSpec(None)  # no rule: replicated


def test_indivisible_dimensions_fall_back_to_replication_and_say_why():
    # 2 KV heads cannot split 4 ways: replicated, the rest of the spec unchanged.
    spec, fallbacks = sharding.resolve_spec(("layers", "embed", "kv_heads", "head_dim"), (2, 32, 2, 8), SIZES)
    assert spec == PartitionSpec(None, "fsdp", None, None)
    assert fallbacks == (
        sharding.Fallback(2, "kv_heads", 2, ("tensor",), "size 2 does not divide over 4 devices"),
    )
    # A batch of 6 does not divide over data x fsdp = 4.
    spec, fallbacks = sharding.resolve_spec(("batch",), (6,), SIZES)
    assert spec == PartitionSpec(None) and fallbacks[0].mesh_axes == ("data", "fsdp")


def test_a_mesh_axis_shards_at_most_one_dimension():
    spec, fallbacks = sharding.resolve_spec(("batch", None, "embed"), (8, 5, 32), SIZES)
    assert spec == PartitionSpec(("data", "fsdp"), None, None)
    assert fallbacks[0].dim == 2 and "fsdp already shards another dimension" in fallbacks[0].reason


def test_rule_tables_first_entry_wins_and_unknown_mesh_axes_are_errors():
    rules = (("kv_heads", None), *sharding.DEFAULT_RULES)
    assert sharding.logical_to_spec(("kv_heads",), (4,), SIZES, rules) == PartitionSpec(None)
    with pytest.raises(ValueError, match=r"names mesh axes \['expert'\]"):
        sharding.logical_to_spec(("mlp",), (64,), SIZES, (("mlp", "expert"),))
    with pytest.raises(ValueError, match="2 axis names"):
        sharding.logical_to_spec(("embed", "mlp"), (32,), SIZES)


def test_plan_covers_every_parameter_of_an_abstract_model_and_logs_fallbacks_once(caplog):
    mesh = AbstractMesh((2, 2, 4), sharding.MESH_AXES, axis_types=(AxisType.Auto,) * 3)
    model = abstract_model(CFG)  # shapes only: shardings are planned before any weight exists
    plan = sharding.plan_param_shardings(model, mesh)
    assert plan.shardings["layers"]["q"].get_value().spec == PartitionSpec(None, "fsdp", "tensor", None)
    assert set(plan.fallbacks) == {"layers.k", "layers.v"}
    with caplog.at_level(logging.WARNING, logger="rlvr_jax.sharding"):
        sharding.param_shardings(model, mesh)
        pure = sharding.param_shardings(model, mesh, pure=True)  # the same fallbacks: not logged again
    assert [r.getMessage().count("\n") for r in caplog.records] == [2]  # one message, one line per fallback
    assert set(pure) == set(nnx.to_pure_dict(nnx.state(model)))
    assert pure["layers"]["k"].spec == PartitionSpec(None, "fsdp", None, None)
    assert "layers.k dim 2 (kv_heads=2 over tensor)" in sharding.describe_fallbacks(plan.fallbacks)


# -------------------------------------------------------------------------------------------- batches


def test_batches_on_a_one_device_mesh():
    mesh = sharding.make_mesh()
    batch = {"ids": np.arange(12).reshape(4, 3), "mask": np.ones((4, 3), bool)}
    out = sharding.shard_batch(batch, mesh)
    assert out["ids"].sharding.spec == PartitionSpec(("data", "fsdp"))
    np.testing.assert_array_equal(out["ids"], batch["ids"])
    glob = sharding.host_local_to_global(batch["ids"], mesh)
    assert glob.shape == (4, 3) and glob.sharding == sharding.batch_sharding(mesh)


# ---------------------------------------------------------------------------------------- multi-host


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"JAX_NUM_PROCESSES": "1"}, None),
        (
            {"JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3", "JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"},
            {"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3},
        ),
        # jax's cluster detection fills in what is missing
        ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, {"coordinator_address": "10.0.0.1:1234"}),
        ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}, None),  # the batch script itself, not an srun step
        ({"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": "4"}, {}),
        ({"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n1", "SLURM_NTASKS": "1"}, None),
        ({"OMPI_MCA_orte_hnp_uri": "1.0;tcp://10.0.0.1:5", "OMPI_COMM_WORLD_SIZE": "2"}, {}),
        ({"TPU_WORKER_HOSTNAMES": "t0,t1,t2,t3"}, {}),
        ({"TPU_WORKER_HOSTNAMES": "localhost"}, None),
        ({"RLVR_DISTRIBUTED": "1"}, {}),
        ({"RLVR_DISTRIBUTED": "0", "TPU_WORKER_HOSTNAMES": "t0,t1"}, None),
    ],
)
def test_distributed_settings_from_the_launch_environment(env, expected):
    assert sharding.distributed_settings(env) == expected


def test_distributed_settings_reject_incomplete_explicit_settings():
    with pytest.raises(ValueError, match="JAX_COORDINATOR_ADDRESS and JAX_PROCESS_ID not set"):
        sharding.distributed_settings({"JAX_NUM_PROCESSES": "2"})
    with pytest.raises(ValueError, match=r"JAX_PROCESS_ID=2 must be in 0..1"):
        sharding.distributed_settings(
            {"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2", "JAX_COORDINATOR_ADDRESS": "h:1"}
        )
    with pytest.raises(ValueError, match="is not an integer"):
        sharding.distributed_settings({"JAX_NUM_PROCESSES": "two"})


def test_only_a_cpu_only_run_has_its_collective_combiners_turned_off():
    """XLA:CPU runs the operands of a combined collective as concurrent gloo operations, which two
    processes can pair wrongly; GPU and TPU runs keep the combiners, and a user's own pass list wins."""
    passes = "--xla_disable_hlo_passes=" + ",".join(sharding.CPU_COLLECTIVE_PASSES)
    devices = "--xla_force_host_platform_device_count=2"
    gpu = "--xla_gpu_enable_latency_hiding_scheduler=true"
    for platforms, flags, expected in [
        ("cpu", devices, f"{devices} {passes}"),
        ("CPU", None, passes),
        ("cuda", gpu, gpu),
        ("cuda,cpu", None, None),
        ("", None, None),  # no choice made: an accelerator may be found
        ("cpu", "--xla_disable_hlo_passes=foo", "--xla_disable_hlo_passes=foo"),
    ]:
        env = {} if flags is None else {"XLA_FLAGS": flags}
        sharding._separate_cpu_collectives(platforms, env)
        assert env.get("XLA_FLAGS") == expected, (platforms, flags)


def test_initialize_distributed_is_a_no_op_for_one_process():
    assert sharding.initialize_distributed({}) is False
    assert sharding.initialize_distributed({}) is False
    assert not jax.distributed.is_initialized()


# ------------------------------------------------------------------------ several devices, subprocesses


def test_sharded_model_and_sampler_match_one_device():
    proc = subprocess.run(
        [sys.executable, str(CHECKS), "model"],
        env=subprocess_env(8),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = result(proc.stdout)
    assert r["devices"] == 8 and r["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}
    # The parameters really are split: embed dim over fsdp, heads over tensor.
    assert r["q_spec"] == [None, "fsdp", "tensor", None]
    assert r["q_shard_shape"] == [2, 16, 2, 8]
    assert r["k_spec"] == [None, "fsdp", "tensor", None]  # 2 KV heads divide over tensor=2
    assert r["embed_spec"] == ["tensor", "fsdp"]
    assert r["logits_max_abs_diff"] < 1e-5
    # Greedy tokens: one device == jit with named shardings (rows stay split) == the unchanged Sampler.
    assert r["sharded_tokens"] == r["ref_tokens"]
    assert r["sharded_tokens_spec"] == [["data", "fsdp"]]
    assert r["sharded_mask_equal"]
    assert r["sampler_tokens"] == r["ref_tokens"]
    # Data-parallel Sampler: parameters placed by the rules, rows split; filler rows dropped again.
    assert r["mesh_sampler_q_spec"] == r["q_spec"]
    assert r["mesh_sampler_tokens"] == r["ref_tokens"][: r["mesh_sampler_rows"]]
    assert "(3, 2)" in r["uneven_batch_error"] and "multiple of the 4 batch shards" in r["uneven_batch_error"]


def test_two_processes_share_one_mesh():
    """Two processes x 2 CPU devices: explicit JAX_* launch, per-host rows, a forward on the global mesh."""
    n = 2
    results = run_processes(CHECKS, ["distributed"], n=n, devices=2)
    for i, r in enumerate(results):
        assert r["initialized"] == [True, True]
        # A CPU-only run keeps its collectives single-operand (see _separate_cpu_collectives).
        assert "--xla_disable_hlo_passes=" + ",".join(sharding.CPU_COLLECTIVE_PASSES) in r["xla_flags"]
        assert "--xla_force_host_platform_device_count=2" in r["xla_flags"]
        assert r["process"] == [i, n] and r["devices"] == [2, 4]
        assert r["mesh"] == {"data": 2, "fsdp": 2, "tensor": 1}
        assert r["ids_shape"] == [4, 5] and not r["ids_fully_addressable"]
        assert r["ids_global_equal"]
        assert r["logits_max_abs_diff"] < 1e-5
        # Per-host prompts into the multi-host Sampler: each host gets its own rows back, equal to the
        # same rows sampled (T=1, same seed) by one device holding every prompt.
        assert r["sampler_multihost"]
        rows = r["rows_per_host"] - (1 if i == n - 1 else 0)
        assert r["sampler_rows"] == [2 * rows, 6]
        start = 2 * i * r["rows_per_host"]
        assert r["sampler_tokens"] == r["alone_tokens"][start : start + 2 * rows]
        np.testing.assert_allclose(
            r["sampler_logprobs"], np.asarray(r["alone_logprobs"])[start : start + 2 * rows], atol=1e-5
        )
