"""Evaluation end to end: metrics.json from samples, paired comparison against statsmodels, the CLIs on a
real model, and the report with its plots."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import matplotlib.image
import numpy as np
import pytest
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import proportion_confint

from rlvr_jax.evaluation.compare import compare_runs
from rlvr_jax.evaluation.metrics import eval_metrics, flat_summary
from rlvr_jax.evaluation.runs import load_run, write_run
from rlvr_jax.evaluation.stats import pass_at_k
from tests.conftest import REPO

ENV = {
    **os.environ,
    "JAX_PLATFORMS": "cpu",
    "JAX_COMPILATION_CACHE_DIR": str(jax.config.jax_compilation_cache_dir),
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5",
}


def _rows(passes, *, sample_index=0, level=None, tokens=10, prefix="q"):
    rows = []
    for i, p in enumerate(passes):
        row = {
            "id": f"{prefix}{i}",
            "sample_index": sample_index,
            "prompt": f"question {i}",
            "completion": f"answer {i}",
            "reward": float(p),
            "passed": bool(p >= 1),
            "reason": "ok" if p >= 1 else "wrong",
            "num_tokens": tokens + i % 7,
            "finished": i % 5 != 0,
        }
        if level is not None:
            row["level"] = level(i)
        rows.append(row)
    return rows


def _paired(both: int, only_a: int, only_b: int, neither: int):
    """Two runs over the same items with a known 2x2 table of outcomes."""
    a = [1] * both + [1] * only_a + [0] * only_b + [0] * neither
    b = [1] * both + [0] * only_a + [1] * only_b + [0] * neither
    return _rows(a), _rows(b)


def test_metrics_of_one_sample_per_item_use_the_wilson_interval():
    rows = _rows([1] * 7 + [0] * 25, level=lambda i: f"Level {1 + i % 11}")
    m = eval_metrics(rows, max_new_tokens=16)
    lo, hi = proportion_confint(7, 32, alpha=0.05, method="wilson")
    assert m["accuracy"]["value"] == pytest.approx(7 / 32)
    assert (m["accuracy"]["ci_low"], m["accuracy"]["ci_high"]) == pytest.approx((lo, hi), abs=1e-12)
    assert m["accuracy"]["method"] == "wilson" and "pass_at_k" not in m
    assert m["num_items"] == 32 and m["samples_per_item"] == 1
    assert m["truncation_rate"] == pytest.approx(7 / 32)  # every fifth row is unfinished
    assert (
        list(m["by_level"])[:3] == ["Level 1", "Level 2", "Level 3"]
        and "Level 10" in list(m["by_level"])[-2:]
    )
    assert sum(v["n"] for v in m["by_level"].values()) == 32
    flat = flat_summary(m)
    assert flat["accuracy"] == m["accuracy"]["value"] and flat["accuracy_ci_high"] == m["accuracy"]["ci_high"]


def test_several_samples_give_unbiased_pass_at_k_and_an_interval_over_items():
    rng = np.random.default_rng(0)
    correct = rng.integers(0, 9, size=20)  # item i has correct[i] passing samples out of 8
    rows = []
    for s in range(8):
        rows += _rows([1.0 if s < c else 0.0 for c in correct], sample_index=s)
    m = eval_metrics(rows)
    assert m["samples_per_item"] == 8 and m["num_items"] == 20
    assert set(m["pass_at_k"]) == {"1", "2", "4", "8"}
    for k in (1, 2, 4, 8):
        expected = np.mean([pass_at_k(8, int(c), k) for c in correct])
        assert m["pass_at_k"][str(k)] == pytest.approx(expected)
    assert m["pass_at_k"]["1"] == pytest.approx(correct.mean() / 8) == pytest.approx(m["accuracy"]["value"])
    assert "bootstrap" in m["accuracy"]["method"]
    assert m["accuracy"]["ci_low"] < m["accuracy"]["value"] < m["accuracy"]["ci_high"]


def test_qa_runs_report_exact_match_next_to_f1():
    rows = _rows([1.0, 0.5, 0.0, 1.0])
    for row, em in zip(rows, [1.0, 0.0, 0.0, 1.0], strict=True):
        row["qa_em"] = em
    m = eval_metrics(rows, reward="qa_f1")
    assert m["qa_em"]["value"] == pytest.approx(0.5)
    assert m["mean_reward"]["value"] == pytest.approx(0.625)


@pytest.mark.parametrize(
    "table", [(40, 4, 22, 30), (10, 9, 9, 4), (0, 0, 3, 1), (50, 1, 0, 3), (5, 12, 4, 9)]
)
def test_compare_gives_statsmodels_exact_mcnemar_p_value(tmp_path, table):
    a_rows, b_rows = _paired(*table)
    write_run(tmp_path / "a", a_rows, {"task": "t", "split": "test"})
    write_run(tmp_path / "b", b_rows, {"task": "t", "split": "test"})
    result = compare_runs(load_run(tmp_path / "a"), load_run(tmp_path / "b"))
    both, only_a, only_b, neither = table
    expected = mcnemar([[both, only_a], [only_b, neither]], exact=True).pvalue
    assert result["mcnemar"]["p_value"] == pytest.approx(expected, rel=1e-12)
    assert (result["mcnemar"]["only_a_passes"], result["mcnemar"]["only_b_passes"]) == (only_a, only_b)
    n = sum(table)
    assert result["accuracy_difference"]["value"] == pytest.approx((only_b - only_a) / n)
    assert result["paired_items"] == n and result["significant"] == (expected < 0.05)
    assert not result["warnings"]


def test_compare_uses_a_permutation_test_for_several_samples_and_warns_on_mismatch(tmp_path):
    a_rows, b_rows = [], []
    for s in range(4):
        a_rows += _rows([1.0 if (i + s) % 4 == 0 else 0.0 for i in range(30)], sample_index=s)
        b_rows += _rows([1.0 if (i + s) % 4 != 0 else 0.0 for i in range(30)], sample_index=s)
    write_run(tmp_path / "a", a_rows, {"task": "t", "temperature": 0.8})
    write_run(
        tmp_path / "b", b_rows[:-8], {"task": "t", "temperature": 1.0}
    )  # b lacks two samples of one item
    result = compare_runs(load_run(tmp_path / "a"), load_run(tmp_path / "b"))
    assert "mcnemar" not in result and result["test"].startswith("paired sign-flip")
    assert result["p_value"] < 1e-4 and result["significant"]
    assert result["accuracy_difference"]["value"] == pytest.approx(0.5, abs=0.02)
    assert any("temperature differs" in w for w in result["warnings"])


def test_runs_without_shared_items_are_an_error(tmp_path):
    write_run(tmp_path / "a", _rows([1, 0]), {})
    write_run(tmp_path / "b", _rows([1, 0], prefix="other"), {})
    with pytest.raises(ValueError, match="share no item ids"):
        compare_runs(load_run(tmp_path / "a"), load_run(tmp_path / "b"))


def _assert_png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[0] > 200 and pixels.std() > 0.05


def test_compare_cli_writes_a_report_with_plots(tmp_path):
    a_rows, b_rows = _paired(30, 3, 15, 48)
    level = lambda i: f"Level {1 + i % 5}"
    for rows in (a_rows, b_rows):
        for i, row in enumerate(rows):
            row["level"] = level(i)
    header = {"task": "gsm8k", "split": "test", "max_new_tokens": 20}
    write_run(tmp_path / "base", a_rows, header)
    write_run(tmp_path / "trained", b_rows, header)
    # A training run's metrics next to B: the report draws its reward curve.
    with open(tmp_path / "metrics.jsonl", "w") as f:
        for step in range(1, 21):
            f.write(json.dumps({"step": step, "reward/mean": 0.1 + step / 40, "eval/accuracy": 0.3}) + "\n")
    out = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "compare.py"), str(tmp_path / "base"),
         str(tmp_path / "trained"), "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "B is better than A" in proc.stdout
    result = json.loads((out / "comparison.json").read_text())
    assert result["p_value"] == pytest.approx(mcnemar([[30, 3], [15, 48]], exact=True).pvalue)
    report = (out / "report.md").read_text()
    for png in ("accuracy.png", "lengths.png", "training_curves.png", "by_level.png"):
        assert f"]({png})" in report
        _assert_png(out / png)
    assert "Items only B: trained gets right" in report and "question 33" in report

    bad = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "compare.py"), str(tmp_path / "base"),
         str(tmp_path / "nowhere")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert bad.returncode == 2 and "does not exist" in bad.stderr and "Traceback" not in bad.stderr


def test_evaluate_cli_on_the_real_model(tmp_path, smollm_gguf, shared_dir):
    """The README's CPU command with shorter answers and 8 of its 32 items (the full budget takes about 5
    minutes here; 8 items keep every check below and a quarter of the decoding)."""
    out = tmp_path / "eval"
    gsm8k_dir = shared_dir / "data" / "gsm8k"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "evaluate.py"), "--config=configs/gsm8k.py",
         f"--config.model.path={smollm_gguf}", f"--config.data.path={gsm8k_dir}",
         "--config.model.dtype=float32", "--config.sampling.max_new_tokens=16",
         "--config.sampling.eval_max_new_tokens=16", "--split=test", "--limit=8",
         f"--out={out}"],
        capture_output=True, text=True, timeout=600, cwd=REPO, env=ENV,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert metrics["task"] == "gsm8k" and metrics["split"] == "test" and metrics["num_items"] == 8
    acc = metrics["accuracy"]
    assert acc["method"] == "wilson" and acc["ci_low"] <= acc["value"] <= acc["ci_high"]
    assert len(rows) == 8 and [r["id"] for r in rows] == [f"gsm8k/test/{i}" for i in range(8)]
    assert all(r["completion"] and r["reason"] and 0 < r["num_tokens"] <= 16 for r in rows)
    assert "Janet" in rows[0]["prompt"]
    assert "accuracy " in proc.stdout and "95% CI" in proc.stdout

    bad = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "evaluate.py"), "--config=configs/gsm8k.py",
         f"--config.model.path={smollm_gguf}", f"--config.data.path={gsm8k_dir}", "--num_samples=4",
         "--temperature=0", f"--out={tmp_path / 'bad'}"],
        capture_output=True, text=True, timeout=300, cwd=REPO, env=ENV,
    )  # fmt: skip
    assert bad.returncode == 2 and "temperature > 0" in bad.stderr


def test_evaluation_reads_only_the_parameters_of_a_training_checkpoint(tmp_path):
    """A checkpoint's parameters come back in the model's storage dtype without any optimizer state; a
    model of another shape is refused."""
    import jax.numpy as jnp
    from flax import nnx

    from rlvr_jax.checkpointing import Checkpointer, abstract_like
    from rlvr_jax.optim import OptimConfig, init_train_state, make_optimizer
    from tests.tiny import TINY, numpy_model

    model = numpy_model(TINY, 0.02)
    state = init_train_state(model, make_optimizer(OptimConfig()))  # float32 master weights, Adam moments
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.save(7, state, {"step": 7})
    storage = nnx.state(numpy_model(TINY.replace(param_dtype="bfloat16"), 0.5, seed=1))
    with Checkpointer(tmp_path) as ckpt:
        params = ckpt.restore_params(7, abstract_like(storage))
    for got, saved in zip(jax.tree.leaves(params), jax.tree.leaves(state.params), strict=True):
        assert got.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(got), np.asarray(saved.astype(jnp.bfloat16)))
    wider = nnx.state(numpy_model(TINY.replace(hidden_size=TINY.hidden_size * 2), 0.02))
    with Checkpointer(tmp_path) as ckpt, pytest.raises(ValueError):
        ckpt.restore_params(7, abstract_like(wider))
