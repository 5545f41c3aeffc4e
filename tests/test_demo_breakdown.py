"""benchmarks/demo_breakdown.py: a gain that is only a new default label or shorter answers shows as such."""

from __future__ import annotations

import pytest

from benchmarks.demo_breakdown import breakdown, predicted


def row(item: str, passed: bool, reason: str, finished: bool = True, tokens: int = 2) -> dict:
    return {"id": item, "passed": passed, "reason": reason, "finished": finished, "num_tokens": tokens}


def test_always_positive_is_half_right_and_reads_as_one_label_for_everything():
    labels = {"a": 1, "b": 1, "c": 0, "d": 0}
    rows = {
        "a": row("a", True, "correct label 1"),
        "b": row("b", True, "correct label 1", finished=False, tokens=16),
        "c": row("c", False, "wrong label 1, gold 0"),
        "d": row("d", False, "no single label in the completion", finished=False, tokens=16),
    }
    out = breakdown(rows, labels)
    assert out["accuracy"] == 0.5 and out["balanced_accuracy"] == 0.5
    assert out["per_class_accuracy"] == {"0": 0.0, "1": 1.0}
    assert out["predicted_share"] == {"1": 0.75, "none": 0.25}
    assert out["truncated_share"] == 0.5
    assert (out["finished_correct"], out["finished"], out["accuracy_among_finished"]) == (1, 2, 0.5)
    assert out["mean_response_tokens"] == 9.0


def test_without_labels_only_the_length_breakdown():
    rows = {"x": row("x", False, "no number", finished=False, tokens=24)}
    out = breakdown(rows, None)
    assert "per_class_accuracy" not in out
    assert out["truncated_share"] == 1.0 and out["accuracy_among_finished"] is None


@pytest.mark.parametrize(
    ("reason", "label"),
    [("correct label 1", "1"), ("wrong label 0, gold 1", "0"), ("no single label in the completion", "none")],
)
def test_predicted_label_is_read_from_the_reason(reason: str, label: str):
    assert predicted(reason) == label
