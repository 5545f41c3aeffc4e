"""Figures of an evaluation report that compares model runs (e.g. a base model vs. the same model after RL).

Each figure answers "did training help, and is the difference real":
- `plot_accuracy`: accuracy per run with 95% confidence intervals and, for two paired runs, the 2x2 table
  of per-problem outcomes whose discordant cells McNemar's test uses.
- `plot_lengths`: response-length histograms, run means and the share of truncated responses.
- `plot_training_curves`: training reward (raw and EMA-smoothed) and held-out accuracy against step.
- `plot_by_level`: accuracy per difficulty level (e.g. MATH levels 1-5) with confidence intervals.
- `plot_before_after`: several experiments, before vs after with CIs and p-values, in one figure.

They share one style, panel layout and save step (`rlvr_jax.figures`): the matplotlib object API, never
pyplot, so they touch no global backend state and are safe in a headless process. Run i has the colour
`color_for(i)` in every figure (run 0, usually the baseline, is grey). Every function returns the path it
wrote, creates its parent directories and raises ValueError when given nothing to plot.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import FuncFormatter, MaxNLocator

from rlvr_jax.evaluation.metrics import truncation_rate
from rlvr_jax.figures import (
    LABEL_SIZE,
    NOTE_SIZE,
    RUN_COLORS,
    TICK_SIZE,
    color_for,
    ema,
    finite,
    format_p,
    label,
    legend_above,
    legend_below,
    panels,
    percent,
    percent_axis,
    save,
    series,
    style,
    suptitle,
    wrap,
)

__all__ = [
    "RUN_COLORS",
    "color_for",
    "ema",
    "plot_accuracy",
    "plot_before_after",
    "plot_by_level",
    "plot_lengths",
    "plot_training_curves",
]

LIMIT_COLOR = "tab:red"  # the truncation limit in `plot_lengths`


# ------------------------------------------------------------------------------------------- helpers


def _natural_key(name: str) -> list[Any]:
    """Sort key that orders "Level 2" before "Level 10"."""
    return [(0, int(part)) if part.isdigit() else (1, part.lower()) for part in re.split(r"(\d+)", name)]


def _ci(stats: Mapping[str, Any]) -> tuple[float | None, float | None, float | None]:
    """(value, low, high) of a {"value", "low", "high"} mapping; a missing or non-finite bound is None."""
    value = finite(stats.get("value"))
    low, high = finite(stats.get("low")), finite(stats.get("high"))
    if value is None:
        return None, None, None
    if not all(-1e-9 <= x <= 1 + 1e-9 for x in (value, low, high) if x is not None):
        raise ValueError(f"accuracy values must be fractions in [0, 1] (not percentages); got {dict(stats)}")
    return value, low, high


def _error(value: float, low: float | None, high: float | None) -> tuple[float, float]:
    """Asymmetric error-bar lengths (below, above) for an interval; 0 where a bound is missing."""
    below = max(value - low, 0.0) if low is not None else 0.0
    above = max(high - value, 0.0) if high is not None else 0.0
    return below, above


def _n_text(n: Any) -> str | None:
    n = finite(n)
    return None if n is None else f"n = {int(n):,}"


def _ci_bar(
    ax: Any, x: float, stats: Mapping[str, Any], color: str, width: float, **errorbar: Any
) -> tuple[float, float] | None:
    """A bar of an accuracy with its 95% CI as a black error bar; (value, top of the CI), None if no value."""
    value, low, high = _ci(stats)
    if value is None:
        return None
    below, above = _error(value, low, high)
    ax.bar(x, value, width=width, color=color, edgecolor="none", zorder=2)
    if below or above:
        ax.errorbar(x, value, yerr=[[below], [above]], fmt="none", ecolor="black", zorder=3, **errorbar)
    return value, value + above


# ------------------------------------------------------------------------------------------ accuracy


def plot_accuracy(
    runs: Sequence[Mapping[str, Any]],
    out_png: str | Path,
    *,
    metric: str = "accuracy",
    outcomes: tuple[int, int, int, int] | None = None,
    p_value: float | None = None,
    title: str | None = None,
) -> Path:
    """Accuracy of each run with its 95% CI; optionally the paired outcomes of the first two runs.

    runs: [{"name", "value", "low", "high", "n"}, ...] with value/low/high in [0, 1] (a non-finite value
      draws no bar and is labelled "n/a"; missing bounds draw no error bar).
    outcomes: (both pass, only the first run passes, only the second passes, neither) over paired items;
      drawn as a 2x2 table whose off-diagonal (discordant) cells are what McNemar's test compares.
    p_value: McNemar's exact p for the two runs, shown in the title.
    """
    runs = list(runs)
    if not runs:
        raise ValueError("plot_accuracy: no runs to plot (runs is empty)")
    names = [str(r.get("name", f"run {i}")) for i, r in enumerate(runs)]
    outcomes = _checked_outcomes(outcomes)
    width = max(4.8, 1.5 * len(runs) + 2.2)
    if outcomes:
        fig, (ax, grid_ax) = panels(width + 5.6, 5.0, 1, 2, width_ratios=(width, 5.6))
    else:
        fig, ax = panels(width, 5.0)
    _accuracy_bars(ax, runs, names, metric)
    ax.set_ylim(0, _difference_bracket(ax, runs, p_value))
    if outcomes:
        _outcome_grid(grid_ax, outcomes, names, p_value)
    head = title or (f"{metric[:1].upper()}{metric[1:]}: " + " vs ".join(names))
    if p_value is not None and finite(p_value) is not None and not outcomes:
        head += f"\n(McNemar exact p = {format_p(p_value)})"
    suptitle(fig, head)
    return save(fig, out_png)


def _checked_outcomes(outcomes: Sequence[int] | None) -> tuple[int, ...] | None:
    if outcomes is None:
        return None
    counts = tuple(int(x) for x in outcomes)
    if len(counts) != 4 or min(counts) < 0:
        raise ValueError(
            "plot_accuracy: outcomes must be 4 non-negative counts "
            f"(both pass, only first, only second, neither); got {counts}"
        )
    return counts


def _accuracy_bars(ax: Any, runs: list[Mapping[str, Any]], names: list[str], metric: str) -> None:
    """One bar per run with its CI, its value and its interval written above it."""
    for i, run in enumerate(runs):
        bar = _ci_bar(ax, i, run, color_for(i), 0.6, elinewidth=1.4, capsize=7, capthick=1.4)
        if bar is None:
            ax.text(i, 0.02, "n/a", ha="center", va="bottom", fontsize=LABEL_SIZE, color="0.4")
            continue
        (value, top), (_, low, high) = bar, _ci(run)
        ci = f"95% CI [{100 * low:.1f}, {100 * high:.1f}]" if low is not None and high is not None else ""
        label(ax, percent(value), (i, top), (0, 16 if ci else 4), fontsize=LABEL_SIZE + 1, fontweight="bold")
        if ci:
            label(ax, ci, (i, top), (0, 4), fontsize=NOTE_SIZE, color="0.25")
    ticks = [
        wrap(name, 22) + ("" if _n_text(r.get("n")) is None else f"\n({_n_text(r.get('n'))})")
        for name, r in zip(names, runs, strict=True)
    ]
    ax.set_xticks(np.arange(len(runs)), ticks)
    pad = 0.6 if len(runs) > 1 else 1.0
    ax.set_xlim(-pad, len(runs) - 1 + pad)
    ax.set_yticks(np.linspace(0, 1, 6))
    percent_axis(ax.yaxis)
    ax.set_ylabel(f"{metric} (%)", fontsize=LABEL_SIZE)
    ax.set_title(f"{metric[:1].upper()}{metric[1:]} per run (error bars: 95% CI)", fontsize=LABEL_SIZE + 1)
    style(ax)


def _difference_bracket(ax: Any, runs: list[Mapping[str, Any]], p_value: float | None) -> float:
    """The difference between the first two runs as a bracket over their bars; returns the axes' top."""
    top = 1.13  # headroom for the labels above a bar near 100%
    first_two = [_ci(r) for r in runs[:2]]
    if len(first_two) < 2 or any(value is None for value, _, _ in first_two):
        return top
    y = max(high if high is not None else value for value, _, high in first_two) + 0.17  # over the labels
    ax.plot([0, 0, 1, 1], [y - 0.025, y, y, y - 0.025], color="0.2", linewidth=1.2, clip_on=False)
    text = f"{100 * (first_two[1][0] - first_two[0][0]):+.1f} pts"
    if p_value is not None and finite(p_value) is not None:
        text += f"   (McNemar p = {format_p(p_value)})"
    label(ax, text, (0.5, y), (0, 3), fontsize=LABEL_SIZE, fontweight="bold", color="0.15")
    return max(top, y + 0.09)


def _outcome_grid(ax: Any, outcomes: tuple[int, ...], names: list[str], p_value: float | None) -> None:
    """The 2x2 table of paired outcomes; the discordant cells, the ones McNemar's test compares, shaded."""
    both, only_first, only_second, neither = outcomes
    total = sum(outcomes)
    first, second = names[0], (names[1] if len(names) > 1 else "second run")
    # cell (row, col): rows = first run correct / wrong, cols = second run correct / wrong
    cells = {
        (0, 0): (both, "both correct", None),
        (0, 1): (only_first, wrap(f"only {first}", 26) + "\ncorrect", color_for(0)),
        (1, 0): (only_second, wrap(f"only {second}", 26) + "\ncorrect", color_for(1)),
        (1, 1): (neither, "both wrong", None),
    }
    for (row, col), (count, text, color) in cells.items():
        share = f"{100 * count / total:.0f}% of pairs" if total else ""
        _outcome_cell(ax, (col, 1 - row), count, f"{text}\n{share}", color)  # row 0 at the top
    ax.set_xlim(0, 2)
    ax.set_ylim(0, 2)
    ax.set_aspect("equal")
    ax.set_xticks([0.5, 1.5], ["correct", "wrong"], fontsize=TICK_SIZE)
    ax.set_yticks([1.5, 0.5], ["correct", "wrong"], fontsize=TICK_SIZE)
    ax.xaxis.set_ticks_position("top")
    ax.xaxis.set_label_position("top")
    ax.set_xlabel(second, fontsize=LABEL_SIZE, fontweight="bold", color=color_for(1))
    ax.set_ylabel(first, fontsize=LABEL_SIZE, fontweight="bold", color=color_for(0))
    ax.set_title("Paired outcomes per item", fontsize=LABEL_SIZE + 1, pad=10)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    note = (
        f"Paired outcomes on {total:,} items. McNemar's test compares\n"
        f"the shaded (discordant) cells: {only_first} vs {only_second}"
    )
    if p_value is not None and finite(p_value) is not None:
        note += f"  →  exact p = {format_p(p_value)}"
    ax.text(0.5, -0.04, note, transform=ax.transAxes, ha="center", va="top", fontsize=NOTE_SIZE + 1,
            color="0.15", linespacing=1.4, clip_on=False)  # fmt: skip


def _outcome_cell(ax: Any, corner: tuple[int, int], count: int, text: str, color: str | None) -> None:
    """One cell of the outcome table: the count, what it counts; shaded in a run's colour if discordant."""
    discordant = color is not None
    face, alpha = (color, 0.35) if discordant else ("white", 1.0)
    ax.add_patch(Rectangle(corner, 1, 1, facecolor=face, alpha=alpha, edgecolor="none", zorder=1))
    ax.add_patch(Rectangle(corner, 1, 1, facecolor="none", edgecolor="0.35", linewidth=1.2, zorder=2))
    x, y = corner[0] + 0.5, corner[1]
    ax.text(x, y + 0.62, f"{count:,}", ha="center", va="center", fontsize=22, fontweight="bold",
            color="black" if discordant else "0.3")  # fmt: skip
    ax.text(x, y + 0.25, text, ha="center", va="center", fontsize=NOTE_SIZE,
            color="0.15" if discordant else "0.4", linespacing=1.3)  # fmt: skip


# ------------------------------------------------------------------------------------------- lengths


def _length_bins(values: np.ndarray, limit: int | None, target: int) -> np.ndarray:
    """Shared integer bin edges, about `target` bins; with a limit, one bin starts exactly at it.

    Responses cut at the limit then form their own bar just right of the limit line.
    """
    lo, hi = float(values.min()), float(values.max())
    if limit is not None:
        hi = max(hi, float(limit))
    span = max(hi - lo, 1.0)
    width = None
    if limit is not None:  # a width that divides the limit, so the bins line up with both 0 and the limit
        ideal = span / target
        candidates = [w for w in range(max(1, math.floor(ideal * 0.7)), math.ceil(ideal * 1.4) + 1) if w > 0]
        divisors = [w for w in candidates if limit % w == 0]
        width = min(divisors, key=lambda w: abs(w - ideal)) if divisors else None
    if width is None:
        width = max(1, math.ceil(span / target))
    anchor = float(limit) if limit is not None else math.floor(lo)
    start = anchor - width * math.ceil((anchor - lo) / width)  # the last edge <= lo that is on the grid
    stop = max(hi, anchor) + width
    return np.arange(start, stop + width / 2, width)


def plot_lengths(
    lengths: Mapping[str, Any],
    out_png: str | Path,
    *,
    max_new_tokens: int | None = None,
    finished: Mapping[str, Any] | None = None,
    title: str | None = None,
) -> Path:
    """Overlaid histograms of response length (tokens) per run, their means and the truncation limit.

    lengths: run name -> the token count of each response (non-finite entries are ignored). A run with no
      responses is listed in the legend but draws nothing.
    max_new_tokens: the generation limit, drawn as a line. The responses at it form their own bar right of
      the line; when that bar dwarfs the rest of the histogram it is cut at the top of the axes and its
      height written on it.
    finished: run name -> whether each response ended on a stop token (samples.jsonl's `finished`), in
      the order of `lengths`. With it, the bar at the limit holds exactly the truncated responses and the
      legend gives their share, `metrics.truncation_rate` (the number metrics.json and summary.json
      report); a finished response as long as the limit is drawn in the bin left of the line. Without it,
      the bar holds the responses of the limit's length, and no share of truncated responses is claimed.
    """
    runs: dict[str, np.ndarray] = {}
    done: dict[str, np.ndarray] = {}  # finished flags of the runs that have them, aligned with `runs`
    for name, values in lengths.items():
        v = np.asarray(values, dtype=float).reshape(-1)
        keep = np.isfinite(v)
        runs[str(name)] = v[keep]
        if finished is not None and name in finished:
            flags = np.asarray(finished[name], dtype=bool).reshape(-1)
            if flags.size != v.size:
                raise ValueError(
                    f"plot_lengths: run {name!r} has {v.size} lengths but {flags.size} finished flags"
                )
            done[str(name)] = flags[keep]
    if not runs or not any(v.size for v in runs.values()):
        raise ValueError("plot_lengths: no response lengths to plot (no runs, or every run is empty)")
    limit = int(max_new_tokens) if max_new_tokens is not None else None
    edges, hists, at_limit = _length_histograms(runs, limit, done)
    cut, top = _length_top(hists, at_limit)

    fig, ax = panels(9, 5.6)
    handles, means = _length_stairs(ax, runs, hists, edges, limit, done)
    left, right = min(0.0, float(edges[0])), float(edges[-1] + 0.5 * (edges[1] - edges[0]))
    ax.set_xlim(left, right)
    ax.set_ylim(0, top)
    labels = _TopLabels(ax, left, right)
    if limit is not None:
        ax.axvline(limit, color=LIMIT_COLOR, linestyle="-", linewidth=2.0, zorder=5)
        limit_text = f"truncation limit (max_new_tokens = {limit:,})"
        handles.append(Line2D([], [], color=LIMIT_COLOR, linewidth=2.0, label=limit_text))
        labels.put("truncation limit", limit, LIMIT_COLOR, to_left=True)
        for i, name in enumerate(runs):  # a bar cut at the top: its height, in its run's colour
            if cut and name in hists and hists[name][at_limit] > top:
                if name in done:
                    text = f"{percent(truncation_rate(done[name]))} truncated ↑"
                else:
                    text = f"{hists[name][at_limit]:.0f}% at the limit ↑"
                labels.put(text, limit, color_for(i), to_left=True)
    for mean, color in sorted(means):  # flipped to the left of the line near the right edge
        labels.put(f"mean {mean:.0f}", mean, color, to_left=(mean - left) / (right - left) > 0.7)
    ax.set_xlabel("response length (tokens)", fontsize=LABEL_SIZE)
    ax.set_ylabel("share of the run's responses (%)", fontsize=LABEL_SIZE)
    ax.yaxis.set_major_locator(MaxNLocator(steps=[1, 2, 5, 10]))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}%"))
    style(ax)
    legend_below(fig, handles, 1)
    suptitle(fig, title or "Response length per run")
    return save(fig, out_png)


def _length_histograms(
    runs: Mapping[str, np.ndarray], limit: int | None, done: Mapping[str, np.ndarray]
) -> tuple[np.ndarray, dict[str, np.ndarray], int | None]:
    """(bin edges, % of each non-empty run's responses per bin, the index of the limit's bin or None).

    The limit's bar holds a run's truncated responses when its finished flags are in `done` (a finished
    response as long as the limit goes half a token left of it, into the bin before), else every response
    at or over the limit; percentages rather than counts, so runs of different sizes compare.
    """
    shown = {}
    for name, v in runs.items():
        if limit is None:
            shown[name] = v
        elif name in done:
            shown[name] = np.where(done[name], np.minimum(v, limit - 0.5), limit)
        else:
            shown[name] = np.minimum(v, limit)
    every = np.concatenate([v for v in shown.values() if v.size])
    target = int(np.clip(2.5 * math.sqrt(max(v.size for v in runs.values())), 12, 40))
    edges = _length_bins(every, limit, target)
    hists = {
        name: np.histogram(v, bins=edges, weights=np.full(v.size, 100.0 / v.size))[0]
        for name, v in shown.items()
        if v.size
    }
    at_limit = int(np.searchsorted(edges, limit)) if limit is not None and limit in edges else None
    return edges, hists, at_limit


def _length_top(hists: Mapping[str, np.ndarray], at_limit: int | None) -> tuple[bool, float]:
    """(whether the limit's bar is cut at the top, the top of the axes, with headroom for its labels).

    The bar of truncated responses is cut when it would squash the rest of the histogram.
    """
    body = max(
        float(np.delete(h, at_limit).max(initial=0.0)) if at_limit is not None else h.max()
        for h in hists.values()
    )
    peak = max(float(h.max()) for h in hists.values())
    cut = at_limit is not None and body > 0 and peak > 1.8 * body
    return cut, min(115.0, body * 1.45 if cut else max(peak, 1e-9) * 1.22)


def _length_stairs(
    ax: Any,
    runs: Mapping[str, np.ndarray],
    hists: Mapping[str, np.ndarray],
    edges: np.ndarray,
    limit: int | None,
    done: Mapping[str, np.ndarray],
) -> tuple[list[Any], list[tuple[float, str]]]:
    """Each run's histogram and mean line; returns the legend entries and (mean, colour) of each run."""
    handles: list[Any] = []
    means = []
    for i, (name, v) in enumerate(runs.items()):
        color = color_for(i)
        if not v.size:
            handles.append(Patch(facecolor="white", edgecolor=color, label=f"{name}: no responses"))
            continue
        ax.stairs(hists[name], edges, fill=True, color=color, alpha=0.25, zorder=2)
        ax.stairs(hists[name], edges, color=color, linewidth=1.8, zorder=3)
        mean = float(v.mean())
        ax.axvline(mean, color=color, linestyle="--", linewidth=1.8, zorder=4)
        means.append((mean, color))
        text = f"{name} (n = {v.size:,}): mean {mean:.0f}, median {np.median(v):.0f} tokens"
        if limit is not None and name in done:
            text += f", {percent(truncation_rate(done[name]))} truncated"
        handles.append(Patch(facecolor=color, alpha=0.5, edgecolor=color, label=text))
    handles.append(Line2D([], [], color="0.3", linestyle="--", linewidth=1.8, label="run mean"))
    return handles, means


class _TopLabels:
    """Labels along the top of an axes, each put in the highest row where it overlaps none placed before.

    Widths are estimated in data units from the label's length, so no drawing is needed to place them.
    """

    def __init__(self, ax: Any, left: float, right: float):
        self.ax = ax
        self.per_point = (right - left) / (ax.figure.get_figwidth() * 72 * 0.85)
        self.placed: list[tuple[float, float, int]] = []  # (x from, x to, row)

    def put(self, text: str, x: float, color: str, *, to_left: bool) -> None:
        w = (len(text) * 0.62 * NOTE_SIZE + 10) * self.per_point
        x0, x1 = (x - w, x) if to_left else (x, x + w)
        row = 0
        while any(r == row and x0 < b1 and b0 < x1 for b0, b1, r in self.placed):
            row += 1
        self.placed.append((x0, x1, row))
        box = {"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.8}
        offset = (-4 if to_left else 4, -4 - 14 * row)
        label(self.ax, text, (x, 1.0), offset, ha="right" if to_left else "left", va="top",
              xycoords=("data", "axes fraction"), fontsize=NOTE_SIZE, color=color, fontweight="bold",
              bbox=box)  # fmt: skip


# ----------------------------------------------------------------------------------- training curves


def plot_training_curves(
    curves: Mapping[str, Sequence[Mapping[str, Any]]],
    out_png: str | Path,
    *,
    reward_key: str = "reward/mean",
    eval_key: str = "eval/accuracy",
    smooth: float = 0.9,
    title: str | None = None,
    colors: Sequence[str] | None = None,
) -> Path:
    """Training reward (raw and EMA-smoothed) and held-out accuracy against step, per run.

    colors: one per run, to match the other figures when the runs here are not runs 0, 1, ... there (a
      trained run alone takes the second colour); default `color_for(index)`.

    curves: run name -> metrics rows (as `rlvr_jax.monitoring.metrics.read_metrics` returns them). Rows
      without a key, or with None/NaN for it, are skipped. The eval panel is left out when no run has
      `eval_key`, the reward panel when no run has `reward_key`.
    smooth: the EMA weight of the past (TensorBoard's "smoothing"); 0 draws the raw curve only.
    """
    if not 0 <= smooth < 1:
        raise ValueError(f"plot_training_curves: smooth must be in [0, 1); got {smooth}")
    curves = {str(name): rows for name, rows in curves.items()}
    reward = [series(rows, reward_key) for rows in curves.values()]
    evals = [series(rows, eval_key) for rows in curves.values()]
    shown = [p for p, runs in (("reward", reward), ("eval", evals)) if any(s.size for s, _ in runs)]
    if not shown:
        what = "no runs given" if not curves else f"no run has finite {reward_key!r} or {eval_key!r} values"
        raise ValueError(f"plot_training_curves: nothing to plot ({what})")
    names = list(curves)
    palette = list(colors) if colors is not None else [color_for(i) for i in range(len(names))]
    if len(palette) < len(names):
        raise ValueError(f"plot_training_curves: {len(palette)} colors for {len(names)} runs")

    heights = [{"reward": 3.0, "eval": 2.2}[p] for p in shown]
    fig, grid = panels(
        9, 1.4 + sum(heights), len(shown), 1, sharex=True, height_ratios=heights, squeeze=False
    )
    axes = dict(zip(shown, grid[:, 0], strict=True))
    if "reward" in axes:
        _reward_panel(axes["reward"], reward, palette, smooth, reward_key)
    if "eval" in axes:
        _eval_panel(axes["eval"], evals, palette, eval_key)
    _step_axis(axes[shown[-1]])
    handles = [Line2D([], [], color=palette[i], linewidth=2.4, label=name) for i, name in enumerate(names)]
    legend_below(fig, handles, min(len(handles), 5))
    suptitle(fig, title or "Training progress")
    return save(fig, out_png)


Series = tuple[np.ndarray, np.ndarray]  # (steps, values) of one run


def _reward_panel(ax: Any, reward: list[Series], palette: list[str], smooth: float, key: str) -> None:
    """Each run's reward per step: faint raw and a bold EMA-smoothed curve (raw only when smooth = 0)."""
    for (steps, values), color in zip(reward, palette, strict=False):
        if not steps.size:
            continue
        if smooth > 0 and steps.size > 1:
            ax.plot(steps, values, color=color, alpha=0.3, linewidth=1.0, zorder=2)
            ax.plot(steps, ema(values, smooth), color=color, linewidth=2.4, zorder=3)
        else:
            marker = "o" if steps.size == 1 else None
            ax.plot(steps, values, color=color, linewidth=2.0, marker=marker, zorder=3)
    note = f"faint: per step; bold: EMA-smoothed ({smooth:g})" if smooth > 0 else "per step"
    ax.set_title(f"Training reward ({key}) — {note}", fontsize=LABEL_SIZE, loc="left")
    ax.set_ylabel("mean reward", fontsize=LABEL_SIZE)
    style(ax, grid_axis="both")


def _eval_panel(ax: Any, evals: list[Series], palette: list[str], key: str) -> None:
    """Each run's held-out accuracy at the steps it was measured, the last value written beside it."""
    for (steps, values), color in zip(evals, palette, strict=False):
        if not steps.size:
            continue
        ax.plot(steps, values, color=color, linewidth=2.0, marker="o", markersize=5, zorder=3)
        label(ax, percent(values[-1]), (steps[-1], values[-1]), (6, 0), ha="left", va="center",
              fontsize=NOTE_SIZE + 1, color=color, fontweight="bold")  # fmt: skip
    lo = min(float(v.min()) for s, v in evals if s.size)
    hi = max(float(v.max()) for s, v in evals if s.size)
    pad = max(0.05, 0.15 * (hi - lo))
    ax.set_ylim(max(0.0, lo - pad), min(1.0, hi + pad) if hi + pad <= 1 else hi + pad)
    percent_axis(ax.yaxis)
    ax.set_title(f"Held-out accuracy ({key})", fontsize=LABEL_SIZE, loc="left")
    ax.set_ylabel("accuracy (%)", fontsize=LABEL_SIZE)
    style(ax, grid_axis="both")
    ax.margins(x=0.06)  # room for the last point's label


def _step_axis(ax: Any) -> None:
    """The shared x axis of whole training steps, under the last panel."""
    ax.set_xlabel("training step", fontsize=LABEL_SIZE)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 2.5, 5, 10]))
    x0, x1 = ax.get_xlim()
    if x1 - x0 < 4:  # one or two steps: widen so the axis shows whole steps, not 2.95, 3.00, ...
        mid = (x0 + x1) / 2
        ax.set_xlim(math.floor(mid - 2), math.ceil(mid + 2))


# ---------------------------------------------------------------------------------------------- levels


def plot_by_level(
    levels: Mapping[str, Mapping[str, Mapping[str, float]]],
    out_png: str | Path,
    *,
    title: str | None = None,
) -> Path:
    """Accuracy per difficulty level: one group of bars per level, one bar per run, 95% CI error bars.

    levels: run name -> level name -> {"value", "low", "high", "n"}. Levels are sorted naturally
      ("Level 2" before "Level 10"); a level a run lacks (or with a non-finite value) has no bar there.
    """
    runs = {str(name): {str(k): v for k, v in per_level.items()} for name, per_level in levels.items()}
    level_names = sorted({lv for per_level in runs.values() for lv in per_level}, key=_natural_key)
    if not runs or not level_names:
        raise ValueError("plot_by_level: no levels to plot (no runs, or every run has no levels)")

    fig, ax = panels(max(7.0, 1.1 + len(level_names) * (0.55 * len(runs) + 0.6)), 5.2)
    top = _level_bars(ax, list(runs.values()), level_names)
    ax.set_xticks(np.arange(len(level_names)), [_level_tick(runs, lv) for lv in level_names])
    ax.set_ylim(0, max(1.0, top + 0.08))
    ax.set_yticks(np.linspace(0, 1, 6))
    percent_axis(ax.yaxis)
    ax.set_ylabel("accuracy (%)", fontsize=LABEL_SIZE)
    ax.set_xlabel("difficulty level", fontsize=LABEL_SIZE)
    style(ax)
    handles = [Patch(facecolor=color_for(i), label=name) for i, name in enumerate(runs)]
    handles.append(Line2D([], [], color="black", linewidth=1.1, marker="_", markersize=8, label="95% CI"))
    legend_above(ax, handles, min(len(handles), 6))
    suptitle(fig, title or "Accuracy by difficulty level")
    return save(fig, out_png)


def _level_bars(ax: Any, runs: list[Mapping[str, Mapping[str, float]]], level_names: list[str]) -> float:
    """The bars of each run side by side in each level's group, with CIs and values; returns the top CI."""
    width = 0.8 / len(runs)
    text_size = NOTE_SIZE if len(runs) * len(level_names) <= 16 else NOTE_SIZE - 1.5
    top = 0.0
    for i, per_level in enumerate(runs):
        offset = (i - (len(runs) - 1) / 2) * width
        for j, level in enumerate(level_names):
            bar = _ci_bar(ax, j + offset, per_level.get(level, {}), color_for(i), width * 0.92,
                          elinewidth=1.1, capsize=3)  # fmt: skip
            if bar is not None:
                top = max(top, bar[1])
                label(ax, f"{100 * bar[0]:.0f}%", (j + offset, bar[1]), (0, 2), fontsize=text_size)
    return top


def _level_tick(runs: Mapping[str, Mapping[str, Mapping[str, float]]], level: str) -> str:
    """The level's tick label with its number of items (one per run where the runs differ)."""
    ns = [finite(per_level.get(level, {}).get("n")) for per_level in runs.values()]
    ns = [int(n) for n in ns if n is not None]
    if not ns:
        return level
    if len(set(ns)) == 1:
        return f"{level}\n(n = {ns[0]:,})"
    return f"{level}\n(n = {' / '.join(f'{n:,}' for n in ns)})"


# ------------------------------------------------------------------------------------ before / after


def plot_before_after(
    rows: Sequence[Mapping[str, Any]], out_png: str | Path, *, title: str | None = None
) -> Path:
    """Several experiments at a glance: held-out accuracy before and after, each with its 95% CI.

    rows: one per experiment, {"label", "before": {"value", "low", "high"}, "after": {...}, optional
    "p_value", "test" (e.g. "McNemar"), "n"}. Each row is a grey point (before) joined to a blue point
    (after) with their intervals, and the change with its p-value on the right: significant changes
    (p < 0.05) in bold. For a results page where one figure should answer "what did training do".
    """
    if not rows:
        raise ValueError("no experiments to plot")
    fig, ax = panels(10, 1.0 + 0.8 * len(rows))
    for y, row in zip(np.arange(len(rows))[::-1], rows, strict=True):
        _before_after_row(ax, y, row)
    ax.set_yticks([])
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_xlim(0, 1)
    percent_axis(ax.xaxis)
    ax.set_xlabel("held-out accuracy (95% CI)", fontsize=LABEL_SIZE)
    style(ax, grid_axis="x")
    ax.spines["left"].set_visible(False)
    handles = [
        Line2D([], [], color=color_for(0), marker="o", linestyle="none", label="before training"),
        Line2D([], [], color=color_for(1), marker="o", linestyle="none", label="after training"),
    ]
    legend_above(ax, handles, 2)
    suptitle(fig, title or "Held-out accuracy before and after training")
    return save(fig, out_png)


def _before_after_row(ax: Any, y: float, row: Mapping[str, Any]) -> None:
    """One experiment: its label, before and after with their CIs joined by an arrow, and the change."""
    points = []
    for key, color, dy in (("before", color_for(0), 0.12), ("after", color_for(1), -0.12)):
        value, low, high = _ci(row.get(key, {}))
        if value is None:
            raise ValueError(f"{row.get('label')!r}: no {key} accuracy")
        below, above = _error(value, low, high)
        ax.errorbar(value, y + dy, xerr=[[below], [above]], fmt="o", color=color, ecolor=color,
                    elinewidth=1.6, capsize=3, markersize=7, zorder=3)  # fmt: skip
        points.append(value)
    ax.annotate("", xy=(points[1], y), xytext=(points[0], y), zorder=2,
                arrowprops={"arrowstyle": "->", "color": "black", "lw": 1.2})  # fmt: skip
    change = f"{100 * (points[1] - points[0]):+.1f} pts"
    p = finite(row.get("p_value"))
    if p is not None:
        change += f"\np = {format_p(p)}" + (f" ({row['test']})" if row.get("test") else "")
    label(ax, change, (1.0, y), (8, 0), ha="left", va="center", xycoords=("axes fraction", "data"),
          fontsize=NOTE_SIZE + 1, fontweight="bold" if p is not None and p < 0.05 else "normal")  # fmt: skip
    n = _n_text(row.get("n"))
    name = wrap(row.get("label", ""), 40) + (f"\n{n}" if n else "")
    ax.text(-0.01, y, name, transform=ax.get_yaxis_transform(), ha="right", va="center", fontsize=TICK_SIZE)
