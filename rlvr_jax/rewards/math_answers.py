"""Math answer rewards: `numeric` (GSM8K-style single numbers) and `math` (symbolic, through math-verify).

`numeric` is a pure-regex scorer (tens of thousands of samples per second) for tasks whose gold answer is
one number. It extracts the model's final answer in this order of trust and compares exact rationals:
  1. `#### N` (the GSM8K convention; the last such line; markdown headings such as `#### Step 2` are not it),
  2. the last `\\boxed{...}` (LaTeX fractions, `{,}` separators, `\\$`, `\\%`, `\\text{}` units understood),
  3. "the answer is N" / "answer: N" (the last such phrase that has a number after it),
  4. the last number anywhere in the text.
An explicit answer marker wins over numbers elsewhere: a model that restates the question's numbers after
its marked answer is judged by the marked answer. A marked answer with several different numbers in it
(`\\boxed{5 or 6}`, `#### 5 or 6`) scores 0: hedging must not pay.

`math` extracts and compares with math-verify (sympy), so `\\frac{1}{2}`, `0.5`, `\\dfrac12` and
`\\left(1, 2\\right)` vs `(1,2)` agree. sympy makes it one to two orders of magnitude slower than
`numeric`, except where `integer_shortcut` can decide exactly as math-verify would without it.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

from rlvr_jax.rewards.base import RewardResult, register_reward
from rlvr_jax.rewards.shaping import score_batch

# ------------------------------------------------------------------------------------------ numbers

# A number as people and models write it: optional sign (not after a word, digit or closing bracket, so the
# minus of "5-3" is an operator), optional currency, thousands separators, decimals, and an optional
# "/ denominator". Units and percent signs around it are simply not part of the match.
NUMBER_RE = re.compile(
    r"""
    (?:(?<![\w)\]}])(?P<sign>[-−+])\s?)?
    \$?\s?
    (?P<body>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|(?<!\d)\.\d+)
    (?:\s?/\s?(?P<den>\d+(?:\.\d+)?))?
    """,
    re.VERBOSE | re.ASCII,
)

# "#### N" lines; a "####" line that does not start with a number is a markdown heading ("#### Step 1"),
# and so is one that starts like a numbered heading ("#### 2. Compute the cost").
_HASHES_RE = re.compile(r"####[ \t]*([-−+*$\\]*[ \t]*\.?\d[^\n]*)")
_NUMBERED_HEADING_RE = re.compile(r"\d+[.):]\s+[A-Za-z]")
_ANSWER_IS_RE = re.compile(r"\banswer\b(?:\s+(?:is|was|would be|will be))?\s*(?:[:=]|is)?\s*", re.IGNORECASE)
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_LATEX_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_LATEX_SHORT_FRAC_RE = re.compile(r"\\[dt]?frac\s*(\d)\s*(\d)")
_LATEX_TEXT_RE = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{[^{}]*\}")
_LATEX_NOISE_RE = re.compile(r"\\[,;:! ]|\\left|\\right|\\(?=[$%])")
_SENTENCE_END_RE = re.compile(r"\n|[.!?;](?:\s|$)|,\s|\b(?:because|since|as)\b")
_ANSWER_WINDOW = 80  # characters after "the answer is" that may hold the number
_HEDGE_RE = re.compile(r"\bor\b", re.IGNORECASE)
# Longer digit strings are not answers (and Python refuses to convert > 4300 digits).
MAX_DIGITS = 100
# How many trailing \boxed{ starts `last_boxed` tries: unclosed ones each scan to the end of the text.
_MAX_BOXED_TRIES = 8


def to_number(match: re.Match[str]) -> Fraction | None:
    """The exact rational a `NUMBER_RE` match denotes; None for a zero denominator or an absurdly long one."""
    if len(match["body"]) > MAX_DIGITS or len(match["den"] or "") > MAX_DIGITS:
        return None
    value = Fraction(match["body"].replace(",", ""))
    if match["den"] is not None:
        den = Fraction(match["den"])
        if den == 0:
            return None
        value /= den
    return -value if match["sign"] in ("-", "−") else value


def numbers_in(text: str) -> list[Fraction]:
    return [v for m in NUMBER_RE.finditer(text) if (v := to_number(m)) is not None]


def format_number(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    as_float = float(value)
    return f"{as_float:g}" if Fraction(as_float) == value else f"{value.numerator}/{value.denominator}"


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` / `\\fbox{...}` with balanced braces; None when there is none."""
    for match in list(_BOXED_RE.finditer(text))[::-1][:_MAX_BOXED_TRIES]:
        depth, start = 1, match.end()
        for k in range(start, len(text)):
            if text[k] == "{":
                depth += 1
            elif text[k] == "}":
                depth -= 1
                if depth == 0:
                    return text[start:k]
    return None


def simplify_latex(latex: str) -> str:
    """A LaTeX answer rewritten as plain text numbers: `\\frac{a}{b}` -> `a/b`, `1{,}000` -> `1,000`, ..."""
    text = latex.replace("{,}", ",")
    text = _LATEX_TEXT_RE.sub(" ", text)
    text = _LATEX_FRAC_RE.sub(r"(\1)/(\2)", text)
    text = _LATEX_SHORT_FRAC_RE.sub(r"\1/\2", text)
    text = _LATEX_NOISE_RE.sub("", text)
    # "(3)/(4)" from a fraction of plain numbers -> "3/4"; anything else stays and reads as several numbers.
    return re.sub(r"\((-?[\d.,]+)\)/\(([\d.,]+)\)", r"\1/\2", text)


def single_number(segment: str) -> tuple[Fraction | None, str]:
    """The one number of a marked final answer, or None and why (no number, or several different ones)."""
    if "=" in segment:  # "x = 5": the value is on the right of the last equals sign
        segment = segment.rsplit("=", 1)[1]
    values = list(dict.fromkeys(numbers_in(segment)))
    if not values:
        return None, "no number in it"
    if len(values) > 1:
        return None, f"several numbers in it ({', '.join(format_number(v) for v in values[:4])})"
    return values[0], ""


def answer_phrase_number(window: str) -> Fraction | None:
    """The number right after "the answer is": the first one of the sentence, or of its last `= ...` part
    ("the answer is 5 - 3 = 2" means 2, while "the answer is 5 because 2 + 3 = 5" means 5)."""
    sentence = _SENTENCE_END_RE.split(simplify_latex(window), 1)[0]
    if "=" in sentence:
        sentence = sentence.rsplit("=", 1)[1]
    first = NUMBER_RE.search(sentence)
    return to_number(first) if first is not None else None


def hashes_number(segment: str) -> tuple[Fraction | None, str]:
    """The number of a `#### ...` line: its first one, as GSM8K's own evaluation reads it ("#### 18 dollars
    (9 * 2)" is 18), the right side of an `=`, or no answer when it hedges ("#### 5 or 6")."""
    if _HEDGE_RE.search(segment):
        return single_number(segment)
    if "=" in segment:
        segment = segment.rsplit("=", 1)[1]
    first = NUMBER_RE.search(segment)
    value = to_number(first) if first is not None else None
    return value, "" if value is not None else "no number in it"


def extract_number(text: str) -> tuple[Fraction | None, str]:
    """The model's final numeric answer and where it came from (see the module docstring for the order)."""
    hashes = [h for h in _HASHES_RE.findall(text) if not _NUMBERED_HEADING_RE.match(h)]
    if hashes:
        value, why = hashes_number(hashes[-1])
        return value, "####" if value is not None else f"'####' answer with {why}"
    boxed = last_boxed(text)
    if boxed is not None:
        value, why = single_number(simplify_latex(boxed))
        return value, "\\boxed" if value is not None else f"\\boxed answer with {why}"
    for match in reversed(list(_ANSWER_IS_RE.finditer(text))):
        value = answer_phrase_number(text[match.end() : match.end() + _ANSWER_WINDOW])
        if value is not None:
            return value, "'answer is'"
    values = numbers_in(text)
    if values:
        return values[-1], "last number"
    return None, "no number in the completion"


@functools.lru_cache(maxsize=65536)
def gold_number(gold: str) -> Fraction | None:
    """The gold answer of a sample as a rational: the text after `####` when present, else the whole text."""
    if "####" in gold:
        gold = gold.rsplit("####", 1)[1]
    boxed = last_boxed(gold)
    value, _ = single_number(simplify_latex(boxed if boxed is not None else gold))
    return value


def _gold_text(sample: Mapping[str, Any]) -> str | None:
    gold = sample.get("answer")
    if gold is None or isinstance(gold, bool):
        return None
    return str(gold) if not isinstance(gold, float) else repr(gold)


def _numbers_match(pred: Fraction, gold: Fraction, rel_tol: float) -> bool:
    if pred == gold:
        return True
    return rel_tol > 0 and abs(pred - gold) <= Fraction(rel_tol) * abs(gold)


@register_reward("numeric")
def numeric_reward(
    completions: Sequence[Any],
    samples: Sequence[Mapping[str, Any]],
    rel_tol: float = 0.0,
    **_: Any,
) -> RewardResult:
    """1 where the completion's final number equals the sample's `answer` (exactly, or within `rel_tol`).

    Exact rational comparison is the default because GSM8K-style golds are exact: "1.2" must not accept
    "12" or "1.19", while "5.0", "5", "$5" and "5 dollars" all equal 5 and "1/2" equals "0.5".
    """

    def one(text: str, sample: Mapping[str, Any]) -> tuple[float, str]:
        gold_text = _gold_text(sample)
        if gold_text is None:
            return 0.0, "sample has no 'answer'"
        gold = gold_number(gold_text)
        if gold is None:
            return 0.0, f"gold answer {gold_text[:40]!r} is not a single number"
        pred, source = extract_number(text)
        if pred is None:
            return 0.0, source
        if _numbers_match(pred, gold, rel_tol):
            return 1.0, f"correct: {format_number(pred)} (from {source})"
        return 0.0, f"wrong: {format_number(pred)} (from {source}), gold {format_number(gold)}"

    return score_batch(completions, samples, one)


# ------------------------------------------------------------------------------------------ math-verify

# math-verify scans the whole string with many regexes; the final answer of a long trace is near its end.
MATH_TAIL_CHARS = 8_000


def _math_verify_timeout(timeout_s: float | None) -> int | None:
    """math-verify's timeouts use SIGALRM, which only the main thread may set; elsewhere they are disabled.

    A worker thread therefore runs without a time limit: `MATH_TAIL_CHARS` and the gold cache bound the
    work, and a caller that needs a hard limit should score in a subprocess (as the code rewards do).
    """
    if timeout_s is None or timeout_s <= 0 or threading.current_thread() is not threading.main_thread():
        return None
    return max(1, round(timeout_s))


@functools.cache
def _math_verify() -> Any:
    """math-verify, imported on first use: it pulls in sympy and an ANTLR parser (about a second)."""
    import math_verify
    import math_verify.errors

    return math_verify


@functools.lru_cache(maxsize=16384)
def _parsed_gold(gold: str, timeout: int | None) -> tuple[Any, ...]:
    mv = _math_verify()
    return tuple(
        mv.parse(
            f"\\boxed{{{gold}}}",
            extraction_config=[mv.LatexExtractionConfig(), mv.ExprExtractionConfig()],
            parsing_timeout=timeout,
            raise_on_error=True,
        )
    )


def math_gold(sample: Mapping[str, Any]) -> str | None:
    """The sample's gold answer: `answer` when present, else the last `\\boxed{}` of `solution`."""
    answer = sample.get("answer")
    if isinstance(answer, str) and answer.strip():
        return answer
    if isinstance(answer, int | float) and not isinstance(answer, bool):
        return str(answer)
    solution = sample.get("solution")
    return last_boxed(solution) if isinstance(solution, str) else None


_INTEGER_RE = re.compile(r"\s*-?\d{1,50}\s*")
_FINAL_ANSWER_RE = re.compile(r"final answer", re.IGNORECASE)


def integer_shortcut(text: str, gold: str) -> tuple[float, str] | None:
    """The verdict math-verify would reach, without sympy, when it is certain: an integer gold answer and a
    completion whose only `\\boxed{}` holds an integer. None otherwise.

    math-verify then extracts exactly that boxed integer (nothing outranks a lone `\\boxed{}` except a
    "final answer is" phrase, excluded here), and integers compare exactly. This skips about a
    millisecond of parsing for most GSM8K-style and many MATH answers.
    """
    if not _INTEGER_RE.fullmatch(gold):
        return None
    if text.count("\\boxed") + text.count("\\fbox") != 1 or _FINAL_ANSWER_RE.search(text):
        return None
    boxed = last_boxed(text)
    if boxed is None or not _INTEGER_RE.fullmatch(boxed):
        return None
    if int(boxed) == int(gold):
        return 1.0, f"equivalent: {int(boxed)}"
    return 0.0, f"not equivalent: {int(boxed)}, gold {int(gold)}"


def math_verify_one(text: str, gold: str, timeout_s: float | None = 5.0) -> tuple[float, str]:
    """Scores one completion against a LaTeX gold answer; math-verify's failures become reasons."""
    mv = _math_verify()
    timed_out = mv.errors.TimeoutException
    timeout = _math_verify_timeout(timeout_s)
    try:
        gold_parsed = list(_parsed_gold(gold, timeout))
    except timed_out:
        return 0.0, f"math-verify timed out parsing the gold answer {gold[:40]!r}"
    except Exception as e:
        return 0.0, f"math-verify could not parse the gold answer ({type(e).__name__})"
    if not gold_parsed:
        return 0.0, f"gold answer {gold[:40]!r} did not parse"
    try:
        pred = mv.parse(text, parsing_timeout=timeout, raise_on_error=True)
    except timed_out:
        return 0.0, "math-verify timed out parsing the completion"
    except Exception as e:
        return 0.0, f"math-verify could not parse the completion ({type(e).__name__})"
    if not pred:
        return 0.0, "no answer found"
    # the extracted text (parse appends it after the sympy object); str() of sympy objects can be slow
    shown = next((p for p in reversed(pred) if isinstance(p, str)), "(unprintable)")[:60]
    try:
        ok = mv.verify(gold_parsed, pred, timeout_seconds=timeout, raise_on_error=True)
    except timed_out:
        return 0.0, f"math-verify timed out comparing {shown!r}"
    except Exception as e:
        return 0.0, f"math-verify failed comparing {shown!r} ({type(e).__name__})"
    return (1.0, f"equivalent: {shown}") if ok else (0.0, f"not equivalent: {shown}, gold {gold[:40]}")


@register_reward("math")
def math_reward(
    completions: Sequence[Any],
    samples: Sequence[Mapping[str, Any]],
    timeout_s: float | None = 5.0,
    **_: Any,
) -> RewardResult:
    """1 where math-verify finds the completion's final answer equivalent to the gold (`\\boxed{}`) answer.

    `timeout_s` bounds each math-verify parse / comparison when called from the main thread (see
    `_math_verify_timeout` for worker threads).
    """

    def one(text: str, sample: Mapping[str, Any]) -> tuple[float, str]:
        gold = math_gold(sample)
        if gold is None:
            return 0.0, "sample has no 'answer' or boxed 'solution'"
        tail = text[-MATH_TAIL_CHARS:]
        return integer_shortcut(tail, gold) or math_verify_one(tail, gold, timeout_s)

    return score_batch(completions, samples, one)
