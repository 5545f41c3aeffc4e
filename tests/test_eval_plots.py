"""The evaluation-report figures: each writes a real, non-blank PNG and handles the awkward inputs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from matplotlib.image import imread

from rlvr_jax.evaluation.plots import (
    RUN_COLORS,
    _length_bins,
    _natural_key,
    color_for,
    ema,
    plot_accuracy,
    plot_before_after,
    plot_by_level,
    plot_lengths,
    plot_training_curves,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

BASE = {"name": "base", "value": 0.198, "low": 0.13, "high": 0.29, "n": 96}
TRAINED = {"name": "trained", "value": 0.385, "low": 0.29, "high": 0.49, "n": 96}


def load_png(path: Path) -> np.ndarray:
    """The image as an (H, W, 3) float array, after checking it is a PNG with real content."""
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = imread(path)[..., :3]
    assert image.ndim == 3 and min(image.shape[:2]) > 200
    assert image.var() > 0
    rgb = (image * 255).round().astype(np.uint32)
    colours = np.unique(rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2])  # one int per colour: fast
    assert len(colours) > 20, "the image is (nearly) blank"
    return image


def has_colour(image: np.ndarray, colour: str, min_pixels: int = 50) -> bool:
    """Whether at least `min_pixels` pixels are (within rounding) exactly this colour."""
    target = np.array(to_rgb(colour))
    close = np.all(np.abs(image - target) < 2.5 / 255, axis=-1)
    return int(close.sum()) >= min_pixels


def training_rows(steps: int = 30, eval_every: int = 10, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for step in range(1, steps + 1):
        row = {"step": step, "reward/mean": 0.1 + 0.01 * step + rng.normal(0, 0.05), "reward/std": 0.3}
        if step % eval_every == 0:
            row["eval/accuracy"] = 0.2 + 0.005 * step
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------- colours


def test_run_colours_are_stable_and_distinct():
    assert color_for(0) == RUN_COLORS[0] == "tab:gray"
    assert color_for(1) == RUN_COLORS[1] == "tab:blue"
    assert color_for(len(RUN_COLORS)) == color_for(0)  # wraps around
    assert len({to_rgb(c) for c in RUN_COLORS}) == len(RUN_COLORS)


# -------------------------------------------------------------------------------------------- accuracy


def test_plot_accuracy_with_outcomes_and_p_value(tmp_path):
    out = plot_accuracy(
        [BASE, TRAINED], tmp_path / "deep" / "dir" / "acc.png", outcomes=(15, 4, 22, 55), p_value=0.0004
    )
    assert out == tmp_path / "deep" / "dir" / "acc.png"
    image = load_png(out)
    # the bars are drawn in the runs' colours, the same ones every figure uses
    assert has_colour(image, color_for(0)) and has_colour(image, color_for(1))
    assert image.shape[1] > image.shape[0]  # two panels side by side


def test_plot_accuracy_one_run_and_nan_value(tmp_path):
    load_png(plot_accuracy([BASE], tmp_path / "one.png", title="GSM8K accuracy"))
    nan_run = {"name": "broken", "value": math.nan, "low": math.nan, "high": math.nan, "n": 0}
    load_png(plot_accuracy([BASE, nan_run], tmp_path / "nan.png", p_value=0.5))
    no_ci = {"name": "no ci", "value": 0.5}  # bounds and n missing: a bar without error bars
    load_png(plot_accuracy([no_ci], tmp_path / "no_ci.png"))


def test_plot_accuracy_rejects_empty_and_bad_outcomes(tmp_path):
    with pytest.raises(ValueError, match="no runs"):
        plot_accuracy([], tmp_path / "x.png")
    with pytest.raises(ValueError, match="outcomes"):
        plot_accuracy([BASE, TRAINED], tmp_path / "x.png", outcomes=(1, 2, -3, 4))
    with pytest.raises(ValueError, match="outcomes"):
        plot_accuracy([BASE, TRAINED], tmp_path / "x.png", outcomes=(1, 2, 3))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fractions"):
        plot_accuracy(
            [{"name": "pct", "value": 38.5, "low": 29.0, "high": 49.0, "n": 96}], tmp_path / "x.png"
        )
    assert not (tmp_path / "x.png").exists()


# --------------------------------------------------------------------------------------------- lengths


def test_plot_lengths_with_truncation(tmp_path):
    rng = np.random.default_rng(0)
    base = np.clip(rng.lognormal(5.3, 0.5, 96), 20, 384).round()
    base[:38] = 384  # many responses cut at the limit
    trained = np.clip(rng.lognormal(4.9, 0.35, 96), 20, 384).round()
    out = plot_lengths(
        {"base": base, "trained": list(trained)}, tmp_path / "a" / "len.png", max_new_tokens=384
    )
    image = load_png(out)
    assert has_colour(image, "tab:red", min_pixels=20)  # the truncation limit line


def test_the_length_figure_counts_the_truncated_responses_that_the_metrics_count(tmp_path, monkeypatch):
    """Truncated = hit the budget without a stop token (finished False). A response whose stop token is
    the budget's last token is as long as the budget but finished: counting lengths at the budget said 18%
    where metrics.json and summary.json said 12.5%. The figure now reports the metrics' number."""
    from rlvr_jax.evaluation import plots
    from rlvr_jax.evaluation.metrics import eval_metrics

    limit = 24
    lengths = [24, 24, 24, 24, 24, 24, 7, 9, 11, 12, 12, 13, 15, 16, 18, 20] * 2
    finished = [False, False, True, True, True, True, *[True] * 10] * 2
    rows = [
        {"id": str(i), "reward": 0.0, "num_tokens": n, "finished": f}
        for i, (n, f) in enumerate(zip(lengths, finished, strict=True))
    ]
    metrics = eval_metrics(rows, max_new_tokens=limit)
    assert metrics["truncation_rate"] == 0.125 and np.mean(np.array(lengths) >= limit) > 0.37

    drawn = []
    save = plots.save
    monkeypatch.setattr(plots, "save", lambda fig, out, **kw: drawn.append(fig) or save(fig, out, **kw))
    load_png(
        plot_lengths({"run": lengths}, tmp_path / "len.png", max_new_tokens=limit, finished={"run": finished})
    )
    legend = [t.get_text() for t in drawn[0].legends[0].get_texts()]
    assert legend[0].endswith(", 12.5% truncated"), legend
    # The bar right of the limit line holds exactly those responses; the finished ones of the budget's
    # length sit in the bin left of it.
    runs, done = {"run": np.array(lengths, float)}, {"run": np.array(finished)}
    edges, hists, at_limit = plots._length_histograms(runs, limit, done)
    assert edges[at_limit] == limit and hists["run"][at_limit] == pytest.approx(12.5)
    assert hists["run"][at_limit - 1] >= 25.0
    with pytest.raises(ValueError, match="32 lengths but 3 finished flags"):
        plot_lengths({"run": lengths}, tmp_path / "x.png", max_new_tokens=limit, finished={"run": [True] * 3})


def test_plot_lengths_one_run_nan_and_empty_run(tmp_path):
    load_png(plot_lengths({"only": [10, 20, 20, 35, 50]}, tmp_path / "one.png"))
    load_png(
        plot_lengths({"a": [5.0, math.nan, 7.0, 9.0], "empty": []}, tmp_path / "nan.png", max_new_tokens=8)
    )
    load_png(plot_lengths({"same": [64, 64, 64]}, tmp_path / "constant.png"))  # zero spread


def test_plot_lengths_rejects_nothing_to_plot(tmp_path):
    with pytest.raises(ValueError, match="no response lengths"):
        plot_lengths({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="no response lengths"):
        plot_lengths({"a": [], "b": [math.nan]}, tmp_path / "x.png", max_new_tokens=384)


def test_length_bins_put_an_edge_on_the_limit():
    values = np.array([21.0, 150.0, 384.0])
    edges = _length_bins(values, 384, target=40)
    assert 384 in edges and edges[-1] > 384  # the truncated responses get a bin of their own
    assert edges[0] <= 21 and edges[0] >= 0
    assert np.allclose(np.diff(edges), edges[1] - edges[0])
    assert len(edges) - 1 <= 80


# ------------------------------------------------------------------------------------- training curves


def test_plot_training_curves_two_runs(tmp_path):
    rows = training_rows()
    rows[5]["reward/mean"] = math.nan  # as read_metrics returns a logged null
    rows[6]["reward/mean"] = None
    del rows[7]["reward/mean"]
    base = [{"step": 0, "eval/accuracy": 0.198}]  # a baseline with only an eval point
    out = plot_training_curves({"base": base, "trained": rows}, tmp_path / "c" / "curves.png")
    image = load_png(out)
    assert has_colour(image, color_for(1))


def test_plot_training_curves_skips_missing_eval_panel(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "eval/accuracy"} for r in training_rows()]
    with_eval = load_png(plot_training_curves({"run": training_rows()}, tmp_path / "with.png"))
    without = load_png(plot_training_curves({"run": rows}, tmp_path / "without.png", smooth=0.0))
    assert without.shape[0] < with_eval.shape[0]  # one panel: a shorter figure
    single_point = [{"step": 3, "reward/mean": 0.4}]
    load_png(plot_training_curves({"run": single_point}, tmp_path / "single.png"))


def test_plot_training_curves_rejects_nothing_to_plot(tmp_path):
    with pytest.raises(ValueError, match="no runs"):
        plot_training_curves({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="reward/mean"):
        plot_training_curves({"a": [], "b": [{"step": 1, "reward/mean": math.nan}]}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="smooth"):
        plot_training_curves({"a": training_rows()}, tmp_path / "x.png", smooth=1.0)


def test_ema_is_debiased():
    assert np.allclose(ema([1.0, 1.0, 1.0], 0.9), 1.0)  # a constant stays constant from the first point
    assert np.allclose(ema([0.0, 1.0], 0.0), [0.0, 1.0])
    smoothed = ema(np.r_[np.zeros(50), np.ones(50)], 0.9)
    assert smoothed[49] == 0 and 0 < smoothed[55] < 1 and smoothed[-1] > 0.99


# ---------------------------------------------------------------------------------------------- levels


def test_natural_level_order():
    names = ["Level 10", "Level 2", "Level 1", "Level ?"]
    assert sorted(names, key=_natural_key) == ["Level 1", "Level 2", "Level 10", "Level ?"]


def test_plot_by_level(tmp_path):
    def stats(v: float, n: int) -> dict:
        half = 1.96 * math.sqrt(v * (1 - v) / n)
        return {"value": v, "low": max(0.0, v - half), "high": min(1.0, v + half), "n": n}

    levels = {
        "base": {f"Level {i}": stats(0.6 - 0.1 * i, 40 + 20 * i) for i in range(1, 6)},
        "trained": {f"Level {i}": stats(0.7 - 0.1 * i, 40 + 20 * i) for i in range(1, 6)},
    }
    levels["trained"]["Level 10"] = stats(0.05, 12)  # a level only one run has
    levels["base"]["Level 3"] = {"value": math.nan, "low": math.nan, "high": math.nan, "n": 0}
    image = load_png(plot_by_level(levels, tmp_path / "lv" / "levels.png"))
    assert has_colour(image, color_for(0)) and has_colour(image, color_for(1))
    load_png(plot_by_level({"one": {"Level 1": stats(0.5, 30)}}, tmp_path / "one.png", title="MATH"))


def test_plot_by_level_rejects_nothing_to_plot(tmp_path):
    with pytest.raises(ValueError, match="no levels"):
        plot_by_level({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="no levels"):
        plot_by_level({"a": {}, "b": {}}, tmp_path / "x.png")


# ------------------------------------------------------------------------------------ before / after


def test_plot_before_after_several_experiments(tmp_path):
    rows = [
        {
            "label": "GSM8K",
            "before": BASE,
            "after": TRAINED,
            "p_value": 1.3e-14,
            "test": "McNemar",
            "n": 1319,
        },
        {"label": "HumanEval, a long label that has to wrap over lines", "before": TRAINED, "after": BASE},
    ]
    tall = load_png(plot_before_after(rows, tmp_path / "ba.png"))
    assert has_colour(tall, color_for(0)) and has_colour(tall, color_for(1))
    short = load_png(plot_before_after(rows[:1], tmp_path / "one.png", title="one"))
    assert tall.shape[0] > short.shape[0]  # one band per experiment


def test_plot_before_after_rejects_nothing_and_missing_points(tmp_path):
    with pytest.raises(ValueError, match="no experiments"):
        plot_before_after([], tmp_path / "x.png")
    with pytest.raises(ValueError, match="no after accuracy"):
        plot_before_after([{"label": "x", "before": BASE}], tmp_path / "x.png")
    with pytest.raises(ValueError, match="fractions"):
        plot_before_after([{"label": "x", "before": BASE, "after": {"value": 38.5}}], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
