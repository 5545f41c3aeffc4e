"""Held-out means held out: evaluation items are unique and none asks a question that training asks.

A procedural generator with a small problem space repeats questions within a split and across splits,
whatever seeds the splits draw from (reasoning-gym's `basic_arithmetic` with 1 digit and 2 terms: 871 of
its 1,000 test questions are among the 10,000 training ones); a data set with only a test file has its
training split carved from that file. Either way an accuracy "on held-out items" would partly measure
items the model was trained on. So the trainer and `scripts/evaluate.py` pass the evaluation split
through `drop_seen` before they use it: an item is removed when its normalised question equals an earlier
evaluation item's (the first is kept) or any training prompt's. They say how many went in one line
(`HeldOutReport.line`) and record the counts in the evaluation's metrics.json (`"held_out"`).

Normalisation (`normalise_question`), chosen to merge only what is the same question:
  every task    whitespace collapsed to one space, case folded (Unicode `casefold`).
  procedural    (`Task.procedural`, such as `arithmetic`) also numbers written as their value ("04" ->
                "4", "2.50" -> "2.5") and the spaces around operators and brackets dropped, so
                "Calculate 3 + 04." and "calculate 3+4." are one question. Safe there because a generated
                question's meaning is its numbers and operators; in natural-language tasks it is not done,
                where "version 1.0" and "version 1", or "a - b" and "a-b", can be different questions;
                there only layout (spacing, line breaks, case) is taken for noise.
The question compared is the rendered prompt (`question_text`): one task renders every split with the same
template, so equal prompts mean equal questions, and every task's samples have a prompt.

Code tasks need more than text: HumanEval and MBPP share problems in different words. See
`rlvr_jax.evaluation.contamination` and `scripts/evaluate.py --exclude`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from typing import Any

from rlvr_jax.data.loaders import DataError

Sample = dict[str, Any]

_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_SPACED_SYMBOL = re.compile(r"\s*([^\w\s])\s*")


def _canonical_number(match: re.Match[str]) -> str:
    whole, _, fraction = match.group(0).partition(".")
    whole = whole.lstrip("0") or "0"
    fraction = fraction.rstrip("0")
    return f"{whole}.{fraction}" if fraction else whole


def normalise_question(text: str, procedural: bool = False) -> str:
    """The form two questions are compared in (module docstring): whitespace collapsed, case folded; for
    procedural tasks numbers by value and no spaces around symbols."""
    text = " ".join(text.split()).casefold()
    if procedural:
        text = _NUMBER.sub(_canonical_number, text)
        text = _SPACED_SYMBOL.sub(r"\1", text)
    return text


def question_text(sample: Sample) -> str:
    """A sample's prompt as text: a string as is, a list of chat messages as its JSON."""
    prompt = sample["prompt"]
    return prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False, sort_keys=True)


@dataclasses.dataclass(frozen=True)
class HeldOutReport:
    """What `drop_seen` removed from one evaluation split, and what is left to evaluate.

    loaded: items the split had. repeated: removed as repeats of an earlier item of the split.
    seen_in_training: removed because a training prompt asks the same question. kept: what remains.
    evaluated: the kept items used (`limit` of them at most). train_pool: training prompts compared
    against; None when no training check ran (`skipped` says why).
    """

    split: str
    loaded: int
    repeated: int
    seen_in_training: int
    kept: int
    evaluated: int
    limit: int | None
    train_pool: int | None
    procedural: bool
    skipped: str | None = None

    def line(self) -> str:
        """One line for the console, such as (the quickstart) "held-out test: removed 0 repeated and 871
        seen-in-training items of 1000; 129 remain, the first 96 evaluated (limit 96)"."""
        seen = "seen-in-training"
        if self.skipped is not None:
            seen += f" (not checked: {self.skipped})"
        text = (
            f"held-out {self.split}: removed {self.repeated} repeated and {self.seen_in_training} {seen} "
            f"items of {self.loaded}; {self.kept} remain"
        )
        if self.limit is not None and self.kept > self.limit:
            text += f", the first {self.evaluated} evaluated (limit {self.limit})"
        elif self.limit is not None and self.kept < self.limit:
            text += f", fewer than the {self.limit} asked for"
            if self.loaded >= self.limit:
                text += " because of the removals"
        return text

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def drop_seen(
    train: Sequence[Sample], evals: Sequence[Sample], procedural: bool = False
) -> tuple[list[Sample], dict[str, int]]:
    """(kept evaluation items in their order, counts {"repeated", "seen_in_training"}): an item goes when
    its normalised question (`normalise_question` of `question_text`) equals any of `train`'s (seen in
    training) or an earlier evaluation item's (repeated; the first is kept)."""
    seen = {normalise_question(question_text(s), procedural) for s in train}
    first: set[str] = set()
    kept: list[Sample] = []
    counts = {"repeated": 0, "seen_in_training": 0}
    for sample in evals:
        key = normalise_question(question_text(sample), procedural)
        if key in seen:
            counts["seen_in_training"] += 1
        elif key in first:
            counts["repeated"] += 1
        else:
            first.add(key)
            kept.append(sample)
    return kept, counts


def held_out_split(
    train: Sequence[Sample] | None,
    evals: Sequence[Sample],
    *,
    split: str,
    procedural: bool = False,
    limit: int | None = None,
    skipped: str | None = None,
) -> tuple[list[Sample], HeldOutReport]:
    """The evaluation items to use and the report: `drop_seen` against `train` (None: only repeats are
    removed, and `skipped` says why), then the first `limit`. No item left is an error that says what to
    change, since an accuracy over nothing, or over trained items, is not a held-out number."""
    kept, counts = drop_seen(train or (), evals, procedural)
    used = kept[:limit] if limit is not None else kept
    report = HeldOutReport(
        split=split, loaded=len(evals), repeated=counts["repeated"],
        seen_in_training=counts["seen_in_training"], kept=len(kept), evaluated=len(used), limit=limit,
        train_pool=None if train is None else len(train), procedural=procedural, skipped=skipped,
    )  # fmt: skip
    if not used:
        raise DataError(
            f"{report.line()}: no held-out item is left. Evaluate a split training does not read "
            "(data.eval_split; `validation` is carved apart from `train`), or give more or harder items "
            "(for a procedural task: a larger difficulty in data.options)"
        )
    return used, report
