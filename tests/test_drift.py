"""Drift detection: the statistics on hand-computable cases, profiles, pass-rate drift, the monitor's
Prometheus gauges, `scripts/drift.py` on the real GSM8K / MBPP files, and the server's drift endpoint."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
from prometheus_client import CollectorRegistry

from rlvr_jax.monitoring.drift import (
    GAUGES,
    DriftConfig,
    DriftMonitor,
    HashedEmbedding,
    ReferenceProfile,
    build_profile,
    compare,
    encoder_tokens,
    js_distance,
    ks_test,
    psi,
    psi_from_counts,
    quantile_bins,
    quantile_sketch,
    regex_words,
    two_proportion_test,
)
from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "drift.py"


def _read(path: Path, field: str) -> list[str]:
    return [json.loads(line)[field] for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def gsm8k(shared_dir: Path) -> dict[str, list[str]]:
    folder = shared_dir / "data" / "gsm8k"
    return {split: _read(folder / f"{split}.jsonl", "question") for split in ("train", "test")}


@pytest.fixture(scope="module")
def drift_script():
    """scripts/drift.py as a module, so that its `main` runs in-process (no interpreter start per case)."""
    spec = importlib.util.spec_from_file_location("drift_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _words(n: int, rng: np.random.Generator, vocab: list[str]) -> list[str]:
    return [" ".join(rng.choice(vocab, size=rng.integers(5, 15))) for _ in range(n)]


# -- the statistics -----------------------------------------------------------------------------------------


def test_psi_and_js_are_zero_for_identical_and_known_for_disjoint_histograms():
    assert psi_from_counts([3, 5, 2], [3, 5, 2]) == 0.0
    assert js_distance([3, 5, 2], [6, 10, 4]) == 0.0  # proportions, not counts, are compared
    # Disjoint: with the 0.5 pseudo-count p = (10.5, 0.5) / 11 and q reversed, PSI = 2 * (10/11) * ln 21.
    assert psi_from_counts([10, 0], [0, 10]) == pytest.approx(2 * 10 / 11 * math.log(21))
    assert js_distance([1, 0], [0, 1]) == pytest.approx(1.0)  # base 2: disjoint is the maximum, 1
    # P = (1/2, 1/2), Q = (1, 0): M = (3/4, 1/4), JSD = H(M) - (H(P) + H(Q)) / 2 bits, distance = sqrt.
    h_m = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    assert js_distance([1, 1], [1, 0]) == pytest.approx(math.sqrt(h_m - 0.5))
    assert math.isnan(js_distance([1, 2], [0, 0]))


def test_quantile_bins_cut_at_reference_quantiles_and_psi_of_a_sample_with_itself_is_zero():
    ref, live = np.arange(1, 11), np.array([1, 2, 3, 20, 30])
    ref_counts, live_counts = quantile_bins(ref, live, bins=2)  # one edge, the median 5.5
    assert ref_counts.tolist() == [5, 5] and live_counts.tolist() == [3, 2]
    ties = quantile_bins(np.array([1, 1, 1, 1, 2]), np.array([1, 2]), bins=4)
    assert len(ties[0]) == 2  # tied quantiles merge
    sample = np.random.default_rng(0).normal(size=500)
    assert psi(sample, sample) == pytest.approx(0.0, abs=1e-12)
    assert psi(sample, sample + 3) > 2


def test_ks_is_scipys_and_the_report_uses_it_on_the_raw_lengths():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=300), rng.normal(0.3, 1, size=200)
    expected = scipy.stats.ks_2samp(a, b)
    assert ks_test(a, b) == (pytest.approx(expected.statistic), pytest.approx(expected.pvalue))
    vocab = ["alpha", "beta", "gamma", "delta"]
    ref, live = _words(300, rng, vocab), _words(150, rng, vocab)
    report = compare(build_profile(ref), live, config=DriftConfig(min_samples=10))
    ks = report["features"]["prompt_chars"]["statistics"]["ks"]
    direct = scipy.stats.ks_2samp([len(t) for t in ref], [len(t) for t in live])
    assert ks["value"] == pytest.approx(direct.statistic, rel=1e-5)
    assert ks["p_value"] == pytest.approx(direct.pvalue, rel=1e-5)


def test_two_proportion_test_matches_statsmodels():
    from statsmodels.stats.proportion import proportions_ztest

    z, p = two_proportion_test(0.8, 200, 0.3, 100)
    z_ref, p_ref = proportions_ztest([30, 160], [100, 200])
    assert z == pytest.approx(z_ref) and p == pytest.approx(p_ref)
    assert two_proportion_test(1.0, 10, 1.0, 10) == (0.0, 1.0)


def test_regex_words_and_the_hashed_embedding_are_deterministic():
    assert regex_words("What's 2+2? Forty-two.") == [
        "what",
        "'",
        "s",
        "2",
        "+",
        "2",
        "?",
        "forty",
        "-",
        "two",
        ".",
    ]
    embed = HashedEmbedding(16)
    vectors = embed(["a b c", "a b c", ""])
    assert vectors.shape == (3, 16) and np.allclose(vectors[0], vectors[1])
    assert np.linalg.norm(vectors[0]) == pytest.approx(1.0) and not vectors[2].any()


def test_quantile_sketch_keeps_the_extremes_and_the_cdf():
    values = np.random.default_rng(2).exponential(size=5000)
    sketch = quantile_sketch(values, 100)
    assert len(sketch) == 100 and sketch[0] == values.min() and sketch[-1] == values.max()
    assert scipy.stats.ks_2samp(values, sketch).statistic < 0.02


# -- profiles and reports -----------------------------------------------------------------------------------


def test_a_profile_survives_json_and_gives_the_identical_report(tmp_path, gsm8k):
    rng = np.random.default_rng(3)
    train = gsm8k["train"][:500]
    outputs = [q[::-1] for q in train]
    outcomes = (rng.random(len(train)) < 0.7).astype(float).tolist()
    profile = build_profile(train, outputs, outcomes, embed=HashedEmbedding(32), top_k=50, max_samples=300)
    profile.save(tmp_path / "profile.json")
    loaded = ReferenceProfile.load(tmp_path / "profile.json")
    live = gsm8k["test"][:200]
    args = (live, [q.upper() for q in live], [1.0] * 200)
    config = DriftConfig(min_samples=50)
    assert json.dumps(compare(loaded, *args, config=config)) == json.dumps(
        compare(profile, *args, config=config)
    )
    report = compare(loaded, *args, config=config)
    assert set(report["features"]) == {
        f"{side}_{kind}"
        for side in ("prompt", "response")
        for kind in ("chars", "words", "vocab", "embedding")
    } | {"pass_rate"}
    assert len(loaded.sides["prompt"].chars) == 300 and loaded.sides["prompt"].count == 500
    assert loaded.embedding == "hashed-32" and loaded.pass_rate == pytest.approx(np.mean(outcomes))


def test_damaged_or_foreign_profiles_are_refused_with_a_reason(tmp_path):
    (tmp_path / "other.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="not a drift profile"):
        ReferenceProfile.load(tmp_path / "other.json")
    (tmp_path / "cut.json").write_text('{"format": "rlvr_jax.drift_profile/1", "sides": {"prompt": {}}}')
    with pytest.raises(ValueError, match="damaged"):
        ReferenceProfile.load(tmp_path / "cut.json")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ReferenceProfile.load(tmp_path / "missing.json")
    profile = build_profile(["a b"], tokenize=str.split)
    with pytest.raises(ValueError, match="tokenizer 'split'"):
        compare(profile, ["a b"])


def test_pass_rate_drift_needs_a_large_and_significant_change():
    profile = build_profile(["q"] * 200, outcomes=[1.0] * 160 + [0.0] * 40)  # 0.8
    config = DriftConfig(min_samples=1)

    def rate(live_rate: float, n: int = 100) -> dict:
        passed = round(live_rate * n)
        return compare(profile, ["q"] * n, outcomes=[1.0] * passed + [0.0] * (n - passed), config=config)

    dropped = rate(0.3)
    stat = dropped["features"]["pass_rate"]["statistics"]["abs_diff"]
    assert dropped["drift"] and dropped["drifted_features"] == ["pass_rate"]
    assert stat["value"] == pytest.approx(0.5) and stat["p_value"] < 1e-10
    assert dropped["pass_rate"] == {"reference": 0.8, "live": 0.3}
    steady = rate(0.78)
    assert not steady["drift"] and not steady["features"]["pass_rate"]["statistics"]["abs_diff"]["exceeded"]
    few = rate(0.3, n=10)  # a big change, but fewer outcomes than min_outcomes (30): no verdict yet
    assert not few["drift"] and not few["features"]["pass_rate"]["enough_samples"]
    with pytest.raises(ValueError, match=r"rewards in \[0, 1\]"):
        compare(profile, ["q"], outcomes=[2.0])


def test_verdict_rules_and_too_few_samples():
    rng = np.random.default_rng(4)
    profile = build_profile(_words(300, rng, ["one", "two", "three"]))
    other = _words(200, rng, ["four", "five", "six"])  # same lengths, new words: only the vocabulary drifts
    any_rule = compare(profile, other)
    assert any_rule["drift"] and any_rule["drifted_features"] == ["prompt_vocab"]
    assert not compare(profile, other, config=DriftConfig(rule="majority"))["drift"]
    small = compare(profile, other[:20])
    assert small["status"] == "insufficient_data" and not small["drift"]
    assert small["features"]["prompt_vocab"]["statistics"]["js"]["exceeded"]  # measured, but not judged
    assert compare(profile, other, ["x"] * 200)["skipped"] == {
        "response": "the reference profile has no responses"
    }
    with pytest.raises(ValueError, match="rule must be one of"):
        DriftConfig(rule="most")


# -- scripts/drift.py ---------------------------------------------------------------------------------------


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=REPO)


def _statistics(report: dict) -> dict[tuple[str, str], dict]:
    return {(f, s): v for f, e in report["features"].items() for s, v in e["statistics"].items()}


def test_acceptance_gsm8k_train_vs_test_is_not_drift(shared_dir):
    data = shared_dir / "data" / "gsm8k"
    done = _run(
        "--reference", str(data / "train.jsonl"), "--reference-field", "question",
        "--live", str(data / "test.jsonl"), "--live-field", "question",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert next(iter(report)) == "drift" and report["drift"] is False
    assert report["samples"]["reference"] == 7473 and report["samples"]["live"] == 1319
    stats = _statistics(report)
    assert set(stats) >= {(f, s) for f in ("prompt_chars", "prompt_words") for s in ("psi", "ks", "js")}
    for stat in stats.values():  # far below every threshold, not just below
        assert stat["value"] < stat["threshold"] / 3 and stat["exceeded"] is False


def test_acceptance_gsm8k_vs_mbpp_is_drift(shared_dir):
    done = _run(
        "--reference", str(shared_dir / "data" / "gsm8k" / "train.jsonl"), "--reference-field", "question",
        "--live", str(shared_dir / "data" / "mbpp" / "test.jsonl"), "--live-field", "text",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["drift"] is True
    assert set(report["drifted_features"]) == {"prompt_chars", "prompt_words", "prompt_vocab"}
    for stat in _statistics(report).values():  # every statistic, by a wide margin
        assert stat["value"] > 1.5 * stat["threshold"] and stat["exceeded"] is True


def test_a_gzipped_csv_reference_a_saved_profile_and_json_live_records_with_outcomes(
    tmp_path, drift_script, capsys, gsm8k
):
    import csv
    import gzip

    ref = tmp_path / "ref.csv.gz"
    with gzip.open(ref, "wt", newline="") as f:
        writer = csv.DictWriter(f, ["question", "passed"])
        writer.writeheader()
        writer.writerows({"question": q, "passed": i % 2} for i, q in enumerate(gsm8k["train"][:1000]))
    live = tmp_path / "live.json"
    live.write_text(json.dumps([{"q": q, "ok": True} for q in gsm8k["test"][:300]]))
    profile, out = tmp_path / "profile.json", tmp_path / "report.json"
    assert drift_script.main(
        ["--reference", str(ref), "--reference-field", "question", "--reference-outcome-field", "passed",
         "--save-profile", str(profile)]
    ) == 0  # fmt: skip
    capsys.readouterr()
    assert drift_script.main(
        ["--profile", str(profile), "--live", str(live), "--live-field", "q", "--live-outcome-field", "ok",
         "--out", str(out)]
    ) == 0  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads(out.read_text())
    assert report["drifted_features"] == ["pass_rate"]  # 0.5 -> 1.0; the questions did not move
    assert report["pass_rate"] == {"reference": 0.5, "live": 1.0}


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--reference", "/nonexistent.jsonl", "--reference-field", "q", "--live", "{live}",
          "--live-field", "q"], "/nonexistent.jsonl does not exist"),
        (["--reference", "{live}", "--reference-field", "question", "--live", "{live}", "--live-field", "q"],
         "has no field 'question'"),
        (["--reference", "{live}", "--live", "{live}", "--live-field", "q"],
         "--reference needs --reference_field"),
        (["--reference", "{live}", "--reference-field", "n", "--live", "{live}", "--live-field", "q"],
         "field 'n' of record 0 is int, not text"),
        (["--reference", "{live}", "--reference-field", "q", "--live", "{live}", "--live-field", "q",
          "--live-outcome-field", "n"], "outcomes must be 0/1"),
        (["--profile", "{live}", "--live", "{live}", "--live-field", "q"], "not a drift profile"),
        (["--reference", "{live}", "--reference-field", "q"], "pass --live FILE --live_field F to compare"),
        (["--reference", "{live}", "--reference-field", "q", "--live", "{live}", "--live-field", "q",
          "--ks-threshold", "0"], "ks_threshold must be > 0"),
    ],
)  # fmt: skip
def test_bad_input_exits_2_naming_the_problem(tmp_path, drift_script, capsys, args, says):
    live = tmp_path / "live.jsonl"
    live.write_text('{"q": "How many?", "n": 7}\n')
    assert drift_script.main([a.replace("{live}", str(live)) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and says in err, err


def test_bad_input_exits_2_from_the_command_line(tmp_path):
    done = _run("--reference", str(tmp_path / "gone.jsonl"), "--reference-field", "q", "--save-profile", "p")
    assert (
        done.returncode == 2 and "gone.jsonl does not exist" in done.stderr and "Traceback" not in done.stderr
    )


# -- the live monitor and its gauges ------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_monitor_gauges_carry_the_report(gsm8k):
    profile = build_profile(gsm8k["train"][:2000], outcomes=[1.0, 0.0] * 1000)
    monitor = DriftMonitor(
        profile, window=150, config=DriftConfig(min_samples=50, min_outcomes=20), min_interval_s=0
    )
    registry = CollectorRegistry()
    monitor.register(registry)
    for i, question in enumerate(gsm8k["test"][:200]):  # the first 50 fall out of the window
        monitor.observe(question, outcome=1.0 if i % 10 else 0.0)
    report = monitor.report()
    assert monitor.window_samples == 150 and report["window"] == {"samples": 150, "capacity": 150}
    value = registry.get_sample_value
    assert value("rlvr_drift_window_samples") == 150
    assert value("rlvr_drift_pass_rate", {"window": "reference"}) == 0.5
    assert value("rlvr_drift_pass_rate", {"window": "live"}) == pytest.approx(0.9)
    for feature, entry in report["features"].items():
        for statistic, stat in entry["statistics"].items():
            labels = {"feature": feature, "statistic": statistic}
            assert value("rlvr_drift_statistic", labels) == stat["value"]
            assert value("rlvr_drift_threshold", labels) == stat["threshold"]
        assert value("rlvr_drift_detected", {"feature": feature}) == float(entry["drift"])
    assert value("rlvr_drift_detected", {"feature": "prompt_words"}) == 0.0
    assert value("rlvr_drift_detected", {"feature": "pass_rate"}) == 1.0  # 0.5 -> 0.9
    assert value("rlvr_drift_detected_any") == 1.0
    assert value("rlvr_drift_statistic", {"feature": "pass_rate", "statistic": "abs_diff"}) == pytest.approx(
        0.4
    )
    assert {m.name for m in registry.collect()} >= set(GAUGES)
    with pytest.raises(ValueError, match="Duplicated"):  # a second monitor in the same registry
        DriftMonitor(profile).register(registry)


def test_the_monitor_reports_what_compare_reports_for_the_same_texts(gsm8k):
    train, test = gsm8k["train"][:400], gsm8k["test"][:300]
    profile = build_profile(train, [q[:40] for q in train], embed=HashedEmbedding(16))
    monitor = DriftMonitor(profile, window=120, min_interval_s=0)
    for question in test:
        monitor.observe(question, question[:40])
    window = test[-120:]
    direct = compare(profile, window, [q[:40] for q in window])
    assert monitor.report()["features"] == direct["features"]
    assert "prompt_embedding" in direct["features"] and "response_vocab" in direct["features"]


def test_a_model_tokenizer_counts_tokens_and_must_be_given_again():
    tokenizer = types.SimpleNamespace(encode=lambda text: [ord(c) for c in text], name_or_path="chars")
    tokenize = encoder_tokens(tokenizer)
    assert tokenize("ab") == ["97", "98"]
    profile = build_profile(["abc", "de"], tokenize=tokenize)
    assert profile.tokenizer == "chars" and profile.sides["prompt"].words.tolist() == [2.0, 3.0]
    assert compare(profile, ["xyz"], tokenize=tokenize)["features"]["prompt_words"]["samples"]["live"] == 1
    with pytest.raises(ValueError, match="tokenizer 'chars'"):
        DriftMonitor(profile)


def test_monitor_recomputes_only_when_something_changed_and_not_too_often():
    clock = FakeClock()
    profile = build_profile(["a b c"] * 10, outcomes=[1.0] * 10)
    monitor = DriftMonitor(
        profile, window=3, config=DriftConfig(min_samples=1, min_outcomes=1), min_interval_s=10, clock=clock
    )
    monitor.observe("a b c", "x", key="r1")
    first = monitor.report()
    assert monitor.report() is first  # nothing new: cached
    monitor.observe("d e f g", key="r2")
    assert monitor.report() is first  # new, but within min_interval_s
    assert monitor.report(fresh=True) is not first
    clock.now = 11
    assert monitor.record_outcome("r2", 0.0)
    assert monitor.report()["pass_rate"]["live"] == 0.0
    for i in range(3):
        monitor.observe(f"p{i}")
    assert not monitor.record_outcome("r2", 1.0)  # evicted from the window with its key
    assert [p for p, _, _ in monitor.recent()] == ["p0", "p1", "p2"]
    with pytest.raises(ValueError, match=r"rewards in \[0, 1\]"):
        monitor.observe("x", outcome=1.5)


def test_monitor_observe_is_safe_from_many_threads_while_scraping():
    profile = build_profile(["a b c d"] * 50)
    monitor = DriftMonitor(profile, window=500, config=DriftConfig(min_samples=1), min_interval_s=0)
    stop = threading.Event()

    def scrape() -> None:
        while not stop.is_set():
            monitor.report()

    scraper = threading.Thread(target=scrape)
    scraper.start()
    writers = [
        threading.Thread(target=lambda: [monitor.observe("a b c d e") for _ in range(200)]) for _ in range(4)
    ]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    stop.set()
    scraper.join()
    assert monitor.window_samples == 500 and monitor.report()["samples"]["live"] == 500


# -- the server ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_chat_engine(smollm_gguf):
    """A tiny random model with SmolLM2's real tokenizer and chat template, as tests/test_serving_units.py."""
    from rlvr_jax.models import init_model
    from rlvr_jax.serving.engine import Engine
    from rlvr_jax.weights.loader import load_tokenizer
    from tests.test_serving_units import TINY

    tokenizer = load_tokenizer(smollm_gguf)
    model = init_model(TINY.replace(vocab_size=tokenizer.vocab_size), seed=1)
    return lambda config: Engine.from_loaded(model, tokenizer, config)


def test_the_server_feeds_the_monitor_and_takes_feedback(tiny_chat_engine):
    from fastapi.testclient import TestClient

    from rlvr_jax.serving.app import create_app
    from rlvr_jax.serving.config import ServerConfig
    from tests.test_serving_units import _wait_ready

    config = ServerConfig(model_name="tiny", max_batch=2, prompt_buckets=(64,), new_token_buckets=(8,))
    profile = build_profile(["What is 2 + 2?", "Name a colour."] * 20, outcomes=[1.0] * 40)
    monitor = DriftMonitor(
        profile, window=10, config=DriftConfig(min_samples=1, min_outcomes=1), min_interval_s=0
    )
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}]
    chat = {"model": "tiny", "max_tokens": 4, "temperature": 0, "messages": messages}
    with TestClient(create_app(config, lambda: tiny_chat_engine(config), drift=monitor)) as client:
        _wait_ready(client)
        reply = client.post("/v1/chat/completions", json=chat).json()
        done = client.post(
            "/v1/completions", json={"model": "tiny", "prompt": ["Name a colour.", "Hi"], "max_tokens": 3}
        )
        with client.stream("POST", "/v1/chat/completions", json={**chat, "stream": True}) as streamed:
            assert [line for line in streamed.iter_lines() if line][-1] == "data: [DONE]"
        seen = monitor.recent()
        assert [p for p, _, _ in seen] == ["What is 2 + 2?", "Name a colour.", "Hi", "What is 2 + 2?"]
        assert seen[0][1] == reply["choices"][0]["message"]["content"]
        assert seen[2][1] == done.json()["choices"][1]["text"]

        accepted = client.post("/v1/feedback", json={"id": reply["id"], "outcome": 0})
        assert accepted.status_code == 200 and accepted.json()["accepted"] is True
        second = client.post("/v1/feedback", json={"id": done.json()["id"], "index": 1, "outcome": True})
        assert second.status_code == 200
        metrics = client.get("/metrics").text
        assert "rlvr_drift_window_samples 4.0" in metrics
        assert 'rlvr_drift_pass_rate{window="live"} 0.5' in metrics
        assert 'rlvr_drift_pass_rate{window="reference"} 1.0' in metrics
        assert 'rlvr_drift_statistic{feature="prompt_words",statistic="psi"}' in metrics
        assert (
            'rlvr_drift_threshold{feature="response_chars",statistic="ks"}' not in metrics
        )  # no responses in profile
        assert "rlvr_drift_detected_any" in metrics and "rlvr_serve_requests_total" in metrics

        unknown = client.post("/v1/feedback", json={"id": "chatcmpl-nope", "outcome": 1})
        assert unknown.status_code == 404 and "in the drift window" in unknown.json()["error"]["message"]
        out_of_range = client.post("/v1/feedback", json={"id": reply["id"], "outcome": 2})
        assert out_of_range.status_code == 400 and "outcome" in out_of_range.json()["error"]["message"]


def test_feedback_without_drift_monitoring_says_how_to_turn_it_on():
    from fastapi.testclient import TestClient

    from rlvr_jax.serving.app import create_app
    from rlvr_jax.serving.config import ServerConfig

    def never():
        raise FileNotFoundError("no model in this test")

    config = ServerConfig(model_name="tiny", max_batch=2, prompt_buckets=(64,), new_token_buckets=(8,))
    with TestClient(create_app(config, never)) as client:
        reply = client.post("/v1/feedback", json={"id": "cmpl-1", "outcome": 1})
        assert reply.status_code == 404 and "--drift_reference" in reply.json()["error"]["message"]
        assert "rlvr_drift" not in client.get("/metrics").text


def test_serve_script_refuses_a_bad_drift_profile(tmp_path):
    bad = tmp_path / "profile.json"
    bad.write_text("[]")
    script = str(REPO / "scripts" / "serve.py")
    done = subprocess.run(
        [sys.executable, script, "--model", "x.gguf", "--drift_reference", str(bad)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "not a drift profile" in done.stderr, done.stderr
