"""Where one GRPO step's time goes, as a table and a figure, from `benchmarks/grpo_step.py` results.

    python benchmarks/step_split.py benchmarks/results/grpo_step_qwen2.5-0.5b_sampler_master_h200.json \
        benchmarks/results/grpo_step_qwen2.5-0.5b_sampler_bf16_h200.json \
        benchmarks/results/grpo_step_qwen2.5-1.5b_h200.json --target 1.2 \
        --out benchmarks/results/grpo_step_split_h200

Writes OUT.md (one row per result: step, each component, overhead) and OUT.png (one horizontal bar per
result, split into device sampling, host work, device update and the rest, with the target step time as a
line), so the README can show at a glance which part a speed change moved. Labels name the shape and what
differs between the results (sampler weights, remat, micro-batches, async rollouts), taken from each JSON.
Runs on a CPU in about a second; reads only the JSON files.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# The bar's parts: the device's two jobs, the host work around the sampler, and what is left of the step
# (dispatch, waits, the parameter hand-over, logging): `other` is step minus the named parts, never < 0.
HOST = ("encode", "detokenize", "reward", "batch")
PARTS = ("sample", "host", "update", "other")
COLORS = {"sample": "#4C72B0", "host": "#DD8452", "update": "#55A868", "other": "#8C8C8C"}


def split(result: dict) -> dict[str, float]:
    """Seconds per step of each part in PARTS, plus `step`, from one grpo_step.py result."""
    c = result["components_s"]
    parts = {
        "sample": float(c.get("sample", 0.0)),
        "host": sum(float(c.get(k, 0.0)) for k in HOST),
        "update": float(c.get("update", 0.0)),
    }
    step = float(result["step_s"])
    parts["other"] = max(0.0, step - sum(parts.values()))
    return {"step": step, **parts}


def label(result: dict) -> str:
    """The shape and the switches that tell results apart (sampler weights, remat, micro-batches, async)."""
    bits = [result.get("shape", "?")]
    sampler = result.get("sampler_params")
    if sampler:
        bits.append("sampler reads f32 masters" if sampler == "master" else "sampler reads bf16 copy")
    for key, name in (("remat", "remat"), ("micro_batches", "micro")):
        if result.get(key) is not None:
            bits.append(f"{name} {result[key]}")
    if result.get("async_rollouts"):
        bits.append("async rollouts")
    return ", ".join(bits) + (f" ({result['date']})" if result.get("date") else "")


def table(results: list[dict]) -> str:
    """Markdown: one row per result with the step, its split, the update's MFU and the overhead share."""
    head = "| run | card | step s | sample s | host s | update s (MFU) | other s | overhead | steps 1, 2 s |"
    lines = [head, "|" + "---|" * 9]
    for r in results:
        s = split(r)
        first = ", ".join(f"{x:.1f}" for x in r.get("first_steps_s", []))
        mfu = f" ({r['update_mfu']:.2f})" if r.get("update_mfu") is not None else ""
        card = str(r.get("device", "?")).split(",")[0]
        lines.append(
            f"| {label(r)} | {card} | {s['step']:.3f} | {s['sample']:.3f} | {s['host']:.3f} | "
            f"{s['update']:.3f}{mfu} | {s['other']:.3f} | {100 * r['overhead_fraction']:.1f}% | {first} |"
        )
    return "\n".join(lines) + "\n"


def figure(results: list[dict], path: Path, target: float | None) -> None:
    """One stacked horizontal bar per result; the target step time as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 0.7 * len(results) + 1.6))
    names = [label(r) for r in results]
    for i, r in enumerate(results):
        s, left = split(r), 0.0
        for part in PARTS:
            ax.barh(i, s[part], left=left, color=COLORS[part], label=part if i == 0 else None)
            left += s[part]
        ax.text(left + 0.02, i, f"{s['step']:.2f} s", va="center", fontsize=9)
    if target is not None:
        ax.axvline(target, color="black", linestyle="--", linewidth=1, label=f"target {target:g} s")
    ax.set_yticks(range(len(results)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds per GRPO step (median of the steps after the compiles)")
    ax.set_title("Where a GRPO step's time goes", fontsize=11)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", help="grpo_step.py JSON files, in the order to show them")
    p.add_argument("--out", required=True, help="path without suffix: writes OUT.md and OUT.png")
    p.add_argument("--target", type=float, default=None, help="target seconds per step (a line)")
    args = p.parse_args(argv)
    results = []
    for f in args.results:
        r = json.loads(Path(f).read_text())
        if r.get("benchmark") != "grpo_step":
            raise SystemExit(f"error: {f} is not a benchmarks/grpo_step.py result (benchmark != 'grpo_step')")
        results.append(r)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(table(results))
    figure(results, out.with_suffix(".png"), args.target)
    print(table(results), end="")
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
