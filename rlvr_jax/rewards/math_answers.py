"""Math answer rewards: `numeric` (GSM8K-style single numbers) and `math` (symbolic, through math-verify).

Both credit only an answer the completion STATES as its answer, never a number that happens to be last in
a (cut-off) text, and a statement that hedges states nothing: several numbers in it ("#### 12 or 13",
"12, 13, 14"), several different statements (two `\\boxed{}` with different values, "the answer is 12.
No, the answer is 13."), or a list of guesses (more than 16 `\\boxed{}`). Under RL a policy finds
whatever a parser credits; a parser that credits any of several candidates pays for not deciding.

`numeric` is a pure-regex scorer (tens of thousands of samples per second) for tasks whose gold answer is
one number. It reads the most trusted kind of answer statement present and compares exact rationals:
  1. `#### N` lines (the GSM8K convention; markdown headings such as `#### Step 2` are not answers),
  2. `\\boxed{N}` (LaTeX fractions, `{,}` separators, `\\$`, `\\%`, `\\text{}` units understood),
  3. the start of the completion, when the prompt ends in "Answer:" without asking for another format
     (the completion-style arithmetic prompt: the completion starts with its answer),
  4. "the answer is N" / "answer: N" (up to the end of that sentence),
  5. a completion that is nothing but one number.
An explicit marker wins over a weaker one and over numbers elsewhere: a model that restates the question's
numbers after its marked answer is judged by the marked answer.

`math` reads the `\\boxed{}` answers (what the MATH prompts ask for), else "the answer is ...", and
compares the one stated answer with math-verify (sympy), so `\\frac{1}{2}`, `0.5`, `\\dfrac12` and
`\\left(1, 2\\right)` vs `(1,2)` agree. math-verify alone is generous: it takes `12 \\lor 13`, `x = 12
\\vee x = 13`, a `cases` list or `12 = 13` for 13. So where the gold is one value, the answer must be one
value too (not a set, an interval or a relation) and may not use a connective the gold does not (`\\lor`,
`\\pm`, "or", `\\\\`, ...); stated answers over 300 characters are not compared. sympy makes it one to
two orders of magnitude slower than `numeric`, except where `integer_shortcut` can decide exactly as
math-verify would without it.
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
# "the answer is", "final answer:", "answer = ": the word answer and a connector (a bare "answer" is not a
# statement of one: "to answer 2 questions").
_ANSWER_IS_RE = re.compile(r"\banswer\b\s*(?:(?:is|was|would\s+be|will\s+be)\b\s*:?|[:=])\s*", re.IGNORECASE)
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_LATEX_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_LATEX_SHORT_FRAC_RE = re.compile(r"\\[dt]?frac\s*(\d)\s*(\d)")
_LATEX_TEXT_RE = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{[^{}]*\}")
_LATEX_NOISE_RE = re.compile(r"\\[,;:! ]|\\left|\\right|\\(?=[$%])")
# Where the sentence after "the answer is" ends: a line break, a full stop, a clause ("18, which is ...",
# "5 because ...") or a parenthesis ("18 (9 * 2)"). A comma before another number is a list, not an end.
_SENTENCE_END_RE = re.compile(r"\n|[.!?;](?:\s|$)|,\s+(?=[A-Za-z])|\(|\b(?:because|since|as)\b")
_BRACES_RE = re.compile(r"[{}]")
_ANSWER_WINDOW = 80  # characters after "the answer is" that may hold the number
# Words that make a "####" line a hedge even in a parenthesis ("#### 18 (or 19)").
_HEDGE_RE = re.compile(
    r"\b(?:or|either|maybe|perhaps|possibly|probably|approximately|roughly|around|alternatively)\b|\?",
    re.IGNORECASE,
)
# Longer digit strings are not answers (and Python refuses to convert > 4300 digits).
MAX_DIGITS = 100
# How many trailing \boxed{ starts `last_boxed` tries: unclosed ones each scan to the end of the text.
_MAX_BOXED_TRIES = 8
# More \boxed{} than this in one completion is not an answer but a list of guesses.
MAX_BOXED = 16


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


def _closing_brace(text: str, start: int) -> int | None:
    """Index of the brace closing the one opened just before `start`, or None if it never closes."""
    depth = 1
    for match in _BRACES_RE.finditer(text, start):
        depth += 1 if match.group() == "{" else -1
        if depth == 0:
            return match.start()
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` / `\\fbox{...}` with balanced braces; None when there is none."""
    for match in list(_BOXED_RE.finditer(text))[::-1][:_MAX_BOXED_TRIES]:
        end = _closing_brace(text, match.end())
        if end is not None:
            return text[match.end() : end]
    return None


def all_boxed(text: str) -> list[str] | None:
    """Contents of every closed `\\boxed{...}` / `\\fbox{...}`, in order; None when there are more than
    `MAX_BOXED` (a list of guesses, and each unclosed one would scan to the end of the text)."""
    starts = list(_BOXED_RE.finditer(text))
    if len(starts) > MAX_BOXED:
        return None
    found = []
    for match in starts:
        end = _closing_brace(text, match.end())
        if end is not None:
            found.append(text[match.end() : end])
    return found


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
    """The one number of a marked final answer, or None and why (no number, or several different ones).

    "x = 5" and "9 * 2 = 18" mean the value right of the last `=`; every other `=` must have the same
    value on its right ("x = 12, x = 13" has two). With a hedge word on it ("12 or x = 13") every number
    on it counts."""
    if _HEDGE_RE.search(segment):
        values = numbers_in(segment)
    elif "=" in segment:
        *earlier, last = segment.split("=")[1:]
        values = [v for part in earlier for v in numbers_in(part)[:1]] + numbers_in(last)
    else:
        values = numbers_in(segment)
    values = list(dict.fromkeys(values))
    if not values:
        return None, "no number in it"
    if len(values) > 1:
        return None, f"several numbers in it ({listed(values)})"
    return values[0], ""


def listed(values: Sequence[Fraction], most: int = 4) -> str:
    shown = ", ".join(format_number(v) for v in values[:most])
    return shown + (f", ... ({len(values)} in all)" if len(values) > most else "")


def answer_phrase_value(window: str) -> tuple[Fraction | None, str]:
    """The number stated after "the answer is": the sentence up to its end (a full stop, a clause such as
    "because ..." or ", which ...", a parenthesis), or its last `= ...` part ("the answer is 5 - 3 = 2"
    means 2), must hold exactly one number ("the answer is 12 or 13" and "12, 13, 14" hold several)."""
    return single_number(_SENTENCE_END_RE.split(simplify_latex(window), 1)[0])


def answer_phrase_number(window: str) -> Fraction | None:
    """`answer_phrase_value` without the reason."""
    return answer_phrase_value(window)[0]


def hashes_number(segment: str) -> tuple[Fraction | None, str]:
    """The number of a `#### ...` line: the one number before any parenthesis ("#### 18 dollars (9 * 2)" is
    18, as GSM8K's own evaluation reads it), or on the right of an `=` ("#### 9 * 2 = 18"). Several
    numbers are no answer ("#### 12, 13, 14"), and neither is a hedge anywhere on the line ("#### 5 or 6",
    "#### 18 (or 19)")."""
    if not _HEDGE_RE.search(segment):
        segment = segment.split("(", 1)[0]
    return single_number(segment)


# Where a stated answer came from, in order of trust: an explicit marker wins over a later, weaker one.
HASHES, BOXED, ANSWER_SLOT, ANSWER_IS, BARE = "####", "\\boxed", "the 'Answer:' slot", "'answer is'", "bare"
EQUATION = "final '= N'"
_FINAL_EQUATION_RE = re.compile(r"=([^=\n]*)$")
_CUT_NUMBER_RE = re.compile(r"[-−+]?[\d.,]*\d[ \t]*$")


def stated_answers(
    text: str, *, answer_slot: bool = False, equation: bool = False
) -> tuple[str, list[tuple[Fraction | None, str]]]:
    """(kind, [(value or None, why)]) for the most trusted kind of answer statement the text has, or
    ("", []) when it states none. See `extract_number` for the kinds."""
    hashes = [h for h in _HASHES_RE.findall(text) if not _NUMBERED_HEADING_RE.match(h)]
    if hashes:
        return HASHES, [hashes_number(h) for h in hashes]
    boxes = all_boxed(text)
    if boxes is None:
        return BOXED, [(None, f"more than {MAX_BOXED} \\boxed answers")]
    if boxes:
        return BOXED, [single_number(simplify_latex(b)) for b in boxes]
    if answer_slot:
        first = text.lstrip()
        if re.match(r"[-−+$*]*\s*\.?\d", first):
            return ANSWER_SLOT, [answer_phrase_value(first[:_ANSWER_WINDOW])]
    phrases = [
        answer_phrase_value(text[m.end() : m.end() + _ANSWER_WINDOW]) for m in _ANSWER_IS_RE.finditer(text)
    ]
    phrases = [(v, why) for v, why in phrases if v is not None or why != "no number in it"]
    if phrases:
        return ANSWER_IS, phrases
    bare = text.strip().strip("*").strip()
    bare = bare[:-1] if bare.endswith(".") else bare
    match = NUMBER_RE.fullmatch(bare)
    if match is not None and (value := to_number(match)) is not None:
        return BARE, [(value, "")]
    # A completion whose last statement is an equation states its right-hand side ("4 * -2 = -8.").
    lines = text.strip().splitlines()
    final = _FINAL_EQUATION_RE.search(lines[-1].rstrip(" .*")) if equation and lines else None
    if final is not None:
        value, why = single_number(final.group(1))
        if value is not None or why != "no number in it":
            return EQUATION, [(value, why)]
    return "", []


def extract_number(
    text: str, *, answer_slot: bool = False, finished: bool | None = None
) -> tuple[Fraction | None, str]:
    """The answer the completion states and where it came from, or None and why.

    Only a stated answer counts, never a number that happens to be last in a (cut-off) text. In order of
    trust: `#### N` lines (markdown headings such as `#### Step 2` are not answers), `\\boxed{N}`, the
    start of the completion when the prompt ends in "Answer:" (`answer_slot`, completion-style prompts),
    "the answer is N" / "answer: N", and a completion that is nothing but one number. All statements of
    the most trusted kind present must agree and hold one number each: "#### 12, 13, 14", two different
    `\\boxed{}` or "the answer is 12 or 13" state no answer (hedging must not pay). Last, and only when the
    completion is known to have finished, a final line that is an equation states its right-hand side
    ("3 * 4 = 12."): a text cut off in the middle of its working also ends in an equation.

    finished: True when the completion ended by itself (a stop token), False when the token budget cut it
    off (its last number may be cut in the middle, "= 4" of "= 45", so a number that runs to the end of
    such a text is no answer), None when unknown (scored files): no final-equation answers then.
    """
    if finished is False:
        text = _CUT_NUMBER_RE.sub("", text)
    kind, found = stated_answers(text, answer_slot=answer_slot, equation=finished is True)
    if not kind:
        return None, "no stated answer (no '####', \\boxed{}, 'the answer is', bare number or final '= N')"
    for value, why in found:
        if value is None:
            return None, f"{kind} answer with {why}"
    values = list(dict.fromkeys(v for v, _ in found))
    if len(values) > 1:
        return None, f"several different {kind} answers ({listed(values)})"
    return values[0], kind


def answer_slot(prompt: Any) -> bool:
    """Whether a completion-style prompt ends in "Answer:" without asking for another format (`####`,
    `\\boxed{}`): the completion then starts with the answer (the plain arithmetic template)."""
    if not isinstance(prompt, str):
        return False
    return prompt.rstrip().lower().endswith("answer:") and "####" not in prompt and "\\boxed" not in prompt


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
        finished = sample.get("finished")  # the trainer and evaluation say; scored files may not
        pred, source = extract_number(text, answer_slot=answer_slot(sample.get("prompt")), finished=finished)
        if pred is None:
            return 0.0, source
        if _numbers_match(pred, gold, rel_tol):
            return 1.0, f"correct: {format_number(pred)} (from {source})"
        return 0.0, f"wrong: {format_number(pred)} (from {source}), gold {format_number(gold)}"

    return score_batch(completions, samples, one)


# ------------------------------------------------------------------------------------------ math-verify


def _math_verify_timeout(timeout_s: float | None) -> int | None:
    """math-verify's timeouts use SIGALRM, which only the main thread may set; elsewhere they are disabled.

    A worker thread therefore runs without a time limit: `MAX_MATH_ANSWER_CHARS` and the gold cache bound the
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


# LaTeX that joins alternatives or several values (math-verify reads some as "any of them"): where the gold
# is one value, an answer using one of these scores only if the gold uses it too.
_MATH_HEDGE_RE = re.compile(
    r"\\(?:lor|vee|land|wedge|implies|impliedby|iff|to|rightarrow|Rightarrow|longrightarrow|Longrightarrow"
    r"|leftrightarrow|Leftrightarrow|mapsto|sim|pm|mp|cup|cap|setminus|in|ni|approx)(?![A-Za-z])"
    r"|\\\\|\\begin\{(?:cases|array|aligned|align\*?|gathered|split)\}|\b(?:or|and)\b|(?<!\\);"
)
# "the answer is $x$", "final answer: x" without a \boxed{}: the statement up to the end of its sentence.
_MATH_ANSWER_IS_RE = re.compile(r"\banswer\b\s*(?:is\b\s*:?|:)\s*", re.IGNORECASE)
_MATH_SENTENCE_END_RE = re.compile(r"\n|[.!?;](?:\s|$)")
# Longer stated answers are not compared: a list of hundreds of values is a guess, and sympy on it is slow.
MAX_MATH_ANSWER_CHARS = 300


def _compact(latex: str) -> str:
    return re.sub(r"\s+|\\[,;:! ]|\\left|\\right|\$", "", latex).strip(".")


def stated_math_answers(text: str) -> tuple[str, list[str]]:
    """(kind, the contents) of the completion's answer statements: every `\\boxed{}`, else every "the
    answer is ..." sentence (its `$...$` delimiters dropped); ("", []) when it states none."""
    boxes = all_boxed(text)
    if boxes is None:
        return BOXED, [""] * (MAX_BOXED + 1)
    boxes = [b for b in boxes if b.strip()]
    if boxes:
        return BOXED, boxes
    phrases = []
    for match in _MATH_ANSWER_IS_RE.finditer(text):
        sentence = _MATH_SENTENCE_END_RE.split(
            text[match.end() : match.end() + MAX_MATH_ANSWER_CHARS + 1], 1
        )[0]
        sentence = sentence.strip().strip("$").strip()
        if sentence.startswith("\\(") and sentence.endswith("\\)"):
            sentence = sentence[2:-2].strip()
        if sentence:
            phrases.append(sentence)
    return (ANSWER_IS, phrases) if phrases else ("", [])


def math_hedge(answer: str, gold: str) -> str | None:
    """The first connective of `answer` (\\lor, \\pm, "or", \\\\, cases, ...) that `gold` does not use."""
    allowed = {m.group() for m in _MATH_HEDGE_RE.finditer(gold)}
    return next((m.group() for m in _MATH_HEDGE_RE.finditer(answer) if m.group() not in allowed), None)


def _same_answer(a: str, b: str, timeout: int | None) -> bool:
    """Whether two stated answers are equivalent (math-verify both ways), for completions that state one
    answer twice in different forms ("\\boxed{1/2} ... \\boxed{0.5}")."""
    mv = _math_verify()
    try:
        first = mv.parse(f"\\boxed{{{a}}}", parsing_timeout=timeout)
        second = mv.parse(f"\\boxed{{{b}}}", parsing_timeout=timeout)
        return (
            bool(first and second)
            and mv.verify(first, second, timeout_seconds=timeout)
            and mv.verify(second, first, timeout_seconds=timeout)
        )
    except Exception:
        return False


def stated_math_answer(text: str, timeout_s: float | None = 5.0) -> tuple[str | None, str]:
    """The one answer the completion states (LaTeX), or None and why.

    Only a stated answer counts: a `\\boxed{}` (what the MATH prompts ask for) or, without one, "the
    answer is ...". Never an expression that happens to be last in a (cut-off) text. Every statement must
    agree: two `\\boxed{}` with different values state no answer.
    """
    kind, found = stated_math_answers(text)
    if not kind:
        return None, "no stated answer (no \\boxed{} or 'the answer is')"
    if len(found) > MAX_BOXED:
        return None, f"more than {MAX_BOXED} {kind} answers"
    distinct = list(dict.fromkeys(_compact(f) for f in found))
    last = found[-1]
    if len(distinct) > 1:
        timeout = _math_verify_timeout(timeout_s)
        if len(distinct) > 4 or not all(_same_answer(d, _compact(last), timeout) for d in distinct[:-1]):
            shown = ", ".join(repr(d[:30]) for d in distinct[:4])
            return None, f"several different {kind} answers ({shown})"
    return last, kind


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
    mismatch = shape_mismatch(gold_parsed, pred)
    if mismatch:
        return 0.0, f"not equivalent: {shown} is {mismatch}, gold {gold[:40]}"
    try:
        ok = mv.verify(gold_parsed, pred, timeout_seconds=timeout, raise_on_error=True)
    except timed_out:
        return 0.0, f"math-verify timed out comparing {shown!r}"
    except Exception as e:
        return 0.0, f"math-verify failed comparing {shown!r} ({type(e).__name__})"
    return (1.0, f"equivalent: {shown}") if ok else (0.0, f"not equivalent: {shown}, gold {gold[:40]}")


def _single_value(parsed: Sequence[Any]) -> bool:
    """Whether a parsed answer is one value (a number or an expression; `x = 5` counts as 5)."""
    import sympy

    values = [p for p in parsed if not isinstance(p, str)]
    if not values:
        return False
    value = values[0]
    if isinstance(value, sympy.Eq) and isinstance(value.lhs, sympy.Symbol):
        value = value.rhs
    return isinstance(value, sympy.Expr)


def shape_mismatch(gold: Sequence[Any], pred: Sequence[Any]) -> str | None:
    """Why a parsed answer cannot be what the parsed gold is, or None.

    math-verify compares generously: a set, an interval, a relation such as `12 = 13`, or text it could not
    read as math may still be "equivalent" to a number. Text math-verify could not read counts only as the
    same text as the gold's; where the gold is one value, the answer must be one too.
    """
    if not any(not isinstance(p, str) for p in pred):
        texts = [p for p in pred if isinstance(p, str)]
        gold_texts = [g for g in gold if isinstance(g, str)]
        same = texts and gold_texts and _compact(texts[-1]) == _compact(gold_texts[-1])
        return None if same else "text that does not read as math"
    if _single_value(gold) and not _single_value(pred):
        value = next(p for p in pred if not isinstance(p, str))
        return f"a {type(value).__name__}, not a single value"
    return None


def gold_is_single_value(gold: str, timeout_s: float | None = 5.0) -> bool:
    """Whether the gold answer is one value; False when it does not parse (then nothing is decided here)."""
    try:
        return _single_value(_parsed_gold(gold, _math_verify_timeout(timeout_s)))
    except Exception:
        return False


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
        answer, kind = stated_math_answer(text, timeout_s)
        if answer is None:
            return 0.0, kind
        if len(answer) > max(MAX_MATH_ANSWER_CHARS, 2 * len(gold)):
            return 0.0, f"stated answer too long ({len(answer)} characters)"
        hedge = math_hedge(answer, gold) if gold_is_single_value(gold, timeout_s) else None
        if hedge is not None:
            return 0.0, f"hedged answer ({hedge!r} in {answer[:60]!r}), gold {gold[:40]}"
        boxed = f"\\boxed{{{answer}}}"
        return integer_shortcut(boxed, gold) or math_verify_one(boxed, gold, timeout_s)

    return score_batch(completions, samples, one)
