"""What a run costs: accelerator hours times a price, per step, per run, per million tokens, per point gained.

Accelerators are billed by the wall-clock hour whether they compute or wait, so the cost of a run is its
wall time (model loading, compiles, evaluations and checkpoints included) times the number of devices
times the price of one device-hour, not the sum of step times. `CostTracker` keeps that clock across
resumes (its state goes into the checkpoint) and turns it into:
- `cost/usd_total`: spent so far; `cost/usd_per_step`: this step's wall time (everything since the last
  step ended, so an evaluation is charged to the step it follows);
- `cost/usd_per_million_tokens`: the total over all tokens trained on (prompt + completion, every epoch);
- `cost/projected_run_usd`: the total plus the remaining steps at the median of the recent step costs,
  updated every step, so the end cost of a long run is known after a few minutes of it;
- at the end, `usd_per_accuracy_point`: the total over the held-out accuracy gained, in points.

Prices (`PRICES`, US$ per device-hour) are typical on-demand cloud list prices of late 2026 for one GPU or
one TPU chip; they vary by provider, region and commitment, so `logging.price_per_hour` overrides them.
A CPU run is priced as one small VM per process.
"""

from __future__ import annotations

import dataclasses
import re
import statistics
import time
from collections import deque
from typing import Any

# US$ per device-hour (one GPU, one TPU chip, or one CPU process): on-demand list prices, late 2026.
PRICES: dict[str, float] = {
    "H100": 3.00,
    "H200": 3.80,
    "A100": 1.80,
    "L4": 0.70,
    "TPU v5e": 1.20,
    "TPU v5p": 4.20,
    "TPU v6e": 2.70,
    "CPU": 0.10,
}
# jax's device_kind -> the table's name; the first match wins (H200 before H100).
_KINDS: tuple[tuple[str, str], ...] = (
    (r"H200", "H200"),
    (r"H100", "H100"),
    (r"A100", "A100"),
    (r"\bL4\b", "L4"),
    (r"v5 ?lite|v5e", "TPU v5e"),
    (r"v5p", "TPU v5p"),
    (r"v6 ?lite|v6e", "TPU v6e"),
    (r"^cpu$", "CPU"),
)


def device_price(device_kind: str, override: float | None = None) -> tuple[float | None, str]:
    """(US$ per device-hour, where it came from) for a jax `device_kind` such as "NVIDIA H100 80GB HBM3".

    An override (the config's `logging.price_per_hour`) wins; an unknown device without one gives
    (None, reason) and the run logs no cost rather than a made-up one.
    """
    if override is not None:
        if override < 0:
            raise ValueError(f"logging.price_per_hour must be >= 0, got {override}")
        return float(override), "logging.price_per_hour"
    for pattern, name in _KINDS:
        if re.search(pattern, device_kind, flags=re.IGNORECASE):
            return PRICES[name], f"price table: {name}"
    return None, f"no price for device {device_kind!r}: set logging.price_per_hour"


@dataclasses.dataclass
class CostTracker:
    """Accelerator-hour accounting for one run (see the module docstring).

    Call `mark()` when the run's clock starts (the process starts working) and `step(tokens)` after each
    step; `state()` / `CostTracker.restore(...)` carry the spent time and tokens across a resume.
    """

    price_per_device_hour: float
    devices: int
    total_steps: int
    elapsed_s: float = 0.0
    tokens: int = 0
    recent: int = 20  # steps whose median cost projects the rest

    def __post_init__(self) -> None:
        self._last = time.perf_counter()
        self._recent_s: deque[float] = deque(maxlen=self.recent)

    def mark(self) -> None:
        """Starts (or restarts, after a resume) the clock from now."""
        self._last = time.perf_counter()

    def _advance(self) -> float:
        now = time.perf_counter()
        seconds, self._last = now - self._last, now
        self.elapsed_s += seconds
        return seconds

    def usd(self, seconds: float) -> float:
        return seconds * self.devices * self.price_per_device_hour / 3600.0

    def step(self, step: int, tokens: int) -> dict[str, float]:
        """The cost metrics after `step` (1-based), which trained on `tokens` tokens."""
        seconds = self._advance()
        self.tokens += int(tokens)
        self._recent_s.append(seconds)
        total = self.usd(self.elapsed_s)
        remaining = max(self.total_steps - step, 0)
        return {
            "cost/usd_per_step": self.usd(seconds),
            "cost/usd_total": total,
            "cost/device_hours": self.elapsed_s * self.devices / 3600.0,
            "cost/usd_per_million_tokens": total / self.tokens * 1e6 if self.tokens else float("nan"),
            "cost/projected_run_usd": total + remaining * self.usd(statistics.median(self._recent_s)),
        }

    def summary(self, accuracy_before: float | None = None, accuracy_after: float | None = None) -> dict:
        """The run's cost for the final report (the clock advanced to now: final evaluation included)."""
        self._advance()
        total = self.usd(self.elapsed_s)
        gain = None
        if accuracy_before is not None and accuracy_after is not None:
            gain = 100.0 * (accuracy_after - accuracy_before)
        return {
            "price_per_device_hour": self.price_per_device_hour,
            "devices": self.devices,
            "device_hours": self.elapsed_s * self.devices / 3600.0,
            "usd_total": total,
            "usd_per_million_tokens": total / self.tokens * 1e6 if self.tokens else None,
            "accuracy_points_gained": gain,
            # Per point gained; None when nothing was gained (the price of a point is then unbounded).
            "usd_per_accuracy_point": total / gain if gain and gain > 0 else None,
        }

    def state(self) -> dict[str, Any]:
        return {"elapsed_s": self.elapsed_s, "tokens": self.tokens}

    @classmethod
    def restore(
        cls, saved: dict[str, Any] | None, price_per_device_hour: float, devices: int, total_steps: int
    ) -> CostTracker:
        saved = saved or {}
        return cls(
            price_per_device_hour,
            devices,
            total_steps,
            elapsed_s=float(saved.get("elapsed_s", 0.0)),
            tokens=int(saved.get("tokens", 0)),
        )
