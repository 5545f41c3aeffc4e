"""Our Flax decoder against transformers (torch, CPU, fp32) on tiny random models of every family.

Each model is made by transformers, given non-trivial random weights (so that a wrong layout or a missed
bias shows up in the logits), saved as safetensors, loaded by our loader and compared on left-padded
batches; then decoding token by token through the KV cache must give the full forward pass's logits.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from rlvr_jax.models import KVCache
from rlvr_jax.weights import load_model
from rlvr_jax.weights.loader import export_hf

TOL = 1e-4

FAMILIES = {
    "gpt2": lambda: transformers.GPT2Config(
        vocab_size=97, n_embd=64, n_layer=2, n_head=4, n_positions=64, activation_function="gelu_new"
    ),
    "llama": lambda: transformers.LlamaConfig(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
    ),
    "mistral": lambda: transformers.MistralConfig(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        sliding_window=5,  # shorter than the test sequences, so the window is exercised
    ),
    "qwen2": lambda: transformers.Qwen2Config(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    ),
    "qwen3": lambda: transformers.Qwen3Config(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=24,  # differs from hidden/heads, as in real Qwen3 models
        tie_word_embeddings=False,
    ),
    # Gemma 2: sandwich norms, (1 + w) norms, scaled embeddings, both soft-caps set low enough to bend the
    # logits, query_pre_attn_scalar unlike head_dim, sliding and full layers alternating.
    "gemma2": lambda: transformers.Gemma2Config(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        query_pre_attn_scalar=24,
        sliding_window=5,
        attn_logit_softcapping=3.0,
        final_logit_softcapping=4.0,
    ),
    # Gemma 3: q/k norms instead of soft-capping, 2 sliding layers then a full one, each kind with its own
    # rotary base, linear rope scaling on the full layers.
    "gemma3": lambda: transformers.Gemma3TextConfig(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=5,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10.0},
            "full_attention": {"rope_type": "linear", "rope_theta": 1000.0, "factor": 4.0},
        },
    ),
}


def _make_hf_model(family: str, path) -> transformers.PreTrainedModel:
    torch.manual_seed(0)
    config = FAMILIES[family]()
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and ("norm" in name or "ln_" in name):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))
    model.eval()
    model.save_pretrained(path, safe_serialization=True)
    return model


def _batch(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three rows of 12 tokens, two of them left padded by different amounts."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 97, size=(3, 12)).astype(np.int32)
    mask = np.ones_like(ids, dtype=bool)
    mask[1, :3] = False
    mask[2, :7] = False
    ids[~mask] = 0
    return ids, mask


def _hf_logits(model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            position_ids=torch.tensor(positions, dtype=torch.long),
        )
    return out.logits.float().numpy()


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def pair(request, tmp_path_factory):
    family = request.param
    path = tmp_path_factory.mktemp(family)
    hf_model = _make_hf_model(family, path)
    ours = load_model(path, with_tokenizer=False)
    return family, hf_model, ours, path


def test_logits_match_transformers_with_left_padding(pair):
    family, hf_model, ours, _ = pair
    assert ours.config.family == family
    ids, mask = _batch()
    expected = _hf_logits(hf_model, ids, mask)
    got, _ = ours.model(jnp.asarray(ids), mask=jnp.asarray(mask))
    got = np.asarray(got)
    assert got.shape == expected.shape
    assert np.abs(expected).max() > 0.5, "weights too small for a meaningful comparison"
    diff = np.abs(got - expected)[mask].max()
    assert diff < TOL, f"{family}: max |logits diff| = {diff}"


def test_kv_cache_decoding_matches_full_forward(pair):
    family, _, ours, _ = pair
    ids, mask = _batch(seed=1)
    full, _ = ours.model(jnp.asarray(ids), mask=jnp.asarray(mask))
    full = np.asarray(full)

    # Prefill the first 8 columns, then feed the remaining 4 one token at a time.
    prefill = 8
    cache = KVCache.init(ours.config, batch=ids.shape[0], max_len=16)
    logits, cache = ours.model(
        jnp.asarray(ids[:, :prefill]), mask=jnp.asarray(mask[:, :prefill]), cache=cache
    )
    steps = [np.asarray(logits)]
    for t in range(prefill, ids.shape[1]):
        logits, cache = ours.model(jnp.asarray(ids[:, t : t + 1]), cache=cache)
        steps.append(np.asarray(logits))
    stepped = np.concatenate(steps, axis=1)
    assert int(cache.index) == ids.shape[1]
    diff = np.abs(stepped - full)[mask].max()
    assert diff < TOL, f"{family}: cached decoding differs from the full forward by {diff}"


def test_export_round_trip_loads_in_transformers(pair, tmp_path):
    family, hf_model, ours, _ = pair
    out = export_hf(ours.model, tmp_path / "export")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager")
    reloaded.eval()
    ids, mask = _batch(seed=2)
    diff = np.abs(_hf_logits(reloaded, ids, mask) - _hf_logits(hf_model, ids, mask))[mask].max()
    assert diff < TOL, f"{family}: exported model's logits differ by {diff}"


def _sampler_inputs(ours, seed: int) -> tuple:
    """(cfg, the sampler's form of the weights: unstacked, q/k/v and gate/up fused, a batch, the full
    forward's logits on it)."""
    from rlvr_jax.models.decoder import fuse_projections, unstack_layers

    cfg = ours.config
    ids, mask = _batch(seed=seed)
    full, _ = ours.model(jnp.asarray(ids), mask=jnp.asarray(mask))
    arrays = ours.model.arrays()
    arrays["layers"] = [fuse_projections(cfg, p) for p in unstack_layers(arrays["layers"], cfg.num_layers)]
    return cfg, arrays, ids, mask, full


def test_fused_decoding_layers_match_full_forward(pair):
    """The sampler's form of the weights (unstacked, q/k/v and gate/up fused) gives the same logits."""
    from rlvr_jax.models.decoder import apply

    family, _, ours, _ = pair
    cfg, arrays, ids, mask, full = _sampler_inputs(ours, seed=3)
    cache = KVCache.init(cfg, batch=ids.shape[0], max_len=ids.shape[1])
    fused, _ = apply(cfg, arrays, jnp.asarray(ids), mask=jnp.asarray(mask), cache=cache)
    diff = np.abs(np.asarray(fused) - np.asarray(full))[mask].max()
    assert diff < TOL, f"{family}: fused decoding weights differ by {diff}"


def test_the_scanned_prefill_fills_the_cache_the_unrolled_one_does(pair):
    """`prefill_cache` (the sampler's prefill: scanned layers, attention over the prompt's slots only)
    gives the hidden states, keys, values, slot validity and next slot that the unrolled cached pass
    gives, with the sampler's fused weights; decoding on from its cache gives the full forward's logits."""
    from rlvr_jax.models.decoder import apply, logits_from_hidden, prefill_cache

    family, _, ours, _ = pair
    cfg, arrays, ids, mask, full = _sampler_inputs(ours, seed=4)
    P = 8
    head = (jnp.asarray(ids[:, :P]), jnp.asarray(mask[:, :P]))
    want_hidden, want = apply(
        cfg, arrays, *head[:1], mask=head[1], cache=KVCache.init(cfg, ids.shape[0], 16), return_hidden=True
    )
    hidden, cache = prefill_cache(cfg, arrays, *head, 16)
    assert np.abs(np.asarray(hidden) - np.asarray(want_hidden))[mask[:, :P]].max() < TOL, family
    for got, expected in zip(cache.k + cache.v, want.k + want.v, strict=True):
        assert got.shape == expected.shape and got.dtype == expected.dtype
        assert np.abs(np.asarray(got) - np.asarray(expected)).max() < TOL, family
    np.testing.assert_array_equal(cache.valid, want.valid)
    assert int(cache.index) == int(want.index) == P
    steps = [np.asarray(logits_from_hidden(cfg, arrays, hidden))]
    for t in range(P, ids.shape[1]):
        logits, cache = apply(cfg, arrays, jnp.asarray(ids[:, t : t + 1]), cache=cache)
        steps.append(np.asarray(logits))
    diff = np.abs(np.concatenate(steps, axis=1) - np.asarray(full))[mask].max()
    assert diff < TOL, f"{family}: decoding from the scanned prefill differs by {diff}"


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_gives_the_same_gradients(remat):
    import jax
    from flax import nnx

    from rlvr_jax.models import ModelConfig, init_model

    cfg = ModelConfig(
        family="qwen3", vocab_size=40, hidden_size=32, num_layers=3, num_heads=4, num_kv_heads=2,
        head_dim=8, intermediate_size=48,
    )  # fmt: skip
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 40, (2, 9)), jnp.int32)

    def grads(config):
        graphdef, state = nnx.split(init_model(config, seed=1))

        def loss(state):
            logits, _ = nnx.merge(graphdef, state)(tokens)
            return jnp.mean(jax.nn.log_softmax(logits)[..., 3])

        return jax.grad(loss)(state)

    base, rematted = grads(cfg), grads(cfg.replace(remat=remat))
    for a, b in zip(jax.tree.leaves(base), jax.tree.leaves(rematted), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
