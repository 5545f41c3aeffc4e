"""Figures of an evaluation report that compares model runs (e.g. a base model vs. the same model after RL).

Each figure answers "did training help, and is the difference real":
- `plot_accuracy`: accuracy per run with 95% confidence intervals and, for two paired runs, the 2x2 table
  of per-problem outcomes whose discordant cells McNemar's test uses.
- `plot_lengths`: response-length histograms, run means and the share of responses cut at the limit.
- `plot_training_curves`: training reward (raw and EMA-smoothed) and held-out accuracy against step.
- `plot_by_level`: accuracy per difficulty level (e.g. MATH levels 1-5) with confidence intervals.
- `plot_before_after`: several experiments, before vs after with CIs and p-values, in one figure.

All of them use the matplotlib object API (`Figure`, `fig.savefig`), never pyplot, so they touch no global
backend state and are safe in a headless process. Run i has the colour `color_for(i)` in every figure
(run 0, usually the baseline, is grey). Every function returns the path it wrote, creates its parent
directories and raises ValueError when given nothing to plot.
"""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import FuncFormatter, MaxNLocator, PercentFormatter

# Run 0 (the baseline) grey, run 1 (the trained model) blue, then the rest of the tab10 palette.
RUN_COLORS: tuple[str, ...] = (
    "tab:gray",
    "tab:blue",
    "tab:orange",
    "tab:green",
    "tab:purple",
    "tab:red",
    "tab:brown",
    "tab:pink",
    "tab:olive",
    "tab:cyan",
)
DPI = 130
LIMIT_COLOR = "tab:red"  # the truncation limit in `plot_lengths`

TITLE_SIZE = 14
LABEL_SIZE = 11
TICK_SIZE = 10
NOTE_SIZE = 9


def color_for(index: int) -> str:
    """The colour of run `index` (its position in the runs given); the same in every figure."""
    return RUN_COLORS[index % len(RUN_COLORS)]


# ------------------------------------------------------------------------------------------- helpers


def _finite(x: Any) -> float | None:
    """`x` as a float when it is a finite real number (not None, NaN, a bool or a string), else None."""
    if isinstance(x, bool) or not isinstance(x, int | float | np.integer | np.floating):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _format_p(p: float) -> str:
    if p < 1e-4:
        return f"{p:.1e}"
    return f"{p:.2g}" if p < 0.1 else f"{p:.2f}"


def _wrap(text: str, width: int) -> str:
    """`text` broken into lines of at most about `width` characters (long run names in tick labels)."""
    return "\n".join(textwrap.wrap(text, width, break_long_words=False)) or text


def _natural_key(name: str) -> list[Any]:
    """Sort key that orders "Level 2" before "Level 10"."""
    return [(0, int(part)) if part.isdigit() else (1, part.lower()) for part in re.split(r"(\d+)", name)]


def _style(ax: Any, *, grid_axis: str = "y") -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.tick_params(labelsize=TICK_SIZE)
    ax.grid(axis=grid_axis, alpha=0.3)
    ax.set_axisbelow(True)


def _title(fig: Figure, text: str) -> None:
    """The figure's bold title, each line wrapped to the figure's width."""
    per_line = max(20, int(fig.get_figwidth() * 72 / (TITLE_SIZE * 0.68)))
    lines = [_wrap(line, per_line) for line in text.split("\n")]
    fig.suptitle("\n".join(lines), fontsize=TITLE_SIZE, fontweight="bold")


def _save(fig: Figure, out_png: str | Path) -> Path:
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI, facecolor="white")
    return out


def _ci(stats: Mapping[str, Any]) -> tuple[float | None, float | None, float | None]:
    """(value, low, high) of a {"value", "low", "high"} mapping; a missing or non-finite bound is None."""
    value = _finite(stats.get("value"))
    low, high = _finite(stats.get("low")), _finite(stats.get("high"))
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
    n = _finite(n)
    return None if n is None else f"n = {int(n):,}"


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
    if outcomes is not None:
        outcomes = tuple(int(x) for x in outcomes)  # type: ignore[assignment]
        if len(outcomes) != 4 or min(outcomes) < 0:
            raise ValueError(
                "plot_accuracy: outcomes must be 4 non-negative counts "
                f"(both pass, only first, only second, neither); got {outcomes}"
            )

    width = max(4.8, 1.5 * len(runs) + 2.2)
    fig = Figure(figsize=(width + (5.6 if outcomes else 0.0), 5.0), layout="constrained")
    if outcomes:
        ax, grid_ax = fig.subplots(1, 2, width_ratios=(width, 5.6))
    else:
        ax, grid_ax = fig.subplots(1, 1), None

    # --- left: one bar per run with its CI
    x = np.arange(len(runs))
    for i, run in enumerate(runs):
        value, low, high = _ci(run)
        color = color_for(i)
        if value is None:
            ax.text(i, 0.02, "n/a", ha="center", va="bottom", fontsize=LABEL_SIZE, color="0.4")
            continue
        below, above = _error(value, low, high)
        ax.bar(i, value, width=0.6, color=color, edgecolor="none", zorder=2)
        if below or above:
            ax.errorbar(
                i,
                value,
                yerr=[[below], [above]],
                fmt="none",
                ecolor="black",
                elinewidth=1.4,
                capsize=7,
                capthick=1.4,
                zorder=3,
            )
        top = value + above
        ci = f"95% CI [{100 * low:.1f}, {100 * high:.1f}]" if low is not None and high is not None else ""
        ax.annotate(
            _pct(value),
            (i, top),
            xytext=(0, 16 if ci else 4),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=LABEL_SIZE + 1,
            fontweight="bold",
        )
        if ci:
            ax.annotate(
                ci,
                (i, top),
                xytext=(0, 4),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=NOTE_SIZE,
                color="0.25",
            )
    labels = [
        _wrap(name, 22) + ("" if _n_text(r.get("n")) is None else f"\n({_n_text(r.get('n'))})")
        for name, r in zip(names, runs, strict=True)
    ]
    ax.set_xticks(x, labels)
    pad = 0.6 if len(runs) > 1 else 1.0
    ax.set_xlim(-pad, len(runs) - 1 + pad)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
    ax.set_ylabel(f"{metric} (%)", fontsize=LABEL_SIZE)
    ax.set_title(f"{metric[:1].upper()}{metric[1:]} per run (error bars: 95% CI)", fontsize=LABEL_SIZE + 1)
    _style(ax)

    # --- the difference between the first two runs, as a bracket over their bars
    values = [_ci(r)[0] for r in runs]
    top = 1.13  # headroom for the labels above a bar near 100%
    if len(runs) >= 2 and values[0] is not None and values[1] is not None:
        highs = [_ci(r)[2] if _ci(r)[2] is not None else _ci(r)[0] for r in runs[:2]]
        y = max(highs) + 0.17  # above both bars' value labels
        ax.plot([0, 0, 1, 1], [y - 0.025, y, y, y - 0.025], color="0.2", linewidth=1.2, clip_on=False)
        text = f"{100 * (values[1] - values[0]):+.1f} pts"
        if p_value is not None and _finite(p_value) is not None:
            text += f"   (McNemar p = {_format_p(p_value)})"
        ax.annotate(
            text,
            (0.5, y),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=LABEL_SIZE,
            fontweight="bold",
            color="0.15",
        )
        top = max(top, y + 0.09)
    ax.set_ylim(0, top)

    # --- right: the 2x2 table of paired outcomes
    if grid_ax is not None and outcomes is not None:
        _outcome_grid(grid_ax, outcomes, names, p_value)

    head = title or (f"{metric[:1].upper()}{metric[1:]}: " + " vs ".join(names))
    if p_value is not None and _finite(p_value) is not None and not outcomes:
        head += f"\n(McNemar exact p = {_format_p(p_value)})"
    _title(fig, head)
    return _save(fig, out_png)


def _outcome_grid(ax: Any, outcomes: tuple[int, ...], names: list[str], p_value: float | None) -> None:
    both, only_first, only_second, neither = outcomes
    total = sum(outcomes)
    first, second = names[0], (names[1] if len(names) > 1 else "second run")
    # cell (row, col): rows = first run correct / wrong, cols = second run correct / wrong
    cells = {
        (0, 0): (both, "both correct", None),
        (0, 1): (only_first, _wrap(f"only {first}", 26) + "\ncorrect", color_for(0)),
        (1, 0): (only_second, _wrap(f"only {second}", 26) + "\ncorrect", color_for(1)),
        (1, 1): (neither, "both wrong", None),
    }
    for (row, col), (count, label, color) in cells.items():
        y = 1 - row  # row 0 at the top
        discordant = color is not None
        face = color if discordant else "white"
        ax.add_patch(
            Rectangle(
                (col, y), 1, 1, facecolor=face, alpha=0.35 if discordant else 1.0, edgecolor="none", zorder=1
            )
        )
        ax.add_patch(Rectangle((col, y), 1, 1, facecolor="none", edgecolor="0.35", linewidth=1.2, zorder=2))
        share = f"{100 * count / total:.0f}% of pairs" if total else ""
        ax.text(
            col + 0.5,
            y + 0.62,
            f"{count:,}",
            ha="center",
            va="center",
            fontsize=22,
            fontweight="bold",
            color="black" if discordant else "0.3",
        )
        ax.text(
            col + 0.5,
            y + 0.25,
            f"{label}\n{share}",
            ha="center",
            va="center",
            fontsize=NOTE_SIZE,
            color="0.15" if discordant else "0.4",
            linespacing=1.3,
        )
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
    if p_value is not None and _finite(p_value) is not None:
        note += f"  →  exact p = {_format_p(p_value)}"
    ax.text(
        0.5,
        -0.04,
        note,
        transform=ax.transAxes,
        ha="center",
        va="top",
        fontsize=NOTE_SIZE + 1,
        color="0.15",
        linespacing=1.4,
        clip_on=False,
    )


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
    title: str | None = None,
) -> Path:
    """Overlaid histograms of response length (tokens) per run, their means and the truncation limit.

    lengths: run name -> the token count of each response (non-finite entries are ignored). A run with no
      responses is listed in the legend but draws nothing.
    max_new_tokens: the generation limit: drawn as a line, with each run's share of responses that hit it
      (length >= the limit) in the legend. Those responses form their own bar right of the line; when that
      bar dwarfs the rest of the histogram it is cut at the top of the axes and its height written on it.
    """
    runs = {str(name): np.asarray(values, dtype=float).reshape(-1) for name, values in lengths.items()}
    runs = {name: v[np.isfinite(v)] for name, v in runs.items()}
    if not runs or not any(v.size for v in runs.values()):
        raise ValueError("plot_lengths: no response lengths to plot (no runs, or every run is empty)")
    limit = int(max_new_tokens) if max_new_tokens is not None else None
    # what the histogram shows: a response at or over the limit is in the limit's bar (as the legend counts)
    shown = {name: np.minimum(v, limit) if limit is not None else v for name, v in runs.items()}
    every = np.concatenate([v for v in shown.values() if v.size])
    target = int(np.clip(2.5 * math.sqrt(max(v.size for v in runs.values())), 12, 40))
    edges = _length_bins(every, limit, target)
    width = float(edges[1] - edges[0])
    # % of each run's responses per bin, so runs of different sizes compare
    hists = {
        name: np.histogram(v, bins=edges, weights=np.full(v.size, 100.0 / v.size))[0]
        for name, v in shown.items()
        if v.size
    }
    at_limit = int(np.searchsorted(edges, limit)) if limit is not None and limit in edges else None
    body = max(
        float(np.delete(h, at_limit).max(initial=0.0)) if at_limit is not None else h.max()
        for h in hists.values()
    )
    peak = max(float(h.max()) for h in hists.values())
    cut = at_limit is not None and body > 0 and peak > 1.8 * body  # the truncated bar would squash the rest
    top = min(115.0, body * 1.45 if cut else max(peak, 1e-9) * 1.22)  # headroom for the labels at the top

    fig = Figure(figsize=(9, 5.6), layout="constrained")
    ax = fig.subplots()
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
        label = f"{name} (n = {v.size:,}): mean {mean:.0f}, median {np.median(v):.0f} tokens"
        if limit is not None:
            label += f", {100 * np.mean(v >= limit):.0f}% hit the limit"
        handles.append(Patch(facecolor=color, alpha=0.5, edgecolor=color, label=label))
    handles.append(Line2D([], [], color="0.3", linestyle="--", linewidth=1.8, label="run mean"))

    left = 0.0 if edges[0] >= 0 else float(edges[0])
    right = float(edges[-1]) + 0.5 * width
    ax.set_xlim(left, right)
    ax.set_ylim(0, top)
    if limit is not None:
        ax.axvline(limit, color=LIMIT_COLOR, linestyle="-", linewidth=2.0, zorder=5)
        handles.append(
            Line2D(
                [],
                [],
                color=LIMIT_COLOR,
                linewidth=2.0,
                label=f"truncation limit (max_new_tokens = {limit:,})",
            )
        )
    # Labels along the top of the axes (the limit's, the cut-off bars' heights, the means), each put in the
    # highest row where it does not overlap one already placed. Widths are estimated in data units.
    per_point = (right - left) / (fig.get_figwidth() * 72 * 0.85)
    placed: list[tuple[float, float, int]] = []  # (x from, x to, row)

    def put(text: str, x: float, color: str, *, to_left: bool) -> None:
        w = (len(text) * 0.62 * NOTE_SIZE + 10) * per_point
        x0, x1 = (x - w, x) if to_left else (x, x + w)
        row = 0
        while any(r == row and x0 < b1 and b0 < x1 for b0, b1, r in placed):
            row += 1
        placed.append((x0, x1, row))
        ax.annotate(
            text,
            (x, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(-4 if to_left else 4, -4 - 14 * row),
            textcoords="offset points",
            ha="right" if to_left else "left",
            va="top",
            fontsize=NOTE_SIZE,
            color=color,
            fontweight="bold",
            bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.8},
        )

    if limit is not None:
        put("truncation limit", limit, LIMIT_COLOR, to_left=True)
        for i, name in enumerate(runs):  # a bar cut at the top: its height, in its run's colour
            if cut and name in hists and hists[name][at_limit] > top:
                put(f"{hists[name][at_limit]:.0f}% hit it ↑", limit, color_for(i), to_left=True)
    for mean, color in sorted(means):  # flipped to the left of the line near the right edge
        put(f"mean {mean:.0f}", mean, color, to_left=(mean - left) / (right - left) > 0.7)
    ax.set_xlabel("response length (tokens)", fontsize=LABEL_SIZE)
    ax.set_ylabel("share of the run's responses (%)", fontsize=LABEL_SIZE)
    ax.yaxis.set_major_locator(MaxNLocator(steps=[1, 2, 5, 10]))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}%"))
    _style(ax)
    fig.legend(handles=handles, loc="outside lower center", ncol=1, fontsize=TICK_SIZE, frameon=False)
    _title(fig, title or "Response length per run")
    return _save(fig, out_png)


# ----------------------------------------------------------------------------------- training curves


def _series(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of `key` over the rows that have a finite step and a finite value, sorted by step."""
    pts = []
    for row in rows:
        step, value = _finite(row.get("step")), _finite(row.get(key))
        if step is not None and value is not None:
            pts.append((step, value))
    pts.sort(key=lambda p: p[0])
    return np.array([p[0] for p in pts], dtype=float), np.array([p[1] for p in pts], dtype=float)


def ema(values: Sequence[float] | np.ndarray, smooth: float) -> np.ndarray:
    """Debiased exponential moving average (as TensorBoard's smoothing): the first points are not pulled
    towards 0. smooth = 0 returns the values unchanged; values are assumed finite."""
    if not 0 <= smooth < 1:
        raise ValueError(f"smooth must be in [0, 1); got {smooth}")
    out = np.empty(len(values))
    acc = 0.0
    for t, x in enumerate(values, start=1):
        acc = smooth * acc + (1 - smooth) * float(x)
        out[t - 1] = acc / (1 - smooth**t)
    return out


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
    reward = {str(name): _series(rows, reward_key) for name, rows in curves.items()}
    evals = {str(name): _series(rows, eval_key) for name, rows in curves.items()}
    has_reward = any(s.size for s, _ in reward.values())
    has_eval = any(s.size for s, _ in evals.values())
    if not has_reward and not has_eval:
        what = "no runs given" if not curves else f"no run has finite {reward_key!r} or {eval_key!r} values"
        raise ValueError(f"plot_training_curves: nothing to plot ({what})")

    panels = [p for p, present in (("reward", has_reward), ("eval", has_eval)) if present]
    heights = {"reward": 3.0, "eval": 2.2}
    fig = Figure(figsize=(9, 1.4 + sum(heights[p] for p in panels)), layout="constrained")
    axes = fig.subplots(
        len(panels), 1, sharex=True, height_ratios=[heights[p] for p in panels], squeeze=False
    )
    axes = dict(zip(panels, axes[:, 0], strict=True))
    names = list(reward)
    palette = list(colors) if colors is not None else [color_for(i) for i in range(len(names))]
    if len(palette) < len(names):
        raise ValueError(f"plot_training_curves: {len(palette)} colors for {len(names)} runs")
    handles = [Line2D([], [], color=palette[i], linewidth=2.4, label=name) for i, name in enumerate(names)]

    if "reward" in axes:
        ax = axes["reward"]
        for i, name in enumerate(names):
            steps, values = reward[name]
            if not steps.size:
                continue
            color = palette[i]
            if smooth > 0 and steps.size > 1:
                ax.plot(steps, values, color=color, alpha=0.3, linewidth=1.0, zorder=2)
                ax.plot(steps, ema(values, smooth), color=color, linewidth=2.4, zorder=3)
            else:
                ax.plot(
                    steps,
                    values,
                    color=color,
                    linewidth=2.0,
                    marker="o" if steps.size == 1 else None,
                    zorder=3,
                )
        note = f"faint: per step; bold: EMA-smoothed ({smooth:g})" if smooth > 0 else "per step"
        ax.set_title(f"Training reward ({reward_key}) — {note}", fontsize=LABEL_SIZE, loc="left")
        ax.set_ylabel("mean reward", fontsize=LABEL_SIZE)
        _style(ax, grid_axis="both")

    if "eval" in axes:
        ax = axes["eval"]
        for i, name in enumerate(names):
            steps, values = evals[name]
            if not steps.size:
                continue
            color = palette[i]
            ax.plot(steps, values, color=color, linewidth=2.0, marker="o", markersize=5, zorder=3)
            ax.annotate(
                _pct(values[-1]),
                (steps[-1], values[-1]),
                xytext=(6, 0),
                textcoords="offset points",
                ha="left",
                va="center",
                fontsize=NOTE_SIZE + 1,
                color=color,
                fontweight="bold",
            )
        lo = min(float(v.min()) for s, v in evals.values() if s.size)
        hi = max(float(v.max()) for s, v in evals.values() if s.size)
        pad = max(0.05, 0.15 * (hi - lo))
        ax.set_ylim(max(0.0, lo - pad), min(1.0, hi + pad) if hi + pad <= 1 else hi + pad)
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
        ax.set_title(f"Held-out accuracy ({eval_key})", fontsize=LABEL_SIZE, loc="left")
        ax.set_ylabel("accuracy (%)", fontsize=LABEL_SIZE)
        _style(ax, grid_axis="both")
        ax.margins(x=0.06)  # room for the last point's label

    last = axes[panels[-1]]
    last.set_xlabel("training step", fontsize=LABEL_SIZE)
    last.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 2.5, 5, 10]))
    x0, x1 = last.get_xlim()
    if x1 - x0 < 4:  # one or two steps: widen so the axis shows whole steps, not 2.95, 3.00, ...
        mid = (x0 + x1) / 2
        last.set_xlim(math.floor(mid - 2), math.ceil(mid + 2))
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncol=min(len(handles), 5),
        fontsize=TICK_SIZE,
        frameon=False,
    )
    _title(fig, title or "Training progress")
    return _save(fig, out_png)


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

    n_runs = len(runs)
    group = 0.8
    width = group / n_runs
    fig = Figure(
        figsize=(max(7.0, 1.1 + len(level_names) * (0.55 * n_runs + 0.6)), 5.2), layout="constrained"
    )
    ax = fig.subplots()
    x = np.arange(len(level_names))
    label_size = NOTE_SIZE if n_runs * len(level_names) <= 16 else NOTE_SIZE - 1.5
    top = 0.0
    for i, per_level in enumerate(runs.values()):
        color = color_for(i)
        offset = (i - (n_runs - 1) / 2) * width
        for j, level in enumerate(level_names):
            value, low, high = _ci(per_level.get(level, {}))
            if value is None:
                continue
            below, above = _error(value, low, high)
            ax.bar(x[j] + offset, value, width=width * 0.92, color=color, edgecolor="none", zorder=2)
            if below or above:
                ax.errorbar(
                    x[j] + offset,
                    value,
                    yerr=[[below], [above]],
                    fmt="none",
                    ecolor="black",
                    elinewidth=1.1,
                    capsize=3,
                    zorder=3,
                )
            top = max(top, value + above)
            ax.annotate(
                f"{100 * value:.0f}%",
                (x[j] + offset, value + above),
                xytext=(0, 2),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=label_size,
            )

    def tick(level: str) -> str:
        ns = [_finite(per_level.get(level, {}).get("n")) for per_level in runs.values()]
        ns = [int(n) for n in ns if n is not None]
        if not ns:
            return level
        if len(set(ns)) == 1:
            return f"{level}\n(n = {ns[0]:,})"
        return f"{level}\n(n = {' / '.join(f'{n:,}' for n in ns)})"

    ax.set_xticks(x, [tick(lv) for lv in level_names])
    ax.set_ylim(0, max(1.0, top + 0.08))
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
    ax.set_ylabel("accuracy (%)", fontsize=LABEL_SIZE)
    ax.set_xlabel("difficulty level", fontsize=LABEL_SIZE)
    _style(ax)
    handles = [Patch(facecolor=color_for(i), label=name) for i, name in enumerate(runs)]
    handles.append(Line2D([], [], color="black", linewidth=1.1, marker="_", markersize=8, label="95% CI"))
    # one row just above the plot, under the title: never on top of a bar
    ax.legend(
        handles=handles,
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        ncol=min(len(handles), 6),
        fontsize=TICK_SIZE,
        frameon=False,
    )
    _title(fig, title or "Accuracy by difficulty level")
    return _save(fig, out_png)


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
    fig = Figure(figsize=(10, 1.0 + 0.8 * len(rows)), layout="constrained")
    ax = fig.add_subplot()
    y = np.arange(len(rows))[::-1]
    for yi, row in zip(y, rows, strict=True):
        points = []
        for key, color, dy in (("before", color_for(0), 0.12), ("after", color_for(1), -0.12)):
            value, low, high = _ci(row.get(key, {}))
            if value is None:
                raise ValueError(f"{row.get('label')!r}: no {key} accuracy")
            below, above = _error(value, low, high)
            ax.errorbar(value, yi + dy, xerr=[[below], [above]], fmt="o", color=color, ecolor=color,
                        elinewidth=1.6, capsize=3, markersize=7, zorder=3)  # fmt: skip
            points.append(value)
        ax.annotate("", xy=(points[1], yi), xytext=(points[0], yi), zorder=2,
                    arrowprops={"arrowstyle": "->", "color": "black", "lw": 1.2})  # fmt: skip
        change = f"{100 * (points[1] - points[0]):+.1f} pts"
        p = _finite(row.get("p_value"))
        if p is not None:
            change += f"\np = {_format_p(p)}" + (f" ({row['test']})" if row.get("test") else "")
        n = _n_text(row.get("n"))
        label = _wrap(row.get("label", ""), 40) + (f"\n{n}" if n else "")
        ax.annotate(change, (1.0, yi), xycoords=("axes fraction", "data"), xytext=(8, 0),
                    textcoords="offset points", va="center", fontsize=NOTE_SIZE + 1,
                    fontweight="bold" if p is not None and p < 0.05 else "normal")  # fmt: skip
        ax.text(-0.01, yi, label, transform=ax.get_yaxis_transform(), ha="right", va="center",
                fontsize=TICK_SIZE)  # fmt: skip
    ax.set_yticks([])
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
    ax.set_xlabel("held-out accuracy (95% CI)", fontsize=LABEL_SIZE)
    _style(ax, grid_axis="x")
    ax.spines["left"].set_visible(False)
    handles = [
        Line2D([], [], color=color_for(0), marker="o", linestyle="none", label="before training"),
        Line2D([], [], color=color_for(1), marker="o", linestyle="none", label="after training"),
    ]
    ax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False,
              fontsize=TICK_SIZE)  # fmt: skip
    _title(fig, title or "Held-out accuracy before and after training")
    return _save(fig, out_png)
