"""The output head: float32 logits forward, backward products in the compute dtype (no silent TF32)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlvr_jax.models import ModelConfig
from rlvr_jax.models.decoder import logits_from_hidden


def _setup(tied: bool, dtype: str):
    cfg = ModelConfig(
        family="llama", vocab_size=48, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1,
        head_dim=8, intermediate_size=32, tie_word_embeddings=tied, dtype=dtype,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    name, shape = ("embed", (48, 16)) if tied else ("lm_head", (16, 48))
    params = {name: jnp.asarray(rng.standard_normal(shape), jnp.float32) * 0.3}
    hidden = jnp.asarray(rng.standard_normal((3, 5, 16)), jnp.float32).astype(cfg.compute_dtype)
    target = jnp.asarray(rng.integers(0, 48, (3, 5)))
    return cfg, name, params, hidden, target


def _loss(logits_fn, target):
    def loss(params, hidden):
        logits = logits_fn(params, hidden)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), target[..., None], -1))

    return loss


def _reference(cfg, name, tied):
    """Plain autodiff of the same product, in float32 throughout."""

    def logits(params, hidden):
        w, h = params[name], hidden.astype(jnp.float32)
        return jnp.einsum("btd,vd->btv" if tied else "btd,dv->btv", h, w)

    return logits


@pytest.mark.parametrize("tied", [True, False])
def test_float32_head_gradients_are_exact(tied):
    cfg, name, params, hidden, target = _setup(tied, "float32")
    ours = jax.grad(_loss(lambda p, h: logits_from_hidden(cfg, p, h), target), argnums=(0, 1))(params, hidden)
    ref = jax.grad(_loss(_reference(cfg, name, tied), target), argnums=(0, 1))(params, hidden)
    np.testing.assert_allclose(ours[0][name], ref[0][name], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours[1], ref[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tied", [True, False])
def test_bf16_head_backward_multiplies_in_bf16(tied):
    cfg, name, params, hidden, target = _setup(tied, "bfloat16")
    loss = _loss(lambda p, h: logits_from_hidden(cfg, p, h), target)
    logits = logits_from_hidden(cfg, params, hidden)
    assert logits.dtype == jnp.float32
    grad_fn = jax.grad(loss, argnums=(0, 1))
    # Autodiff of a bf16 x bf16 -> f32 product would multiply the f32 cotangent in f32 (TF32 on GPU).
    hlo = jax.jit(grad_fn).lower(params, hidden).as_text()
    f32_dots = [line for line in hlo.splitlines() if "dot_general" in line and "tensor<" in line
                and line.count("xf32>") >= 3]  # fmt: skip
    assert not f32_dots, "a float32 x float32 product in the head's backward:\n" + "\n".join(f32_dots)
    assert sum("dot_general" in line for line in hlo.splitlines()) == 3  # forward + two backward
    ours = grad_fn(params, hidden)
    ref = jax.grad(_loss(_reference(cfg, name, tied), target), argnums=(0, 1))(params, hidden)
    np.testing.assert_allclose(ours[0][name], ref[0][name], rtol=0.05, atol=0.01)
    np.testing.assert_allclose(np.asarray(ours[1], np.float32), ref[1], rtol=0.05, atol=0.01)
