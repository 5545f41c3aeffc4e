"""What an evaluation reports: accuracy with its interval, pass@k, extra scores, levels, lengths.

Code tasks report two accuracies: `accuracy`, of the solution extracted from each completion (the
primary, what careful harnesses report), and `accuracy_strict`, of the whole code block run as one
program (the model's own asserts and demo calls included); see `rlvr_jax.rewards.code_extract`.

Items, not samples, are the unit of every interval: with several samples per prompt the samples of one
prompt are correlated, so treating them as independent would make intervals too narrow. One sample per
item gives the Wilson interval of a proportion; several give the mean per-item pass rate (= unbiased
pass@1) with a bootstrap over items.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from rlvr_jax.evaluation.stats import Interval, bootstrap_mean, mean_pass_at_k, wilson_interval

# A completion "passes" when its reward reaches this (1.0 for exact-match style rewards).
PASS_THRESHOLD = 0.999
CONFIDENCE = 0.95
# Fields a sample may carry that split results into groups worth reporting separately.
GROUP_FIELDS = ("level",)
# Rewards worth reporting next to a task's own: QA is scored by both exact match and token F1.
EXTRA_REWARDS = {"qa_f1": ("qa_em",), "qa_em": ("qa_f1",)}
# Options an evaluation gives a task's reward on top of the config's: the code rewards then also return
# the strict verdicts (the whole code block as the program) next to the extracted solution's.
EVAL_REWARD_OPTIONS: dict[str, dict[str, Any]] = {
    "code_humaneval": {"report_strict": True},
    "code_mbpp": {"report_strict": True},
}
# Verdicts a reward may return besides its own (`RewardResult.variants`): a row holds each as
# reward_<name>, passed_<name> and reason_<name>; metrics report accuracy_<name> next to accuracy.
VARIANTS = ("strict",)


def passed(reward: float) -> bool:
    return reward >= PASS_THRESHOLD


def truncation_rate(finished: Sequence[bool] | np.ndarray) -> float:
    """The share of completions the new-token budget cut off: those that reached it without a stop token
    (the sampler's `finished` is False); NaN for none.

    The one definition behind every truncation number: the trainer's `response/truncation_rate`, an
    evaluation's metrics.json (and so summary.json), the report's length figure. A length at the budget
    is not the test: a completion whose stop token is the budget's last token has that length, finished.
    """
    flags = np.asarray(finished, dtype=bool).reshape(-1)
    return float(1.0 - flags.mean()) if flags.size else math.nan


def group_by_item(rows: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Rows of samples.jsonl grouped by prompt id, in first-seen order, each group by sample index."""
    items: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        items[str(row["id"])].append(row)
    for group in items.values():
        group.sort(key=lambda r: int(r.get("sample_index", 0)))
    return dict(items)


def accuracy_interval(
    items: Mapping[str, Sequence[Mapping[str, Any]]], seed: int = 0, key: str = "reward"
) -> Interval:
    """Accuracy over items: Wilson with one sample each, else per-item pass rates bootstrapped over items.
    key: the row field holding the score (`reward_strict` for the strict verdicts)."""
    if not items:
        return wilson_interval(0, 0, CONFIDENCE)
    if max(len(g) for g in items.values()) == 1:
        successes = sum(passed(float(g[0][key])) for g in items.values())
        return wilson_interval(successes, len(items), CONFIDENCE)
    rates = [np.mean([passed(float(r[key])) for r in g]) for g in items.values()]
    return bootstrap_mean(rates, CONFIDENCE, seed=seed)


def pass_at_ks(items: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, float]:
    """Unbiased pass@k for k = 1, 2, 4, ... up to the fewest samples any item has (and that number itself)."""
    if not items:
        return {}
    counts = np.array([len(g) for g in items.values()])
    correct = np.array([sum(passed(float(r["reward"])) for r in g) for g in items.values()])
    k_max = int(counts.min())
    ks = sorted({2**i for i in range(int(math.log2(k_max)) + 1)} | {k_max})
    return {str(k): mean_pass_at_k(counts, correct, k) for k in ks}


def finished_accuracy(rows: Sequence[Mapping[str, Any]], seed: int = 0) -> dict[str, Any]:
    """Accuracy among the completions that finished (ended on a stop token), with `n`, the items that have
    one, and `num_samples`, the finished completions.

    Next to the plain accuracy because a budget that cuts answers off scores them 0: a model that only
    learns to answer shorter gains accuracy without answering better, and this number does not move then.
    Same interval rules as `accuracy_interval`, over the finished completions only; NaN with none.
    """
    done = [r for r in rows if r["finished"]]
    items = group_by_item(done)
    return {**accuracy_interval(items, seed).to_dict(), "n": len(items), "num_samples": len(done)}


def tokens_to_finish(rows: Sequence[Mapping[str, Any]], share: float = 0.95) -> int | None:
    """The fewest new tokens within which `share` of the completions finished; None when fewer than that
    share finished within the budget they were generated with.

    What choosing an evaluation budget needs: a completion that finished after n tokens (its stop token
    counted) is what any budget b >= n would have given (decoding does not look ahead; greedy gives the
    same text up to batch numerics), so one evaluation at a generous budget tells the finished share at
    every smaller one.
    """
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share}")
    lengths = sorted(int(r["num_tokens"]) if r["finished"] else math.inf for r in rows)
    if not lengths:
        return None
    needed = lengths[max(math.ceil(share * len(lengths) - 1e-9), 1) - 1]  # 0.95 * 60 is 57.000...01
    return None if math.isinf(needed) else int(needed)


def _natural_key(text: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def eval_metrics(
    rows: Sequence[Mapping[str, Any]],
    *,
    reward: str | None = None,
    extra_scores: Sequence[str] = (),
    max_new_tokens: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The metrics.json body for the rows of samples.jsonl (one row per completion).

    reward: the task's reward name; a QA reward also reports its sibling (exact match next to F1).
    extra_scores: numeric row fields to report with a bootstrap interval over items. Everything is
    recomputable from samples.jsonl alone, which is what `compare` relies on.
    """
    if reward in EXTRA_REWARDS:
        extra_scores = (*extra_scores, *EXTRA_REWARDS[reward])
    items = group_by_item(rows)
    per_item_reward = [float(np.mean([r["reward"] for r in g])) for g in items.values()]
    lengths = np.array([int(r["num_tokens"]) for r in rows]) if rows else np.zeros(0, int)
    finished = np.array([bool(r["finished"]) for r in rows]) if rows else np.zeros(0, bool)
    samples_per_item = sorted({len(g) for g in items.values()})
    out: dict[str, Any] = {
        "num_items": len(items),
        "num_samples": len(rows),
        "samples_per_item": samples_per_item[0] if len(samples_per_item) == 1 else samples_per_item,
        "accuracy": accuracy_interval(items, seed).to_dict(),
        "mean_reward": bootstrap_mean(per_item_reward, CONFIDENCE, seed=seed).to_dict(),
    }
    for variant in VARIANTS:
        if rows and all(f"reward_{variant}" in r for r in rows):
            out[f"accuracy_{variant}"] = accuracy_interval(items, seed, key=f"reward_{variant}").to_dict()
    if samples_per_item and samples_per_item[-1] > 1:
        out["pass_at_k"] = pass_at_ks(items)
    for name in extra_scores:
        per_item = [float(np.mean([r[name] for r in g])) for g in items.values() if name in g[0]]
        if per_item:
            out[name] = bootstrap_mean(per_item, CONFIDENCE, seed=seed).to_dict()
    for field in GROUP_FIELDS:
        groups: dict[str, dict[str, list[Mapping[str, Any]]]] = defaultdict(dict)
        for item_id, g in items.items():
            if g[0].get(field) is not None:
                groups[str(g[0][field])][item_id] = g
        if groups:
            out[f"by_{field}"] = {
                name: {**accuracy_interval(groups[name], seed).to_dict(), "n": len(groups[name])}
                for name in sorted(groups, key=_natural_key)
            }
    if rows:
        out["response_tokens"] = {
            "mean": float(lengths.mean()),
            "median": float(np.median(lengths)),
            "p90": float(np.percentile(lengths, 90)),
            "max": int(lengths.max()),
        }
        out["truncation_rate"] = truncation_rate(finished)
        out["accuracy_finished"] = finished_accuracy(rows, seed)
        out["tokens_for_95_finished"] = tokens_to_finish(rows, 0.95)
    if max_new_tokens is not None:
        out["max_new_tokens"] = int(max_new_tokens)
    return out


def flat_summary(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The scalars a training run logs per evaluation (metrics.jsonl, TensorBoard) from `eval_metrics`."""
    acc = metrics["accuracy"]
    out = {
        "accuracy": acc["value"],
        "accuracy_ci_low": acc["ci_low"],
        "accuracy_ci_high": acc["ci_high"],
        "reward": metrics["mean_reward"]["value"],
        "n": metrics["num_items"],
    }
    out.update(
        {f"accuracy_{v}": metrics[f"accuracy_{v}"]["value"] for v in VARIANTS if f"accuracy_{v}" in metrics}
    )
    if "response_tokens" in metrics:
        out["mean_tokens"] = metrics["response_tokens"]["mean"]
        out["truncation_rate"] = metrics["truncation_rate"]
    if "accuracy_finished" in metrics:
        # Undefined (NaN) with no finished answer: left out then, as JSON logs, the Pushgateway and the
        # exact-resume comparison of metrics.jsonl all need real numbers; n_finished = 0 says why.
        finished = metrics["accuracy_finished"]
        if finished["n"]:
            out["accuracy_finished"] = finished["value"]
        out["n_finished"] = finished["n"]
    for k, v in metrics.get("pass_at_k", {}).items():
        out[f"pass@{k}"] = v
    return out
