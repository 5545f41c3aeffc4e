"""The jitted sampler on a tiny random model: distributions, log-probs, stopping, groups, recompiles."""

from __future__ import annotations

import itertools
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

from rlvr_jax.generate import Sampler, SamplingParams
from rlvr_jax.generate.sampling import filter_top_k_top_p
from rlvr_jax.models import ModelConfig, init_model
from rlvr_jax.optim import init_train_state, sampler_params
from tests.tiny import TINY

CFG = TINY
VOCAB = CFG.vocab_size
PAD = 0


def _tokenizer(stop_ids=(1,)):
    return types.SimpleNamespace(pad_id=PAD, stop_ids=tuple(stop_ids))


@pytest.fixture(scope="module")
def model():
    m = init_model(CFG, seed=3)
    # Sharper logits than the 0.02-std initialisation gives, so distributions are far from uniform.
    m.embed[...] = m.embed[...] * 40.0
    return m


def _prompts():
    ids = np.array([[0, 0, 5, 6, 7], [0, 8, 9, 10, 11], [12, 13, 14, 15, 16]], np.int32)
    return ids, ids != PAD


def _first_token_probs(model, ids, mask, temperature):
    logits, _ = model(jnp.asarray(ids), mask=jnp.asarray(mask))
    return np.asarray(jax.nn.softmax(logits[:, -1] / temperature, axis=-1))


def test_logprobs_equal_a_full_forward_pass(model):
    sampler = Sampler(model, _tokenizer(stop_ids=(VOCAB + 5,)))  # no stop: every row runs to the end
    ids, mask = _prompts()
    T = 0.8
    out = jax.device_get(
        sampler.generate_ids(ids, mask, SamplingParams(temperature=T, max_new_tokens=6), group_size=2)
    )
    assert out.tokens.shape == (6, 6) and out.mask.all()
    full_ids = np.concatenate([np.repeat(ids, 2, axis=0), out.tokens], axis=1)
    full_mask = np.concatenate([np.repeat(mask, 2, axis=0), out.mask], axis=1)
    logits, _ = model(jnp.asarray(full_ids), mask=jnp.asarray(full_mask))
    logp = np.asarray(jax.nn.log_softmax(logits / T, axis=-1))
    P = ids.shape[1]
    # The token at position P + t was predicted by the logits at position P + t - 1.
    expected = np.take_along_axis(logp[:, P - 1 : -1], out.tokens[..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(out.logprobs, expected, atol=1e-4)


def test_top_logprobs_are_the_best_alternatives_of_the_same_distribution(model):
    """The server's top_logprobs: each position's k best tokens under softmax(logits / T), unfiltered by
    top-p, from the same numbers as the chosen token's log-prob (a greedy row's chosen = its best); the
    streamed variant ends with the same arrays, and the default variant (rollouts) carries none."""
    sampler = Sampler(model, _tokenizer(stop_ids=(VOCAB + 5,)), new_token_buckets=(8,))
    ids, mask = _prompts()
    k, T = 4, 0.7
    sampled = SamplingParams(temperature=T, top_p=0.9, max_new_tokens=6)
    out = jax.device_get(sampler.generate_ids(ids, mask, sampled, seed=3, top_logprobs=k))
    plain = jax.device_get(sampler.generate_ids(ids, mask, sampled, seed=3))
    assert plain.top_ids is None and plain.top_logprobs is None
    np.testing.assert_array_equal(out.tokens, plain.tokens)  # asking for alternatives changes no sample
    # The same numbers from another compiled program (one with the top-k outputs): equal up to rounding.
    np.testing.assert_allclose(out.logprobs, plain.logprobs, rtol=0, atol=1e-6)
    assert out.top_ids.shape == out.top_logprobs.shape == (3, 6, k)
    full_ids = np.concatenate([ids, out.tokens], axis=1)
    full_mask = np.concatenate([mask, out.mask], axis=1)
    logits, _ = model(jnp.asarray(full_ids), mask=jnp.asarray(full_mask))
    logp = np.asarray(jax.nn.log_softmax(logits / T, axis=-1))[:, ids.shape[1] - 1 : -1]
    best = np.argsort(-logp, axis=-1)[..., :k]
    np.testing.assert_array_equal(out.top_ids, best)
    np.testing.assert_allclose(out.top_logprobs, np.take_along_axis(logp, best, -1), atol=1e-4)
    assert (np.diff(out.top_logprobs, axis=-1) <= 0).all()

    greedy = SamplingParams(temperature=0.0, max_new_tokens=6)
    g = jax.device_get(sampler.generate_ids(ids, mask, greedy, top_logprobs=k))
    np.testing.assert_array_equal(g.top_ids[..., 0], g.tokens)
    np.testing.assert_array_equal(g.top_logprobs[..., 0], g.logprobs)  # bit for bit
    streamed = list(sampler.stream_ids(ids, mask, sampled, seed=3, chunk_tokens=4, top_logprobs=k))[-1]
    np.testing.assert_array_equal(streamed.top_ids, out.top_ids)
    np.testing.assert_array_equal(streamed.top_logprobs, out.top_logprobs)


@pytest.mark.parametrize(("top_k", "top_p"), [(0, 1.0), (5, 1.0), (0, 0.7), (6, 0.8)])
def test_sampled_frequencies_match_the_filtered_softmax(model, top_k, top_p):
    ids, mask = _prompts()
    ids, mask = ids[:1], mask[:1]
    T = 1.3
    n = 4000
    sampler = Sampler(model, _tokenizer())
    params = SamplingParams(temperature=T, top_k=top_k, top_p=top_p, max_new_tokens=1)
    out = jax.device_get(sampler.generate_ids(ids, mask, params, seed=7, group_size=n))
    counts = np.bincount(out.tokens[:, 0], minlength=VOCAB)

    logits, _ = model(jnp.asarray(ids), mask=jnp.asarray(mask))
    scaled = logits[:, -1] / T
    kept = filter_top_k_top_p(scaled, jnp.array([top_k]), jnp.array([top_p], jnp.float32))
    probs = np.asarray(jax.nn.softmax(kept, axis=-1))[0]
    support = probs > 1e-9
    if top_k:
        assert support.sum() == top_k
    assert counts[~support].sum() == 0, "a token outside the top-k / top-p set was sampled"
    # Chi-square over the support, merging tiny-expectation cells into one.
    expected = probs[support] * n
    observed = counts[support]
    big = expected >= 5
    obs = np.append(observed[big], observed[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    exp = exp.astype(np.float64) * obs.sum() / exp.sum()
    exp[-1] += obs.sum() - exp.sum()  # exact float equality of the totals, as scipy requires
    p = stats.chisquare(obs, exp).pvalue
    assert p > 1e-3, f"chi-square p={p:.2e}; observed {obs}, expected {exp.round(1)}"


def test_top_p_keeps_the_token_that_crosses_the_threshold():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    kept = filter_top_k_top_p(logits, jnp.array([0]), jnp.array([0.6]))
    assert np.isfinite(np.asarray(kept)[0, :2]).all() and (np.asarray(kept)[0, 2:] < -1e29).all()
    kept = filter_top_k_top_p(logits, jnp.array([0]), jnp.array([0.5]))
    assert (np.asarray(kept)[0, 1:] < -1e29).all()


def test_group_samples_have_the_distribution_of_independent_samples(model):
    ids, mask = _prompts()
    prompt, pmask = ids[1:2], mask[1:2]
    n = 3000
    sampler = Sampler(model, _tokenizer(stop_ids=(VOCAB + 5,)))
    params = SamplingParams(temperature=1.0, max_new_tokens=2)
    grouped = jax.device_get(sampler.generate_ids(prompt, pmask, params, seed=1, group_size=n))
    independent = jax.device_get(
        sampler.generate_ids(np.repeat(prompt, n, 0), np.repeat(pmask, n, 0), params, seed=2)
    )
    for step in range(2):
        a = np.bincount(grouped.tokens[:, step], minlength=VOCAB)
        b = np.bincount(independent.tokens[:, step], minlength=VOCAB)
        keep = (a + b) >= 10
        table = np.stack([np.append(a[keep], a[~keep].sum()), np.append(b[keep], b[~keep].sum())])
        table = table[:, table.sum(0) > 0]
        p = stats.chi2_contingency(table).pvalue
        assert p > 1e-3, f"step {step}: grouped vs independent differ (p={p:.2e})"
    # And group members are not copies of each other.
    assert len({tuple(r) for r in grouped.tokens}) > n // 10


def test_rows_stop_on_stop_tokens_and_are_masked(model):
    ids, mask = _prompts()
    greedy = SamplingParams(temperature=0.0, max_new_tokens=8)
    free = jax.device_get(Sampler(model, _tokenizer(stop_ids=(VOCAB + 5,))).generate_ids(ids, mask, greedy))
    # Make row 0's third token a stop token; rows whose greedy path never produces it run to the end.
    stop = int(free.tokens[0, 2])
    out = jax.device_get(Sampler(model, _tokenizer(stop_ids=(stop,))).generate_ids(ids, mask, greedy))
    for r in range(3):
        hits = np.flatnonzero(free.tokens[r] == stop)
        if hits.size:
            n = hits[0] + 1
            assert out.finished[r] and out.lengths[r] == n
            np.testing.assert_array_equal(out.tokens[r, :n], free.tokens[r, :n])
            assert (out.tokens[r, n:] == PAD).all() and not out.mask[r, n:].any()
            assert (out.logprobs[r, n:] == 0).all()
        else:
            assert not out.finished[r] and out.lengths[r] == 8
    assert out.lengths[0] == 3


def test_early_exit_when_every_row_is_done(model):
    ids, mask = _prompts()
    greedy = SamplingParams(temperature=0.0, max_new_tokens=8)
    free = jax.device_get(Sampler(model, _tokenizer(stop_ids=(VOCAB + 5,))).generate_ids(ids, mask, greedy))
    stops = tuple(int(t) for t in free.tokens[:, 1])  # every row stops at its second token
    out = jax.device_get(Sampler(model, _tokenizer(stop_ids=stops)).generate_ids(ids, mask, greedy))
    assert int(out.steps) <= 2 and out.finished.all()


def test_same_seed_same_samples_and_bounded_recompiles(model):
    sampler = Sampler(
        model, _tokenizer(stop_ids=(VOCAB + 5,)), prompt_buckets=(8, 16), new_token_buckets=(8,)
    )
    ids, mask = _prompts()
    params = SamplingParams(temperature=1.0, max_new_tokens=5)
    a = jax.device_get(sampler.generate_ids(ids, mask, params, seed=11))
    b = jax.device_get(sampler.generate_ids(ids, mask, params, seed=11))
    c = jax.device_get(sampler.generate_ids(ids, mask, params, seed=12))
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert (a.tokens != c.tokens).any()
    # Other prompt lengths and generation lengths inside the same buckets reuse the executable.
    sampler.generate_ids(ids[:, 1:], mask[:, 1:], SamplingParams(temperature=1.0, max_new_tokens=3))
    sampler.generate_ids(ids[:, 2:], mask[:, 2:], SamplingParams(temperature=1.0, max_new_tokens=8))
    assert sampler.compile_count == 1
    assert a.tokens.shape == (3, 5)
    longer = np.concatenate([ids, ids], axis=1)
    sampler.generate_ids(longer, longer != PAD, params)
    assert sampler.compile_count == 2  # the 16 bucket


def test_a_compiled_bucket_is_not_compiled_again_and_submit_equals_generate(model):
    """`bucket_compile` (the trainer's warm-up) compiles a bucket from shapes alone and leaves the
    executables, which a later call with a prompt of that bucket runs: it lowers nothing. `submit_ids`
    (dispatch now, wait later, possibly in another thread) samples exactly what `generate_ids` does,
    also with weights given explicitly."""
    from tests.tiny import lowerings

    tokenizer = _tokenizer(stop_ids=(VOCAB + 5,))
    sampler = Sampler(model, tokenizer, prompt_buckets=(8, 16), new_token_buckets=(8,))
    params = SamplingParams(temperature=1.0, max_new_tokens=5)
    seed = jax.random.key(4)
    with lowerings() as warm:
        for width in (8, 16):
            key, compile_now = sampler.bucket_compile(3, width, params, seed=seed, group_size=2)
            seconds = compile_now()
            assert key[:4] == (3, width, 8, 2) and seconds > 0
    assert warm.count("jit(rollout_prefill)") == warm.count("jit(rollout_decode)") == 2
    ids, mask = _prompts()
    longer = np.concatenate([ids, ids, ids], axis=1)  # 15 tokens: the 16 bucket
    with lowerings() as later:
        a = jax.device_get(sampler.generate_ids(longer, longer != PAD, params, seed=seed, group_size=2))
        b = sampler.submit_ids(ids, mask, params, seed=seed, group_size=2, weights=sampler.params)()
    assert not {"jit(rollout_prefill)", "jit(rollout_decode)"} & set(later), later
    c = jax.device_get(sampler.generate_ids(ids, mask, params, seed=seed, group_size=2))
    for field in ("tokens", "logprobs", "mask", "lengths", "finished"):
        np.testing.assert_array_equal(getattr(b, field), getattr(c, field))
    assert a.tokens.shape == (6, 5) and sampler.compile_count == 2


def test_a_bucket_compiled_from_shapes_on_a_mesh_runs_without_compiling_and_survives_new_dtypes(
    model, caplog
):
    """On a mesh (what the trainer always uses) `bucket_compile` compiles from shapes alone, in a thread
    of its own here as in the warm-up's background, and the real call with a typed key per step runs
    the executables it left: XLA compiles nothing more, and the tokens equal a sampler compiled the usual
    way. Weights handed over in another dtype than at the compile (bf16 for float32) do not fit those
    executables: said in a warning, and the call compiles for them and samples what that sampler would."""
    import logging
    import threading

    from rlvr_jax import sharding

    def xla_compiles() -> tuple[list[str], object]:
        names: list[str] = []

        def listener(event: str, seconds: float, **kwargs: object) -> None:
            if event == "/jax/core/compile/backend_compile_duration":
                names.append(str(kwargs.get("fun_name", "?")))

        jax.monitoring.register_event_duration_secs_listener(listener)
        return names, listener

    tokenizer = _tokenizer(stop_ids=(VOCAB + 5,))
    params = SamplingParams(temperature=1.0, max_new_tokens=5)
    ids, mask = _prompts()
    key = jax.random.fold_in(jax.random.key(4), 1)  # as a step's: a typed key, not the warm-up's
    ahead = Sampler(model, tokenizer, prompt_buckets=(8,), new_token_buckets=(8,), mesh=sharding.make_mesh())
    bucket_key, compile_now = ahead.bucket_compile(3, 5, params, seed=jax.random.key(0), group_size=2)
    worker = threading.Thread(target=compile_now)
    worker.start()
    worker.join()
    compiles, listener = xla_compiles()
    try:
        got = jax.device_get(ahead.generate_ids(ids, mask, params, seed=key, group_size=2))
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    # (Only a few small eager operations compile, around the rollout.)
    assert not [n for n in compiles if "rollout" in n] and ahead._compiled[bucket_key]._exe is not None
    usual = Sampler(model, tokenizer, prompt_buckets=(8,), new_token_buckets=(8,), mesh=sharding.make_mesh())
    want = jax.device_get(usual.generate_ids(ids, mask, params, seed=key, group_size=2))
    for field in ("tokens", "logprobs", "lengths"):
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field))

    half = jax.tree.map(lambda x: x.astype(jnp.bfloat16) if x.dtype == jnp.float32 else x, ahead.params)
    ahead.update_params(half)
    usual.update_params(half)
    with caplog.at_level(logging.WARNING, logger="rlvr_jax.generate.sampler"):
        got = jax.device_get(ahead.generate_ids(ids, mask, params, seed=key, group_size=2))
    assert "the prefill compiled ahead of time does not take this call's arguments" in caplog.text
    assert "bfloat16" in caplog.text and ahead._compiled[bucket_key]._exe is None
    want = jax.device_get(usual.generate_ids(ids, mask, params, seed=key, group_size=2))
    np.testing.assert_array_equal(got.tokens, want.tokens)
    # A bucket compiled after the hand-over (as the trainer's warm-up is) is compiled for the new dtype.
    caplog.clear()
    other_key, compile_now = ahead.bucket_compile(3, 8, params, seed=jax.random.key(0), group_size=3)
    compile_now()
    with caplog.at_level(logging.WARNING, logger="rlvr_jax.generate.sampler"):
        ahead.generate_ids(ids, mask, params, seed=key, group_size=3)
    assert not caplog.text and ahead._compiled[other_key]._exe is not None


def test_per_row_keys_make_a_row_independent_of_its_batch(model):
    """With one key per row, a row samples the same tokens whatever the other rows are (and wherever it
    sits), which is what lets the server batch requests that each carry their own seed."""
    sampler = Sampler(model, _tokenizer(stop_ids=(VOCAB + 5,)), new_token_buckets=(8,))
    ids, mask = _prompts()
    params = SamplingParams(temperature=1.0, max_new_tokens=6)
    keys = jax.vmap(jax.random.key)(jnp.arange(3, dtype=jnp.uint32) + 100)
    batch = jax.device_get(sampler.generate_ids(ids, mask, params, seed=keys))
    # Two rows moved, with another batch mate: they keep their key and so their tokens.
    order = np.array([2, 1, 0])
    other_ids = ids[order].copy()
    other_ids[2] = [17, 18, 19, 20, 21]
    shuffled = jax.device_get(sampler.generate_ids(other_ids, other_ids != PAD, params, seed=keys[order]))
    np.testing.assert_array_equal(shuffled.tokens[0], batch.tokens[2])
    np.testing.assert_array_equal(shuffled.tokens[1], batch.tokens[1])
    # One batch key instead: the rows' draws depend on each other (the same tokens would be a coincidence).
    shared = jax.device_get(sampler.generate_ids(ids, mask, params, seed=100))
    assert (shared.tokens != batch.tokens).any()
    streamed = list(sampler.stream_ids(ids, mask, params, seed=keys, chunk_tokens=4))[-1]
    np.testing.assert_array_equal(streamed.tokens, batch.tokens)
    with pytest.raises(ValueError, match="2 per-row keys for 3 rows"):
        sampler.generate_ids(ids, mask, params, seed=keys[:2])


def test_sampling_params_are_validated():
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)
    with pytest.raises(ValueError, match="max_new_tokens"):
        SamplingParams(max_new_tokens=0)


def test_two_stage_sampling_is_exact_across_blocks():
    from rlvr_jax.generate.sampling import categorical_two_stage

    V, n = 2500, 20000  # three blocks of 1024, the last one padded
    rng = np.random.default_rng(0)
    logits = np.full(V, -30.0, np.float32)
    hot = rng.choice(V, 12, replace=False)  # mass spread over tokens in every block
    logits[hot] = rng.normal(0, 1, 12)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    tokens, lse = categorical_two_stage(jax.random.key(0), jnp.tile(jnp.asarray(logits), (n, 1)))
    np.testing.assert_allclose(np.asarray(lse)[0], np.log(np.exp(logits.astype(np.float64)).sum()), rtol=1e-5)
    counts = np.bincount(np.asarray(tokens), minlength=V)
    assert counts[np.setdiff1d(np.arange(V), hot)].sum() <= 2  # ~1e-9 mass outside the hot set
    expected = probs[hot] * n
    observed = counts[hot].astype(np.float64)
    expected = expected * observed.sum() / expected.sum()
    assert stats.chisquare(observed, expected).pvalue > 1e-3


def test_streaming_yields_growing_prefixes_and_ends_with_generate_ids(model):
    sampler = Sampler(model, _tokenizer(stop_ids=(VOCAB + 5,)), new_token_buckets=(16,))
    ids, mask = _prompts()
    params = SamplingParams(temperature=1.0, max_new_tokens=11)
    full = jax.device_get(sampler.generate_ids(ids, mask, params, seed=5, group_size=2))
    chunks = list(sampler.stream_ids(ids, mask, params, seed=5, group_size=2, chunk_tokens=4))
    # First yield right after the prefill (one token per row), then every 4 steps up to 11.
    assert [int(c.lengths.max()) for c in chunks] == [1, 5, 9, 11]
    for earlier, later in itertools.pairwise(chunks):
        n = int(earlier.lengths.max())
        np.testing.assert_array_equal(earlier.tokens[:, :n], later.tokens[:, :n])
    last = chunks[-1]
    for field in ("tokens", "logprobs", "mask", "lengths", "finished"):
        np.testing.assert_array_equal(getattr(last, field), getattr(full, field), err_msg=field)
    with pytest.raises(ValueError, match="chunk_tokens"):
        next(sampler.stream_ids(ids, mask, params, chunk_tokens=0))


def test_the_two_program_rollout_samples_what_one_program_of_generate_does(model):
    """`Sampler` runs a bucket as two compiled programs (prefill, then the decode loop, on weights prepared
    once for every bucket); the pure `generate` that export and the docs use is one. Same keys,
    same tokens, log-probs and stopping, with top-p filtering and top log-probs on."""
    import functools

    from rlvr_jax.generate.sampler import RowParams, generate

    ids, mask = _prompts()
    params = SamplingParams(temperature=0.9, top_p=0.8, max_new_tokens=7)
    free = Sampler(model, _tokenizer(stop_ids=(VOCAB + 5,)), prompt_buckets=(8,), new_token_buckets=(8,))
    free = jax.device_get(free.generate_ids(ids, mask, params, seed=11, group_size=3))
    tokenizer = _tokenizer(stop_ids=(int(free.tokens[0, 2]),))  # a token row 0 samples: some rows stop
    sampler = Sampler(model, tokenizer, prompt_buckets=(8,), new_token_buckets=(8,))
    ours = jax.device_get(sampler.generate_ids(ids, mask, params, seed=11, group_size=3, top_logprobs=2))
    padded = np.zeros((3, 8), np.int32)
    padded[:, 3:] = ids
    fn = jax.jit(functools.partial(
        generate, sampler.graphdef, max_new_tokens=8, stop_ids=tokenizer.stop_ids, pad_id=PAD,
        group_size=3, use_filters=True, top_logprobs=2,
    ))  # fmt: skip
    one = jax.device_get(fn(
        sampler.params, jnp.asarray(padded), jnp.asarray(padded != PAD), jax.random.key(11),
        RowParams.broadcast(params, 9), jnp.asarray(7, jnp.int32),
    ))  # fmt: skip
    assert ours.finished.any() and not ours.finished.all()  # stops and cut-offs both compared
    np.testing.assert_array_equal(ours.finished, one.finished)
    for field in ("tokens", "logprobs", "mask", "top_ids", "top_logprobs"):
        np.testing.assert_array_equal(getattr(ours, field), getattr(one, field)[:, :7], err_msg=field)


def test_streaming_stops_when_every_row_is_done(model):
    ids, mask = _prompts()
    greedy = SamplingParams(temperature=0.0, max_new_tokens=12)
    free = jax.device_get(Sampler(model, _tokenizer(stop_ids=(VOCAB + 5,))).generate_ids(ids, mask, greedy))
    stops = tuple(int(t) for t in free.tokens[:, 1])  # every row stops by its second token
    chunks = list(Sampler(model, _tokenizer(stop_ids=stops)).stream_ids(ids, mask, greedy, chunk_tokens=3))
    assert len(chunks) == 2 and chunks[-1].finished.all() and int(chunks[-1].lengths.max()) <= 2


GPT2_TINY = ModelConfig.from_hf_config(
    {"model_type": "gpt2", "vocab_size": VOCAB, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 64}
)


GEMMA2_TINY = ModelConfig.from_hf_config(
    {"model_type": "gemma2", "vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 48,
     "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
     "sliding_window": 4}
)  # fmt: skip


@pytest.mark.parametrize("cfg", [CFG, GPT2_TINY, GEMMA2_TINY], ids=["rms", "layernorm", "gemma"])
def test_the_samplers_bf16_copy_of_float32_masters_samples_the_same_tokens(cfg):
    """The trainer keeps float32 masters and hands the sampler a copy in the dtypes the model reads
    (`sampler_params`): half the bytes per decode step, and the same samples, since the model casts each
    of those weights to bf16 at use anyway. GPT-2's LayerNorm reads its scale and bias in float32: kept; so
    does Gemma's (1 + w) RMSNorm."""
    cfg = cfg.replace(dtype="bfloat16")
    model = init_model(cfg, seed=5)
    model.embed[...] = model.embed[...] * 40.0
    masters = init_train_state(model, optax.sgd(0.1)).params  # float32, as the trainer keeps them
    copy = sampler_params(masters, model.cfg)
    dtypes = {jax.tree_util.keystr(path): x.dtype for path, x in jax.tree_util.tree_leaves_with_path(copy)}
    kept = {name for name, dtype in dtypes.items() if dtype == jnp.float32}
    assert all(dtype in (jnp.float32, jnp.bfloat16) for dtype in dtypes.values())
    if cfg.norm_type == "rms" and not cfg.norm_offset:
        assert not kept
    else:
        assert kept and all("norm" in name for name in kept)
        assert sum("norm" in name for name in dtypes) == len(kept)  # every LayerNorm leaf, nothing else
    ids, mask = _prompts()
    params = SamplingParams(temperature=1.0, max_new_tokens=6)
    sampler = Sampler(model, _tokenizer(stop_ids=(VOCAB + 5,)), new_token_buckets=(8,))
    sampler.update_params(masters)
    wide = jax.device_get(sampler.generate_ids(ids, mask, params, group_size=2, seed=1))
    sampler.update_params(copy)
    narrow = jax.device_get(sampler.generate_ids(ids, mask, params, group_size=2, seed=1))
    np.testing.assert_array_equal(narrow.tokens, wide.tokens)
    np.testing.assert_array_equal(narrow.logprobs, wide.logprobs)
