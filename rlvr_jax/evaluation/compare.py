"""Is run B better than run A, and is the difference real? Paired tests on the items both runs scored.

Pairing is what makes small evaluations informative: the same prompt is easy or hard for both runs, so
the test looks only at items where they disagree. With one sample per item and pass / fail outcomes that
is the exact McNemar test (a binomial test on the discordant items). Per-item pass rates (several samples)
and continuous rewards get a paired sign-flip permutation test. Every difference is B - A with a 95%
paired bootstrap interval over items.

A budget that cuts answers off scores them 0, so a run can gain accuracy by answering shorter, not better.
The comparison therefore also pairs the items finished in both runs (each scored by its finished samples)
and tests them the same way, reports the truncated share of each run, and says in words whether a
significant change holds among finished answers or is mostly answers that now fit (`length_effect`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rlvr_jax.evaluation.metrics import CONFIDENCE, eval_metrics, group_by_item, passed, truncation_rate
from rlvr_jax.evaluation.runs import EvalRun
from rlvr_jax.evaluation.stats import (
    mcnemar_exact,
    mcnemar_table,
    paired_bootstrap_diff,
    paired_permutation_test,
)

ALPHA = 0.05
# Settings that make two runs not comparable as paired measurements when they differ.
_SETTINGS = ("task", "split", "reward", "temperature", "max_new_tokens", "samples_per_item")
# metrics.json entries each run's summary carries into comparison.json when the run has them.
_SUMMARY_KEYS = (
    "pass_at_k", "by_level", "response_tokens", "truncation_rate", "accuracy_finished",
    "tokens_for_95_finished", "max_new_tokens",
)  # fmt: skip


def _metrics(run: EvalRun) -> dict[str, Any]:
    """The run's metrics.json, with the statistics recomputed from its samples (the file may be older)."""
    return {**run.metrics, **eval_metrics(run.rows, reward=run.metrics.get("reward"))}


def compare_runs(a: EvalRun, b: EvalRun, *, seed: int = 0) -> dict[str, Any]:
    """The comparison of B against A as a JSON-able dict (see the module docstring for the tests)."""
    items_a, items_b = group_by_item(a.rows), group_by_item(b.rows)
    shared = [i for i in items_a if i in items_b]
    if not shared:
        raise ValueError(
            f"{a.path} and {b.path} share no item ids: evaluate both on the same split "
            f"(e.g. {next(iter(items_a))!r} vs {next(iter(items_b))!r})"
        )
    metrics_a, metrics_b = _metrics(a), _metrics(b)
    warnings = [
        f"{key} differs: {metrics_a.get(key)!r} (A) vs {metrics_b.get(key)!r} (B)"
        for key in _SETTINGS
        if key in metrics_a and key in metrics_b and metrics_a[key] != metrics_b[key]
    ]
    only_a, only_b = len(items_a) - len(shared), len(items_b) - len(shared)
    if only_a or only_b:
        warnings.append(
            f"only the {len(shared)} shared items are paired ({only_a} only in A, {only_b} only in B)"
        )

    def rate(items: Mapping[str, Sequence[Mapping[str, Any]]], i: str) -> float:
        return float(np.mean([passed(float(r["reward"])) for r in items[i]]))

    def reward(items: Mapping[str, Sequence[Mapping[str, Any]]], i: str) -> float:
        return float(np.mean([float(r["reward"]) for r in items[i]]))

    pass_a = np.array([rate(items_a, i) for i in shared])
    pass_b = np.array([rate(items_b, i) for i in shared])
    reward_a = np.array([reward(items_a, i) for i in shared])
    reward_b = np.array([reward(items_b, i) for i in shared])
    single = all(len(items_a[i]) == 1 and len(items_b[i]) == 1 for i in shared)

    result: dict[str, Any] = {
        "a": _summary(a, metrics_a),
        "b": _summary(b, metrics_b),
        "paired_items": len(shared),
        "confidence": CONFIDENCE,
        "accuracy_a": float(pass_a.mean()),
        "accuracy_b": float(pass_b.mean()),
        "accuracy_difference": paired_bootstrap_diff(pass_a, pass_b, CONFIDENCE, seed=seed).to_dict(),
        "reward_difference": paired_bootstrap_diff(reward_a, reward_b, CONFIDENCE, seed=seed).to_dict(),
        "reward_permutation_p": paired_permutation_test(reward_a, reward_b, seed=seed),
        "warnings": warnings,
    }
    if single:
        both, a_only, b_only, neither = mcnemar_table(pass_a > 0.5, pass_b > 0.5)
        p_value = mcnemar_exact(a_only, b_only)
        result["mcnemar"] = {
            "both_pass": both,
            "only_a_passes": a_only,
            "only_b_passes": b_only,
            "neither_passes": neither,
            "p_value": p_value,
            "test": "exact McNemar (two-sided binomial test on the discordant items)",
        }
        result["test"], result["p_value"] = "mcnemar_exact", p_value
    else:
        p_value = paired_permutation_test(pass_a, pass_b, seed=seed)
        result["accuracy_permutation_p"] = p_value
        result["test"], result["p_value"] = "paired sign-flip permutation on per-item pass rates", p_value
    result["significant"] = bool(p_value < ALPHA)
    if all("finished" in r for i in shared for r in (*items_a[i], *items_b[i])):
        result["truncation"] = {
            side: truncation_rate([bool(r["finished"]) for i in shared for r in items[i]])
            for side, items in (("a", items_a), ("b", items_b))
        }
        result["finished_in_both"] = _finished_in_both(items_a, items_b, shared, single, seed)
    result["length_effect"] = length_effect(result)
    result["verdict"] = _verdict(result)
    return result


def _finished_in_both(
    items_a: Mapping[str, Sequence[Mapping[str, Any]]],
    items_b: Mapping[str, Sequence[Mapping[str, Any]]],
    shared: Sequence[str],
    single: bool,
    seed: int,
) -> dict[str, Any]:
    """The paired comparison restricted to finished answers: the items with a finished sample in both
    runs, each scored by the pass rate of its finished samples; exact McNemar for one sample per item,
    else the paired permutation test, as for all items."""

    def finished_rate(group: Sequence[Mapping[str, Any]]) -> float | None:
        done = [passed(float(r["reward"])) for r in group if r["finished"]]
        return float(np.mean(done)) if done else None

    pairs = [(finished_rate(items_a[i]), finished_rate(items_b[i])) for i in shared]
    pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
    fa = np.array([x for x, _ in pairs], dtype=float)
    fb = np.array([y for _, y in pairs], dtype=float)
    out: dict[str, Any] = {
        "n": len(pairs),
        "accuracy_a": float(fa.mean()) if pairs else math.nan,
        "accuracy_b": float(fb.mean()) if pairs else math.nan,
        "accuracy_difference": paired_bootstrap_diff(fa, fb, CONFIDENCE, seed=seed).to_dict(),
    }
    if single:
        both, a_only, b_only, neither = mcnemar_table(fa > 0.5, fb > 0.5)
        out |= {"both_pass": both, "only_a_passes": a_only, "only_b_passes": b_only}
        out |= {"neither_passes": neither, "test": "mcnemar_exact", "p_value": mcnemar_exact(a_only, b_only)}
    else:
        out |= {"test": "paired sign-flip permutation on per-item pass rates"}
        out |= {"p_value": paired_permutation_test(fa, fb, seed=seed)}
    return out


def length_effect(result: Mapping[str, Any]) -> str | None:
    """How far the answers' lengths explain a significant change in accuracy, from `compare_runs`' result.

    Let d be B - A over all paired items (significant at ALPHA, else there is nothing to explain: None),
    d_f the same among items finished in both runs with its own paired test's p_f, and t_A, t_B the
    truncated shares. With s the sign of d:

      "holds":   p_f < ALPHA and s * d_f >= |d| / 2 (a significant change among finished answers, in the
                 same direction and at least half the size of the overall one): the answers got better
                 (of a loss, worse), whatever their length.
      "length":  not "holds", and truncation moved the way that explains d (s * (t_A - t_B) > 0): most of
                 the gain is answers that now fit the budget (of a loss, answers that no longer fit).
      "unclear": neither: the change among finished answers is too small or uncertain to hold on its own,
                 yet truncation did not move with it (e.g. few items finished in both).

    None as well when the rows do not say which answers finished (`finished_in_both` absent).
    """
    finished = result.get("finished_in_both")
    if not result["significant"] or finished is None:
        return None
    change = result["accuracy_difference"]["value"]
    sign = 1.0 if change > 0 else -1.0
    finished_change = finished["accuracy_difference"]["value"]
    if finished["n"] and finished["p_value"] < ALPHA and sign * finished_change >= abs(change) / 2:
        return "holds"
    truncation = result["truncation"]
    return "length" if sign * (truncation["a"] - truncation["b"]) > 0 else "unclear"


def _length_sentence(result: Mapping[str, Any]) -> str:
    """The verdict's words for `length_effect` (empty when it is None)."""
    effect = result["length_effect"]
    if effect is None:
        return ""
    gain = result["accuracy_difference"]["value"] > 0
    noun = "gain" if gain else "loss"
    fin, trunc = result["finished_in_both"], result["truncation"]
    truncated = f"truncated {_pct(trunc['a'])} -> {_pct(trunc['b'])}"
    went = "no item finished in both runs"
    if fin["n"]:
        went = f"{_pct(fin['accuracy_a'])} -> {_pct(fin['accuracy_b'])} on {fin['n']} items"
        went += f" (p = {fin['p_value']:.3g})"
    if effect == "holds":
        return f"The {noun} holds among answers finished in both runs: {went}; {truncated}."
    if effect == "length":
        fit = "now fit" if gain else "no longer fit"
        return (
            f"Most of the {noun} is answers that {fit} the token budget ({truncated}): among answers "
            f"finished in both runs, {went}."
        )
    return (
        f"The {noun} is not shown among answers finished in both runs ({went}), yet truncation did not "
        f"{'fall' if gain else 'rise'} ({truncated})."
    )


def _summary(run: EvalRun, metrics: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("task", "split", "model", "checkpoint", "checkpoint_step", "temperature", "num_items")
    return {
        "name": run.name,
        "path": str(run.path),
        **{k: metrics[k] for k in keys if k in metrics},
        "accuracy": metrics["accuracy"],
        "mean_reward": metrics["mean_reward"],
        **{k: metrics[k] for k in _SUMMARY_KEYS if k in metrics},
    }


def _points(x: float) -> str:
    return f"{100 * x:+.1f}"


def _verdict(result: Mapping[str, Any]) -> str:
    diff = result["accuracy_difference"]
    p = result["p_value"]
    test = "exact McNemar" if result["test"] == "mcnemar_exact" else "paired permutation test"
    where = (
        f"{_points(diff['value'])} points (95% CI {_points(diff['ci_low'])} to {_points(diff['ci_high'])})"
    )
    if not result["significant"]:
        text = (
            f"No significant difference in accuracy at the {ALPHA:.0%} level: B - A = {where}, p = {p:.3g}."
        )
    else:
        better = "better" if diff["value"] > 0 else "worse"
        text = f"B is {better} than A: accuracy B - A = {where}, p = {p:.3g} ({test})."
    reward_p = result["reward_permutation_p"]
    if (reward_p < ALPHA) != result["significant"]:
        rd = result["reward_difference"]
        significant = "significant" if reward_p < ALPHA else "not significant"
        text += f" Mean reward B - A = {rd['value']:+.3f} is {significant} (p = {reward_p:.3g})."
    length = _length_sentence(result)
    return f"{text} {length}" if length else text


# ---------------------------------------------------------------------------------------------- report


def write_report(
    a: EvalRun, b: EvalRun, result: Mapping[str, Any], out: str | Path, *, examples: int = 3
) -> Path:
    """report.md with the plots beside it (accuracy, lengths, training curves, levels); returns its path."""
    from rlvr_jax.evaluation import plots
    from rlvr_jax.monitoring.metrics import read_metrics

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = _labels(a, b)
    figures: list[tuple[str, str]] = []

    runs = []
    for name, side in zip(names, ("a", "b"), strict=True):
        acc = result[side]["accuracy"]
        runs.append(
            {
                "name": name,
                "value": acc["value"],
                "low": acc["ci_low"],
                "high": acc["ci_high"],
                "n": result[side]["num_items"],
            }
        )
    mc = result.get("mcnemar")
    outcomes = (
        (mc["both_pass"], mc["only_a_passes"], mc["only_b_passes"], mc["neither_passes"]) if mc else None
    )
    plots.plot_accuracy(runs, out / "accuracy.png", outcomes=outcomes, p_value=result["p_value"])
    figures.append(("Accuracy with 95% intervals", "accuracy.png"))

    lengths = {
        name: [int(r["num_tokens"]) for r in run.rows if "num_tokens" in r]
        for name, run in zip(names, (a, b), strict=True)
    }
    finished = {  # the truncated share in the figure is the one metrics.json reports
        name: [bool(r["finished"]) for r in run.rows if "num_tokens" in r]
        for name, run in zip(names, (a, b), strict=True)
        if all("finished" in r for r in run.rows if "num_tokens" in r)
    }
    if all(lengths.values()):
        max_new = a.metrics.get("max_new_tokens") or b.metrics.get("max_new_tokens")
        plots.plot_lengths(lengths, out / "lengths.png", max_new_tokens=max_new, finished=finished)
        figures.append(("Response lengths", "lengths.png"))

    # Training reward curves: one per distinct training run, in the colour of the run it led to (a
    # before / after comparison of one training run draws that run once, in B's colour).
    curves: dict[str, list[dict[str, Any]]] = {}
    colors: list[str] = []
    sources = [run.training_metrics() for run in (a, b)]
    shared = (
        sources[0] is not None and sources[1] is not None and sources[0].resolve() == sources[1].resolve()
    )
    for index in (1,) if shared else (0, 1):
        source = sources[index]
        rows = read_metrics(source) if source is not None else []
        if rows:
            curves[f"training: {source.parent.name}" if shared else names[index]] = rows
            colors.append(plots.color_for(index))
    if curves:
        plots.plot_training_curves(curves, out / "training_curves.png", colors=colors)
        figures.append(("Training curves", "training_curves.png"))

    if "by_level" in result["a"] and "by_level" in result["b"]:
        levels = {
            name: {
                lv: {"value": v["value"], "low": v["ci_low"], "high": v["ci_high"], "n": v["n"]}
                for lv, v in result[side]["by_level"].items()
            }
            for name, side in zip(names, ("a", "b"), strict=True)
        }
        plots.plot_by_level(levels, out / "by_level.png")
        figures.append(("Accuracy by level", "by_level.png"))

    path = out / "report.md"
    path.write_text(_markdown(a, b, names, result, figures, examples), encoding="utf-8")
    return path


def _labels(a: EvalRun, b: EvalRun) -> tuple[str, str]:
    if a.name != b.name:
        return f"A: {a.name}", f"B: {b.name}"
    return f"A: {a.path}", f"B: {b.path}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _markdown(a, b, names, result, figures, examples: int) -> str:
    lines = [f"# {names[1]} vs {names[0]}", ""]
    task = result["a"].get("task", "?")
    lines += [
        f"Task **{task}**, split **{result['a'].get('split', '?')}**, {result['paired_items']} paired items.",
        "",
    ]
    lines += [f"**{result['verdict']}**", ""]
    lines += [
        "| run | items | accuracy | 95% CI | mean reward | mean tokens | truncated "
        "| accuracy among finished |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, side in zip(names, ("a", "b"), strict=True):
        s = result[side]
        acc = s["accuracy"]
        tokens = s.get("response_tokens", {}).get("mean")
        done = s.get("accuracy_finished")
        finished = "" if done is None else f"{_pct(done['value'])} (n={done['n']})"
        lines.append(
            f"| {name} | {s['num_items']} | {_pct(acc['value'])} "
            f"| [{_pct(acc['ci_low'])}, {_pct(acc['ci_high'])}] "
            f"| {s['mean_reward']['value']:.3f} | {'' if tokens is None else f'{tokens:.0f}'} "
            f"| {_pct(s.get('truncation_rate'))} "
            f"| {finished} |"
        )
    lines.append("")
    method = result["a"]["accuracy"]["method"]
    method = "Wilson score interval" if method == "wilson" else method
    lines.append(
        f"Accuracy intervals: {method}; a pass is a reward of at least 0.999. Truncated: answers the token "
        "budget cut off (scored as they stand, usually 0); accuracy among finished counts the others only."
    )
    diff = result["accuracy_difference"]
    lines += [
        "",
        "## Difference (B - A)",
        "",
        f"- accuracy: {_points(diff['value'])} points, "
        f"95% CI [{_points(diff['ci_low'])}, {_points(diff['ci_high'])}] "
        f"({diff['method']})",
    ]
    mc = result.get("mcnemar")
    if mc:
        lines.append(
            f"- exact McNemar test: {mc['only_b_passes']} items pass only in B, "
            f"{mc['only_a_passes']} only in A "
            f"({mc['both_pass']} pass in both, {mc['neither_passes']} in neither): p = {mc['p_value']:.4g}"
        )
    else:
        lines.append(
            f"- paired permutation test on per-item pass rates: p = {result['accuracy_permutation_p']:.4g}"
        )
    fin = result.get("finished_in_both")
    if fin is not None:
        trunc = result["truncation"]
        lines.append(f"- truncated answers: {_pct(trunc['a'])} (A) -> {_pct(trunc['b'])} (B)")
        fd = fin["accuracy_difference"]
        test = (
            f"exact McNemar p = {fin['p_value']:.4g} ({fin['only_b_passes']} pass only in B, "
            f"{fin['only_a_passes']} only in A)"
            if fin["test"] == "mcnemar_exact"
            else f"paired permutation test p = {fin['p_value']:.4g}"
        )
        lines.append(
            f"- among the {fin['n']} items finished in both runs: accuracy {_pct(fin['accuracy_a'])} -> "
            f"{_pct(fin['accuracy_b'])}, {_points(fd['value'])} points, 95% CI "
            f"[{_points(fd['ci_low'])}, {_points(fd['ci_high'])}]; {test}"
        )
    rd = result["reward_difference"]
    lines.append(
        f"- mean reward: {rd['value']:+.3f}, 95% CI [{rd['ci_low']:+.3f}, {rd['ci_high']:+.3f}]; "
        f"paired permutation test p = {result['reward_permutation_p']:.4g}"
    )
    for side in ("a", "b"):
        if "pass_at_k" in result[side]:
            ks = ", ".join(f"pass@{k} {_pct(v)}" for k, v in result[side]["pass_at_k"].items())
            lines.append(f"- {names[0 if side == 'a' else 1]}: {ks}")
    if result["warnings"]:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in result["warnings"]]
    lines.append("")
    for title, file in figures:
        lines += [f"## {title}", "", f"![{title}]({file})", ""]
    lines += _examples(a, b, names, examples)
    return "\n".join(lines) + "\n"


def _examples(a: EvalRun, b: EvalRun, names, count: int) -> list[str]:
    """A few items where the runs disagree, so a reader can see what changed."""
    if count <= 0:
        return []
    items_a, items_b = group_by_item(a.rows), group_by_item(b.rows)
    shared = [i for i in items_a if i in items_b]
    lines: list[str] = []
    for title, want_b in (
        (f"Items only {names[1]} gets right", True),
        (f"Items only {names[0]} gets right", False),
    ):
        chosen = [
            i
            for i in shared
            if passed(float(items_b[i][0]["reward"])) == want_b
            and passed(float(items_a[i][0]["reward"])) != want_b
        ][:count]
        if not chosen:
            continue
        lines += [f"## {title}", ""]
        for i in chosen:
            ra, rb = items_a[i][0], items_b[i][0]
            lines += [f"**{i}**: {_clip(ra.get('prompt', ''), 300)}", ""]
            for name, row in ((names[0], ra), (names[1], rb)):
                lines += [
                    f"- {name} (reward {float(row['reward']):.2f}, {row.get('reason', '')}):",
                    "",
                    "  ```",
                    *[f"  {line}" for line in _clip(row.get("completion", ""), 600).splitlines()],
                    "  ```",
                    "",
                ]
    return lines


def _clip(text: str, limit: int) -> str:
    text = str(text).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."
