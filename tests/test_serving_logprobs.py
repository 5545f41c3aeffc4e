"""Log-probs from the server: the sampler's own numbers, echo (prompt scoring), both OpenAI formats,
streaming, the real `openai` client, and the limits.

One in-process app (FastAPI's TestClient, which the `openai` client also accepts as its HTTP client) on a
tiny random model that shares SmolLM2's tokenizer: one batch bucket, one prompt bucket, one new-token
bucket, so three compilations in all (prefill, decode chunk, prompt scorer). Every value is checked
against a full forward pass of the same model.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
import openai
import pytest
from fastapi.testclient import TestClient
from flax import nnx

from rlvr_jax.models import ModelConfig, init_model
from rlvr_jax.serving.app import create_app
from rlvr_jax.serving.batcher import Job, Update
from rlvr_jax.serving.config import ServerConfig
from rlvr_jax.serving.tokens import TokenTexts
from rlvr_jax.weights.loader import load_tokenizer

MAX_LOGPROBS = 5  # below the API's 20, so that the server's own limit can be seen
CONFIG = ServerConfig(
    model_name="tiny", max_batch=4, prompt_buckets=(64,), new_token_buckets=(8,), stream_chunk_tokens=3,
    max_logprobs=MAX_LOGPROBS,
)  # fmt: skip
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def tokenizer(smollm_gguf):
    return load_tokenizer(smollm_gguf)


@pytest.fixture(scope="module")
def model(tokenizer):
    cfg = ModelConfig(
        family="llama", vocab_size=tokenizer.vocab_size, hidden_size=32, num_layers=2, num_heads=4,
        num_kv_heads=2, head_dim=8, intermediate_size=64,
    )  # fmt: skip
    m = init_model(cfg, seed=1)
    m.lm_head[...] = m.lm_head[...] * 50.0  # sharp distributions: clear best tokens, no near ties
    return m


@pytest.fixture(scope="module")
def client(model, tokenizer) -> Iterator[TestClient]:
    from rlvr_jax.serving.engine import Engine

    app = create_app(CONFIG, lambda: Engine.from_loaded(model, tokenizer, CONFIG))
    with TestClient(app) as c:
        deadline = time.monotonic() + 300
        while c.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, c.get("/ready").json()
            time.sleep(0.05)
        yield c


@pytest.fixture(scope="module")
def texts(tokenizer) -> TokenTexts:
    return TokenTexts(tokenizer.hf)


REFERENCE_LENGTH = 96  # every reference pass has this one shape (one compilation): ids padded on the right


@functools.cache
def _forward(graphdef: nnx.GraphDef):
    @jax.jit
    def forward(params, ids, temperature):
        logits, _ = nnx.merge(graphdef, params)(ids)
        return jax.nn.log_softmax(logits[0].astype(jnp.float32) / temperature, axis=-1)

    return forward


def log_softmax(model, ids: list[int], temperature: float = 1.0) -> np.ndarray:
    """[len(ids), vocab]: row t is the distribution of the token after ids[t], from one forward pass of the
    model (causal, so the right padding changes nothing before it)."""
    graphdef, params = nnx.split(model)
    padded = np.zeros((1, REFERENCE_LENGTH), np.int32)
    padded[0, : len(ids)] = ids
    out = _forward(graphdef)(params, padded, jnp.float32(temperature))
    return np.asarray(out)[: len(ids)]


def greedy(model, ids: list[int], n: int) -> list[int]:
    out = list(ids)
    for _ in range(n):
        out.append(int(np.argmax(log_softmax(model, out)[-1])))
    return out[len(ids) :]


def run_job(client: TestClient, job: Job) -> list[Update]:
    """Submits a job straight to the running server's batcher and waits for its last update."""
    updates: list[Update] = []
    finished = threading.Event()

    def deliver(update: Update) -> None:
        updates.append(update)
        if update.error or all(r.done for r in update.rows):
            finished.set()

    job.deliver = deliver
    client.app.state.server.batcher.submit(job)
    assert finished.wait(120)
    assert updates[-1].error is None, updates[-1].error
    return updates


def test_row_states_carry_the_samplers_logprobs_and_the_prompts_scores(client, model, tokenizer):
    """Engine level, at T = 0.7 with top-p: the chosen tokens' log-probs and the top-k alternatives are
    those of softmax(logits / T) (unfiltered), the prompt's are the model's at T = 1; a scoring-only job
    (max_tokens 0) and a job without alternatives share the batch."""
    prompt = tokenizer.encode(PROMPT)
    T, k = 0.7, 3
    sampled = Job([prompt], 6, T, 0.9, 0, None, seed=11, top_logprobs=k, prompt_logprobs=True)
    scored = Job([prompt[:3], prompt], 0, 0.0, 1.0, 0, None, top_logprobs=2, prompt_logprobs=True)
    plain = Job([prompt], 4, 0.0, 1.0, 0, None)
    batcher = client.app.state.server.batcher
    runs_before = batcher.batches_run
    results = {}
    threads = [threading.Thread(target=lambda j=j: results.__setitem__(id(j), run_job(client, j)))
               for j in (sampled, scored, plain)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)

    [row] = results[id(sampled)][-1].rows
    n = len(row.token_ids)
    assert n == 6 and len(row.logprobs) == len(row.top_logprobs) == n
    lp = log_softmax(model, prompt + list(row.token_ids), T)[len(prompt) - 1 : -1]
    np.testing.assert_allclose(row.logprobs, lp[np.arange(n), row.token_ids], atol=2e-4)
    for t in range(n):
        best = np.argsort(-lp[t])[:k]
        assert [i for i, _ in row.top_logprobs[t]] == best.tolist()
        np.testing.assert_allclose([v for _, v in row.top_logprobs[t]], lp[t, best], atol=2e-4)
    unscaled = log_softmax(model, prompt)
    assert row.prompt_logprobs[0] is None and row.prompt_top_logprobs[0] == ()
    want = unscaled[np.arange(len(prompt) - 1), prompt[1:]]
    np.testing.assert_allclose(row.prompt_logprobs[1:], want, atol=2e-4)
    assert [len(t) for t in row.prompt_top_logprobs[1:]] == [k] * (len(prompt) - 1)

    short, full = results[id(scored)][-1].rows
    assert short.token_ids == full.token_ids == () and short.done and full.done
    assert full.prompt_logprobs == row.prompt_logprobs  # the same prompt, scored once per batch
    assert [len(t) for t in full.prompt_top_logprobs[1:]] == [2] * (len(prompt) - 1)  # its own k
    assert full.prompt_top_logprobs[1:] == tuple(t[:2] for t in row.prompt_top_logprobs[1:])
    assert len(short.prompt_logprobs) == 3

    [alone] = results[id(plain)][-1].rows
    assert list(alone.token_ids) == greedy(model, prompt, 4)
    assert alone.top_logprobs == () and alone.prompt_logprobs == () and len(alone.logprobs) == 4
    assert batcher.batches_run - runs_before <= 3


def test_completions_logprobs_and_echo_have_openais_shape_and_the_models_values(
    client, model, tokenizer, texts
):
    prompt = tokenizer.encode(PROMPT)
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 5, "temperature": 0, "logprobs": 3, "echo": True}
    reply = client.post("/v1/completions", json=body)
    assert reply.status_code == 200, reply.text
    [choice] = reply.json()["choices"]
    generated = greedy(model, prompt, 5)
    ids = prompt + generated
    assert choice["text"] == PROMPT + tokenizer.decode(generated)
    lp = choice["logprobs"]
    assert set(lp) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    assert lp["tokens"] == [texts.token(i) for i in ids]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None  # the first token: no context
    ref = log_softmax(model, ids)
    np.testing.assert_allclose(lp["token_logprobs"][1:], ref[np.arange(len(ids) - 1), ids[1:]], atol=2e-4)
    for t, top in enumerate(lp["top_logprobs"][1:]):
        best = np.argsort(-ref[t])[:3]
        want = {texts.token(i): float(ref[t, i]) for i in best}
        want.setdefault(texts.token(ids[t + 1]), float(ref[t, ids[t + 1]]))
        assert top.keys() == want.keys()  # the 3 best, and the chosen token (OpenAI: up to k + 1)
        np.testing.assert_allclose([top[key] for key in want], list(want.values()), atol=2e-4)
    # Greedy tokens are their distribution's best: exactly equal numbers (what lm-eval's is_greedy checks).
    for t in range(len(prompt), len(ids)):
        assert lp["token_logprobs"][t] == max(lp["top_logprobs"][t].values())
    # text_offset: where each token starts in the text (every token of this text is whole characters).
    starts = np.cumsum([0] + [len(s) for s in lp["tokens"][:-1]]).tolist()
    assert lp["text_offset"] == starts and "".join(lp["tokens"]) == choice["text"]
    assert reply.json()["usage"] == {"prompt_tokens": len(prompt), "completion_tokens": 5, "total_tokens": 10}

    # Without echo: the generated tokens only, offsets from the completion's start.
    plain = client.post("/v1/completions", json={**body, "echo": False, "logprobs": 0}).json()["choices"][0]
    assert plain["text"] == tokenizer.decode(generated)
    assert plain["logprobs"]["tokens"] == lp["tokens"][len(prompt) :]
    assert plain["logprobs"]["token_logprobs"] == lp["token_logprobs"][len(prompt) :]
    assert [list(d) for d in plain["logprobs"]["top_logprobs"]] == [[s] for s in plain["logprobs"]["tokens"]]
    assert plain["logprobs"]["text_offset"][0] == 0


def test_the_openai_client_reads_chat_and_completion_logprobs_whole_and_streamed(client, model, tokenizer):
    # Not closed at the end: closing the OpenAI client would close the module's TestClient with it.
    oa = openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=client, max_retries=0)
    messages = [{"role": "user", "content": "Name a colour."}]
    chat = oa.chat.completions.create(
        model="tiny", messages=messages, max_tokens=6, temperature=0, logprobs=True, top_logprobs=2
    )
    content = chat.choices[0].logprobs.content
    assert len(content) == 6 and all(len(e.top_logprobs) == 2 for e in content)
    assert b"".join(bytes(e.bytes) for e in content).decode() == chat.choices[0].message.content
    prompt = tokenizer.encode(tokenizer.format(messages), chat_formatted=True)
    generated = greedy(model, prompt, 6)
    ref = log_softmax(model, prompt + generated)[len(prompt) - 1 : -1]
    np.testing.assert_allclose([e.logprob for e in content], ref[np.arange(6), generated], atol=2e-4)
    assert all(e.logprob == e.top_logprobs[0].logprob for e in content)  # greedy: the best token

    stream = oa.chat.completions.create(
        model="tiny", messages=messages, max_tokens=6, temperature=0, logprobs=True, top_logprobs=2,
        stream=True,
    )  # fmt: skip
    chunks = [c for c in stream if c.choices]
    streamed = [e for c in chunks if c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [e.model_dump() for e in streamed] == [e.model_dump() for e in content]
    for c in chunks:  # each chunk carries its own tokens
        if c.choices[0].delta.content:
            got = b"".join(bytes(e.bytes) for e in c.choices[0].logprobs.content).decode()
            assert got == c.choices[0].delta.content

    # lm-evaluation-harness's log-likelihood request: echo, logprobs 1, no new tokens.
    ids = tokenizer.encode(PROMPT)
    scored = oa.completions.create(model="tiny", prompt=[ids], max_tokens=0, echo=True, logprobs=1)
    choice = scored.choices[0]
    assert choice.text == PROMPT and choice.finish_reason == "length"
    assert choice.logprobs.token_logprobs[0] is None and len(choice.logprobs.tokens) == len(ids)
    ref = log_softmax(model, ids)
    want = ref[np.arange(len(ids) - 1), ids[1:]]
    np.testing.assert_allclose(choice.logprobs.token_logprobs[1:], want, atol=2e-4)
    assert scored.usage.completion_tokens == 0

    pieces = list(
        oa.completions.create(
            model="tiny", prompt=PROMPT, max_tokens=7, temperature=0, logprobs=2, echo=True, stream=True
        )
    )
    whole = client.post(
        "/v1/completions",
        json={
            "model": "tiny",
            "prompt": PROMPT,
            "max_tokens": 7,
            "temperature": 0,
            "logprobs": 2,
            "echo": True,
        },
    ).json()["choices"][0]["logprobs"]
    joined = {key: [] for key in whole}
    for piece in pieces:
        for key in whole:
            joined[key] += getattr(piece.choices[0].logprobs, key) if piece.choices[0].logprobs else []
    assert joined == whole
    assert pieces[0].choices[0].text.startswith(PROMPT)  # the echoed prompt comes first


def test_tokens_cut_by_a_stop_string_carry_no_logprobs(client, texts):
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 8, "temperature": 0, "logprobs": 1}
    free = client.post("/v1/completions", json=body).json()["choices"][0]
    tokens = free["logprobs"]["tokens"]
    stop = tokens[3].strip()[:2]  # starts inside the 4th token
    assert stop and stop not in "".join(tokens[:3])
    for stream in (False, True):
        request = {**body, "stop": [stop], "stream": stream}
        if stream:
            with client.stream("POST", "/v1/completions", json=request) as r:
                events = [json.loads(x[6:]) for x in r.iter_lines() if x.startswith("data: {")]
            text = "".join(e["choices"][0]["text"] for e in events)
            got = [
                t
                for e in events
                if e["choices"][0]["logprobs"]
                for t in e["choices"][0]["logprobs"]["tokens"]
            ]
        else:
            choice = client.post("/v1/completions", json=request).json()["choices"][0]
            text, got = choice["text"], choice["logprobs"]["tokens"]
        assert text == "".join(tokens)[: "".join(tokens).index(stop)]
        assert got == tokens[:4], stream  # the 4th token starts before the cut; the rest never do


@pytest.mark.parametrize(
    ("route", "fields", "says"),
    [
        ("chat", {"logprobs": True, "top_logprobs": 21}, "less than or equal to 20"),
        ("chat", {"logprobs": True, "top_logprobs": MAX_LOGPROBS + 1}, "--max_logprobs"),
        ("chat", {"top_logprobs": 2}, "top_logprobs needs logprobs: true"),
        ("chat", {"logprobs": "yes"}, "valid boolean"),
        ("chat", {"max_tokens": 0}, "at least 1"),
        ("completions", {"logprobs": 21}, "less than or equal to 20"),
        ("completions", {"logprobs": MAX_LOGPROBS + 1}, f"at most {MAX_LOGPROBS} alternatives"),
        ("completions", {"logprobs": True}, "valid integer"),
        ("completions", {"logprobs": -1}, "greater than or equal to 0"),
        ("completions", {"max_tokens": 0}, "only allowed with echo"),
    ],
)
def test_bad_logprobs_requests_get_a_400_that_says_why(client, route, fields, says):
    if route == "chat":
        path, body = "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}
    else:
        path, body = "/v1/completions", {"prompt": "hi"}
    reply = client.post(path, json={"model": "tiny", "max_tokens": 2, **body, **fields})
    assert reply.status_code == 400, reply.text
    assert says in reply.json()["error"]["message"]


def test_token_texts_keep_every_byte_of_characters_split_over_tokens(tokenizer, texts):
    text = "Grüße aus 日本 🎉 — naïve"
    ids = tokenizer.encode(text)
    pieces = [texts.token_bytes(i) for i in ids]
    assert b"".join(pieces) == text.encode("utf-8")
    partial = [i for i, b in zip(ids, pieces, strict=True) if _not_utf8(b)]
    assert partial  # this text has tokens that are parts of a character
    assert all(texts.token(i).startswith("bytes:\\x") for i in partial)
    whole = [i for i, b in zip(ids, pieces, strict=True) if not _not_utf8(b)]
    assert all(texts.token(i) == texts.token_bytes(i).decode() for i in whole)
    [end] = tokenizer.encode("<|im_end|>", chat_formatted=True)
    assert texts.token(end) == "<|im_end|>" and not texts.visible(end)


def _not_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False
