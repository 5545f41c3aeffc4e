"""An evaluation run on disk: `samples.jsonl` (every completion and its score) and `metrics.json`.

`scripts/evaluate.py` writes one; a training run writes one before and one after training under
`WORKDIR/eval/`; `scripts/compare.py` reads any two. A run is found from a path that is the evaluation
folder itself, its samples.jsonl, or a training workdir (whose `eval/after` is taken).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

SAMPLES = "samples.jsonl"
METRICS = "metrics.json"


@dataclasses.dataclass
class EvalRun:
    path: Path  # the folder holding samples.jsonl and metrics.json
    metrics: dict[str, Any]
    rows: list[dict[str, Any]]

    @property
    def name(self) -> str:
        """A short label: `workdir/after` for a training run's evaluation, else the folder name."""
        if self.path.parent.name == "eval" and (self.path.parent.parent / "metrics.jsonl").exists():
            return f"{self.path.parent.parent.name}/{self.path.name}"
        return self.path.name

    def training_metrics(self) -> Path | None:
        """The metrics.jsonl of the training run this evaluation belongs to, if any (for reward curves)."""
        for folder in (self.path, self.path.parent, self.path.parent.parent):
            if (folder / "metrics.jsonl").is_file():
                return folder / "metrics.jsonl"
        source = self.metrics.get("training_metrics")
        return Path(source) if source and Path(source).is_file() else None


def write_run(out: str | os.PathLike, rows: Sequence[Mapping[str, Any]], metrics: Mapping[str, Any]) -> Path:
    """Writes samples.jsonl and metrics.json into `out` (created); files appear whole or not at all."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / SAMPLES, "".join(json.dumps(dict(r), ensure_ascii=False) + "\n" for r in rows))
    _atomic_write(out / METRICS, json.dumps(dict(metrics), indent=2) + "\n")
    return out


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def resolve_run_dir(path: str | os.PathLike) -> Path:
    """The evaluation folder meant by `path`; a FileNotFoundError that says what was looked for."""
    path = Path(path).expanduser()
    if path.is_file() and path.name == SAMPLES:
        return path.parent
    candidates = [path, path / "eval" / "after"]
    for folder in candidates:
        if (folder / SAMPLES).is_file():
            return folder
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    raise FileNotFoundError(
        f"no {SAMPLES} in {path} (nor in {path / 'eval' / 'after'}): pass the --out folder of "
        "scripts/evaluate.py, or a training workdir that finished its final evaluation"
    )


def load_run(path: str | os.PathLike) -> EvalRun:
    """Reads an evaluation run; rows must have id, reward and sample_index (what evaluate writes)."""
    folder = resolve_run_dir(path)
    rows = []
    with open(folder / SAMPLES, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{folder / SAMPLES}, line {number}: not valid JSON ({e.msg})") from None
            missing = [k for k in ("id", "reward") if k not in row]
            if missing:
                raise ValueError(f"{folder / SAMPLES}, line {number}: missing {', '.join(missing)}")
            row.setdefault("sample_index", 0)
            rows.append(row)
    if not rows:
        raise ValueError(f"{folder / SAMPLES} has no samples")
    metrics_file = folder / METRICS
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    return EvalRun(path=folder, metrics=metrics, rows=rows)
