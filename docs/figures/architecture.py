"""Draws docs/_static/architecture.png: the data flow of one GRPO step through the packages.

Run from the repository root after a change to the layout: `python docs/figures/architecture.py`.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

OUT = Path(__file__).resolve().parent.parent / "_static" / "architecture.png"
HOST, DEVICE, STATE = "#e8eef7", "#fde9d9", "#e6f2e6"

# (x, y, text, colour): the step's phases, left to right on two rows.
BOXES = {
    "data": (0.0, 2.0, "prompts\ngrain pipeline\n(data/)", HOST),
    "sample": (2.7, 2.0, "sampler\nprefill + decode loop\n(generate/, jit on the mesh)", DEVICE),
    "reward": (5.4, 2.0, "rewards\nworker processes, sandbox\n(rewards/)", HOST),
    "rows": (8.1, 2.0, "rollout rows\n[rows = prompts x G]\n(rl/batch.py)", HOST),
    "adv": (8.1, 0.0, "advantages\nGRPO / Dr.GRPO / RLOO\n(rl/advantages.py)", DEVICE),
    "update": (5.4, 0.0, "update: log-probs, loss,\ngrads of micro-batches\n(rl/update.py, optim/)", DEVICE),
    "state": (2.7, 0.0, "train state\nparams, Adam, counters\n(optim/state.py)", STATE),
    "log": (0.0, 0.0, "metrics, evaluation,\ncheckpoints, export\n(trainer/reporting.py)", HOST),
}
ARROWS = [
    ("data", "sample", "token ids"),
    ("sample", "reward", "completions"),
    ("reward", "rows", "scores"),
    ("rows", "adv", ""),
    ("adv", "update", "batch"),
    ("update", "state", "donated"),
    ("state", "sample", "new params"),
    ("state", "log", "every N steps"),
]
W, H = 2.0, 1.0


def ends(a: str, b: str) -> tuple[tuple[float, float], tuple[float, float]]:
    """From the edge of box a to the facing edge of box b (boxes share a row or a column)."""
    (xa, ya, *_), (xb, yb, *_) = BOXES[a], BOXES[b]
    if ya == yb:
        left, right = (xa + W, xb) if xa < xb else (xa, xb + W)
        return (left, ya + H / 2), (right, yb + H / 2)
    top, bottom = (ya, yb + H) if ya > yb else (ya + H, yb)
    return (xa + W / 2, top), (xb + W / 2, bottom)


def main() -> None:
    fig, ax = plt.subplots(figsize=(10.5, 4.2))
    for x, y, text, colour in BOXES.values():
        ax.add_patch(FancyBboxPatch((x, y), W, H, boxstyle="round,pad=0.05", fc=colour, ec="#555555"))
        ax.text(x + W / 2, y + H / 2, text, ha="center", va="center", fontsize=8)
    for a, b, label in ARROWS:
        (x0, y0), (x1, y1) = ends(a, b)
        ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=14, color="#333333",
                                     shrinkA=4, shrinkB=4))  # fmt: skip
        if label:
            dx, dy = (0.0, 0.1) if y0 == y1 else (0.08, 0.0)
            ax.text((x0 + x1) / 2 + dx, (y0 + y1) / 2 + dy, label, ha="center" if y0 == y1 else "left",
                    va="bottom" if y0 == y1 else "center", fontsize=7.5, style="italic")  # fmt: skip
    for i, (name, colour) in enumerate((("host (Python)", HOST), ("device (jit, sharded)", DEVICE),
                                        ("device state", STATE))):  # fmt: skip
        ax.add_patch(FancyBboxPatch((0.1 + 3.0 * i, 3.35), 0.25, 0.2, boxstyle="square,pad=0", fc=colour))
        ax.text(0.45 + 3.0 * i, 3.45, name, va="center", fontsize=8.5)
    ax.set_xlim(-0.2, 10.3)
    ax.set_ylim(-0.3, 3.7)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title("One GRPO step (rlvr_jax.trainer): rollout -> rewards -> advantages -> update", fontsize=10)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, dpi=150, bbox_inches="tight")
    print(OUT)


if __name__ == "__main__":
    main()
