"""Prompt scoring (`generate.scoring.sequence_logprobs`, the server's `echo` log-probs) against one
whole-sequence log-softmax, at every block size its memory bound can choose."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rlvr_jax.generate.scoring import sequence_logprobs
from rlvr_jax.models.decoder import apply
from tests.tiny import TINY, numpy_model


@pytest.fixture(scope="module")
def scored_batch():
    model = numpy_model(TINY, scale=0.3)
    graphdef, params = nnx.split(model)
    rng = np.random.default_rng(0)
    rows, length = 3, 11
    tokens = jnp.asarray(rng.integers(1, TINY.vocab_size, (rows, length)), jnp.int32)
    # Left padding of 0, 2 and 5 positions, as the server batches prompts of different lengths.
    mask = jnp.asarray(np.arange(length)[None, :] >= np.array([0, 2, 5])[:, None])
    logits, _ = apply(model.cfg, model.arrays(), tokens, mask=mask)
    log_softmax = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    expected = jnp.take_along_axis(log_softmax[:, :-1], tokens[:, 1:, None], axis=-1)[..., 0]
    return graphdef, params, tokens, mask, np.asarray(expected), np.asarray(log_softmax[:, :-1])


@pytest.mark.parametrize(
    "chunk, max_block_elements",
    [
        (64, 1 << 27),  # the defaults: one block holds every position
        (4, 1 << 27),  # 10 positions in blocks of 4: the last block padded
        (64, 3 * 24 * 3),  # the element bound picks 3 positions a block (rows 3 x vocab 24 x 3)
        (64, 1),  # a bound below one position's row still scores one position a block
    ],
)
def test_every_block_size_gives_the_whole_sequence_log_softmax(scored_batch, chunk, max_block_elements):
    graphdef, params, tokens, mask, expected, log_softmax = scored_batch
    lp, top_ids, top_lps = sequence_logprobs(
        graphdef, params, tokens, mask, top_logprobs=3, chunk=chunk, max_block_elements=max_block_elements
    )
    lp, top_ids, top_lps = np.asarray(lp), np.asarray(top_ids), np.asarray(top_lps)
    assert lp.shape == tokens.shape and top_ids.shape == top_lps.shape == (*tokens.shape, 3)
    np.testing.assert_array_equal(lp[:, 0], 0.0)  # the first position has no context
    # Compare where the context is real (a row's first real token has none either).
    first_real = np.argmax(np.asarray(mask), axis=1)
    for row, start in enumerate(first_real):
        np.testing.assert_allclose(lp[row, start + 1 :], expected[row, start:], atol=1e-5)
        best = np.argsort(-log_softmax[row, start:], axis=-1, kind="stable")[:, :3]
        np.testing.assert_array_equal(top_ids[row, start + 1 :], best)
        np.testing.assert_allclose(
            top_lps[row, start + 1 :], np.take_along_axis(log_softmax[row, start:], best, -1), atol=1e-5
        )
    # The chosen token's log-prob equals its entry among the alternatives when it is the first choice.
    greedy = top_ids[:, 1:, 0] == np.asarray(tokens)[:, 1:]
    np.testing.assert_array_equal(lp[:, 1:][greedy], top_lps[:, 1:, 0][greedy])
