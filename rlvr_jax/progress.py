"""Progress of a long loop (training steps, a held-out evaluation's items), shown wherever the run is
watched: a bar in a terminal or a notebook, plain lines in a log.

One class, `Progress`, for the trainer and the evaluations; it picks one of three looks (`display_mode`):
- "bar": tqdm's bar when stdout is a terminal, and in a Jupyter / Colab kernel (`tqdm.auto`: a widget
  where ipywidgets is installed, the text bar otherwise). A notebook's stdout is no terminal, which is why
  a terminal check alone left notebooks without progress.
- "lines": stdout is a file or a pipe (`make demo | tee log`, CI, a batch job's log): plain lines without
  control codes, e.g. `train: 3/14 steps (21%), 0:42 elapsed, ~2:34 left | reward 0.25  acc 0.125`.
  How often is the caller's `min_interval_s`: the trainer passes 0, a line for every step (a step takes
  seconds to minutes, and metrics.jsonl gets a line per step anyway); evaluations pass 10 s, since their
  batches can be many and fast. The first and the last update always print.
- "off": `quiet` (JSON logs carry the steps instead) and every process but process 0 of a multi-host run.

Both go to stdout, the stream the run's messages go to (`rlvr_jax.trainer.setup.Console`), so a log
holds them in the order they happened.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

MODES = ("auto", "bar", "lines", "off")


def in_notebook() -> bool:
    """Whether this process is a Jupyter (or Colab) kernel: IPython is loaded and runs a kernel app."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def display_mode(stream: TextIO) -> str:
    """The look for `stream`: "bar" for a terminal or a notebook kernel, "lines" for a file or a pipe."""
    if in_notebook():
        return "bar"
    try:
        return "bar" if stream.isatty() else "lines"
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return "lines"


def clock(seconds: float) -> str:
    """Seconds as m:ss, or h:mm:ss from an hour on."""
    seconds = max(round(seconds), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _shown(values: Mapping[str, Any]) -> str:
    """`label value` pairs of the finite numbers among `values`, three significant digits."""
    return "  ".join(
        f"{label} {value:.3g}"
        for label, value in values.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    )


class Progress:
    """How far a loop of `total` units has come, with a few numbers beside it.

    Args:
      total: units in the whole loop (steps, items).
      initial: units already done (a resumed run's step).
      description: what the loop is ("train", "eval before").
      unit: one unit's name; the lines add an "s" ("3/14 steps").
      fields: label -> key of a metrics row passed to `update` (the numbers shown); default the trainer's.
      quiet: show nothing.
      mode: "auto" (`display_mode` of the stream), "bar", "lines" or "off".
      stream: where to write (default: sys.stdout at construction).
      min_interval_s: "lines" only: the least time between two lines (the first and last always print).
      leave: "bar" only: keep the finished bar on screen; None keeps it only when no other bar is open
        (an evaluation inside training disappears and leaves the training bar in place).

    Drawing starts with the first `update`, so set-up messages printed before it are not mixed into a bar.
    """

    DEFAULT_FIELDS: Mapping[str, str] = {
        "reward": "reward/mean",
        "acc": "accuracy",
        "tokens": "response/length_mean",
        "s/step": "time/step_s",
    }

    def __init__(
        self,
        total: int,
        *,
        initial: int = 0,
        description: str = "train",
        unit: str = "step",
        fields: Mapping[str, str] | None = None,
        quiet: bool = False,
        mode: str = "auto",
        stream: TextIO | None = None,
        min_interval_s: float = 0.0,
        leave: bool | None = True,
    ):
        if mode not in MODES:
            raise ValueError(f"progress mode must be one of {MODES}, got {mode!r}")
        import jax

        self.total, self.initial, self.description, self.unit = int(total), int(initial), description, unit
        self.fields = dict(self.DEFAULT_FIELDS if fields is None else fields)
        self.stream = stream if stream is not None else sys.stdout
        self.min_interval_s, self.leave = min_interval_s, leave
        if quiet or jax.process_index() != 0:
            mode = "off"
        self.mode = display_mode(self.stream) if mode == "auto" else mode
        self._bar: Any = None
        self._start = time.perf_counter()
        self._last_line: float | None = None
        self._done = self.initial

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def update(self, done: int, metrics: Mapping[str, Any] | None = None, **shown: float) -> None:
        """`done` units of `total` are finished; shows the chosen metrics that are present and finite.

        metrics: a (flattened) metrics row, shown through `fields`; `shown`: extra label=value pairs.
        """
        if self.mode == "off":
            return
        self._done = int(done)
        info = _shown({label: (metrics or {}).get(key) for label, key in self.fields.items()} | shown)
        if self.mode == "bar":
            self._draw_bar(info)
        else:
            self._write_line(info)

    def line(self, info: str = "") -> str:
        """The plain line for the current count: done / total, elapsed, time left, `info`."""
        elapsed = time.perf_counter() - self._start
        text = f"{self.description}: {self._done}/{self.total} {self.unit}s"
        if self.total > 0:
            text += f" ({100 * self._done / self.total:.0f}%)"
        text += f", {clock(elapsed)} elapsed"
        here = self._done - self.initial  # units done by this process: the rate behind the time left
        if here > 0 and self._done < self.total:
            text += f", ~{clock(elapsed / here * (self.total - self._done))} left"
        return text + (f" | {info}" if info else "")

    def _write_line(self, info: str) -> None:
        now = time.perf_counter()
        last = self._done >= self.total
        if self._last_line is not None and not last and now - self._last_line < self.min_interval_s:
            return
        self._last_line = now
        print(self.line(info), file=self.stream, flush=True)

    def _draw_bar(self, info: str) -> None:
        if self._bar is None:
            self._bar = self._new_bar()
        self._bar.set_postfix_str(info, refresh=False)
        self._bar.update(self._done - self._bar.n)

    def _new_bar(self) -> Any:
        if in_notebook():
            from tqdm.auto import tqdm
        else:
            from tqdm import tqdm
        return tqdm(
            total=self.total, initial=self.initial, desc=self.description, unit=self.unit,
            file=self.stream, leave=self.leave, dynamic_ncols=True, smoothing=0.1,
        )  # fmt: skip

    def close(self) -> None:
        """Ends the display (a bar is drawn a last time); nothing more is shown after it."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self.mode = "off"

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
