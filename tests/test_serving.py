"""The inference server end to end: `scripts/serve.py` on the real SmolLM2-135M GGUF, in a subprocess.

One server for the module (small buckets: batch 4, prompts 64/128, 32 new tokens), driven by the real
`openai` client, raw HTTP for bad input and overload, and a real Prometheus that scrapes /metrics. The
last test shuts the server down with SIGTERM while a stream is in flight, so it must stay last.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import REPO

MAX_BATCH = 4
MAX_QUEUE = 3
MAX_PROMPT = 128
MAX_TOKENS = 32
PARIS = [{"role": "user", "content": "What is the capital of France?"}]
START_DEADLINE_S = 900  # a cold compilation cache on a 2-core CI machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A running `scripts/serve.py` subprocess and what was seen while it started."""

    def __init__(self, proc: subprocess.Popen, url: str, log_path: Path, model: str):
        self.proc, self.url, self.log_path, self.model = proc, url, log_path, model
        self.health_while_loading: list[int] = []
        self.ready_while_loading: list[int] = []

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


@pytest.fixture(scope="module")
def server(smollm_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    port = free_port()
    log_path = tmp_path_factory.mktemp("server") / "serve.log"
    cache = os.environ.get("RLVR_JAX_CACHE", str(REPO / ".jax_cache"))
    cmd = [
        sys.executable, str(REPO / "scripts" / "serve.py"), "--model", str(smollm_gguf),
        "--host", "127.0.0.1", "--port", str(port), "--max_batch", str(MAX_BATCH),
        "--max_queue", str(MAX_QUEUE), "--prompt_buckets", "64,128", "--new_token_buckets", str(MAX_TOKENS),
        "--stream_chunk_tokens", "4", "--batch_wait_ms", "20", "--request_timeout", "120",
        "--compilation_cache", cache,
    ]  # fmt: skip
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    srv = Server(proc, f"http://127.0.0.1:{port}", log_path, smollm_gguf.stem)
    deadline = time.monotonic() + START_DEADLINE_S
    try:
        with httpx.Client(base_url=srv.url, timeout=5) as client:
            while True:
                assert proc.poll() is None, f"the server exited with {proc.returncode}:\n{srv.log_tail()}"
                assert time.monotonic() < deadline, f"not ready after {START_DEADLINE_S} s:\n{srv.log_tail()}"
                try:
                    health, ready = client.get("/health"), client.get("/ready")
                except httpx.TransportError:  # not listening yet
                    time.sleep(0.2)
                    continue
                if ready.status_code == 200:
                    break
                srv.health_while_loading.append(health.status_code)
                srv.ready_while_loading.append(ready.status_code)
                time.sleep(0.5)
        yield srv
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120) as c:
        yield c


@pytest.fixture
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


def metric(http: httpx.Client, name: str) -> float:
    """Sum of a metric's samples (all label sets) in the server's /metrics text."""
    total, found = 0.0, False
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(name) and line[len(name)] in " {":
            total += float(line.rsplit(" ", 1)[1])
            found = True
    assert found, f"{name} is not in /metrics"
    return total


def test_health_answers_while_loading_and_ready_turns_200(server, http):
    assert server.health_while_loading and set(server.health_while_loading) == {200}
    assert set(server.ready_while_loading) == {503}
    body = http.get("/ready").json()
    # The continuous engine (the default): a prefill per prompt bucket (64, 128) at batch 4, and the decode
    # call over the 4 slots without and with top log-probs.
    assert body["status"] == "ready" and body["engine"] == "continuous" and body["compiled_shapes"] == 4
    models = http.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == [server.model]
    assert models["data"][0]["max_model_len"] > MAX_PROMPT


def test_openai_client_chat_gets_paris(client, server):
    reply = client.chat.completions.create(model=server.model, messages=PARIS, temperature=0, max_tokens=16)
    choice = reply.choices[0]
    assert "Paris" in choice.message.content
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    assert reply.usage.prompt_tokens > 10 and 0 < reply.usage.completion_tokens <= 16
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_openai_client_chat_streams_paris(client, server):
    whole = client.chat.completions.create(model=server.model, messages=PARIS, temperature=0, max_tokens=16)
    stream = client.chat.completions.create(
        model=server.model, messages=PARIS, temperature=0, max_tokens=16, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    pieces, reasons, usage = [], [], None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                pieces.append(c.delta.content)
            if c.finish_reason:
                reasons.append(c.finish_reason)
    text = "".join(pieces)
    assert "Paris" in text
    assert text == whole.choices[0].message.content  # the same greedy answer, streamed
    assert len(pieces) >= 2, "the answer came in one piece: nothing was streamed before the end"
    assert reasons == ["stop"]
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens


def test_completions_n_stop_strings_length_and_usage(client, server):
    reply = client.completions.create(
        model=server.model, prompt=["The capital of France is", "One, two, three,"], n=2, temperature=0,
        max_tokens=12,
    )  # fmt: skip
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    texts = [c.text for c in reply.choices]
    assert texts[0] == texts[1] and texts[2] == texts[3]  # greedy: the n samples of a prompt agree
    assert "Paris" in texts[0]
    assert all(c.finish_reason == "length" for c in reply.choices)
    assert reply.usage.completion_tokens == 4 * 12
    # A stop string cuts the answer before it, and the choice ends with finish_reason "stop".
    stopped = client.completions.create(
        model=server.model, prompt="One, two, three,", temperature=0, max_tokens=12, stop=[","]
    )
    assert "," not in stopped.choices[0].text and stopped.choices[0].finish_reason == "stop"
    assert texts[2].startswith(stopped.choices[0].text + ",")


def test_streamed_text_completion_equals_the_whole_one(client, server):
    kwargs = dict(model=server.model, prompt="Once upon a time", temperature=0, max_tokens=12)
    whole = client.completions.create(**kwargs).choices[0]
    pieces = [c.choices[0].text for c in client.completions.create(stream=True, **kwargs) if c.choices]
    assert "".join(pieces) == whole.text and len(whole.text) > 10


def test_sampled_rows_share_a_batch_with_greedy_ones_and_nothing_recompiles(client, server, http):
    compiled = metric(http, "rlvr_serve_compiled_functions")
    greedy = client.chat.completions.create(model=server.model, messages=PARIS, temperature=0, max_tokens=16)
    long_prompt = "Summarise this: " + "the quick brown fox jumps over the lazy dog " * 8  # the 128 bucket

    async def burst() -> list:
        async with openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0) as c:
            return await asyncio.gather(
                c.chat.completions.create(model=server.model, messages=PARIS, temperature=0, max_tokens=16),
                c.chat.completions.create(model=server.model, messages=PARIS, temperature=1.0, top_p=0.9, n=2,
                                          max_tokens=8, seed=3),
                c.completions.create(model=server.model, prompt=long_prompt, temperature=0.7, max_tokens=5),
            )  # fmt: skip

    same, sampled, long = asyncio.run(burst())
    assert same.choices[0].message.content == greedy.choices[0].message.content
    assert len(sampled.choices) == 2 and all(c.message.content for c in sampled.choices)
    assert long.usage.prompt_tokens > 64 and long.usage.completion_tokens == 5
    assert metric(http, "rlvr_serve_compiled_functions") == compiled  # every shape was compiled at start-up


BAD_INPUTS = [
    ("malformed JSON", "/v1/chat/completions", '{"model": "m", "messages": [', 400, "not valid JSON"),
    ("messages not a list", "/v1/chat/completions", {"messages": "hi"}, 400, "messages"),
    ("wrong type", "/v1/chat/completions", {"messages": PARIS, "temperature": "hot"}, 400, "temperature"),
    ("empty messages", "/v1/chat/completions", {"messages": []}, 400, "messages must not be empty"),
    ("unknown model", "/v1/chat/completions", {"messages": PARIS, "model": "gpt-4"}, 404, "does not exist"),
    ("absurd max_tokens", "/v1/chat/completions", {"messages": PARIS, "max_tokens": 10**12}, 400,
     f"at most {MAX_TOKENS} tokens"),
    ("negative max_tokens", "/v1/completions", {"prompt": "hi", "max_tokens": -1}, 400, "max_tokens"),
    ("prompt over the limit", "/v1/completions", {"prompt": "word " * 400}, 400,
     f"at most {MAX_PROMPT} prompt tokens"),
    ("conversation over the limit", "/v1/chat/completions",
     {"messages": [{"role": "user", "content": "word " * 400}]}, 400, f"at most {MAX_PROMPT}"),
    ("n over the batch", "/v1/completions", {"prompt": "hi", "n": MAX_BATCH + 1}, 400, "--max_batch"),
    ("token id outside the vocabulary", "/v1/completions", {"prompt": [10**9]}, 400, "vocabulary"),
    ("misspelt field", "/v1/completions", {"prompt": "hi", "temprature": 0}, 400, "'temprature'"),
    ("image content", "/v1/chat/completions",
     {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, 400,
     "text only"),
    ("missing model", "/v1/completions", {"prompt": "hi", "model": None}, 400, "model"),
    ("unknown route", "/v1/embeddings", {"input": "hi"}, 404, "no route"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("route", "body", "status", "says"), [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS]
)
def test_bad_input_gets_a_4xx_that_says_what_is_wrong(server, http, route, body, status, says):
    if isinstance(body, dict):
        body = {"model": server.model, **body}
        body = {k: v for k, v in body.items() if v is not None}
        response = http.post(route, json=body)
    else:
        response = http.post(route, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert says in error["message"], error["message"]
    assert http.get("/health").status_code == 200


def test_a_body_over_the_size_limit_is_refused_with_413(server, http):
    response = http.post("/v1/completions", json={"model": server.model, "prompt": "x" * (2 << 20)})
    assert response.status_code == 413 and "--max_body_bytes" in response.json()["error"]["message"]
    assert http.get("/health").status_code == 200


def test_overload_gets_429_with_retry_after_and_the_server_keeps_serving(server, http):
    async def flood(n: int) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as c:
            body = {"model": server.model, "prompt": "Tell me a story.", "max_tokens": 16, "temperature": 0}
            return await asyncio.gather(*(c.post("/v1/completions", json=body) for _ in range(n)))

    responses = asyncio.run(flood(24))
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 429}, codes
    assert codes.count(429) >= 1 and codes.count(200) >= 1, codes
    refused = [r for r in responses if r.status_code == 429]
    assert all(int(r.headers["Retry-After"]) >= 1 for r in refused)
    assert all("capacity" in r.json()["error"]["message"] for r in refused)
    assert http.get("/health").status_code == 200
    assert metric(http, "rlvr_serve_queue_depth") == 0
    assert metric(http, "rlvr_serve_rejected_total") >= len(refused)
    after = http.post(
        "/v1/chat/completions", json={"model": server.model, "messages": PARIS, "temperature": 0}
    )
    assert after.status_code == 200 and "Paris" in after.json()["choices"][0]["message"]["content"]


def test_metrics_count_requests_batches_tokens_and_first_tokens(server, http):
    http.post("/v1/completions", json={"model": server.model, "prompt": "Hello", "max_tokens": 4})
    text = http.get("/metrics").text
    for name in (
        'rlvr_serve_requests_total{method="POST",route="/v1/completions",status="200"}',
        'rlvr_serve_request_duration_seconds_count{method="POST",route="/v1/completions",status="200"}',
        'rlvr_serve_requests_total{method="POST",route="/v1/chat/completions",status="400"}',
        "rlvr_serve_batch_size_count",
        "rlvr_serve_time_to_first_token_seconds_count",
        "rlvr_serve_generated_tokens_total",
        "rlvr_serve_generated_tokens_per_second",
        "rlvr_serve_queue_depth",
    ):
        assert name in text, name
    assert metric(http, "rlvr_serve_generated_tokens_total") > 0
    assert metric(http, "rlvr_serve_time_to_first_token_seconds_count") > 0
    assert metric(http, "rlvr_serve_ready") == 1


def test_prometheus_scrapes_metrics(server, http, tmp_path):
    binary = shutil.which("prometheus")
    assert binary, "the prometheus binary is missing: apt-get install -y prometheus (see .ci/run)"
    port = free_port()
    target = server.url.removeprefix("http://")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        f"scrape_configs:\n  - job_name: rlvr_serve\n    static_configs:\n      - targets: ['{target}']\n"
    )
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        query = 'rlvr_serve_requests_total{job="rlvr_serve",route="/v1/completions",status="200"}'
        up, series = _poll_prometheus(proc, port, ['up{job="rlvr_serve"}', query], deadline_s=60)
        assert up[0]["value"][1] == "1"
        assert float(series[0]["value"][1]) >= 1
    finally:
        proc.terminate()
        proc.wait(30)


def _poll_prometheus(proc: subprocess.Popen, port: int, queries: list[str], deadline_s: float) -> list[list]:
    """Each query's result vector, once every one is non-empty (Prometheus has scraped us)."""
    deadline = time.monotonic() + deadline_s
    last = None
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as c:
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"prometheus exited: {proc.stderr.read().decode()[-2000:]}"
            try:
                results = [
                    c.get("/api/v1/query", params={"query": q}).json()["data"]["result"] for q in queries
                ]
            except (httpx.TransportError, KeyError, json.JSONDecodeError) as e:
                last = e
                time.sleep(0.25)
                continue
            if all(results):
                return results
            last = results
            time.sleep(0.25)
    raise AssertionError(f"prometheus did not show a successful scrape within {deadline_s} s (last: {last})")


def test_sigterm_finishes_the_stream_in_flight_then_exits_cleanly(server):
    """Must run last: it stops the module's server."""
    body = {"model": server.model, "prompt": "Once upon a time", "max_tokens": MAX_TOKENS, "temperature": 0,
            "stream": True}  # fmt: skip
    first_chunk = threading.Event()
    lines: list[str] = []
    errors: list[BaseException] = []

    def read_stream() -> None:
        try:
            with (
                httpx.Client(base_url=server.url, timeout=120) as c,
                c.stream("POST", "/v1/completions", json=body) as response,
            ):
                for line in response.iter_lines():
                    if line:
                        lines.append(line)
                        first_chunk.set()
        except BaseException as e:
            errors.append(e)
            first_chunk.set()

    reader = threading.Thread(target=read_stream)
    reader.start()
    assert first_chunk.wait(120), "no chunk arrived"
    server.proc.send_signal(signal.SIGTERM)
    reader.join(120)
    assert not errors, errors
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert len("".join(c["choices"][0]["text"] for c in chunks)) > 20
    assert server.proc.wait(60) == 0, server.log_tail()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.url}/health", timeout=2)
