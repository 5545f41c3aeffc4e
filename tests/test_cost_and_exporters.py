"""Cost accounting, the Prometheus gauges (scraped and pushed) and the JSON log lines of a training run."""

from __future__ import annotations

import io
import json
import math
import urllib.request

import pytest

from rlvr_jax.monitoring import cost as cost_mod
from rlvr_jax.monitoring.cost import PRICES, CostTracker, device_price
from rlvr_jax.monitoring.exporters import JsonLogSink, PrometheusSink, prometheus_name


@pytest.mark.parametrize(
    ("kind", "name"),
    [("NVIDIA H100 80GB HBM3", "H100"), ("NVIDIA H200", "H200"), ("NVIDIA A100-SXM4-80GB", "A100"),
     ("NVIDIA L4", "L4"), ("TPU v5 lite", "TPU v5e"), ("TPU v5p", "TPU v5p"), ("TPU v6 lite", "TPU v6e"),
     ("cpu", "CPU")],
)  # fmt: skip
def test_device_prices_come_from_the_table(kind, name):
    assert device_price(kind) == (PRICES[name], f"price table: {name}")


def test_price_override_and_unknown_device():
    assert device_price("NVIDIA H100 80GB HBM3", 1.25) == (1.25, "logging.price_per_hour")
    price, why = device_price("Some NPU")
    assert price is None and "logging.price_per_hour" in why
    with pytest.raises(ValueError, match="price_per_hour"):
        device_price("cpu", -1.0)


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_cost_per_step_total_tokens_projection_and_resume(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(cost_mod.time, "perf_counter", clock)
    tracker = CostTracker(price_per_device_hour=3.6, devices=2, total_steps=10)  # $0.002 per second
    clock.now += 100.0  # loading + first step
    first = tracker.step(1, tokens=1000)
    assert first["cost/usd_per_step"] == pytest.approx(0.2)
    assert first["cost/usd_total"] == pytest.approx(0.2)
    assert first["cost/device_hours"] == pytest.approx(200 / 3600)
    for step in (2, 3):
        clock.now += 10.0
        last = tracker.step(step, tokens=1000)
    assert last["cost/usd_per_step"] == pytest.approx(0.02)
    assert last["cost/usd_total"] == pytest.approx(0.24)
    assert last["cost/usd_per_million_tokens"] == pytest.approx(0.24 / 3000 * 1e6)
    # 7 steps left at the median of (100, 10, 10) seconds
    assert last["cost/projected_run_usd"] == pytest.approx(0.24 + 7 * 0.02)

    resumed = CostTracker.restore(tracker.state(), 3.6, 2, 10)
    assert resumed.elapsed_s == pytest.approx(120.0) and resumed.tokens == 3000
    clock.now += 30.0  # the final evaluation
    summary = resumed.summary(accuracy_before=0.25, accuracy_after=0.40)
    assert summary["usd_total"] == pytest.approx(0.30)
    assert summary["accuracy_points_gained"] == pytest.approx(15.0)
    assert summary["usd_per_accuracy_point"] == pytest.approx(0.02)
    assert CostTracker(1.0, 1, 5).summary(0.5, 0.4)["usd_per_accuracy_point"] is None  # nothing gained


def test_prometheus_names():
    assert prometheus_name("reward/mean") == "rlvr_train_reward_mean"
    assert prometheus_name("train/kl") == "rlvr_train_kl"
    assert prometheus_name("cost/usd_total") == "rlvr_train_cost_usd_total"
    assert prometheus_name("throughput/mfu") == "rlvr_train_throughput_mfu"
    assert prometheus_name("eval/accuracy-x.y") == "rlvr_train_eval_accuracy_x_y"


def test_prometheus_endpoint_serves_the_last_step():
    sink = PrometheusSink("run-1", port=0)
    try:
        sink.write(3, {"reward/mean": 0.5, "train/kl": 0.01, "eval/accuracy": None, "flag": True})
        sink.write(4, {"reward/mean": 0.75, "train/kl": 0.02})
        text = urllib.request.urlopen(f"http://127.0.0.1:{sink.port}/metrics", timeout=10).read().decode()
    finally:
        sink.close()
    assert 'rlvr_train_reward_mean{run_id="run-1"} 0.75' in text
    assert 'rlvr_train_kl{run_id="run-1"} 0.02' in text
    assert 'rlvr_train_step{run_id="run-1"} 4.0' in text
    assert "rlvr_train_last_step_timestamp_seconds" in text
    assert "eval_accuracy" not in text and "flag" not in text


def test_pushgateway_gets_rate_limited_pushes_and_a_final_one(pushgateway):
    address, received = pushgateway
    sink = PrometheusSink("run-2", pushgateway=address, push_every_s=3600)
    sink.write(1, {"reward/mean": 0.1})
    sink.write(2, {"reward/mean": 0.2})  # within the interval: not pushed
    assert len(received) == 1
    sink.close()
    assert len(received) == 2
    method, path, body = received[-1]
    assert method == "PUT" and path == "/metrics/job/rlvr-train/run_id/run-2"
    assert 'rlvr_train_reward_mean{run_id="run-2"} 0.2' in body


def test_unreachable_pushgateway_warns_once_and_training_goes_on():
    sink = PrometheusSink("run-3", pushgateway="127.0.0.1:9", push_every_s=0)
    with pytest.warns(UserWarning, match="unreachable") as warned:
        sink.write(1, {"reward/mean": 0.1})
        sink.write(2, {"reward/mean": 0.2})
        sink.close()
    assert len(warned) == 1


def test_json_log_lines():
    stream = io.StringIO()
    sink = JsonLogSink("run-4", stream)
    sink.write(7, {"reward/mean": 0.5, "train/loss": math.nan})
    sink.event("checkpoint", 7, path="/tmp/ckpt")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [r["event"] for r in lines] == ["step", "checkpoint"]
    assert all(r["run_id"] == "run-4" and r["step"] == 7 and r["level"] == "info" for r in lines)
    assert lines[0]["reward/mean"] == 0.5 and lines[0]["train/loss"] is None  # strict JSON
    assert lines[1]["path"] == "/tmp/ckpt" and lines[0]["ts"].endswith("+00:00")
