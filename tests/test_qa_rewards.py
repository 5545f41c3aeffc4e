"""`qa_em` / `qa_f1` (SQuAD-normalised, hand-computed values) and `label` (IMDb / SST-2 sentiment)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlvr_jax.data import get_task
from rlvr_jax.rewards import get_reward


def qa(name: str, completion: object, answers: list[str]) -> float:
    return float(get_reward(name)([completion], [{"answers": answers}]).scores[0])


# (completion, accepted answers, EM, F1), F1 worked out by hand from SQuAD's token F1:
# F1 = 2PR / (P + R) with P = common / |prediction tokens|, R = common / |gold tokens|, max over answers.
QA_CASES = [
    ("Answer: The Beatles", ["Beatles"], 1.0, 1.0),  # article dropped
    ("december 1972.", ["14 December 1972 UTC", "December 1972"], 1.0, 1.0),  # case, punctuation
    # [1972] vs [december, 1972]: P = 1, R = 1/2 -> 2/3
    ("Answer: 1972", ["December 1972"], 0.0, 2 / 3),
    # [bobby, scott, and, bob, russell] vs [bobby, scott]: P = 2/5, R = 1 -> 4/7 (same for Bob Russell)
    ("Bobby Scott and Bob Russell", ["Bobby Scott", "Bob Russell"], 0.0, 4 / 7),
    # no "Answer:" -> the first line, [i, think, answer, is, paris] vs [paris]: P = 1/5, R = 1 -> 1/3
    ("I think the answer is Paris", ["Paris"], 0.0, 1 / 3),
    # [paris, paris] vs [paris]: common counts once, P = 1/2, R = 1 -> 2/3
    ("Paris Paris", ["Paris"], 0.0, 2 / 3),
    ("Paris\nBecause it is the capital of France.", ["Paris"], 1.0, 1.0),  # first line only
    ("Let me think.\nAnswer: one season\nThat is all.", ["one", "one season"], 1.0, 1.0),
    ("<think>hmm, London?</think><answer>Paris</answer>", ["Paris"], 1.0, 1.0),
    # [new, york, city] vs [new, york]: P = 2/3, R = 1 -> 4/5
    ("Answer: New York City", ["new york"], 0.0, 4 / 5),
    ("Answer: the", ["Paris"], 0.0, 0.0),  # nothing left after normalisation
    ("Answer: Berlin", ["Paris", "Rome"], 0.0, 0.0),
]


@pytest.mark.parametrize(("completion", "answers", "em", "f1"), QA_CASES)
def test_qa_em_and_f1(completion: str, answers: list[str], em: float, f1: float) -> None:
    assert qa("qa_em", completion, answers) == pytest.approx(em)
    assert qa("qa_f1", completion, answers) == pytest.approx(f1, abs=1e-6)


# Answers that list or hedge: EM never credits them; several stated answers score 0 under F1 too.
QA_HACKS = [
    # (completion, accepted answers, EM, F1)
    ("Answer: Paris, London, Rome, Berlin", ["Paris"], 0.0, 0.4),  # [paris, london, rome, berlin]: P = 1/4
    ("Answer: Paris or London", ["Paris"], 0.0, 0.5),  # [paris, or, london]: P = 1/3, R = 1
    ("Answer: Paris / London", ["London"], 0.0, 2 / 3),
    ("<answer>Paris\nLondon\nRome</answer>", ["Rome"], 0.0, 0.5),
    ("Answer: London\nAnswer: Paris", ["Paris"], 0.0, 0.0),  # two different answers
    ("Answer: Paris\nAnswer: London", ["Paris"], 0.0, 0.0),
    ("<answer>London</answer> or maybe <answer>Paris</answer>", ["Paris"], 0.0, 0.0),
    ("<answer>Paris</answer><answer>London</answer><answer>Rome</answer>", ["Rome", "Paris"], 0.0, 0.0),
    ("Answer: " + ", ".join(f"city {i}" for i in range(200)) + ", Paris", ["Paris"], 0.0, 2 / 402),
    ("Answer: the", ["The The"], 0.0, 0.0),  # a gold that normalises to nothing is not matched by "the"
    ("Answer: .", ["The"], 0.0, 0.0),
]


@pytest.mark.parametrize(("completion", "answers", "em", "f1"), QA_HACKS, ids=lambda v: repr(v)[:40])
def test_qa_gives_lists_and_several_answers_no_exact_match(
    completion: str, answers: list[str], em: float, f1: float
) -> None:
    assert qa("qa_em", completion, answers) == em
    assert qa("qa_f1", completion, answers) == pytest.approx(f1, abs=1e-6)


def test_qa_same_answer_stated_twice_and_odd_golds() -> None:
    assert qa("qa_em", "Answer: Paris\nAnswer: paris.", ["Paris"]) == 1.0  # the same answer twice
    assert qa("qa_em", "**Answer:** Paris\n\nThe answer: Paris is the capital.", ["Paris"]) == 1.0
    assert qa("qa_em", "Answer: The The", ["The The"]) == 1.0  # the band
    assert qa("qa_f1", "Answer: The The", ["The The"]) == 1.0
    result = get_reward("qa_em")(["Answer: London\nAnswer: Paris"], [{"answers": ["Paris"]}])
    assert "several different answers ('london', 'paris')" in result.reasons[0]


def test_qa_accepts_the_answer_field_and_reports_reasons() -> None:
    result = get_reward("qa_f1")(["Answer: Paris", "Answer: Paris", None], [{"answer": "Paris"}, {}, {}])
    assert result.scores.tolist() == [1.0, 0.0, 0.0]
    assert "F1 1.000" in result.reasons[0] and "no 'answers'" in result.reasons[1] and result.reasons[2]


def test_nq_open_answers_score_one(shared_dir: Path) -> None:
    samples = get_task("nq_open").load("test", shared_dir / "data" / "nq_open", limit=300)
    completions = [f"Answer: {s['answers'][-1]}" for s in samples]
    assert get_reward("qa_em")(completions, samples).scores.min() == 1.0
    assert get_reward("qa_f1")(completions, samples).scores.min() == 1.0


# ---------------------------------------------------------------------------------------------- labels

LABEL_CASES = [
    ("positive", 1, 1.0),
    ("Negative.", 0, 1.0),
    ("Sentiment: POSITIVE", "1", 1.0),  # IMDb copy: labels are strings
    ("1", 1, 1.0),
    ("0", "0", 1.0),
    ("The review is positive overall.", 1, 1.0),
    ("The review is positive overall, despite a few negative remarks.", 1, 0.0),  # names both labels
    ("positive or negative", 1, 0.0),  # lists the labels: no answer, on either class
    ("positive or negative", 0, 0.0),
    ("Positive/Negative", 1, 0.0),
    ("positive, pos", 1, 1.0),  # two words, one label
    ("The acting is praised as positive, but... Answer: negative", 0, 1.0),  # the answer line wins
    ("positive", 0, 0.0),
    ("Answer: negative", 1, 0.0),
    ("I am not sure.", 1, 0.0),
    ("The film got 10/10 from me.", 1, 0.0),  # a rating is not a label
]


@pytest.mark.parametrize(("completion", "label", "expected"), LABEL_CASES)
def test_label(completion: str, label: object, expected: float) -> None:
    assert get_reward("label")([completion], [{"label": label}]).scores[0] == expected


def test_label_words_are_configurable() -> None:
    words = {"good": 1, "bad": 0}
    result = get_reward("label")(["good", "bad", "positive"], [{"label": 1}] * 3, label_words=words)
    assert result.scores.tolist() == [1.0, 0.0, 0.0]


@pytest.mark.parametrize(("task", "count"), [("imdb", 200), ("sst2", 872)])
def test_sentiment_tasks_score_with_label(shared_dir: Path, task: str, count: int) -> None:
    samples = get_task(task).load("test", shared_dir / "data")
    assert len(samples) == count and get_task(task).reward == "label"
    right = ["positive" if s["label"] == 1 else "negative" for s in samples]
    wrong = ["negative" if s["label"] == 1 else "positive" for s in samples]
    assert get_reward("label")(right, samples).scores.min() == 1.0
    assert get_reward("label")(wrong, samples).scores.max() == 0.0
