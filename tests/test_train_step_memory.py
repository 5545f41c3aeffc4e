"""benchmarks/train_step.py reads memory per configuration from the compiled program."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from benchmarks.train_step import compiled_memory


def test_the_compiled_memory_reading_follows_each_configuration_not_the_process_peak():
    step = jax.jit(lambda x: jnp.sin(x @ x.T) @ x)  # a [rows, rows] temporary between the two products
    big = compiled_memory(step, jnp.ones((1024, 256), jnp.float32))
    small = compiled_memory(step, jnp.ones((64, 256), jnp.float32))  # compiled after the big one
    assert big["arguments_gb"] == pytest.approx(1024 * 256 * 4 / 1e9, abs=1e-6)
    assert small["arguments_gb"] == pytest.approx(64 * 256 * 4 / 1e9, abs=1e-6)
    assert big["temporaries_gb"] >= 1024 * 1024 * 4 / 1e9 * 0.99  # the [1024, 1024] product
    assert small["peak_gb"] < big["peak_gb"] / 10
    assert big["peak_gb"] >= big["arguments_gb"] + big["outputs_gb"] - big["aliased_gb"]


def test_a_donated_argument_written_in_place_is_counted_once():
    step = jax.jit(lambda x: x * 2.0, donate_argnums=0)
    reading = compiled_memory(step, jnp.ones((512, 512), jnp.float32))
    assert reading["aliased_gb"] == reading["arguments_gb"] == pytest.approx(512 * 512 * 4 / 1e9, abs=1e-6)
    assert reading["peak_gb"] < 2 * reading["arguments_gb"]
