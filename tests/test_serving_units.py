"""Server pieces without the 135M model: settings, request validation, incremental text, the batcher on a
tiny random model, and the app's loading / timeout paths in-process. Fast: a tiny model compiles in seconds.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pydantic
import pytest
from fastapi.testclient import TestClient

from rlvr_jax.generate import Sampler, SamplingParams
from rlvr_jax.models import ModelConfig, init_model
from rlvr_jax.models.tokenizer import Tokenizer
from rlvr_jax.serving import schemas
from rlvr_jax.serving.app import create_app
from rlvr_jax.serving.batcher import Batcher, InvalidJob, Job, QueueFull, ShuttingDown, Update
from rlvr_jax.serving.config import ServerConfig, parse_buckets
from rlvr_jax.serving.engine import Engine
from rlvr_jax.serving.errors import validation_message
from rlvr_jax.serving.text import ChoiceText, IncrementalDecoder, held_back
from rlvr_jax.weights.loader import load_tokenizer
from tests.conftest import REPO

# -- settings -----------------------------------------------------------------------------------------------


def test_config_defaults_follow_the_buckets():
    cfg = ServerConfig(model_name="m", max_batch=4, prompt_buckets=(128, 64), new_token_buckets=(32,))
    assert cfg.batch_buckets == (4,) and cfg.prompt_buckets == (64, 128)
    assert cfg.max_prompt_tokens == 128 and cfg.max_tokens_limit == 32
    assert cfg.compiled_shapes == [(4, 64, 32), (4, 128, 32)]


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"max_batch": 4, "batch_buckets": (1, 2)}, "must equal max_batch"),
        ({"max_prompt_tokens": 4096}, "largest prompt bucket"),
        ({"max_tokens_limit": 5000}, "largest new-token bucket"),
        ({"max_queue": 0}, "max_queue must be > 0"),
        ({"prompt_buckets": ()}, "prompt_buckets must be a non-empty list"),
        ({"model_name": ""}, "model_name must not be empty"),
    ],
)
def test_config_errors_say_what_to_change(kwargs, says):
    with pytest.raises(ValueError, match=says):
        ServerConfig(**{"model_name": "m", **kwargs})


def test_parse_buckets_names_the_flag():
    assert parse_buckets("128, 64,64", "--prompt_buckets") == (64, 128)
    with pytest.raises(ValueError, match="--prompt_buckets takes comma-separated positive integers"):
        parse_buckets("64,big", "--prompt_buckets")
    with pytest.raises(ValueError, match="--new_token_buckets"):
        parse_buckets("0", "--new_token_buckets")


def test_serve_script_fails_cleanly_on_bad_flags_and_missing_models():
    script = str(REPO / "scripts" / "serve.py")
    bad_flag = subprocess.run(
        [sys.executable, script, "--model", "x.gguf", "--prompt_buckets", "64,big"],
        capture_output=True,
        text=True,
    )
    assert bad_flag.returncode == 2 and "error: --prompt_buckets takes" in bad_flag.stderr
    missing = subprocess.run(
        [sys.executable, script, "--model", "/nonexistent/model.gguf"], capture_output=True, text=True
    )
    assert missing.returncode == 2, missing.stderr
    assert "error: model path '/nonexistent/model.gguf' does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr


# -- request validation -------------------------------------------------------------------------------------


def _message(model: type[pydantic.BaseModel], body: dict) -> str:
    with pytest.raises(pydantic.ValidationError) as info:
        model.model_validate(body)
    return validation_message(list(info.value.errors()))[0]


def test_validation_messages_name_the_field_and_the_expected_shape():
    chat = schemas.ChatCompletionRequest
    done = schemas.CompletionRequest
    assert "prompt must be a string, a list of strings" in _message(done, {"model": "m", "prompt": {"a": 1}})
    assert "messages must not be empty" in _message(chat, {"model": "m", "messages": []})
    assert "model is required" in _message(chat, {"messages": [{"role": "user", "content": "hi"}]})
    assert "unknown field 'best_of'" in _message(done, {"model": "m", "prompt": "x", "best_of": 2})
    assert "at most 4 stop strings" in _message(done, {"model": "m", "prompt": "x", "stop": list("abcde")})
    temperature = _message(done, {"model": "m", "prompt": "x", "temperature": 3})
    assert "temperature" in temperature and "less than or equal to 2" in temperature
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}]
    assert "text only" in _message(chat, {"model": "m", "messages": image})


def test_out_of_range_numbers_and_unencodable_text_are_named():
    done, chat = schemas.CompletionRequest, schemas.ChatCompletionRequest
    base = {"model": "m", "prompt": "x"}
    assert "seed: Input should be less than or equal to 9223372036854775807" in _message(
        done, {**base, "seed": 2**63}
    )
    assert "seed" in _message(done, {**base, "seed": -(2**63) - 1})
    assert "top_k: Input should be less than or equal to 2147483647" in _message(
        done, {**base, "top_k": 2**70}
    )
    assert "n: Input should be less than or equal to 1024" in _message(done, {**base, "n": 300_000_000})
    assert "at most 256 characters" in _message(done, {**base, "stop": ["x" * 257]})
    surrogate = _message(done, {"model": "m", "prompt": "hi \ud800"})
    assert (
        "prompt is not valid Unicode text: it holds an unpaired surrogate (\\ud800) at character 3"
        in surrogate
    )
    assert "prompt" in _message(done, {"model": "m", "prompt": ["ok", "\udfff"]})
    user = [{"role": "user", "content": [{"type": "text", "text": "\ud800"}]}]
    assert "not valid Unicode text" in _message(chat, {"model": "m", "messages": user})
    hi = [{"role": "user", "content": "hi"}]
    assert "model is not valid Unicode text" in _message(chat, {"model": "\ud800", "messages": hi})
    with pytest.raises(pydantic.ValidationError, match="finite"):
        done.model_validate_json('{"model": "m", "prompt": "x", "temperature": NaN}')
    assert done.model_validate({**base, "seed": -(2**63), "top_k": 2**31 - 1}).seed == -(2**63)


def test_requests_accept_openai_shapes():
    req = schemas.ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}],
                },
            ],
            "max_completion_tokens": 7,
            "stop": "\n",
        }
    )
    assert req.template_messages() == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there"},
    ]
    assert req.requested_max_tokens == 7 and req.stop_strings == ["\n"] and req.unsupported() is None
    penalised = schemas.CompletionRequest.model_validate(
        {"model": "m", "prompt": [1, 2], "presence_penalty": 1}
    )
    assert "presence_penalty" in penalised.unsupported()


# -- incremental text ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smol_tokenizer(smollm_gguf: Path) -> Tokenizer:
    return load_tokenizer(smollm_gguf)


def test_incremental_decoding_never_splits_a_character(smol_tokenizer):
    text = "Grüße aus 日本 🎉 — naïve café, ελληνικά and 한국어."
    ids = smol_tokenizer.encode(text, chat_formatted=True)
    assert len(ids) > len(text.split())  # several tokens per word: characters span tokens
    decoder = IncrementalDecoder(smol_tokenizer)
    pieces = [decoder.push(ids[: i + 1], final=i == len(ids) - 1) for i in range(len(ids))]
    assert "".join(pieces) == smol_tokenizer.decode(ids) == text
    assert not any("\ufffd" in p for p in pieces)
    assert sum(1 for p in pieces if not p) > 0  # some tokens were held back until their character completed
    with pytest.raises(ValueError, match="only grow"):
        decoder.push(ids[:2])


def test_stop_strings_split_over_chunks_are_found_and_never_leak(smol_tokenizer):
    ids = smol_tokenizer.encode("The answer is 42.\nUser: and now?", chat_formatted=True)
    choice = ChoiceText(smol_tokenizer, stops=["\nUser:"])
    pieces = [choice.feed(ids[: i + 1], final=False) for i in range(len(ids))]
    assert "".join(pieces) == "The answer is 42." and choice.stopped
    assert choice.text == "The answer is 42."
    assert not any("\n" in p for p in pieces)  # the start of the stop string was held back, not sent
    assert choice.feed(ids, final=True) == ""  # nothing after the stop


def test_held_back_is_the_longest_stop_prefix_at_the_end():
    assert held_back("Hello wor", ["world", "xyz"]) == 3
    assert held_back("Hello", ["lo!", "o"]) == 2
    assert held_back("Hello", ["abc"]) == 0


# -- the batcher on a tiny random model ---------------------------------------------------------------------

TINY = ModelConfig(
    family="llama", vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
    intermediate_size=64,
)  # fmt: skip
TINY_CONFIG = ServerConfig(
    model_name="tiny",
    max_batch=4,
    max_queue=3,
    prompt_buckets=(8,),
    new_token_buckets=(8,),
    stream_chunk_tokens=3,
)


@pytest.fixture(scope="module")
def tiny_engine() -> Engine:
    model = init_model(TINY, seed=5)
    model.embed[...] = model.embed[...] * 30.0  # sharp logits, so greedy choices are clear-cut
    tokenizer = types.SimpleNamespace(pad_id=0, stop_ids=(1,))
    return Engine(Sampler(model, tokenizer, prompt_buckets=(8,), new_token_buckets=(8,)), TINY_CONFIG)


class Collector:
    """Gathers one job's updates as the worker delivers them (thread-safe, as the app's deliver is)."""

    def __init__(self) -> None:
        self.updates: list[Update] = []
        self.finished = threading.Event()

    def __call__(self, update: Update) -> None:
        self.updates.append(update)
        if update.error or all(r.done for r in update.rows):
            self.finished.set()


def _job(prompt: list[int], max_tokens: int, rows: int = 1, **kw) -> tuple[Job, Collector]:
    sink = Collector()
    params = {"temperature": 0.0, "top_p": 1.0, "top_k": 0, **kw}
    return Job(prompts=[prompt] * rows, max_tokens=max_tokens, deliver=sink, **params), sink


def _alone(engine: Engine, prompt: list[int], max_tokens: int) -> list[int]:
    out = engine.sampler.generate_ids(
        np.asarray([prompt], np.int32), np.ones((1, len(prompt)), bool),
        SamplingParams(temperature=0.0, max_new_tokens=max_tokens),
    )  # fmt: skip
    return [int(t) for t in np.asarray(out.tokens[0, : int(out.lengths[0])])]


def test_jobs_batched_together_get_what_each_gets_alone(tiny_engine):
    batcher = Batcher(tiny_engine, max_batch=4, max_queue=8, wait_s=0.0)
    prompts = [[5, 6, 7], [9, 10, 11, 12, 13], [20, 21]]
    limits = [8, 3, 6]
    jobs = [_job(p, n) for p, n in zip(prompts, limits, strict=True)]
    for job, _ in jobs:
        batcher.submit(job)  # all queued before the worker starts: one batch, deterministically
    batcher.start()
    try:
        for (_, sink), prompt, limit in zip(jobs, prompts, limits, strict=True):
            assert sink.finished.wait(60)
            [row] = sink.updates[-1].rows
            assert list(row.token_ids) == _alone(tiny_engine, prompt, limit)
            assert len(row.token_ids) <= limit and row.done
            assert row.stop_token == (row.token_ids[-1] == 1)
            lengths = [len(u.rows[0].token_ids) for u in sink.updates]
            assert lengths == sorted(lengths)  # cumulative chunks, streamed as they decoded
    finally:
        assert batcher.stop(timeout=60)
    assert batcher.batches_run == 1


def test_a_job_of_n_rows_samples_n_choices_and_batches_respect_max_batch(tiny_engine):
    batcher = Batcher(tiny_engine, max_batch=4, max_queue=8, wait_s=0.0)
    jobs = [_job([3, 4, 5], 8, rows=2, temperature=1.0, top_p=0.9) for _ in range(3)]  # 6 rows > max_batch
    for job, _ in jobs:
        batcher.submit(job)
    batcher.start()
    try:
        for _, sink in jobs:
            assert sink.finished.wait(60)
            assert len(sink.updates[-1].rows) == 2 and all(r.done for r in sink.updates[-1].rows)
    finally:
        assert batcher.stop(timeout=60)
    assert batcher.batches_run == 2  # 2 + 2 rows, then the third job: first come, first served


def test_the_queue_is_bounded_cancellable_and_drained_at_stop(tiny_engine):
    batcher = Batcher(tiny_engine, max_batch=4, max_queue=2, wait_s=0.0)
    (first, first_sink), (second, second_sink), (third, third_sink) = (_job([7, 8], 4) for _ in range(3))
    batcher.submit(first)
    batcher.submit(second)
    with pytest.raises(QueueFull, match="2 requests already waiting") as full:
        batcher.submit(third)
    assert full.value.retry_after >= 1
    batcher.cancel(second)
    assert batcher.queue_depth == 1
    batcher.submit(third)
    batcher.start()
    assert batcher.stop(timeout=60)  # stop finishes the queued work before the worker exits
    assert first_sink.finished.is_set() and third_sink.finished.is_set()
    assert second_sink.updates == []  # cancelled while waiting: never run
    with pytest.raises(ShuttingDown):
        batcher.submit(_job([7, 8], 4)[0])


def test_a_job_is_checked_alone_before_it_is_queued(tiny_engine):
    batcher = Batcher(tiny_engine, max_batch=4, max_queue=8, wait_s=0.0)
    bad = {
        "top_k": ({"top_k": 2**70}, "top_k must be an integer"),
        "temperature": ({"temperature": float("nan")}, "temperature must be in 0..2"),
        "top_p": ({"top_p": 0.0}, "top_p must be in"),
        "seed": ({"seed": "7"}, "seed must be an integer"),
    }
    for name, (fields, says) in bad.items():
        with pytest.raises(InvalidJob, match=says):
            batcher.submit(_job([5, 6], 4, **fields)[0])
        assert batcher.queue_depth == 0, name
    with pytest.raises(InvalidJob, match="outside the vocabulary"):
        batcher.submit(_job([5, 64], 4)[0])
    with pytest.raises(InvalidJob, match=r"max_tokens must be an integer in 1\.\.8"):
        batcher.submit(_job([5, 6], 9)[0])
    with pytest.raises(InvalidJob, match="needs 1 to max_batch"):
        batcher.submit(_job([5, 6], 4, rows=5)[0])


def test_a_job_that_fails_inside_a_batch_fails_alone(tiny_engine):
    """A job that passed its check but breaks the batch (here: a token id that no int32 holds, set after
    the check) gets the error; its batch mates are rerun one by one and get what they get alone."""
    batcher = Batcher(tiny_engine, max_batch=4, max_queue=8, wait_s=0.0)
    prompts = [[5, 6, 7], [9, 10, 11], [20, 21]]
    jobs = [_job(p, 6) for p in prompts]
    for job, _ in jobs:
        batcher.submit(job)
    jobs[1][0].prompts = [[9, 2**40]]
    _run_queued(batcher, jobs)
    assert [u.error is not None for _, sink in jobs for u in sink.updates[-1:]] == [False, True, False]
    assert "OverflowError" in jobs[1][1].updates[-1].error
    for (_, sink), prompt in zip(jobs, prompts, strict=True):
        if sink is not jobs[1][1]:
            assert list(sink.updates[-1].rows[0].token_ids) == _alone(tiny_engine, prompt, 6)
    assert batcher.batches_run == 4  # the failed batch, then each of its three jobs alone


def _run_queued(batcher: Batcher, batcher_jobs: list[tuple[Job, Collector]]) -> None:
    """Starts the worker on the jobs already queued, waits for all of them, stops it."""
    batcher.start()
    try:
        for _, sink in batcher_jobs:
            assert sink.finished.wait(60)
    finally:
        assert batcher.stop(timeout=60)


def _sampled(batcher_jobs: list[tuple[Job, Collector]], engine: Engine) -> list[list[tuple[int, ...]]]:
    """Runs the jobs as one batch (all queued before the worker starts) and returns each job's rows."""
    batcher = Batcher(engine, max_batch=4, max_queue=8, wait_s=0.0)
    for job, _ in batcher_jobs:
        batcher.submit(job)
    _run_queued(batcher, batcher_jobs)
    assert batcher.batches_run == 1
    return [[r.token_ids for r in sink.updates[-1].rows] for _, sink in batcher_jobs]


def test_a_seed_gives_the_same_samples_alone_and_whatever_shares_its_batch(tiny_engine):
    sampled = {"temperature": 1.0, "top_p": 0.95}
    [alone] = _sampled([_job([5, 6, 7], 8, seed=7, **sampled)], tiny_engine)
    [other_seed] = _sampled([_job([5, 6, 7], 8, seed=8, **sampled)], tiny_engine)
    assert other_seed != alone  # the seed matters, so the comparisons below can fail
    # Last in its batch, behind a two-choice request with another seed and a greedy one; and first.
    mates = [_job([9, 10, 11, 12], 5, rows=2, seed=8, temperature=0.7), _job([20, 21], 3)]
    *_, behind = _sampled([*mates, _job([5, 6, 7], 8, seed=7, **sampled)], tiny_engine)
    ahead, *_ = _sampled([_job([5, 6, 7], 8, seed=7, **sampled), *mates[::-1]], tiny_engine)
    assert behind == ahead == alone
    # Choice 0 of an n=2 request with that seed is the same sample too; choice 1 is another one.
    [pair] = _sampled([_job([5, 6, 7], 8, rows=2, seed=7, **sampled)], tiny_engine)
    assert pair[0] == alone[0] and pair[1] != alone[0]


# -- the app in-process: loading, readiness, timeouts -------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_chat_engine_factory(smol_tokenizer):
    """Builds an engine of a tiny random model that shares SmolLM2's real tokenizer (and chat template)."""
    cfg = TINY.replace(vocab_size=smol_tokenizer.vocab_size)
    model = init_model(cfg, seed=1)

    def build(config: ServerConfig) -> Engine:
        return Engine.from_loaded(model, smol_tokenizer, config)

    return build


def _wait_ready(client: TestClient, deadline_s: float = 120) -> None:
    deadline = time.monotonic() + deadline_s
    while client.get("/ready").status_code != 200:
        assert time.monotonic() < deadline, client.get("/ready").json()
        time.sleep(0.05)


def test_ready_is_503_until_the_model_is_loaded_and_requests_wait_for_it(tiny_chat_engine_factory):
    config = ServerConfig(model_name="tiny", max_batch=2, prompt_buckets=(64,), new_token_buckets=(8,))
    release = threading.Event()

    def load() -> Engine:
        release.wait(60)
        return tiny_chat_engine_factory(config)

    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    with TestClient(create_app(config, load)) as client:
        assert client.get("/health").status_code == 200
        assert client.get("/ready").json()["status"] == "loading"
        early = client.post("/v1/chat/completions", json=body)
        assert (
            early.status_code == 503
            and "retry when GET /ready returns 200" in early.json()["error"]["message"]
        )
        assert early.headers["Retry-After"]
        release.set()
        _wait_ready(client)
        reply = client.post("/v1/chat/completions", json=body)
        assert reply.status_code == 200, reply.text
        assert reply.json()["usage"]["completion_tokens"] <= 4


def test_a_failed_load_is_reported_by_ready(tiny_chat_engine_factory):
    config = ServerConfig(model_name="tiny", max_batch=2, prompt_buckets=(64,), new_token_buckets=(8,))
    failures: list[BaseException] = []

    def load() -> Engine:
        raise FileNotFoundError("weights.safetensors is missing")

    with TestClient(create_app(config, load, on_load_failure=failures.append)) as client:
        deadline = time.monotonic() + 30
        while client.get("/ready").json()["status"] == "loading":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        ready = client.get("/ready")
        assert ready.status_code == 503 and "weights.safetensors is missing" in ready.json()["error"]
        assert isinstance(failures[0], FileNotFoundError)
        assert client.get("/health").status_code == 200


def test_a_request_that_outlives_its_timeout_gets_504_and_leaves_the_queue(tiny_chat_engine_factory):
    # The batcher waits up to a minute for a batch to fill, so a lone request times out while queued.
    config = ServerConfig(
        model_name="tiny", max_batch=2, batch_wait_ms=60_000, request_timeout_s=0.5, prompt_buckets=(64,),
        new_token_buckets=(8,),
    )  # fmt: skip
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    with TestClient(create_app(config, lambda: tiny_chat_engine_factory(config))) as client:
        _wait_ready(client)
        started = time.monotonic()
        reply = client.post("/v1/chat/completions", json=body)
        assert reply.status_code == 504 and "--request_timeout" in reply.json()["error"]["message"]
        assert 0.4 < time.monotonic() - started < 10
        with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as streamed:
            lines = [line for line in streamed.iter_lines() if line]
        assert streamed.status_code == 200 and '"error"' in lines[-2] and lines[-1] == "data: [DONE]"
        metrics = client.get("/metrics").text
        assert "rlvr_serve_queue_depth 0.0" in metrics
        assert client.get("/health").status_code == 200


def test_an_unexpected_error_is_a_json_500_not_plain_text(tiny_chat_engine_factory):
    config = ServerConfig(model_name="tiny", max_batch=2, prompt_buckets=(64,), new_token_buckets=(8,))
    app = create_app(config, lambda: tiny_chat_engine_factory(config))
    with TestClient(app, raise_server_exceptions=False) as client:
        _wait_ready(client)

        def broken(prompt: str) -> list[int]:  # a bug in the server's own code path
            raise RuntimeError("the tokenizer broke")

        app.state.server.engine.encode_text = broken
        reply = client.post("/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 2})
        assert reply.status_code == 500 and reply.headers["content-type"] == "application/json"
        error = reply.json()["error"]
        assert error["type"] == "server_error" and "internal server error (RuntimeError)" in error["message"]
        assert client.get("/health").status_code == 200
