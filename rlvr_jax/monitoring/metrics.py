"""Training metrics: `metrics.jsonl`, TensorBoard, optional Weights & Biases, MFU, the reward plot.

`MetricsWriter.write(step, metrics)` sends one step's numbers to every sink. Why it looks like this:
- `metrics.jsonl` is the record of a run: one JSON object per line ({"step", "time", "run_id", ...}),
  appended and flushed per step, so a crash or SIGKILL loses at most the line being written (and the
  next open drops such a cut-off line). Non-finite
  values are written as `null` (strict JSON that jq, pandas and every JSON parser read; NaN is not JSON);
  `read_metrics` turns them back into NaN. TensorBoard and W&B get the real NaN / inf.
- Exactly once across a resume: a run killed after checkpoint k and resumed from it recomputes steps
  k+1.. . `MetricsWriter(..., resume_step=k)` first drops the lines with step > k (`truncate_after`) and
  opens TensorBoard with `purge_step=k+1`, so both hold every step once, as an uninterrupted run would
  (W&B ignores steps it has already seen).
- Only process 0 writes (`primary`), so a multi-host run produces one file, not one per host.
- Sinks are small objects with `write(step, row)` / `close()`: a Prometheus or structured-log sink is one
  more class passed in `extra_sinks`.

MFU: `step_flops(compiled)` reads XLA's cost analysis (`jax.jit(f).lower(...).compile().cost_analysis()`:
a dict in jax >= 0.4.30, a one-element list before). For a program partitioned over a mesh the count is per
device, which is what `mfu` divides by one device's peak. Peaks are dense bf16 tensor-core numbers, so a
float32 run reports a (truthfully) lower MFU; unknown devices (CPUs) give None.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import jax
import numpy as np

from rlvr_jax.monitoring.media import SAMPLE_COLUMNS, markdown_table, png_pixels, sample_table

JSONL = "metrics.jsonl"
RESERVED = ("step", "time", "run_id")
Number = int | float


# ----------------------------------------------------------------------------------------- flattening


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Number | None]:
    """Nested dicts -> {"a/b": number}; arrays of one element -> a number, longer ones -> "key/i".

    Device arrays are fetched in one `jax.device_get` (one transfer, not one per metric). Bools become 0/1,
    integers stay integers (token counts stay exact), None stays None (a metric not measured this step).
    """
    leaves: dict[str, Any] = {}

    def walk(value: Any, key: str) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(v, f"{key}/{k}" if key else str(k))
        else:
            leaves[key] = value

    walk(metrics, prefix)
    out: dict[str, Number | None] = {}

    def put(key: str, value: Any) -> None:
        if value is None:
            out[key] = None
        elif isinstance(value, int | np.integer | np.bool_):  # bool is an int: 0/1
            out[key] = int(value)
        elif isinstance(value, float | np.floating):
            out[key] = float(value)
        elif isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
            flat = value.reshape(-1)
            if flat.size == 1:
                put(key, flat[0])
            else:
                for i, x in enumerate(flat):
                    put(f"{key}/{i}", x)
        else:
            raise TypeError(f"metric {key!r} is a {type(value).__name__}; metrics must be numbers or arrays")

    for key, value in jax.device_get(leaves).items():
        put(key, value)
    return out


def _json_value(value: Number | None) -> Number | None:
    return None if isinstance(value, float) and not math.isfinite(value) else value


# -------------------------------------------------------------------------------------------- jsonl


def _valid_prefix(path: Path) -> int:
    """Length of the file up to its last newline: a line cut short by a crash is not part of the record."""
    if not path.exists():
        return 0
    data = path.read_bytes()
    return data.rfind(b"\n") + 1


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl (a directory means its metrics.jsonl); nulls come back as NaN."""
    path = Path(path)
    if path.is_dir():
        path = path / JSONL
    rows = []
    text = path.read_bytes()[: _valid_prefix(path)].decode()
    for line in text.splitlines():
        if line.strip():
            row = json.loads(line)
            rows.append({k: (math.nan if v is None else v) for k, v in row.items()})
    return rows


def truncate_after(path: str | Path, step: int) -> int:
    """Drops the lines of a metrics.jsonl with step > `step` (and a cut-off last line); returns how many.

    Written to a temporary file and renamed, so a crash here leaves either the old or the new file.
    """
    path = Path(path)
    if not path.exists():
        return 0
    data = path.read_bytes()
    lines = data[: _valid_prefix(path)].decode().splitlines(keepends=True)
    kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
    dropped = len([line for line in lines if line.strip()]) - len(kept)
    if dropped or len(data) != _valid_prefix(path):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(kept))
        os.replace(tmp, path)
    return dropped


# -------------------------------------------------------------------------------------------- sinks


class Sink(Protocol):
    """Where one step's flattened metrics go (jsonl, TensorBoard, W&B, Prometheus, ...)."""

    def write(self, step: int, row: Mapping[str, Number | None]) -> None: ...

    def close(self) -> None: ...


class JsonlSink:
    """Appends one line per step to `path`, flushed (and fsync'ed when asked) before `write` returns."""

    def __init__(self, path: Path, run_id: str, fsync: bool = False):
        self.path, self.run_id, self.fsync = path, run_id, fsync
        keep = _valid_prefix(path)
        if path.exists() and path.stat().st_size != keep:
            with open(path, "r+b") as f:  # a line cut short by a crash: drop it before appending
                f.truncate(keep)
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (kept open for the run)

    def write(self, step: int, row: Mapping[str, Number | None]) -> None:
        record = {"step": int(step), "time": time.time(), "run_id": self.run_id}
        record.update({k: _json_value(v) for k, v in row.items()})
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


class TensorBoardSink:
    """Scalars in a tensorboardX event file under `logdir`.

    tensorboardX writes from a background thread (its file is flushed every few seconds and on close), so a
    killed process may lose its last few events here; metrics.jsonl is the record that is never lost.
    """

    def __init__(self, logdir: Path, purge_step: int | None = None, config: Mapping[str, Any] | None = None):
        from tensorboardX import SummaryWriter

        self._writer = SummaryWriter(logdir=str(logdir), purge_step=purge_step, flush_secs=5)
        if config:
            self._writer.add_text("config", "```\n" + json.dumps(config, indent=2, default=str) + "\n```")

    def write(self, step: int, row: Mapping[str, Number | None]) -> None:
        for key, value in row.items():
            if value is not None:
                self._writer.add_scalar(key, value, global_step=int(step))

    def write_samples(self, step: int, tag: str, columns: Sequence[str], rows: Sequence[Sequence]) -> None:
        """A table of samples in the text tab (one entry per step under `tag`)."""
        self._writer.add_text(tag, markdown_table(columns, rows), global_step=int(step))

    def write_figure(self, step: int, tag: str, png: Path) -> None:
        """A PNG in the images tab."""
        self._writer.add_image(tag, png_pixels(png), global_step=int(step), dataformats="HWC")

    def close(self) -> None:
        self._writer.close()


class WandbSink:
    """Weights & Biases, resumed under the same run id (imported only when asked for).

    name, group, tags: the run's display name (None: W&B picks one), its group (runs compared together,
    e.g. one sweep) and tags, as W&B's run page and filters show them."""

    def __init__(
        self,
        project: str,
        run_id: str,
        workdir: Path,
        config: Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
        group: str | None = None,
        tags: Sequence[str] = (),
    ):
        try:
            import wandb
        except ImportError as e:
            raise ImportError(
                f"logging.wandb_project={project!r} needs the wandb package: pip install wandb "
                "(or leave wandb_project unset)"
            ) from e
        self._wandb = wandb
        self._run = wandb.init(
            project=project, id=run_id, resume="allow", dir=str(workdir), config=dict(config or {}),
            name=name, group=group, tags=list(tags) or None,
        )  # fmt: skip

    def write(self, step: int, row: Mapping[str, Number | None]) -> None:
        self._run.log({k: v for k, v in row.items() if v is not None}, step=int(step))

    def write_samples(self, step: int, tag: str, columns: Sequence[str], rows: Sequence[Sequence]) -> None:
        """A wandb.Table of samples under `tag`."""
        table = self._wandb.Table(columns=list(columns), data=[list(row) for row in rows])
        self._run.log({tag: table}, step=int(step))

    def write_figure(self, step: int, tag: str, png: Path) -> None:
        """A wandb.Image of the PNG under `tag`."""
        self._run.log({tag: self._wandb.Image(str(png), caption=png.name)}, step=int(step))

    def close(self) -> None:
        self._run.finish()


# ----------------------------------------------------------------------------------------- the writer


def new_run_id() -> str:
    """A sortable, unique run id: UTC time plus 6 random hex digits."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


class MetricsWriter:
    """Writes each step's metrics to metrics.jsonl, TensorBoard and (optionally) W&B under `workdir`.

    Args:
      workdir: the run directory (metrics.jsonl and tensorboard/ go here).
      tensorboard: write TensorBoard events to workdir/tensorboard/<run name>: TensorBoard names a run by
        its folder under --logdir, so `--logdir WORKDIR/tensorboard` shows the run by name (not "."), and
        `--logdir runs/` shows runs/NAME/tensorboard/NAME side by side.
      run_name: the TensorBoard run's name; default the workdir's name.
      wandb_project: also log to this W&B project (needs `wandb`).
      wandb_name, wandb_group, wandb_tags: the W&B run's display name, group and tags (`WandbSink`).
      run_id: identifies the run in every line and in W&B; keep it in the checkpoint and pass it back on
        resume. Default: a new one (`new_run_id`).
      config: a snapshot (plain dict) for W&B and TensorBoard's text tab.
      resume_step: resuming from a checkpoint of this step: drop later lines first (see module docstring).
      primary: whether this process writes (default: `jax.process_index() == 0`).
      fsync: also fsync each line (survives a machine crash, not just a process crash).
      extra_sinks: more `Sink`s (Prometheus, structured logs).
    """

    def __init__(
        self,
        workdir: str | Path,
        *,
        tensorboard: bool = True,
        wandb_project: str | None = None,
        wandb_name: str | None = None,
        wandb_group: str | None = None,
        wandb_tags: Sequence[str] = (),
        run_id: str | None = None,
        run_name: str | None = None,
        config: Mapping[str, Any] | None = None,
        resume_step: int | None = None,
        primary: bool | None = None,
        fsync: bool = False,
        extra_sinks: Sequence[Sink] = (),
    ):
        self.workdir = Path(workdir)
        self.run_id = run_id or new_run_id()
        run_name = run_name or self.workdir.resolve().name or "run"
        self.tensorboard_dir = self.workdir / "tensorboard" / run_name
        if primary is None:
            primary = jax.process_index() == 0
        self.primary = primary
        self.sinks: list[Sink] = []
        if not primary:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.path = self.workdir / JSONL
        if resume_step is not None:
            truncate_after(self.path, resume_step)
        self.sinks.append(JsonlSink(self.path, self.run_id, fsync=fsync))
        if tensorboard:
            purge = None if resume_step is None else resume_step + 1
            self.sinks.append(TensorBoardSink(self.tensorboard_dir, purge, config))
        if wandb_project:
            wandb = WandbSink(
                wandb_project, self.run_id, self.workdir, config, name=wandb_name, group=wandb_group,
                tags=wandb_tags,
            )  # fmt: skip
            self.sinks.append(wandb)
        self.sinks.extend(extra_sinks)

    def write(self, step: int, metrics: Mapping[str, Any]) -> dict[str, Number | None]:
        """Logs one step; returns the flattened row (e.g. for the progress bar)."""
        row = flatten_metrics(metrics)
        clash = [k for k in RESERVED if k in row]
        if clash:
            raise ValueError(f"metric names {clash} are reserved for the line's own fields; rename them")
        if self.primary:
            for sink in self.sinks:
                sink.write(step, row)
        return row

    def write_samples(
        self, step: int, tag: str, rows: Sequence[Mapping[str, Any]], limit: int,
        columns: Sequence[str] = SAMPLE_COLUMNS,
    ) -> None:  # fmt: skip
        """Shows the first `limit` samples (`media.sample_table`: prompt, completion, reward, reason) as a
        table under `tag` in the sinks that take tables (TensorBoard's text tab, a wandb.Table)."""
        table = sample_table(rows, limit, columns)
        if not (self.primary and table):
            return
        for sink in self.sinks:
            if hasattr(sink, "write_samples"):
                sink.write_samples(step, tag, columns, table)

    def write_figures(self, step: int, figures: Mapping[str, str | Path]) -> None:
        """Shows each PNG of {tag: path} in the sinks that take images (TensorBoard, a wandb.Image)."""
        if not self.primary:
            return
        for sink in self.sinks:
            if hasattr(sink, "write_figure"):
                for tag, path in figures.items():
                    sink.write_figure(step, tag, Path(path))

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
        self.sinks = []

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------- timing


class PhaseTimer:
    """Wall time per phase of a step ("rollout", "reward", "train") as `time/<phase>` seconds.

    Device work is asynchronous: end a phase on a value that is ready (e.g. `jax.block_until_ready`), or
    its time is charged to whichever later phase first waits for it.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def metrics(self, tokens: Mapping[str, int] | None = None) -> dict[str, float]:
        """{"time/<phase>": s, "time/step": total} plus `tokens_per_s/<phase>` for the phases in `tokens`."""
        out = {f"time/{name}": s for name, s in self.seconds.items()}
        out["time/step"] = sum(self.seconds.values())
        for name, count in (tokens or {}).items():
            s = self.seconds.get(name)
            if s:
                out[f"tokens_per_s/{name}"] = count / s
        return out

    def reset(self) -> None:
        self.seconds = {}


# ------------------------------------------------------------------------------------------------ MFU

# Dense bf16 peak FLOP/s per device, matched against `device.device_kind` in order (first match wins).
PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    (r"H100.*PCIe", 756e12),
    (r"H100|H200|GH200", 989e12),
    (r"A100", 312e12),
    (r"\bL4\b", 121e12),
    (r"TPU v5 ?lite|TPU v5e", 197e12),
    (r"TPU v5p|TPU v5$", 459e12),
    (r"TPU v6 ?lite|TPU v6e|Trillium", 918e12),
    (r"TPU v4", 275e12),
)


def peak_flops(device: Any = None) -> float | None:
    """Peak dense bf16 FLOP/s of one device (a jax Device or its `device_kind`); None when unknown."""
    if device is None:
        device = jax.devices()[0]
    kind = device if isinstance(device, str) else getattr(device, "device_kind", "")
    for pattern, peak in PEAK_FLOPS:
        if re.search(pattern, kind):
            return peak
    return None


def step_flops(compiled: Any) -> float | None:
    """FLOPs of one call of a compiled (or lowered) jax function, per device, from XLA's cost analysis."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list | tuple):  # older jax: one dict per program
        analysis = analysis[0] if analysis else None
    flops = (analysis or {}).get("flops")
    return float(flops) if flops is not None and flops >= 0 else None


def mfu(
    flops_per_step: float | None, step_seconds: float, device: Any = None, *, peak: float | None = None
) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over the device's peak; None when either is unknown.

    flops_per_step: per device (what `step_flops` gives for a partitioned program).
    peak: overrides the table (e.g. a float32 peak, or a device the table does not know).
    """
    peak = peak if peak is not None else peak_flops(device)
    if flops_per_step is None or peak is None or step_seconds <= 0:
        return None
    return flops_per_step / step_seconds / peak


# --------------------------------------------------------------------------------------------- FLOPs


def model_flops(cfg: Any, shape: tuple[int, int]) -> float:
    """Model FLOPs of one update (forward + backward) on a [rows, seq] batch, PaLM-style: 6 per parameter
    per token plus 12 * layers * heads * head_dim * seq per token for attention. Remat's recomputation is
    not counted (it is hardware work, not model work), so MFU is comparable across remat policies.

    With LoRA (`cfg.lora_rank`) the base weights are frozen: their weight gradients are never computed,
    so each base parameter costs 4 per token (forward, and the backward pass to the activations), and each
    adapter parameter 6; counting 6 for the base would overstate a LoRA step's MFU by about 1.5x."""
    rows, seq = shape
    adapters = cfg.num_adapter_params() if getattr(cfg, "lora_rank", 0) else 0
    per_param = 4 if adapters else 6
    per_token = per_param * cfg.num_params() + 6 * adapters
    per_token += 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq
    return float(per_token * rows * seq)


def flops_metrics(
    model_flops: float, xla_flops: float | None, updates: int, seconds: float, devices: int
) -> dict[str, float]:
    """Training TFLOP/s per device and MFU (against the device's bf16 peak, when known).

    MFU uses the model FLOPs (`model_flops`). XLA's cost analysis of the compiled update is logged beside
    it, but it counts a while loop's body once, so for our layer `scan` it is about 1/num_layers of the
    real work: a check on the executable, not an MFU numerator.
    """
    if seconds <= 0:
        return {}
    per_device = model_flops * updates / devices
    out = {"throughput/train_tflops_per_device": per_device / seconds / 1e12}
    if xla_flops is not None:
        out["throughput/xla_cost_tflops_per_device"] = xla_flops * updates / seconds / 1e12
    peak = peak_flops()
    if peak is not None:
        out["throughput/mfu"] = mfu(per_device, seconds, peak=peak)
    return out


# ---------------------------------------------------------------------------------------------- plots


def plot_rewards(
    metrics_jsonl: str | Path,
    out_png: str | Path,
    *,
    reward_key: str = "reward/mean",
    stderr_key: str = "reward/stderr",
    smooth: float = 0.6,
    reward_range: tuple[float, float] | None = None,
    title: str | None = None,
) -> Path:
    """A PNG of a training run against step, from its metrics.jsonl (WORKDIR/reward_curve.png).

    Panels, each left out when its metrics were not logged (the reward's is always there):
    - the training reward: per step (faint) and EMA-smoothed (`smooth`, TensorBoard's default 0.6) with a
      band of +-1 standard error of the smoothed mean (`figures.ema_stderr` of the per-step `stderr_key`),
      clipped to the reward's range: `reward_range`, else the lowest `reward/min` and highest `reward/max`
      logged, so a 0/1 reward's band stays inside [0, 1];
    - the held-out accuracy (`eval/accuracy`) at the steps it was measured, with its 95% interval;
    - the completions' mean length and truncated share (`response/length_mean`, `.../truncation_rate`).
    The training batch's accuracy is not drawn: for a 0/1 reward it is the reward again.
    """
    from matplotlib.ticker import MaxNLocator

    from rlvr_jax.figures import panels, save, series, suptitle  # matplotlib, imported only when plotting

    rows = read_metrics(metrics_jsonl)
    if not rows:
        raise ValueError(f"{metrics_jsonl} has no metrics to plot")
    if not series(rows, reward_key)[0].size:
        raise ValueError(f"{metrics_jsonl} has no finite {reward_key!r} values to plot")
    shown = ["reward"]
    shown += ["eval"] if series(rows, "eval/accuracy")[0].size else []
    shown += ["length"] if series(rows, "response/length_mean")[0].size else []
    heights = [{"reward": 3.0, "eval": 1.9, "length": 1.9}[p] for p in shown]
    fig, grid = panels(
        8, 1.3 + sum(heights), len(shown), 1, sharex=True, height_ratios=heights, squeeze=False
    )
    axes = dict(zip(shown, grid[:, 0], strict=True))
    _reward_panel(axes["reward"], rows, reward_key, stderr_key, smooth, reward_range)
    if "eval" in axes:
        _held_out_panel(axes["eval"], rows)
    if "length" in axes:
        _length_panel(axes["length"], rows)
    axes[shown[-1]].set_xlabel("training step")
    axes[shown[-1]].xaxis.set_major_locator(MaxNLocator(integer=True))
    suptitle(fig, title or f"Training run {Path(metrics_jsonl).resolve().parent.name}")
    return save(fig, out_png, dpi=120)


def reward_band(
    rows: Sequence[Mapping[str, Any]],
    smooth: float,
    *,
    reward_key: str = "reward/mean",
    stderr_key: str = "reward/stderr",
    reward_range: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(steps, smoothed mean, band low, band high) of the reward curve; the band is +-1 standard error of
    the smoothed mean clipped to the reward's range (see `plot_rewards`), NaN where not known."""
    from rlvr_jax.figures import ema, ema_stderr, series

    steps, reward = series(rows, reward_key)
    stderr = dict(zip(*series(rows, stderr_key), strict=True))
    band = ema_stderr(np.array([stderr.get(s, math.nan) for s in steps]), smooth)
    if reward_range is None:
        lows, highs = series(rows, "reward/min")[1], series(rows, "reward/max")[1]
        reward_range = (lows.min() if lows.size else -np.inf, highs.max() if highs.size else np.inf)
    smoothed = ema(reward, smooth)
    low, high = np.clip(smoothed - band, *reward_range), np.clip(smoothed + band, *reward_range)
    return steps, smoothed, low, high


def _reward_panel(
    ax: Any,
    rows: Sequence[Mapping[str, Any]],
    key: str,
    stderr_key: str,
    smooth: float,
    reward_range: tuple[float, float] | None,
) -> None:
    from rlvr_jax.figures import LABEL_SIZE, series, style

    steps, reward = series(rows, key)
    _, smoothed, low, high = reward_band(rows, smooth, reward_key=key, stderr_key=stderr_key,
                                         reward_range=reward_range)  # fmt: skip
    ax.plot(steps, reward, color="tab:blue", alpha=0.35, linewidth=1.0, marker="o", markersize=3,
            label="per step")  # fmt: skip
    ax.plot(steps, smoothed, color="tab:blue", linewidth=2.2, label=f"smoothed (EMA {smooth:g})")
    known = np.isfinite(low) & np.isfinite(high)
    if known.any():
        ax.fill_between(steps, low, high, where=known, color="tab:blue", alpha=0.2, linewidth=0,
                        label="± 1 standard error")  # fmt: skip
    ax.set_ylabel("reward", fontsize=LABEL_SIZE)
    ax.set_title(f"Training reward ({key})", fontsize=LABEL_SIZE, loc="left")
    ax.legend(loc="best", fontsize="small")
    style(ax, grid_axis="both")


def _held_out_panel(ax: Any, rows: Sequence[Mapping[str, Any]]) -> None:
    from rlvr_jax.figures import LABEL_SIZE, NOTE_SIZE, label, percent, percent_axis, series, style

    steps, accuracy = series(rows, "eval/accuracy")
    lows = dict(zip(*series(rows, "eval/accuracy_ci_low"), strict=True))
    highs = dict(zip(*series(rows, "eval/accuracy_ci_high"), strict=True))
    below = [max(a - lows.get(s, a), 0.0) for s, a in zip(steps, accuracy, strict=True)]
    above = [max(highs.get(s, a) - a, 0.0) for s, a in zip(steps, accuracy, strict=True)]
    ax.errorbar(steps, accuracy, yerr=[below, above], color="tab:green", marker="o", markersize=5,
                linewidth=1.8, capsize=3)  # fmt: skip
    label(ax, percent(accuracy[-1]), (steps[-1], accuracy[-1]), (6, 0), ha="left", va="center",
          fontsize=NOTE_SIZE, color="tab:green", fontweight="bold")  # fmt: skip
    ax.set_ylim(-0.02, 1.02)
    percent_axis(ax.yaxis)
    ax.set_ylabel("accuracy", fontsize=LABEL_SIZE)
    ax.set_title("Held-out accuracy (95% interval)", fontsize=LABEL_SIZE, loc="left")
    style(ax, grid_axis="both")
    ax.margins(x=0.06)


def _length_panel(ax: Any, rows: Sequence[Mapping[str, Any]]) -> None:
    from rlvr_jax.figures import LABEL_SIZE, percent_axis, series, style

    steps, length = series(rows, "response/length_mean")
    ax.plot(steps, length, color="tab:purple", linewidth=1.8, marker="o", markersize=3, label="mean tokens")
    ax.set_ylabel("tokens", fontsize=LABEL_SIZE)
    ax.set_ylim(bottom=0)
    handles = ax.get_lines()[:]
    cut_steps, cut = series(rows, "response/truncation_rate")
    if cut_steps.size:
        share = ax.twinx()
        share.plot(cut_steps, cut, color="tab:red", linewidth=1.5, linestyle="--", label="truncated")
        share.set_ylim(-0.02, 1.02)
        percent_axis(share.yaxis)
        share.set_ylabel("truncated", fontsize=LABEL_SIZE, color="tab:red")
        share.spines[["top"]].set_visible(False)
        handles += share.get_lines()
    ax.legend(handles=handles, loc="best", fontsize="small")
    ax.set_title("Completions: mean length and share truncated", fontsize=LABEL_SIZE, loc="left")
    style(ax, grid_axis="x")
