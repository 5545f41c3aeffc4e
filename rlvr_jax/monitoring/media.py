"""Evaluation samples and figures for the dashboards: which samples a table shows, the table as markdown for
TensorBoard's text tab, and a PNG as pixels for its image tab.

Numbers say how a run is going; a few completions with their reward and the reward's reason say why (a
format the model never learns, answers cut off at the token budget, a reward being gamed), so every
held-out evaluation also shows a handful of its samples next to the curves, and the before / after figures
of WORKDIR/eval/compare appear beside them. `MetricsWriter.write_samples` / `write_figures` send them to
TensorBoard and W&B; metrics.jsonl and Prometheus take numbers only and skip them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

SAMPLE_COLUMNS = ("prompt", "completion", "reward", "reason")
MAX_CHARS = 2000  # per cell: a dashboard table row stays readable; samples.jsonl keeps the whole text


def sample_table(
    rows: Sequence[Mapping[str, Any]], limit: int, columns: Sequence[str] = SAMPLE_COLUMNS
) -> list[list[Any]]:
    """The first `limit` items' first samples (`sample_index` 0), as table rows of `columns`.

    The first items rather than a random pick: every evaluation of a run scores the same held-out items in
    the same order, so step after step the table shows the same prompts and how their answers change.
    Missing fields are empty strings, long texts are clipped, rewards stay numbers."""
    chosen = [r for r in rows if r.get("sample_index", 0) == 0][: max(limit, 0)]
    return [[_cell(row.get(column, "")) for column in columns] for row in chosen]


def _cell(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        text = str(value)
        return text if len(text) <= MAX_CHARS else text[: MAX_CHARS - 3] + "..."
    return value


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table that TensorBoard's text tab renders: pipes escaped, line breaks as <br>, numbers
    with 4 significant digits."""

    def text(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        escaped = str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\r", "")
        return escaped.replace("\n", "<br>")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(text(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def png_pixels(path: str | Path) -> np.ndarray:
    """The image at `path` as uint8 RGB [height, width, 3] (what TensorBoard's add_image takes as HWC)."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def figure_tags(folder: str | Path, prefix: str) -> dict[str, Path]:
    """{"<prefix>/<name>": path} for the PNG files in `folder` (sorted; none when it does not exist)."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    return {f"{prefix}/{path.stem}": path for path in sorted(folder.glob("*.png"))}
