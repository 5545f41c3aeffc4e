"""Load test of a running inference server (scripts/serve.py): a concurrency sweep over chat completions.

    python scripts/serve.py --model ../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf --port 8000 \\
        --max_batch 4 --batch_buckets 1,2,4 --max_queue 8 --prompt_buckets 64 --new_token_buckets 16 &
    python benchmarks/load_test.py --url http://127.0.0.1:8000 --concurrency 1,2,4,8,16 --duration 20 \\
        --max_tokens 16 --out benchmarks/results/load_test_cpu.json

For each concurrency level, that many clients send streamed chat completions back to back for
`--duration` seconds (and at most `--max_requests` each level); every request's latency, time to first
token, status and completion tokens are recorded. The JSON holds p50 / p95 / p99 latency, time to first
token and time per further token, throughput (requests/s and generated tokens/s), the error rate by
status (429 is the server refusing work it has no room for; a refused client waits the Retry-After it was
given), the server's mean batch size from /metrics (rows per batch with `--engine static`, slots in use per
decode call with `--engine continuous`), which engine the server runs, and the machine, versions, command
and date. Only the given URL is contacted; every loop is bounded in time and count.

`--max_tokens 16,64,256` mixes answer lengths (request i asks for the i-th value, cycling): a short answer
then shares the server with long ones, which is where static and continuous batching differ most. One
asyncio process tops out at a few thousand streamed chunks per second; `--processes N` spreads the
clients over N processes (use it for hundreds of clients against a fast server).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import datetime
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

PROMPTS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "What is 12 times 7?",
    "Write a haiku about the sea.",
    "Who wrote Romeo and Juliet?",
    "Translate 'good morning' into Spanish.",
    "List the first five even numbers.",
    "Explain what a prime number is in one sentence.",
]


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


async def one_request(client: httpx.AsyncClient, model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    """One streamed chat completion: status, latency, time to first content, completion tokens."""
    body = {
        "model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
        "temperature": 0.7, "stream": True, "stream_options": {"include_usage": True},
    }  # fmt: skip
    start = time.perf_counter()
    ttft = None
    tokens = 0
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                retry_after = float(response.headers.get("Retry-After", "1"))
                return {"status": response.status_code, "latency": time.perf_counter() - start,
                        "retry_after": retry_after}  # fmt: skip
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    return {"status": "stream_error", "latency": time.perf_counter() - start}
                if ttft is None and any(c.get("delta", {}).get("content") for c in chunk["choices"]):
                    ttft = time.perf_counter() - start
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
    except httpx.HTTPError as e:
        return {"status": type(e).__name__, "latency": time.perf_counter() - start}
    return {"status": 200, "latency": time.perf_counter() - start, "ttft": ttft, "tokens": tokens}


async def clients(
    url: str, model: str, first: int, count: int, stop_at: float, max_requests: int, max_tokens: list[int]
) -> list[dict[str, Any]]:
    """Clients first..first+count-1, back to back until `stop_at` (time.time()) or `max_requests` of
    theirs in all; returns every request's record."""
    results: list[dict[str, Any]] = []
    issued = 0

    async def worker(k: int, client: httpx.AsyncClient) -> None:
        nonlocal issued
        while time.time() < stop_at and issued < max_requests:
            issued += 1  # lengths cycle in the order requests are sent, whichever client sends them
            prompt = PROMPTS[(first + k + issued) % len(PROMPTS)]
            tokens = max_tokens[(first + issued) % len(max_tokens)]
            results.append(await one_request(client, model, prompt, tokens))
            if results[-1]["status"] == 429:  # a refused client waits as told, as OpenAI's client does
                wait = min(results[-1]["retry_after"], stop_at - time.time())
                await asyncio.sleep(max(wait, 0.0))

    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        await asyncio.gather(*(worker(k, client) for k in range(count)))
    return results


def _clients_in_process(*args: Any) -> list[dict[str, Any]]:
    return asyncio.run(clients(*args))


async def run_level(
    url: str,
    model: str,
    concurrency: int,
    duration: float,
    max_requests: int,
    max_tokens: list[int],
    processes: int = 1,
) -> dict[str, Any]:
    """`concurrency` clients, back to back, for `duration` seconds or `max_requests` requests in all,
    spread over `processes` processes (each with its share of the clients and of max_requests)."""
    processes = max(1, min(processes, concurrency))
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        before = await server_counters(client)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    stop_at = time.time() + duration
    if processes == 1:
        results = await clients(url, model, 0, concurrency, stop_at, max_requests, max_tokens)
    else:
        shares = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
        firsts = [sum(shares[:i]) for i in range(processes)]
        loop = asyncio.get_running_loop()
        with concurrent.futures.ProcessPoolExecutor(processes) as pool:
            parts = await asyncio.gather(*(
                loop.run_in_executor(
                    pool, _clients_in_process, url, model, first, share, stop_at,
                    max(1, max_requests * share // concurrency), max_tokens,
                )
                for first, share in zip(firsts, shares, strict=True)
            ))  # fmt: skip
        results = [r for part in parts for r in part]
    elapsed = time.perf_counter() - started
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        after = await server_counters(client)
    level = summarise(concurrency, results, elapsed, before, after)
    # Other work on the machine slows the server: the load average shows whether any ran meanwhile.
    level["load_average_1min"] = {"before": load_before, "after": os.getloadavg()[0]}
    return level


async def server_counters(client: httpx.AsyncClient) -> dict[str, float]:
    """The server's batch counters from /metrics (to report the mean batch size it reached)."""
    wanted = ("rlvr_serve_batch_size_sum", "rlvr_serve_batch_size_count", "rlvr_serve_generated_tokens_total")
    out = dict.fromkeys(wanted, 0.0)
    for line in (await client.get("/metrics")).text.splitlines():
        name, _, value = line.partition(" ")
        if name in out:
            out[name] = float(value)
    return out


def summarise(
    concurrency: int, results: list[dict[str, Any]], elapsed: float, before: dict, after: dict
) -> dict[str, Any]:
    ok = [r for r in results if r["status"] == 200]
    statuses: dict[str, int] = {}
    for r in results:
        statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
    latencies = [r["latency"] for r in ok]
    ttfts = [r["ttft"] for r in ok if r["ttft"] is not None]
    tokens = sum(r["tokens"] for r in ok)
    # Time per token after the first (streamed in chunks, so an average over the rest of the request).
    per_token = [(r["latency"] - r["ttft"]) / (r["tokens"] - 1) for r in ok if r["ttft"] and r["tokens"] > 1]
    batches = after["rlvr_serve_batch_size_count"] - before["rlvr_serve_batch_size_count"]
    rows = after["rlvr_serve_batch_size_sum"] - before["rlvr_serve_batch_size_sum"]

    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1000, 1)

    return {
        "concurrency": concurrency,
        "requests": len(results),
        "ok": len(ok),
        "statuses": statuses,
        "error_rate": round(1 - len(ok) / len(results), 4) if results else None,
        "seconds": round(elapsed, 2),
        "requests_per_s": round(len(ok) / elapsed, 3),
        "completion_tokens_per_s": round(tokens / elapsed, 2),
        "latency_ms": {
            "p50": ms(percentile(latencies, 50)),
            "p95": ms(percentile(latencies, 95)),
            "p99": ms(percentile(latencies, 99)),
            "mean": ms(sum(latencies) / len(latencies) if ok else None),
        },
        "ttft_ms": {q: ms(percentile(ttfts, int(q[1:]))) for q in ("p50", "p95", "p99")},
        "per_token_ms": {q: ms(percentile(per_token, int(q[1:]))) for q in ("p50", "p95", "p99")},
        "mean_completion_tokens": round(tokens / len(ok), 2) if ok else None,
        "server_batches": int(batches),
        "server_mean_batch_rows": round(rows / batches, 2) if batches else None,
    }


def environment(url: str) -> dict[str, Any]:
    """Where and with what this ran (the server is assumed to be on this machine, as it is here)."""
    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {"python": platform.python_version()}
    for dist in ("jax", "jaxlib", "flax", "fastapi", "uvicorn", "starlette", "pydantic", "httpx"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    here = Path(__file__).resolve().parent
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=here
    ).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, cwd=here).stdout
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    try:  # the card, where there is one (the server is assumed to run on this machine)
        gpu = (
            subprocess.run(
                ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True
            ).stdout.strip()
            or None
        )
    except OSError:
        gpu = None
    return {
        "hardware": {"cpu_model": cpu, "cpu_count": os.cpu_count(), "memory_gib": round(mem, 1),
                     "gpu": gpu, "platform": platform.platform()},
        "versions": versions,
        "git_commit": commit or None,
        "git_uncommitted_changes": bool(dirty.strip()),  # the code that ran may differ from the commit
        "url": url,
    }  # fmt: skip


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=args.url, timeout=10) as client:
        ready = await client.get("/ready")
        if ready.status_code != 200:
            raise SystemExit(
                f"error: {args.url}/ready answers {ready.status_code} ({ready.text}); wait for it"
            )
        engine = ready.json().get("engine", "static")  # servers before continuous batching: static
        model = (await client.get("/v1/models")).json()["data"][0]["id"]
        # One warm-up request, not counted: the first request of a process pays for lazy set-up.
        await one_request(client, model, PROMPTS[0], args.max_tokens[0])
    levels = []
    for c in args.concurrency:
        level = await run_level(
            args.url, model, c, args.duration, args.max_requests, args.max_tokens, args.processes
        )
        print(json.dumps(level), flush=True)
        levels.append(level)
    return {"model": model, "engine": engine, "levels": levels}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--concurrency", default="1,2,4,8,16", help="comma-separated client counts")
    p.add_argument("--duration", type=float, default=20.0, help="seconds per concurrency level")
    p.add_argument("--max_requests", type=int, default=500, help="cap on requests per level")
    p.add_argument(
        "--max_tokens", default="16", help="max_tokens per request; a comma list is cycled (mixed lengths)"
    )
    p.add_argument("--processes", type=int, default=1, help="client processes (for hundreds of clients)")
    p.add_argument("--server_command", default=None, help="how the server was started (recorded in the JSON)")
    p.add_argument("--out", default=None, help="write the JSON results here")
    args = p.parse_args(argv)
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.max_tokens = [int(n) for n in args.max_tokens.split(",")]
    started = datetime.datetime.now(datetime.UTC)
    result = asyncio.run(main_async(args))
    report = {
        "benchmark": "load_test",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "server_command": args.server_command,
        "date": started.isoformat(timespec="seconds"),
        **environment(args.url),
        "settings": {
            "duration_s": args.duration,
            "max_requests": args.max_requests,
            "max_tokens": args.max_tokens,
            "client_processes": args.processes,
            "temperature": 0.7,
            "stream": True,
            "prompts": len(PROMPTS),
            "on_429": "wait Retry-After seconds, then send again",
        },
        **result,
    }
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
