"""Short-answer rewards: `qa_em` / `qa_f1` (open QA, SQuAD-normalised) and `label` (sentiment classification).

The model's answer is the text of an `<answer>...</answer>` tag, else what follows "Answer:", else the first
non-empty line: models tend to answer first and explain after, and scoring the explanation would reward
verbosity under F1 and fail under EM. A completion that states several different answers (two "Answer:"
lines, two tags) scores 0 under both: hedging must not pay. EM compares the whole normalised answer, so a
list of candidates ("Paris, London, Rome") never matches one gold; F1 gives it the partial credit its
precision earns. Text that normalises to nothing ("the", ".") is compared as written, so it does not
equal every gold answer that also normalises to nothing (the band "The The").
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from rlvr_jax.rewards.base import RewardResult, register_reward
from rlvr_jax.rewards.shaping import score_batch

_ANSWER_TAG_RE = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.IGNORECASE | re.DOTALL)
_ANSWER_LINE_RE = re.compile(r"(?:^|\b)(?:final\s+)?answer\s*:\s*([^\n]*)", re.IGNORECASE)
# "Answer:" at the start of a line (markdown around it allowed): what the prompts ask for, and what counts
# as a statement when a completion has several.
_ANSWER_START_RE = re.compile(r"^[^\w\n]*(?:final\s+)?answer\s*:\s*([^\n]*)", re.IGNORECASE | re.MULTILINE)
_ARTICLES_RE = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lowercase, drop punctuation, drop the articles a/an/the, squeeze whitespace."""
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES_RE.sub(" ", text).split())


def stated_short_answers(text: str) -> list[str]:
    """Every answer the completion states, in order: its non-empty `<answer>` tags, else its lines that
    start with "Answer:", else the last "answer:" inside a line ("The answer: Paris"), else its first
    non-empty line."""
    tags = [t.strip() for t in _ANSWER_TAG_RE.findall(text) if t.strip()]
    if tags:
        return tags
    lines = [line.strip() for line in _ANSWER_START_RE.findall(text) if line.strip()]
    if lines:
        return lines
    inline = [line.strip() for line in _ANSWER_LINE_RE.findall(text) if line.strip()]
    if inline:
        return inline[-1:]
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return [first] if first else []


def extract_short_answer(text: str) -> str:
    """The answer part of a completion: the last one it states (see the module docstring for the order)."""
    answers = stated_short_answers(text)
    return answers[-1] if answers else ""


def _comparable(text: str) -> str:
    """The normalised text, or, where normalising leaves nothing (a gold answer "The The"), the text as
    written in lower case without surrounding space."""
    return normalize_answer(text) or text.strip().lower()


def exact_match(prediction: str, gold: str) -> float:
    """1 for the same normalised answer (see `_comparable` for answers that normalise to nothing)."""
    return float(_comparable(prediction) == _comparable(gold))


def token_f1(prediction: str, gold: str) -> float:
    """SQuAD token F1 of the normalised strings (see `_comparable` for answers that normalise to nothing:
    "the" or "." no longer equal every such gold)."""
    pred_tokens = normalize_answer(prediction).split() or [_comparable(prediction)]
    gold_tokens = normalize_answer(gold).split() or [_comparable(gold)]
    common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_tokens), common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def gold_answers(sample: Mapping[str, Any]) -> list[str]:
    """Accepted answers of a sample: `answers` (a list), else `answer` (a string or a list)."""
    golds = sample.get("answers", sample.get("answer"))
    if isinstance(golds, str):
        golds = [golds]
    if not isinstance(golds, Sequence):
        return []
    return [g for g in golds if isinstance(g, str)]


def _qa_reward(
    completions: Sequence[Any], samples: Sequence[Mapping[str, Any]], metric: Any, name: str
) -> RewardResult:
    def one(text: str, sample: Mapping[str, Any]) -> tuple[float, str]:
        golds = gold_answers(sample)
        if not golds:
            return 0.0, "sample has no 'answers'"
        answers = stated_short_answers(text)
        if not answers:
            return 0.0, "no answer found"
        distinct = list(dict.fromkeys(_comparable(a) for a in answers))
        if len(distinct) > 1:
            shown = ", ".join(repr(a[:30]) for a in distinct[:4])
            return 0.0, f"several different answers ({shown}{', ...' if len(distinct) > 4 else ''})"
        prediction = answers[-1]
        score, best = max((metric(prediction, g), g) for g in golds)
        return score, f"{name} {score:.3f}: {prediction[:60]!r} vs {best[:60]!r}"

    return score_batch(completions, samples, one)


@register_reward("qa_em")
def qa_em_reward(completions: Sequence[Any], samples: Sequence[Mapping[str, Any]], **_: Any) -> RewardResult:
    """1 where the normalised answer equals any accepted answer (max over `answers`)."""
    return _qa_reward(completions, samples, exact_match, "EM")


@register_reward("qa_f1")
def qa_f1_reward(completions: Sequence[Any], samples: Sequence[Mapping[str, Any]], **_: Any) -> RewardResult:
    """Best token F1 of the normalised answer against the accepted answers: partial credit for near misses."""
    return _qa_reward(completions, samples, token_f1, "F1")


# ---------------------------------------------------------------------------------------------- labels

# Words a sentiment classifier may answer with, and the label id each stands for.
DEFAULT_LABEL_WORDS: dict[str, int] = {"positive": 1, "negative": 0, "pos": 1, "neg": 0}
_LABEL_ANCHOR_RE = re.compile(r"\b(?:answer|sentiment|label)\s*(?:is)?\s*:?", re.IGNORECASE)


def gold_label(value: Any, label_words: Mapping[str, int]) -> int | None:
    """A sample's label as an int: 0/1 ints, "0"/"1" strings (IMDb copies) or a label word."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text.lstrip("-").isdigit():
            return int(text)
        return label_words.get(text)
    return None


def predicted_label(text: str, label_words: Mapping[str, int]) -> int | None:
    """The label the completion gives: the one label its words name after the last "Answer:/Sentiment:"
    (or in the whole text without one), or a bare label id such as "1" as the entire answer.

    Words naming two different labels there ("positive or negative", "positive, despite negative
    remarks") give None: only a clearly stated label is credited, else an answer listing every label would
    score on every item of its first label's class."""
    anchors = list(_LABEL_ANCHOR_RE.finditer(text))
    region = text[anchors[-1].end() :] if anchors else text
    bare = region.strip().strip(string.punctuation + " \n")
    if len(bare) <= 3 and bare.lstrip("-").isdigit() and int(bare) in label_words.values():
        return int(bare)
    words = "|".join(re.escape(w) for w in sorted(label_words, key=len, reverse=True))
    named = {label_words[w.lower()] for w in re.findall(rf"\b({words})\b", region, re.IGNORECASE)}
    return named.pop() if len(named) == 1 else None


@register_reward("label")
def label_reward(
    completions: Sequence[Any],
    samples: Sequence[Mapping[str, Any]],
    label_words: Mapping[str, int] | None = None,
    **_: Any,
) -> RewardResult:
    """1 where the completion names the sample's `label` (positive/negative words or the label id) and no
    other label (`predicted_label`)."""
    words = {k.lower(): int(v) for k, v in (label_words or DEFAULT_LABEL_WORDS).items()}

    def one(text: str, sample: Mapping[str, Any]) -> tuple[float, str]:
        gold = gold_label(sample.get("label"), words)
        if gold is None:
            return 0.0, f"sample label {sample.get('label')!r} is not a known label"
        pred = predicted_label(text, words)
        if pred is None:
            return 0.0, "no single label in the completion"
        return (1.0, f"correct label {pred}") if pred == gold else (0.0, f"wrong label {pred}, gold {gold}")

    return score_batch(completions, samples, one)
