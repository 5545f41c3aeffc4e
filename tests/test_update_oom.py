"""An update that does not fit on the device stops with what to change, not XLA's allocator dump."""

from __future__ import annotations

import types

import jax
import numpy as np
import pytest

from rlvr_jax.config import base_config
from rlvr_jax.trainer import step


def _rows(n: int = 256, prompt: int = 64, completion: int = 64) -> dict:
    return {
        "rewards": np.zeros(n, np.float32),
        "prompt_mask": np.ones((n, prompt), np.int32),
        "mask": np.ones((n, completion), np.int32),
    }


def _run(config) -> types.SimpleNamespace:
    return types.SimpleNamespace(
        config=config, advantage_fn=lambda r, g: r, mesh=None, train_step=None, state=None,
        logprob_fn=None, ref_params=None, compiles=None,
    )  # fmt: skip


def test_out_of_memory_names_the_shape_and_the_knobs(monkeypatch):
    config = base_config()
    config.optim.micro_batches = 1

    def oom(*args, **kwargs):
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 104.21GiB")

    monkeypatch.setattr(step, "update_on_rollout", oom)
    monkeypatch.setattr(step, "batch_from_rows", lambda rows, adv: {})
    monkeypatch.setattr(step.sharding, "shard_batch", lambda batch, mesh: batch)
    with pytest.raises(step.UpdateOutOfMemory) as info:
        step.update_policy(_run(config), types.SimpleNamespace(rows=_rows(), weights=None), 1)
    message = str(info.value)
    assert "256 rows x 128 tokens in 1 micro-batch(es)" in message
    assert "--config.optim.micro_batches=2" in message and "--config.model.remat=full" in message
    assert isinstance(info.value.__cause__, jax.errors.JaxRuntimeError)  # XLA's report stays attached


def test_other_runtime_errors_pass_through(monkeypatch):
    def broken(*args, **kwargs):
        raise jax.errors.JaxRuntimeError("INTERNAL: something else")

    monkeypatch.setattr(step, "update_on_rollout", broken)
    monkeypatch.setattr(step, "batch_from_rows", lambda rows, adv: {})
    monkeypatch.setattr(step.sharding, "shard_batch", lambda batch, mesh: batch)
    with pytest.raises(jax.errors.JaxRuntimeError, match="INTERNAL"):
        step.update_policy(_run(base_config()), types.SimpleNamespace(rows=_rows(), weights=None), 1)


def test_advice_doubles_the_micro_batches_and_reads_auto():
    config = base_config()
    config.optim.micro_batches = 4
    assert "--config.optim.micro_batches=8" in step.out_of_memory_advice(config, _rows(8, 4, 4))
    config.optim.micro_batches = 0
    assert "in auto micro-batch(es)" in step.out_of_memory_advice(config, _rows(8, 4, 4))
