"""The server under hostile input, over real HTTP: a tiny random model (with SmolLM2's real tokenizer and
chat template) behind `serving.server.uvicorn_server` in a thread, with an API key and short connection
deadlines. Checks that bad fields fail alone, seeds do not leak between batch mates, sizes are refused
before work, metric labels stay bounded, slow or half-open connections are closed, and /openapi.json
lists the status codes that really come back. Plus the serve.py flags that must fail in one line.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from rlvr_jax.cli import fail_cleanly
from rlvr_jax.models import init_model
from rlvr_jax.serving.app import ServerState, create_app
from rlvr_jax.serving.config import ServerConfig
from rlvr_jax.serving.engine import Engine
from rlvr_jax.serving.server import uvicorn_server
from rlvr_jax.weights.loader import load_tokenizer
from tests.conftest import REPO
from tests.tiny import TINY

KEY = "test-key-0123"
AUTH = {"Authorization": f"Bearer {KEY}"}
CONFIG = ServerConfig(
    model_name="tiny", max_batch=4, max_queue=16, batch_wait_ms=400, prompt_buckets=(64,),
    new_token_buckets=(8,), header_timeout_s=0.5, body_timeout_s=0.5, keep_alive_s=0.5,
)  # fmt: skip
SAMPLED = {"model": "tiny", "prompt": "Once upon a time", "max_tokens": 8, "temperature": 1.0}


@dataclasses.dataclass
class Live:
    url: str
    host: str
    port: int
    app: FastAPI

    @property
    def state(self) -> ServerState:
        return self.app.state.server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def engine_factory(smollm_gguf: Path):
    tokenizer = load_tokenizer(smollm_gguf)
    model = init_model(TINY.replace(vocab_size=tokenizer.vocab_size), seed=1)
    return lambda config: Engine.from_loaded(model, tokenizer, config)


@pytest.fixture(scope="module")
def live(engine_factory) -> Iterator[Live]:
    app = create_app(CONFIG, lambda: engine_factory(CONFIG), api_key=KEY)
    port = _free_port()
    server = uvicorn_server(app, CONFIG, host="127.0.0.1", port=port, log_level="warning")
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    live = Live(f"http://127.0.0.1:{port}", "127.0.0.1", port, app)
    deadline = time.monotonic() + 300
    try:
        with httpx.Client(base_url=live.url, timeout=5) as c:
            while True:  # the model loads and compiles in the background; /ready says when it is done
                assert thread.is_alive() and time.monotonic() < deadline, "the server did not become ready"
                try:
                    if c.get("/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        yield live
    finally:
        server.should_exit = True
        thread.join(60)


@pytest.fixture
def http(live: Live) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=60, headers=AUTH) as c:
        yield c


def _burst(live: Live, bodies: list[Any], route: str = "/v1/completions") -> list[httpx.Response]:
    """The bodies posted concurrently (a str body is sent as is: JSON with escapes httpx would not make)."""

    async def go() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=live.url, timeout=60, headers=AUTH) as c:
            return await asyncio.gather(*(
                c.post(route, content=b, headers={"Content-Type": "application/json"})
                if isinstance(b, str) else c.post(route, json=b)
                for b in bodies
            ))  # fmt: skip

    return asyncio.run(go())


def _text(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["text"]


# -- isolation ----------------------------------------------------------------------------------------------


def test_one_bad_field_in_a_concurrent_burst_fails_only_its_own_request(live):
    surrogate = json.dumps({**SAMPLED, "prompt": "Once upon a \ud800 time"})  # the JSON escape "\ud800"
    bodies = [
        {**SAMPLED, "seed": 1},
        {**SAMPLED, "seed": 2**63},
        {**SAMPLED, "seed": 3},
        {**SAMPLED, "top_k": 2**70},
        surrogate,
        {**SAMPLED, "seed": 4, "n": 2},
    ]
    responses = _burst(live, bodies)
    assert [r.status_code for r in responses] == [200, 400, 200, 400, 400, 200], [r.text for r in responses]
    says = {1: "seed", 3: "top_k", 4: "prompt is not valid Unicode text"}
    for i, field in says.items():
        error = responses[i].json()["error"]  # JSON, whatever the client sent
        assert error["type"] == "invalid_request_error" and field in error["message"], error
    assert [len(responses[i].json()["choices"]) for i in (0, 2, 5)] == [1, 1, 2]


def test_a_seed_gives_the_same_text_alone_and_batched_with_other_requests(live, http):
    seeded = {**SAMPLED, "seed": 7}
    alone = _text(http.post("/v1/completions", json=seeded))
    assert _text(http.post("/v1/completions", json={**seeded, "seed": 8})) != alone  # the seed matters
    batcher, registry = live.state.batcher, live.state.metrics.registry

    def full_batches() -> float:  # device batches of 3-4 rows, observed as each starts (before its answers)
        bucket = lambda le: registry.get_sample_value("rlvr_serve_batch_size_bucket", {"le": le})
        return bucket("4.0") - bucket("2.0")

    before, wait_s = full_batches(), batcher.wait_s
    mates = [
        {**SAMPLED, "prompt": "The capital of France is", "seed": 8, "n": 2, "temperature": 0.7},
        {**SAMPLED, "prompt": "One, two, three,", "temperature": 0, "max_tokens": 3},
    ]
    # An idle server's first batch (static) or admission (continuous) waits until it is full (4 rows:
    # these three requests), however slow the CPU.
    batcher.wait_s = 60
    try:
        first, second, batched = _burst(live, [*mates, seeded])
    finally:
        batcher.wait_s = wait_s
    assert full_batches() > before  # the three shared the device: one batch (or decode call) of 4 rows
    assert _text(batched) == alone
    assert first.status_code == second.status_code == 200


# -- sizes, labels ------------------------------------------------------------------------------------------


def test_sizes_are_refused_before_any_work_proportional_to_them(live, http):
    cases = [
        ({**SAMPLED, "n": 300_000_000}, "n: Input should be less than or equal to 1024"),
        ({**SAMPLED, "n": 1000}, "1 x 1000 completions (prompts x n)"),
        ({**SAMPLED, "prompt": ["a", "b", "c"], "n": 2}, "3 x 2 completions"),
        ({**SAMPLED, "prompt": "x" * (64 * 64 + 1)}, "4097 characters, more than 64 tokens can hold"),
        ({**SAMPLED, "prompt": list(range(1, 66))}, "the prompt has 65 tokens"),
        ({**SAMPLED, "stop": ["x" * 300]}, "at most 256 characters"),
        ({**SAMPLED, "max_tokens": 10**30}, "at most 8 tokens"),
    ]
    for body, says in cases:
        started = time.monotonic()
        response = http.post("/v1/completions", json=body)
        assert response.status_code == 400 and says in response.json()["error"]["message"], response.text
        assert time.monotonic() - started < 2
    many = [{"role": "user", "content": ""}] * 65
    chat = http.post("/v1/chat/completions", json={"model": "tiny", "messages": many})
    assert chat.status_code == 400 and "65 messages" in chat.json()["error"]["message"]


def test_metric_labels_stay_bounded_whatever_the_method_or_path(http):
    def series() -> list[str]:
        return [line for line in http.get("/metrics").text.splitlines() if line.startswith("rlvr_serve_req")]

    http.request("BREW", "/v1/teapot")  # the labels for made-up methods and paths exist from here on
    http.request("BREW", "/health")
    series()  # and those of /metrics itself
    before = series()
    for i in range(60):
        assert http.request(f"BREW{i}", f"/v1/teapot{i}").status_code == 404
        assert http.request(f"BREW{i}", "/health").status_code == 405
    after = series()
    assert len(after) == len(before)
    text = "\n".join(after)
    assert "BREW" not in text and "teapot" not in text
    assert 'method="other",route="unmatched",status="404"' in text
    assert 'method="other",route="/health",status="405"' in text


# -- connections --------------------------------------------------------------------------------------------


def _read_until_closed(s: socket.socket, limit_s: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    s.settimeout(limit_s)
    started, data = time.monotonic(), b""
    while chunk := s.recv(65536):
        data += chunk
    return data, time.monotonic() - started


def test_half_open_and_idle_connections_are_closed_within_their_deadlines(live):
    with socket.create_connection((live.host, live.port)) as s:  # half a request head, then nothing
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        data, took = _read_until_closed(s, 10)
        assert data == b"" and 0.3 < took < 3, took
    with socket.create_connection((live.host, live.port)) as s:  # connects and says nothing
        data, took = _read_until_closed(s, 10)
        assert data == b"" and took < 3, took
    with socket.create_connection((live.host, live.port)) as s:  # one request, then idles on keep-alive
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        data, took = _read_until_closed(s, 10)
        assert data.startswith(b"HTTP/1.1 200") and b'{"status":"ok"}' in data and took < 3, took
    with httpx.Client(base_url=live.url, timeout=5) as c:  # and the server still serves
        assert c.get("/health").status_code == 200


def test_a_body_that_grows_too_large_or_stops_arriving_gets_a_413_or_408(live, http):
    def chunks() -> Iterator[bytes]:  # no Content-Length: the size is only known as the body streams in
        yield b" " * (512 << 10)
        yield b" " * (512 << 10)
        yield b"{}"

    response = http.post("/v1/completions", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and "--max_body_bytes" in response.json()["error"]["message"]
    with socket.create_connection((live.host, live.port)) as s:
        s.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\": "
        )  # fmt: skip
        data, took = _read_until_closed(s, 10)
    assert data.startswith(b"HTTP/1.1 408"), data[:200]
    assert b"--body_timeout" in data and took < 3


# -- API key, OpenAPI ---------------------------------------------------------------------------------------


def test_the_api_key_guards_the_api_but_not_the_probes(live):
    body = {"model": "tiny", "prompt": "hi", "max_tokens": 2}
    with httpx.Client(base_url=live.url, timeout=60) as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
            refused = c.post("/v1/completions", json=body, headers=headers)
            assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == "Bearer"
            error = refused.json()["error"]
            assert error["code"] == "invalid_api_key" and "Authorization: Bearer" in error["message"]
        assert c.get("/v1/models").status_code == 401
        assert c.post("/v1/completions", json=body, headers=AUTH).status_code == 200
        for path in ("/health", "/ready", "/metrics", "/openapi.json"):
            assert c.get(path).status_code == 200, path


def _documented(doc: dict[str, Any], method: str, path: str) -> set[int]:
    return {int(code) for code in doc["paths"][path][method]["responses"]}


def test_openapi_lists_the_status_codes_the_server_really_returns(live):
    with httpx.Client(base_url=live.url, timeout=60, headers=AUTH) as c:
        doc = c.get("/openapi.json").json()
        assert not [
            (path, method) for path, ops in doc["paths"].items() for method, op in ops.items()
            if "422" in op["responses"]
        ]  # fmt: skip
        ok = {"model": "tiny", "prompt": "hi", "max_tokens": 2}
        seen = [
            ("post", "/v1/completions", c.post("/v1/completions", json=ok)),
            ("post", "/v1/completions", c.post("/v1/completions", json={**ok, "temperature": "hot"})),
            ("post", "/v1/completions", c.post("/v1/completions", json=ok, headers={"Authorization": ""})),
            ("post", "/v1/completions", c.post("/v1/completions", json={**ok, "model": "gpt-4"})),
            ("post", "/v1/completions", c.post("/v1/completions", json={**ok, "prompt": "x" * (2 << 20)})),
            ("post", "/v1/chat/completions", c.post("/v1/chat/completions", json={"model": "tiny"})),
            ("get", "/v1/models", c.get("/v1/models", headers={"Authorization": ""})),
            ("post", "/v1/feedback", c.post("/v1/feedback", json={"id": "cmpl-1", "outcome": 1})),
        ]
    assert sorted({r.status_code for *_, r in seen}) == [200, 400, 401, 404, 413]
    for method, path, response in seen:
        assert response.status_code in _documented(doc, method, path), (method, path, response.status_code)
        if response.status_code >= 400:
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    # 503 while loading (and no 401 documented on a server without a key).
    release = threading.Event()

    def never_loads() -> Engine:  # ends without starting any JAX work that could outlive the test
        release.wait(60)
        raise RuntimeError("this server only ever loads")

    with TestClient(create_app(CONFIG, never_loads)) as c:
        early = c.post("/v1/completions", json=ok)
        documented = _documented(c.get("/openapi.json").json(), "post", "/v1/completions")
        release.set()
    assert early.status_code == 503 and 503 in documented and 401 not in documented


# -- serve.py flags -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def serve_script():
    spec = importlib.util.spec_from_file_location("serve_script", REPO / "scripts" / "serve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_serve_flags_out_of_range_fail_in_one_line(serve_script, capsys, monkeypatch):
    monkeypatch.delenv("RLVR_API_KEY", raising=False)
    cases = {
        ("--port", "70000"): "error: --port must be in 1..65535, got 70000",
        ("--request_timeout", "nan"): "error: --request_timeout must be > 0",
        ("--header_timeout", "-1"): "error: --header_timeout must be > 0",
        ("--seed", str(2**64)): "error: --seed must be a signed 64-bit integer",
        ("--max_batch", str(10**12)): "error: --max_batch must be > 0 and at most 4096",
        ("--api-key", "two words"): "error: --api_key / $RLVR_API_KEY: the API key must be",
        ("--drift_window", "0"): "error: --drift_window must be in 1..",
    }
    for flags, says in cases.items():
        assert fail_cleanly(lambda flags=flags: serve_script.main(["--model", "m.gguf", *flags])) == 2
        err = capsys.readouterr().err
        assert err.startswith(says) and len(err.strip().splitlines()) == 1, (flags, err)
    args = serve_script.build_parser().parse_args(["--model", "m.gguf"])
    assert args.host == "127.0.0.1" and args.api_key is None
    monkeypatch.setenv("RLVR_API_KEY", "from-the-environment")
    assert serve_script.build_parser().parse_args(["--model", "m.gguf"]).api_key == "from-the-environment"
