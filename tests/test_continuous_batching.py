"""Continuous batching (serving/continuous.py over serving/slot_engine.py and generate/slots.py) on a tiny
random model: rows join and leave the decode slots between device calls.

The scheduler's own log (`ContinuousBatcher.events`: admissions, finishes and releases, each with the
number of decode calls dispatched so far) is what the ordering assertions read; nothing sleeps. Where a
test needs a request to arrive while another decodes, the first request's delivery callback (which runs
on the worker thread) holds the worker until the test has submitted the second one.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import types
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlvr_jax.generate.sampler import Sampler, SamplingParams
from rlvr_jax.models import KVCache, ModelConfig, init_model
from rlvr_jax.models import decoder as dec
from rlvr_jax.serving.batcher import Batcher, InvalidJob, Job, QueueFull, ShuttingDown, Update
from rlvr_jax.serving.config import ServerConfig
from rlvr_jax.serving.continuous import ContinuousBatcher
from rlvr_jax.serving.engine import Engine
from rlvr_jax.serving.slot_engine import ContinuousEngine

TINY = ModelConfig(
    family="llama", vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
    intermediate_size=64,
)  # fmt: skip
LONG = 40  # tokens of the long request: 14 decode calls of 3 steps
CONFIG = ServerConfig(
    model_name="tiny", max_batch=2, batch_buckets=(1, 2), max_queue=2, prompt_buckets=(8,),
    new_token_buckets=(48,), stream_chunk_tokens=3,
)  # fmt: skip


@pytest.fixture(scope="module")
def engine() -> ContinuousEngine:
    model = init_model(TINY, seed=5)
    model.embed[...] = model.embed[...] * 30.0  # sharp logits, so greedy choices are clear-cut
    tokenizer = types.SimpleNamespace(pad_id=0, stop_ids=(1,), encode=lambda text: [5, 6, 7, 8, 9, 10])
    sampler = Sampler(model, tokenizer, prompt_buckets=(8,), new_token_buckets=(48,))
    engine = ContinuousEngine(sampler, CONFIG)
    engine.warmup()
    return engine


class Sink:
    """One job's updates as the worker delivers them; `hold(n, until)` makes the n-th delivery wait (on the
    worker thread) until `until` is set, and `act` runs at the n-th delivery."""

    def __init__(self, hold_at: int = 0, act: Callable[[], None] | None = None) -> None:
        self.updates: list[Update] = []
        self.finished = threading.Event()
        self.reached = threading.Event()
        self.release = threading.Event()
        self.hold_at, self.act = hold_at, act

    def __call__(self, update: Update) -> None:
        self.updates.append(update)
        if len(self.updates) == self.hold_at:
            if self.act is not None:
                self.act()
            self.reached.set()
            assert self.release.wait(60)
        if update.error or all(r.done for r in update.rows):
            self.finished.set()

    @property
    def rows(self) -> list[tuple[int, ...]]:
        return [r.token_ids for r in self.updates[-1].rows]


def _job(
    prompt: list[int], max_tokens: int, sink: Sink | None = None, rows: int = 1, **kw
) -> tuple[Job, Sink]:
    sink = sink or Sink()
    params = {"temperature": 0.0, "top_p": 1.0, "top_k": 0, **kw}
    return Job(prompts=[prompt] * rows, max_tokens=max_tokens, deliver=sink, **params), sink


def _greedy_alone(engine: Engine, prompt: list[int], max_tokens: int) -> tuple[list[int], list[float]]:
    """The sampler's own greedy tokens and their log-probs for one prompt."""
    out = engine.sampler.generate_ids(
        np.asarray([prompt], np.int32), np.ones((1, len(prompt)), bool),
        SamplingParams(temperature=0.0, max_new_tokens=max_tokens),
    )  # fmt: skip
    n = int(out.lengths[0])
    return [int(t) for t in np.asarray(out.tokens[0, :n])], [
        float(x) for x in np.asarray(out.logprobs[0, :n])
    ]


def _events(batcher: ContinuousBatcher, job: Job) -> dict[str, list[tuple[int, int]]]:
    """The job's (decode call, slot) per event kind."""
    out: dict[str, list[tuple[int, int]]] = {}
    for e in batcher.events:
        if e.job is job:
            out.setdefault(e.kind, []).append((e.call, e.slot))
    return out


def _batcher(engine: ContinuousEngine, **kw) -> ContinuousBatcher:
    """With a decode call in flight while the last one is read (as on a GPU), the harder case for the
    scheduler's bookkeeping."""
    return ContinuousBatcher(engine, **{"max_queue": 8, "wait_s": 0.0, "overlap": True, **kw})


@pytest.mark.parametrize("overlap", [True, False], ids=["call-in-flight", "one-call-at-a-time"])
def test_a_short_request_joins_a_long_one_finishes_first_and_its_slot_is_reused(engine, overlap):
    batcher = _batcher(engine, overlap=overlap)
    long_job, long_sink = _job([5, 6, 7], LONG, Sink(hold_at=1))
    short_job, short_sink = _job([9, 10, 11, 12, 13], 4)
    again_job, again_sink = _job([20, 21], 5)
    short_sink.hold_at = 2  # its last update (first token, then three more): submit the third request then
    batcher.submit(long_job)
    batcher.start()
    try:
        assert long_sink.reached.wait(60)  # the long request is decoding, and the worker waits for us
        batcher.submit(short_job)
        long_sink.release.set()
        assert short_sink.reached.wait(60)  # the short one is done; the long one is still decoding
        batcher.submit(again_job)
        short_sink.release.set()
        for sink in (long_sink, short_sink, again_sink):
            assert sink.finished.wait(60)
    finally:
        assert batcher.stop(timeout=60)
    long_ev, short_ev, again_ev = (_events(batcher, j) for j in (long_job, short_job, again_job))
    [(long_in, long_slot)], [(long_out, _)] = long_ev["admit"], long_ev["finish"]
    [(short_in, short_slot)], [(short_out, _)] = short_ev["admit"], short_ev["finish"]
    [(again_in, again_slot)], [(again_out, _)] = again_ev["admit"], again_ev["finish"]
    assert long_in < short_in <= short_out < long_out  # admitted mid-flight, out first
    assert again_slot == short_slot != long_slot  # the freed slot is reused at once...
    assert short_out <= again_in and again_out < long_out  # ...while the long request still decodes
    # Each got what the sampler gives it alone (greedy), streamed as cumulative chunks.
    for sink, (prompt, n) in zip(
        (long_sink, short_sink, again_sink),
        (([5, 6, 7], LONG), ([9, 10, 11, 12, 13], 4), ([20, 21], 5)),
        strict=True,
    ):
        tokens, logprobs = _greedy_alone(engine, prompt, n)
        [row] = sink.updates[-1].rows
        assert list(row.token_ids) == tokens and row.done and not row.stop_token
        np.testing.assert_allclose(row.logprobs, logprobs, atol=1e-5)
        lengths = [len(u.rows[0].token_ids) for u in sink.updates]
        assert lengths == sorted(lengths) and len(lengths) > 1


def test_cancel_frees_the_slot_for_a_waiting_request(engine):
    batcher = _batcher(engine)
    first_sink = Sink(hold_at=1)
    first_job, _ = _job([5, 6, 7], LONG, first_sink)
    first_sink.act = lambda: batcher.cancel(first_job)  # the client goes away after its first token
    second_job, second_sink = _job([9, 10, 11], LONG)
    waiting_job, waiting_sink = _job([20, 21], 6)
    batcher.submit(first_job)
    batcher.submit(second_job)
    batcher.start()
    try:
        assert first_sink.reached.wait(60)  # both slots are busy now
        batcher.submit(waiting_job)
        first_sink.release.set()
        assert second_sink.finished.wait(60) and waiting_sink.finished.wait(60)
    finally:
        assert batcher.stop(timeout=60)
    assert len(first_sink.updates) == 1  # nothing more after the cancel
    [(_, first_slot)], [(released, _)] = (
        _events(batcher, first_job)["admit"],
        _events(batcher, first_job)["release"],
    )
    [(waiting_in, waiting_slot)] = _events(batcher, waiting_job)["admit"]
    [(second_out, _)] = _events(batcher, second_job)["finish"]
    assert waiting_slot == first_slot and released <= waiting_in < second_out
    assert list(waiting_sink.rows[0]) == _greedy_alone(engine, [20, 21], 6)[0]
    assert list(second_sink.rows[0]) == _greedy_alone(engine, [9, 10, 11], LONG)[0]


def _sampled(engine: ContinuousEngine, jobs: list[tuple[Job, Sink]]) -> list[list[tuple[int, ...]]]:
    batcher = _batcher(engine)
    for job, _ in jobs:
        batcher.submit(job)
    batcher.start()
    try:
        for _, sink in jobs:
            assert sink.finished.wait(60)
    finally:
        assert batcher.stop(timeout=60)
    return [sink.rows for _, sink in jobs]


def test_a_seed_gives_the_same_samples_and_logprobs_whatever_shares_the_slots(engine):
    sampled = {"temperature": 1.0, "top_p": 0.95, "seed": 7}
    alone_job = _job([5, 6, 7], 12, **sampled)
    [alone] = _sampled(engine, [alone_job])
    [other] = _sampled(engine, [_job([5, 6, 7], 12, **{**sampled, "seed": 8})])
    assert other != alone  # the seed matters, so the comparisons below can fail
    # Behind a greedy request in the other slot, and admitted while it decodes (a slot of its own).
    mate_sink = Sink(hold_at=1)
    mate = _job([9, 10, 11, 12], 20, mate_sink)
    late_job = _job([5, 6, 7], 12, **sampled)
    batcher = _batcher(engine)
    batcher.submit(mate[0])
    batcher.start()
    try:
        assert mate_sink.reached.wait(60)
        batcher.submit(late_job[0])
        mate_sink.release.set()
        assert late_job[1].finished.wait(60) and mate_sink.finished.wait(60)
    finally:
        assert batcher.stop(timeout=60)
    assert late_job[1].rows == alone
    # The same log-probs up to float32 rounding: in another slot, the row's attention sums its cache slots
    # in another grouping (the padding's zeros sit elsewhere), which may move the last bit.
    np.testing.assert_allclose(
        late_job[1].updates[-1].rows[0].logprobs, alone_job[1].updates[-1].rows[0].logprobs, rtol=1e-6
    )
    # Choice 0 of an n=2 request with that seed is the same sample; choice 1 is another one.
    [pair] = _sampled(engine, [_job([5, 6, 7], 12, rows=2, **sampled)])
    assert pair[0] == alone[0] and pair[1] != alone[0]
    # The static engine gives the same sample for the same seed (same keys, same filtering path).
    static = Engine(engine.sampler, dataclasses.replace(CONFIG, engine="static"))
    job, sink = _job([5, 6, 7], 12, **sampled)
    batcher = Batcher(static, max_batch=2, max_queue=8, wait_s=0.0)
    batcher.submit(job)
    batcher.start()
    try:
        assert sink.finished.wait(60)
    finally:
        assert batcher.stop(timeout=60)
    assert sink.rows == alone


def test_top_logprobs_are_the_best_tokens_of_the_sampled_distribution(engine):
    [(job, sink)] = [_job([5, 6, 7], 7, top_logprobs=3)]
    plain_job, plain_sink = _job([9, 10, 11], 7)  # shares the slots without asking for them
    _sampled(engine, [(job, sink), (plain_job, plain_sink)])
    [row], [plain] = sink.updates[-1].rows, plain_sink.updates[-1].rows
    assert len(row.top_logprobs) == len(row.token_ids) == 7 and plain.top_logprobs == ()
    for token, logprob, top in zip(row.token_ids, row.logprobs, row.top_logprobs, strict=True):
        assert len(top) == 3 and top[0][0] == token  # greedy: the sampled token is the best one
        assert abs(top[0][1] - logprob) < 1e-5 and top[0][1] >= top[1][1] >= top[2][1]
    tokens, logprobs = _greedy_alone(engine, [5, 6, 7], 7)
    assert list(row.token_ids) == tokens
    np.testing.assert_allclose(row.logprobs, logprobs, atol=1e-5)


def test_the_queue_is_bounded_failures_stay_alone_and_stop_drains(engine):
    batcher = _batcher(engine, max_queue=2)
    jobs = [_job([5, 6, 7], 6), _job([9, 10, 11], 6)]
    for job, _ in jobs:
        batcher.submit(job)
    with pytest.raises(QueueFull, match="2 requests already waiting") as full:
        batcher.submit(_job([7, 8], 4)[0])
    assert full.value.retry_after >= 1
    with pytest.raises(InvalidJob, match=r"top_logprobs must be an integer in 0\.\.20"):
        batcher.submit(_job([7, 8], 4, top_logprobs=21)[0])
    jobs[1][0].prompts = [[9, 2**40]]  # passed its check; its prefill cannot even be built
    batcher.start()
    assert batcher.stop(timeout=60)  # stop finishes the queued work before the worker exits
    good, bad = (sink for _, sink in jobs)
    assert "OverflowError" in bad.updates[-1].error and good.finished.is_set()
    assert list(good.rows[0]) == _greedy_alone(engine, [5, 6, 7], 6)[0]
    with pytest.raises(ShuttingDown):
        batcher.submit(_job([7, 8], 4)[0])


def test_every_compiled_shape_is_built_at_warmup_and_nothing_else_compiles(engine):
    shapes = engine.compiled_shapes
    assert len(shapes) == 2 * 1 + 2 + 1  # prefill: 2 batch x 1 prompt bucket; decode: 2 prefixes, and top
    scorer = engine.scorer.compile_count  # prompt log-probs (echo): one per (batch, prompt) bucket
    assert scorer == 2 and engine.compile_count == len(shapes) + scorer
    fns = [*engine._admit.values(), *engine._decode.values()]
    assert [f._cache_size() for f in fns] == [1] * len(shapes)
    # Traffic of every kind: one and two rows, short and long prompts, top log-probs, sampling, echo.
    _sampled(engine, [_job([5], 3), _job([9, 10, 11, 12, 13, 14, 15, 16], 9, rows=2, temperature=0.7)])
    echo = _job([3, 4, 5], 0, prompt_logprobs=True, top_logprobs=2)  # scores its prompt, takes no slot
    [scored], [sampled] = _sampled(
        engine,
        [echo, _job([3, 4], 5, top_logprobs=2, top_k=5, seed=3, temperature=1.0, prompt_logprobs=True)],
    )
    assert scored == () and sampled and len(echo[1].updates) == 1
    [row] = echo[1].updates[-1].rows
    assert row.done and row.prompt_logprobs[0] is None and len(row.prompt_top_logprobs[1]) == 2
    assert engine.compile_count == len(shapes) + scorer
    assert [f._cache_size() for f in fns] == [1] * len(shapes)


# -- the decoder's per-row cache index --------------------------------------------------------------------


def test_rows_at_their_own_cache_positions_decode_as_they_would_alone():
    """Two rows that start at different steps share a cache with a write index per row: each step's
    logits equal the full forward pass of that row's sequence."""
    model = init_model(TINY, seed=2)
    cfg, arrays = model.cfg, model.arrays()
    seqs = [np.array([3, 9, 4, 17, 22, 8, 5]), np.array([11, 2, 30, 7])]
    starts = [0, 3]  # row 1 joins at step 3
    full = [np.asarray(model(jnp.asarray(s[None]))[0][0]) for s in seqs]
    cache = KVCache.init(cfg, 2, 16)
    cache = cache._replace(index=jnp.zeros((2,), jnp.int32))
    apply = jax.jit(functools.partial(dec.apply, cfg))
    for step in range(7):
        pos = [step - s for s in starts]
        active = np.array([0 <= p < len(s) for p, s in zip(pos, seqs, strict=True)])
        tokens = np.array([[s[p] if a else 0] for s, p, a in zip(seqs, pos, active, strict=True)], np.int32)
        logits, new = apply(arrays, jnp.asarray(tokens), mask=jnp.asarray(active[:, None]), cache=cache)
        cache = new._replace(index=jnp.where(jnp.asarray(active), new.index, cache.index))
        for r in np.flatnonzero(active):
            np.testing.assert_allclose(np.asarray(logits[r, 0]), full[r][pos[r]], atol=2e-5)
    assert list(np.asarray(cache.index)) == [7, 4]


def test_the_gpu_decode_kernel_takes_a_current_slot_per_row():
    rng = np.random.default_rng(0)
    B, H, K, DH, S = 3, 4, 2, 16, 64
    q = jnp.asarray(rng.normal(size=(B, 1, H, DH)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(B, K, S, DH)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(B, K, S, DH)), jnp.float32)
    current = np.array([5, 40, 63])
    valid = np.zeros((B, S), bool)
    for row, (first, last) in enumerate(zip([0, 8, 30], current, strict=True)):
        valid[row, first : last + 1] = True
    slots = jnp.asarray(current[:, None], jnp.int32)
    k = k.at[0, :, 6:].set(1e4)  # garbage past a row's current slot must not leak in
    for window in (0, 16):
        ref = dec.attention(q, k, v, slots, jnp.asarray(valid), window, impl="xla")
        out = dec._decode_attention_pallas(q, k, v, slots, jnp.asarray(valid), window, interpret=True)
        np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=2e-5)
        assert jnp.isfinite(out).all()
