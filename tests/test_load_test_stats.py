"""The load test's statistics (benchmarks/load_test.py): percentiles and the per-level summary."""

from __future__ import annotations

import pytest

from benchmarks.load_test import percentile, summarise


def test_nearest_rank_percentiles():
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == 50.0
    assert percentile(values, 95) == 95.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([3.0], 99) == 3.0
    assert percentile([], 50) is None


def test_summary_counts_errors_latency_first_token_and_time_per_token():
    results = [
        {"status": 200, "latency": 0.100, "ttft": 0.010, "tokens": 10},  # 10 ms per further token
        {"status": 200, "latency": 0.210, "ttft": 0.030, "tokens": 10},  # 20 ms per further token
        {"status": 200, "latency": 0.050, "ttft": 0.050, "tokens": 1},  # one token: no per-token time
        {"status": 429, "latency": 0.001, "ttft": None, "tokens": 0},
    ]
    before = {"rlvr_serve_batch_size_sum": 10.0, "rlvr_serve_batch_size_count": 5.0}
    after = {"rlvr_serve_batch_size_sum": 16.0, "rlvr_serve_batch_size_count": 8.0}
    level = summarise(4, results, elapsed=2.0, before=before, after=after)
    assert level["requests"] == 4 and level["ok"] == 3
    assert level["statuses"] == {"200": 3, "429": 1}
    assert level["error_rate"] == pytest.approx(0.25)
    assert level["requests_per_s"] == pytest.approx(1.5)
    assert level["completion_tokens_per_s"] == pytest.approx(10.5)
    assert level["latency_ms"]["p50"] == pytest.approx(100.0)
    assert level["ttft_ms"]["p50"] == pytest.approx(30.0)
    assert level["per_token_ms"] == {
        "p50": pytest.approx(10.0),
        "p95": pytest.approx(20.0),
        "p99": pytest.approx(20.0),
    }
    assert level["ttft_ms"]["p99"] == pytest.approx(50.0)
    assert level["server_batches"] == 3 and level["server_mean_batch_rows"] == pytest.approx(2.0)
