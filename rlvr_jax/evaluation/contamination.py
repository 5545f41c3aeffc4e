"""HumanEval items that MBPP training items nearly copy, found by running MBPP's reference solutions.

The held-out check (`rlvr_jax/data/heldout.py`) compares question text, which cannot see that MBPP 32
("Write a python function to find the largest prime factor of a given number.") and HumanEval/59
("Return the largest prime factor of n.") ask for the same function. Word overlap does not separate such
pairs either: token-set Jaccard of the problem statements and function names scores "maximum element in
the list" vs "list of lists with maximum length" above HumanEval/59 - MBPP 32, and finds almost nothing in
common between gcd (HumanEval/13) and "find gcd of two positive integers" (MBPP 498), or between
balanced brackets (HumanEval/61) and "verify validity of a string of parentheses" (MBPP 175).

So the similarity here is behaviour: an MBPP item is a near-duplicate of a HumanEval item when MBPP's
reference solution, called under HumanEval's entry-point name, passes all of HumanEval's tests (in the
sandbox, through the `code_humaneval` reward). Training on that MBPP item rewards a program that solves
the HumanEval item. Only pairs whose functions can take the same number of arguments are run (an MBPP
function that cannot be called as HumanEval's tests call it cannot pass them). A trivial HumanEval
function (strlen, concatenate) can also be passed by an unrelated MBPP function that happens to compute
the same thing on its few tests; such a pair still means training rewarded a solution to that item, so it
is listed too, and the problem statements are kept beside each pair for a reader to judge.

`benchmarks/near_duplicates.py` runs this over MBPP's training split against all of HumanEval and writes
the list (`benchmarks/results/mbpp_humaneval_near_duplicates.json`); `scripts/evaluate.py --exclude` with
that file reports HumanEval accuracy with and without the listed items.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from collections.abc import Callable, Sequence
from typing import Any

Sample = dict[str, Any]


def _function(source: str, name: str | None) -> ast.FunctionDef | None:
    """The top-level function `name` of `source` (the last top-level function when name is None)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    functions = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    named = [f for f in functions if name is None or f.name == name]
    return named[-1] if named else None


def callable_with(function: ast.FunctionDef, count: int) -> bool:
    """Whether `function` accepts `count` positional arguments (defaults and *args counted)."""
    positional = len(function.args.posonlyargs) + len(function.args.args)
    required = positional - len(function.args.defaults)
    return required <= count and (count <= positional or function.args.vararg is not None)


def mbpp_function(sample: Sample) -> ast.FunctionDef | None:
    """The function MBPP's tests call (named in the first assert), in the item's reference `code`."""
    from rlvr_jax.rewards.code import mbpp_entry_point

    return _function(sample.get("code") or "", mbpp_entry_point(sample))


def humaneval_arity(sample: Sample) -> int | None:
    """How many positional arguments HumanEval's entry point takes (from its prompt's signature)."""
    function = _function(sample["prompt"] + "    pass\n", sample["entry_point"])
    return None if function is None else len(function.args.posonlyargs) + len(function.args.args)


def candidate_pairs(mbpp: Sequence[Sample], humaneval: Sequence[Sample]) -> list[tuple[Sample, Sample, str]]:
    """(HumanEval item, MBPP item, MBPP function name) for every pair whose MBPP reference solution can
    be called as the HumanEval tests call the entry point."""
    functions = [(m, mbpp_function(m)) for m in mbpp]
    pairs = []
    for h in humaneval:
        arity = humaneval_arity(h)
        if arity is None:
            continue
        pairs += [(h, m, f.name) for m, f in functions if f is not None and callable_with(f, arity)]
    return pairs


def statement(sample: Sample) -> str:
    """The problem in words: MBPP's `text`, or the first paragraph of HumanEval's docstring."""
    if "text" in sample:
        return " ".join(str(sample["text"]).split())
    docstring = re.search(r'("""|\'\'\')(.*?)\1', sample["prompt"], re.S)
    text = docstring.group(2) if docstring else sample["prompt"]
    first = re.split(r"\n\s*\n|>>>|[Ff]or example|Example", text)[0]
    return " ".join(first.split())


@dataclasses.dataclass
class Scan:
    """What `functional_duplicates` found: the pairs, how many programs ran, and the pairs whose verdict
    is unknown because their program ran out of time even on the second, longer try."""

    pairs: list[dict[str, Any]]
    programs: int
    undecided: list[tuple[str, str]]


def _passes(
    chunk: Sequence[tuple[Sample, Sample, str]], executor: Any, timeout_s: float
) -> list[tuple[bool, bool]]:
    """(passed, timed out) for each (HumanEval item, MBPP item, MBPP function) pair."""
    from rlvr_jax.rewards.code import code_humaneval

    completions = [f"```python\n{m['code']}\n\n{h['entry_point']} = {name}\n```" for h, m, name in chunk]
    result = code_humaneval(completions, [h for h, _, _ in chunk], executor=executor, timeout_s=timeout_s)
    return [
        (bool(score >= 1.0), reason.startswith("timeout"))
        for score, reason in zip(result.scores, result.reasons, strict=True)
    ]


def functional_duplicates(
    mbpp: Sequence[Sample],
    humaneval: Sequence[Sample],
    *,
    executor: Any = None,
    timeout_s: float = 2.0,
    retry_timeout_s: float = 20.0,
    batch: int = 256,
    on_batch: Callable[[int, int], None] | None = None,
) -> Scan:
    """The (HumanEval item, MBPP item) pairs where MBPP's reference solution passes HumanEval's tests
    (module docstring), in HumanEval order: dicts with both ids, the MBPP function name and both problem
    statements. A program that runs out of `timeout_s` (a busy machine, or a reference solution that
    loops on HumanEval's inputs) is run again, with the others that did, under `retry_timeout_s`; one that
    times out again is listed as undecided. `on_batch(done, total)` reports progress."""
    pairs = candidate_pairs(mbpp, humaneval)
    verdicts: list[tuple[bool, bool]] = []
    for start in range(0, len(pairs), batch):
        verdicts += _passes(pairs[start : start + batch], executor, timeout_s)
        if on_batch is not None:
            on_batch(min(start + batch, len(pairs)), len(pairs))
    late = [i for i, (_, timed_out) in enumerate(verdicts) if timed_out]
    for start in range(0, len(late), batch):
        chunk = late[start : start + batch]
        again = _passes([pairs[i] for i in chunk], executor, retry_timeout_s)
        for i, verdict in zip(chunk, again, strict=True):
            verdicts[i] = verdict
    found = [
        {
            "humaneval": h["id"],
            "mbpp": m["id"],
            "mbpp_function": name,
            "humaneval_statement": statement(h),
            "mbpp_statement": statement(m),
        }
        for (h, m, name), (ok, _) in zip(pairs, verdicts, strict=True)
        if ok
    ]
    order = {h["id"]: i for i, h in enumerate(humaneval)}
    found.sort(key=lambda p: (order[p["humaneval"]], p["mbpp"]))
    undecided = [(h["id"], m["id"]) for (h, m, _), (_, slow) in zip(pairs, verdicts, strict=True) if slow]
    return Scan(pairs=found, programs=len(pairs), undecided=undecided)
