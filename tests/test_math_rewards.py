"""`numeric` (GSM8K-style) and `math` (math-verify) rewards: gold solutions, tricky formats, bad input."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from rlvr_jax.data import get_task
from rlvr_jax.rewards import get_reward


def score(name: str, completion: object, gold: object, **options: object) -> tuple[float, str]:
    result = get_reward(name)([completion], [{"answer": gold}], **options)
    return float(result.scores[0]), result.reasons[0]


@pytest.fixture(scope="module")
def gsm8k_test(shared_dir: Path) -> list[dict]:
    return get_task("gsm8k").load("test", shared_dir / "data" / "gsm8k")


@pytest.fixture(scope="module")
def math500(shared_dir: Path) -> list[dict]:
    return get_task("math").load("test", shared_dir / "data" / "math500")


# ---------------------------------------------------------------------------------------------- numeric


def test_gsm8k_reference_solutions_all_score_one(gsm8k_test: list[dict]) -> None:
    assert len(gsm8k_test) == 1319
    result = get_reward("numeric")([s["solution"] for s in gsm8k_test], gsm8k_test)
    failures = [
        (s["id"], r) for s, x, r in zip(gsm8k_test, result.scores, result.reasons, strict=True) if x != 1.0
    ]
    assert not failures, failures[:5]
    assert result.scores.dtype == np.float32 and result.scores.shape == (1319,)


def test_numeric_is_fast(gsm8k_test: list[dict]) -> None:
    """The training loop scores every completion of every step; GSM8K must go at thousands per second."""
    completions = [s["solution"] for s in gsm8k_test]
    start = time.perf_counter()
    get_reward("numeric")(completions, gsm8k_test)
    rate = len(completions) / (time.perf_counter() - start)
    assert rate > 2000, f"{rate:.0f} samples/s"


CORRECT = [
    ("#### 18", "18"),
    ("Janet sells 9 eggs.\nShe makes 9 * 2 = $18.\n#### 18", "18"),
    ("The answer is 18.", "18"),
    ("\\boxed{18}", "18"),
    ("The final answer is $\\boxed{70}$.", "70"),
    ("#### 1,000", "1000"),
    ("She pays $1,234.50 in total.\n#### 1,234.50", "1234.5"),
    ("It costs $2,500,000 in total.\n#### $2,500,000", "2500000"),
    ("The answer is $5.", "5"),
    ("The answer is 5 dollars", "5"),
    ("The answer is 5%.", "5"),
    ("#### -5", "-5"),
    ("The answer is −5", "-5"),  # Unicode minus
    ("The temperature drops to -10 degrees, so the answer is -10 degrees.", "-10"),
    ("#### 5.0", "5"),
    ("#### 5.00", "5.0"),
    ("\\boxed{\\frac{1}{2}}", "0.5"),
    ("The answer is 1/2", "0.5"),
    ("\\boxed{\\dfrac{3}{4}}", "0.75"),
    ("\\boxed{-\\frac{3}{4}}", "-0.75"),
    ("\\boxed{\\tfrac12}", "0.5"),
    ("\\boxed{1{,}000}", "1000"),
    ("\\boxed{\\$18}", "18"),
    ("\\boxed{18 \\text{ dollars}}", "18"),
    ("\\boxed{18\\%}", "18"),
    ("\\boxed{x = 7}", "7"),
    ("Final answer: 42", "42"),
    ("The answer is: **25**", "25"),
    ("answer = 0.25", "1/4"),
    ("The answer is 5 - 3 = 2.", "2"),
    ("The answer is 5 because 2 + 3 = 5.", "5"),
    ("The answer is 18, which is 9 * 2.", "18"),
    ("The answer is 18 (9 * 2).", "18"),
    ("The answer is 1,000.", "1000"),
    ("\\boxed{18} dollars, so \\boxed{18.00}", "18"),  # one answer stated twice
    ("#### 18\nTo check: #### 18", "18"),
    ("The answer is 18. I double-checked: the answer is 18.", "18"),
    ("18", "18"),  # a completion that is nothing but the number states it
    (" $18.\n", "18"),
    ("**-5**", "-5"),
    ("#### 36\n\nHope this helps! Ask me 2 more questions.", "36"),
    ("#### 007", "7"),
    ("#### .5", "0.5"),
    ("#### **18**", "18"),
    ("#### 18 dollars (9 * 2)", "18"),  # the first number of a '####' line, as GSM8K's evaluation reads it
    ("#### 9 * 2 = 18", "18"),
    ("So the total is 18. #### 18", "18"),
    # markdown headings are not '####' answers
    ("#### Step 1: eggs left\n16 - 3 - 4 = 9\n#### Step 2: money\n9 * 2 = 18\nThe answer is 18.", "18"),
    ("#### 1. Eggs left\n16 - 3 - 4 = 9\n#### 2. Money\n9 * 2 = 18\n\\boxed{18}", "18"),
    ("After 12 weeks she has 3 * 12 = 36 dollars.\nThe answer is 36", 36),  # an int gold
]

WRONG = [
    ("#### 12", "1.2"),
    ("#### 1.19", "1.2"),
    ("#### -5", "5"),
    ("#### 5", "-5"),
    ("The answer is 18.5", "18"),
    ("#### 1000", "100"),
    ("\\boxed{18}", "81"),
    # the gold number appears only where the question is restated; the final answer is wrong
    ("Janet's ducks lay 16 eggs and she earns 18 dollars? Let's check: 9 * 2 = 20. The answer is 20.", "18"),
    ("#### 18\n#### 20", "18"),  # two different '####' answers
    ("The total is 18. \\boxed{20}", "18"),  # a marked answer beats an earlier number
    ("\\boxed{5 \\text{ or } 6}", "5"),  # hedging
    ("#### 5 or 6", "5"),
    ("I cannot solve this.", "5"),
]


# Completions that game the parser: each holds the gold number, but does not state it as its one answer.
LIST_0_TO_1000 = ", ".join(str(i) for i in range(1001))
NUMERIC_HACKS = [
    ("#### 12 or 13", ["12", "13"]),
    ("#### 12, 13, 14", ["12", "13", "14"]),
    ("#### 12 13 14", ["12", "13", "14"]),
    ("#### 18 (or 19)", ["18", "19"]),
    ("#### 18 (maybe 19)", ["18", "19"]),
    ("#### 12\n#### 13", ["12", "13"]),
    ("#### 12\nor\n#### 13", ["12", "13"]),
    ("\\boxed{12} \\boxed{13}", ["12", "13"]),
    ("First \\boxed{12}. On second thought \\boxed{13}.", ["12", "13"]),
    ("\\boxed{12, 13}", ["12", "13"]),
    ("\\boxed{12 \\pm 1}", ["11", "12", "13"]),
    ("\\boxed{x = 12 \\text{ or } x = 13}", ["12", "13"]),
    ("\\boxed{x = 12, x = 13}", ["12", "13"]),
    ("\\boxed{12 \\lor 13}", ["12", "13"]),
    ("\\boxed{[12, 14]}", ["12", "13", "14"]),
    ("The answer is 12 or 13.", ["12", "13"]),
    ("The answer is 12, 13, 14.", ["12", "13", "14"]),
    ("The answer is 12. No wait, the answer is 13.", ["12", "13"]),
    ("The answer is between 12 and 14.", ["12", "14"]),
    ("Answer: 12 / 13 / 14", ["12", "13", "14"]),
    (f"#### {LIST_0_TO_1000}", ["0", "537", "1000"]),
    (f"\\boxed{{{LIST_0_TO_1000}}}", ["0", "537", "1000"]),
    (f"The answer is {LIST_0_TO_1000}", ["0", "537", "1000"]),
    (LIST_0_TO_1000, ["0", "537", "1000"]),
    ("".join(f"\\boxed{{{i}}}" for i in range(100)), ["0", "42", "99"]),
    # cut off before its answer: the last number is right, but nothing states it as the answer
    ("Janet has 16 eggs. She eats 3 and bakes 4, so 16 - 3 - 4 = 9 are left. At $2 each: 9 * 2 = 18", ["18"]),
    ("So she has 3 + 4 = 7 apples.", ["7"]),
    ("First I got 18, but recomputing gives 19.", ["18", "19"]),
    ("To answer 2 questions we need 18", ["2", "18"]),
]


@pytest.mark.parametrize(("completion", "golds"), NUMERIC_HACKS, ids=lambda v: repr(v)[:40])
def test_numeric_gives_hedges_lists_and_cut_off_texts_nothing(completion: str, golds: list[str]) -> None:
    for gold in golds:
        value, reason = score("numeric", completion, gold)
        assert value == 0.0, (gold, reason)


def test_numeric_reasons_name_the_hedge() -> None:
    assert "several different #### answers (12, 13)" in score("numeric", "#### 12\n#### 13", "12")[1]
    assert "several numbers in it (12, 13, 14)" in score("numeric", "#### 12, 13, 14", "12")[1]
    assert (
        "several numbers in it (0, 1, 2, 3, ... (1001 in all))"
        in score("numeric", f"#### {LIST_0_TO_1000}", "0")[1]
    )
    assert "no stated answer" in score("numeric", LIST_0_TO_1000, "0")[1]
    assert "no stated answer" in score("numeric", "So she has 3 + 4 = 7 apples.", "7")[1]
    assert "more than 16 \\boxed answers" in score("numeric", NUMERIC_HACKS[-5][0], "42")[1]


def test_the_answer_slot_of_completion_style_prompts() -> None:
    """The plain arithmetic prompt ends in "Answer:" without asking for '####': the completion starts with
    its answer. A prompt that asks for '####' (GSM8K's plain template) keeps asking for it."""
    arithmetic = get_task("arithmetic").load("test", chat=False, size=3)[0]
    assert arithmetic["prompt"].endswith("Answer:") and "####" not in arithmetic["prompt"]
    gold = arithmetic["answer"]
    sample = {**arithmetic}
    cases = {
        f" {gold}\n\nQuestion: what is 1 + 1?\nAnswer: 2": 1.0,  # a base model goes on with the next question
        f" 3 + 4 = {gold}": 1.0,
        f" {gold} or {int(gold) + 1}": 0.0,
        f" Let me think. 3 + 4 is {gold}": 0.0,  # not an answer in the slot, and nothing stated after it
        f" Let me think.\n#### {gold}": 1.0,
    }
    result = get_reward("numeric")(list(cases), [sample] * len(cases))
    assert result.scores.tolist() == list(cases.values()), result.reasons
    gsm8k_plain = {"prompt": 'End with "#### <number>".\n\nQuestion: q\nAnswer:', "answer": "18"}
    assert get_reward("numeric")([" 18 eggs, she eats 3"], [gsm8k_plain]).scores.tolist() == [0.0]


@pytest.mark.parametrize(("completion", "gold"), CORRECT)
def test_numeric_accepts(completion: str, gold: object) -> None:
    value, reason = score("numeric", completion, gold)
    assert value == 1.0, reason


@pytest.mark.parametrize(("completion", "gold"), WRONG)
def test_numeric_rejects(completion: str, gold: str) -> None:
    value, reason = score("numeric", completion, gold)
    assert value == 0.0, reason


def test_numeric_tolerance_is_opt_in() -> None:
    assert score("numeric", "#### 3.3333", "10/3")[0] == 0.0
    assert score("numeric", "#### 3.3333", "10/3", rel_tol=1e-4)[0] == 1.0


def test_numeric_reasons_say_where_the_answer_came_from() -> None:
    assert "####" in score("numeric", "#### 18", "18")[1]
    assert "boxed" in score("numeric", "\\boxed{3}", "18")[1]
    assert "no stated answer" in score("numeric", "no idea", "18")[1]
    assert "bare" in score("numeric", "18", "18")[1]
    assert "no 'answer'" in get_reward("numeric")(["#### 1"], [{}]).reasons[0]


BAD_COMPLETIONS = [
    None,
    "",
    "   \n\t",
    b"\xff\xfe\x00\x01",  # binary
    "#### 18 \udcff",  # lone surrogate (what a bad decode leaves behind)
    "#### 18" + "9" * 300_000,  # huge
    "#### 18\x00\x00",
    12345,
]


@pytest.mark.parametrize("name", ["numeric", "math"])
def test_bad_completions_score_zero_with_a_reason(name: str) -> None:
    samples = [{"answer": "18"}] * len(BAD_COMPLETIONS)
    result = get_reward(name)(BAD_COMPLETIONS, samples)
    assert result.scores.tolist() == [0.0] * len(BAD_COMPLETIONS)
    assert all(result.reasons), result.reasons


def test_valid_utf8_bytes_are_decoded() -> None:
    assert score("numeric", b"#### 18", "18")[0] == 1.0


# ---------------------------------------------------------------------------------------------- math


def test_math500_gold_solutions_score_one(math500: list[dict]) -> None:
    assert len(math500) == 500
    result = get_reward("math")([s["solution"] for s in math500], math500)
    failures = [
        (s["id"], s["answer"], r)
        for s, x, r in zip(math500, result.scores, result.reasons, strict=True)
        if x != 1
    ]
    print(f"MATH-500 gold solutions scoring 1.0: {int(result.scores.sum())}/500; failures: {failures}")
    assert result.scores.sum() >= 495, failures


EQUIVALENT = [
    ("The answer is $\\boxed{0.5}$", "\\frac{1}{2}"),
    ("$\\boxed{\\frac{1}{2}}$", "0.5"),
    ("$\\boxed{\\dfrac{1}{2}}$", "\\frac12"),
    ("$\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}$", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("$\\boxed{(3, \\pi/2)}$", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("$\\boxed{2\\sqrt{2}}$", "\\sqrt{8}"),
    ("so $x = \\boxed{\\frac{6}{4}}$", "\\frac{3}{2}"),
    ("$\\boxed{x^2+2x+1}$", "(x+1)^2"),
    ("\\boxed{10\\%}", "0.1"),
    ("$\\boxed{\\text{(C)}}$", "\\text{(C)}"),
]

NOT_EQUIVALENT = [
    ("$\\boxed{0.51}$", "\\frac{1}{2}"),
    ("$\\boxed{\\frac{2}{1}}$", "\\frac{1}{2}"),
    ("$\\boxed{(3, \\pi)}$", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("$\\boxed{x^2+1}$", "(x+1)^2"),
    ("$\\boxed{-2}$", "2"),
    ("no answer at all", "2"),
]


MATH_HACKS = [
    ("\\boxed{12} \\boxed{13}", ["12", "13"]),
    ("$\\boxed{13}$, or rather $\\boxed{12}$", ["12", "13"]),
    ("\\boxed{12 \\lor 13}", ["12", "13"]),
    ("\\boxed{12 \\lor 13 \\lor 14}", ["12", "13", "14"]),
    ("\\boxed{x = 12 \\vee x = 13}", ["12", "13"]),
    ("\\boxed{12 \\land 13}", ["12", "13"]),
    ("\\boxed{12 \\wedge 13}", ["12", "13"]),
    ("\\boxed{x=12 \\text{ or } x=13}", ["12", "13"]),
    ("\\boxed{12 \\text{ or } 13}", ["12", "13"]),
    ("\\boxed{12 = 13}", ["12", "13"]),
    ("\\boxed{12 \\sim 13}", ["12", "13"]),
    ("\\boxed{12 \\to 13}", ["12", "13"]),
    ("\\boxed{12 \\implies 13}", ["12", "13"]),
    ("\\boxed{12 \\\\ 13}", ["12", "13"]),
    ("\\boxed{\\begin{cases} 12 \\\\ 13 \\end{cases}}", ["12", "13"]),
    ("\\boxed{12 \\pm 1}", ["11", "12", "13"]),
    ("\\boxed{12 \\pm 0}", ["12"]),
    ("\\boxed{\\{11, 12, 13\\}}", ["12"]),
    ("\\boxed{[11, 13]}", ["12"]),
    ("\\boxed{[12, 12]}", ["12"]),
    ("\\boxed{x \\in \\{12\\}}", ["12"]),
    ("\\boxed{(11, 13)}", ["12"]),
    ("\\boxed{11 < x < 13}", ["12"]),
    ("\\boxed{12, 13, 14}", ["13"]),
    (f"\\boxed{{{LIST_0_TO_1000}}}", ["537"]),
    (LIST_0_TO_1000.replace(",", ""), ["1000"]),
    ("".join(f"\\boxed{{{i}}}" for i in range(20)), ["19"]),
    ("The final answer is $12$. The final answer is $13$.", ["12", "13"]),
    # cut off before its answer: the last number is right, but nothing states it as the answer
    ("So far we have $3 + 4 = 7$ and then $12$", ["12"]),
    ("Thus $x = \\frac{1}{2}$", ["\\frac{1}{2}"]),
]


@pytest.mark.parametrize(("completion", "golds"), MATH_HACKS, ids=lambda v: repr(v)[:40])
def test_math_gives_hedges_lists_and_cut_off_texts_nothing(completion: str, golds: list[str]) -> None:
    for gold in golds:
        value, reason = score("math", completion, gold)
        assert value == 0.0, (gold, reason)


def test_math_still_accepts_answers_stated_once_or_twice_the_same() -> None:
    samples = [{"answer": "\\frac{1}{2}"}, {"answer": "12"}, {"answer": "2, -2"}, {"answer": "x \\in [2, 3]"}]
    completions = [
        "so $\\boxed{\\frac{1}{2}}$, i.e. $\\boxed{0.5}$",  # one answer in two forms
        "The answer is $12$.",  # no box, but stated
        "$\\boxed{\\pm 2}$",  # the gold has both values
        "$\\boxed{x \\in [2, 3]}$",  # the gold is itself a set statement
    ]
    result = get_reward("math")(completions, samples)
    assert result.scores.tolist() == [1.0, 1.0, 1.0, 1.0], result.reasons


@pytest.mark.parametrize(("completion", "gold"), EQUIVALENT)
def test_math_accepts_equivalent_forms(completion: str, gold: str) -> None:
    value, reason = score("math", completion, gold)
    assert value == 1.0, reason


@pytest.mark.parametrize(("completion", "gold"), NOT_EQUIVALENT)
def test_math_rejects_wrong_answers(completion: str, gold: str) -> None:
    value, reason = score("math", completion, gold)
    assert value == 0.0, reason


def test_integer_shortcut_agrees_with_math_verify(math500: list[dict]) -> None:
    """The sympy-free path for integer answers must give math-verify's verdict wherever it applies."""
    from rlvr_jax.rewards.math_answers import integer_shortcut, math_verify_one

    golds = [s for s in math500 if re.fullmatch(r"-?\d+", s["answer"])][:80]
    cases = [(s["solution"], s["answer"]) for s in golds]
    cases += [(f"So $\\boxed{{{int(s['answer']) + 1}}}$.", s["answer"]) for s in golds]
    cases += [(f"\\boxed{{ 0{s['answer'].lstrip('-')} }}", s["answer"]) for s in golds]
    cases += [
        ("\\boxed{3} or \\boxed{4}", "4"),
        ("The final answer is $4$. \\boxed{3}", "4"),
        ("\\boxed{3.0}", "3"),
    ]
    decided = 0
    for text, gold in cases:
        fast = integer_shortcut(text, gold)
        if fast is not None:
            decided += 1
            assert fast[0] == math_verify_one(text, gold)[0], (text[-80:], gold, fast)
    assert decided >= 150


def test_math_gold_from_boxed_solution() -> None:
    sample = {"solution": "so we get $\\boxed{\\frac{1}{3}}$."}
    assert get_reward("math")(["\\boxed{1/3}"], [sample]).scores[0] == 1.0


def test_math_from_a_worker_thread() -> None:
    """math-verify's SIGALRM timeouts would raise off the main thread; the reward switches them off there."""
    results = []
    worker = threading.Thread(target=lambda: results.append(score("math", "$\\boxed{\\frac{2}{4}}$", "0.5")))
    worker.start()
    worker.join(60)
    assert results and results[0][0] == 1.0, results


@pytest.mark.parametrize("error", ["timeout", "crash"])
def test_math_verify_failures_score_zero(monkeypatch: pytest.MonkeyPatch, error: str) -> None:
    import math_verify
    from math_verify.errors import TimeoutException

    def broken_parse(*args: object, **kwargs: object) -> list:
        raise TimeoutException("slow") if error == "timeout" else RecursionError("deep")

    monkeypatch.setattr(math_verify, "parse", broken_parse)
    value, reason = score("math", "\\boxed{0.5}", "\\frac{1}{2}")  # not an integer: math-verify runs
    assert value == 0.0
    assert ("timed out" if error == "timeout" else "could not parse") in reason


@pytest.mark.parametrize(
    ("completion", "finished", "score"),
    [
        ("4 * -2 = -8.", True, 1.0),  # the final line is an equation: its right-hand side is the answer
        ("Let me compute.\n4 * -2 = -8", True, 1.0),
        ("4 * -2 = -8 or -9", True, 0.0),  # a hedged right-hand side states no answer
        ("4 * -2 = -8\nor maybe -9", True, 0.0),  # only the last line counts, and it is no equation
        ("4 * -2 = -8", False, 0.0),  # cut off: "-8" may be the start of "-84"
        ("#### -8", False, 0.0),
        ("#### -8\nThat is all.", False, 1.0),  # the answer line ended before the cut
        ("-8 = 4 * -2", True, 0.0),  # the right-hand side is the answer
    ],
)
def test_a_final_equation_states_its_right_hand_side_unless_the_text_was_cut_off(completion, finished, score):
    sample = {"answer": "-8", "prompt": "What is 4 * -2?", "finished": finished}
    result = get_reward("numeric")([completion], [sample])
    assert float(result.scores[0]) == score, result.reasons[0]
