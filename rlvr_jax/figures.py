"""The look of the figures rlvr_jax writes, and the steps each of them takes: one style, one layout, one save.

The evaluation report's figures (`rlvr_jax.evaluation.plots`) are read side by side, so they share here
their run colours and font sizes, how a figure and its panels are laid out (`panels`), how an axes looks
(`style`), labels placed in points off a data point (`label`), legends above an axes or below a figure,
the bold title (`suptitle`) and how a figure is saved (`save`: parent folders created, white background).
The training reward plot (`rlvr_jax.monitoring.metrics.plot_rewards`) shares the layout, the reading of
a metric's series from metrics rows (`series`), the smoothing of a curve (`ema`, with `ema_stderr` for
its band) and the saving.

Everything uses the matplotlib object API (`Figure`, `fig.savefig`), never pyplot, so it touches no global
backend state and is safe in a headless process or a thread.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

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

TITLE_SIZE = 14
LABEL_SIZE = 11
TICK_SIZE = 10
NOTE_SIZE = 9


def color_for(index: int) -> str:
    """The colour of run `index` (its position in the runs given); the same in every figure."""
    return RUN_COLORS[index % len(RUN_COLORS)]


# --------------------------------------------------------------------------------------------- values


def finite(x: Any) -> float | None:
    """`x` as a float when it is a finite real number (not None, NaN, a bool or a string), else None."""
    if isinstance(x, bool) or not isinstance(x, int | float | np.integer | np.floating):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def series(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of `key` over the metrics rows with a finite step and a finite value, by step.

    Rows without the key, or with None / NaN for it (a metric not measured that step, e.g. an eval every
    N steps), are skipped, so a sparse metric is drawn only where it was measured.
    """
    pts = []
    for row in rows:
        step, value = finite(row.get("step")), finite(row.get(key))
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


def ema_stderr(stderr: Sequence[float] | np.ndarray, smooth: float) -> np.ndarray:
    """The standard error of each point of `ema(values, smooth)` when each value is an independent
    estimate with standard error `stderr[t]`: the EMA is a weighted sum, so its variance is the sum of the
    squared weights times the variances. A NaN standard error gives NaN from there on."""
    if not 0 <= smooth < 1:
        raise ValueError(f"smooth must be in [0, 1); got {smooth}")
    out = np.empty(len(stderr))
    acc = 0.0
    for t, se in enumerate(stderr, start=1):
        acc = smooth**2 * acc + (1 - smooth) ** 2 * float(se) ** 2
        out[t - 1] = math.sqrt(acc) / (1 - smooth**t)
    return out


def percent(x: float) -> str:
    """A fraction as a percentage with one decimal: 0.385 -> "38.5%"."""
    return f"{100 * x:.1f}%"


def format_p(p: float) -> str:
    """A p-value short enough for a label, keeping the exponent of a tiny one."""
    if p < 1e-4:
        return f"{p:.1e}"
    return f"{p:.2g}" if p < 0.1 else f"{p:.2f}"


def wrap(text: str, width: int) -> str:
    """`text` broken into lines of at most about `width` characters (long run names in tick labels)."""
    return "\n".join(textwrap.wrap(text, width, break_long_words=False)) or text


# --------------------------------------------------------------------------------------------- layout


def panels(width: float, height: float, rows: int = 1, cols: int = 1, **subplots: Any) -> tuple[Figure, Any]:
    """A figure of `width` x `height` inches and its grid of panels (`Figure.subplots` arguments).

    Constrained layout, so titles, tick labels and legends placed "outside" never overlap a panel.
    """
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(rows, cols, **subplots)


def style(ax: Any, *, grid_axis: str = "y") -> None:
    """The house look of an axes: no top or right spine, a faint grid behind the data."""
    ax.spines[["top", "right"]].set_visible(False)
    ax.tick_params(labelsize=TICK_SIZE)
    ax.grid(axis=grid_axis, alpha=0.3)
    ax.set_axisbelow(True)


def percent_axis(axis: Any) -> None:
    """Ticks of an axis holding fractions in [0, 1] written as whole percentages."""
    axis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))


def label(
    ax: Any,
    text: str,
    xy: tuple[float, float],
    offset: tuple[float, float] = (0, 0),
    *,
    ha: str = "center",
    va: str = "bottom",
    **text_kw: Any,
) -> None:
    """`text` `offset` points away from the point `xy`: stays the same distance off it at any scale."""
    ax.annotate(text, xy, xytext=offset, textcoords="offset points", ha=ha, va=va, **text_kw)


def legend_above(ax: Any, handles: Sequence[Any], ncol: int) -> None:
    """One row of legend just above the axes, under the figure's title: never on top of the data."""
    ax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=ncol,
              fontsize=TICK_SIZE, frameon=False)  # fmt: skip


def legend_below(fig: Figure, handles: Sequence[Any], ncol: int) -> None:
    """The legend under every panel of the figure, for entries too long to fit above one."""
    fig.legend(handles=handles, loc="outside lower center", ncol=ncol, fontsize=TICK_SIZE, frameon=False)


def suptitle(fig: Figure, text: str) -> None:
    """The figure's bold title, each line wrapped to the figure's width."""
    per_line = max(20, int(fig.get_figwidth() * 72 / (TITLE_SIZE * 0.68)))
    lines = [wrap(line, per_line) for line in text.split("\n")]
    fig.suptitle("\n".join(lines), fontsize=TITLE_SIZE, fontweight="bold")


def save(fig: Figure, out_png: str | Path, *, dpi: int = DPI) -> Path:
    """Writes the figure as a PNG on white, creating missing parent folders; returns the path."""
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, facecolor="white")
    return out
