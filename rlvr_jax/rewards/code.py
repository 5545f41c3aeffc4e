"""Code-execution rewards: run a completion against its task's unit tests in the sandbox; 1 if all pass.

`code_humaneval`: the completion continues the HumanEval prompt (a function signature and docstring), so the
program is prompt + completion; the tests are the task's `check` function and `check(entry_point)`.
`code_mbpp`: the completion is a whole program, followed by the task's `test_setup_code`; the tests are the
asserts of `test_list`.

The tests never run in the program's process (see `sandbox.py`): a trusted checker process runs them, and
the program's functions answer its calls with plain data. So a completion cannot pass by returning an
object whose `__eq__` always says True, by patching builtins, exiting early, or reading the harness's
frames; only the values its functions return count. The prompt's helpers that HumanEval tests call (`poly`,
`encode_cyclic`, ...) are the data set's, run in the checker. Every reason says what happened: "passed: 7/7
checks", "failed: check 3 (line 12): AssertionError", "failed: check 1 (line 4): call 1 to f returned a
non-plain value of type Foo", "timeout: ...".

Instruct models answer in markdown ("```python ... ```"), so when a completion contains a code fence the
code inside it is used (the block that defines the entry point, else the first one). Which program of that
code is tested is the `program` option:
- "extracted" (the default): the solution, as careful harnesses test it (`code_extract.py`): imports,
  functions, classes and the module-level values they use, without the model's own asserts, demo calls,
  `if __name__ == "__main__":` code, prose or an unparsable (budget-cut) tail; an unclosed fence is closed.
  Where that cannot be done safely it is the strict program. A reason then ends in what was dropped:
  "passed: 7/7 checks [extracted: dropped line 12: assert]".
- "strict": the whole code block as one program: a wrong self-written assert or a crashing demo call fails
  it, and an unterminated fence scores 0 unrun.
`report_strict=True` scores both (the evaluation asks for it) and returns the strict verdicts as
`RewardResult.variants["strict"]`; a program the extraction leaves as it is runs once for both.
Completions that cannot be a program (None, empty, over 100 KB, binary, invalid UTF-8) score 0 with a
reason without running anything. Execution happens in `sandbox.CodeExecutor` (see there for isolation).
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import functools
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rlvr_jax.rewards.base import RewardResult, register_reward
from rlvr_jax.rewards.code_extract import extract_program, lenient_block, source_lines
from rlvr_jax.rewards.sandbox import CodeExecutor, ProgramTests, default_executor, parse_quietly
from rlvr_jax.rewards.shaping import checked_text

MAX_COMPLETION_BYTES = 100_000
DEFAULT_TIMEOUT_S = 10.0
# Control characters other than whitespace do not occur in real source code; they mean binary garbage.
_BINARY = re.compile(r"[\x00-\x08\x0e-\x1f]")
_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+#.-]*)[ \t]*$", re.MULTILINE)
_PYTHON_TAGS = {"", "python", "python3", "py", "py3"}
PROGRAMS = ("extracted", "strict")
MAX_NOTES = 3  # of what extraction dropped, in a reason


def extract_code(completion: str, entry_point: str | None = None) -> tuple[str | None, str]:
    """`(code, "")` from a completion, or `(None, why)`.

    Without fences the completion is the code. With fences, the python (or untagged) blocks are candidates;
    the first that defines `entry_point` wins, else the first. An odd number of fence lines means the last
    block never closed (generation ran out of tokens mid-code): unusable.
    """
    fences = list(_FENCE.finditer(completion))
    if not fences:
        return completion, ""
    if len(fences) % 2:
        return None, "unterminated ``` code fence"
    blocks = []
    for opening, closing in zip(fences[::2], fences[1::2], strict=True):
        if opening.group(1).lower() in _PYTHON_TAGS:
            blocks.append(completion[opening.end() + 1 : closing.start()])
    if not blocks:
        return None, "no python code block in the completion"
    if entry_point:
        defines = re.compile(rf"^\s*(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(", re.MULTILINE)
        for block in blocks:
            if defines.search(block):
                return block, ""
    return blocks[0], ""


def usable_text(completion: Any) -> tuple[str | None, str]:
    """`(text, "")` for a completion that can hold a program (text, at most 100 KB, no binary), or
    `(None, why)`."""
    text, why = checked_text(completion, max_chars=MAX_COMPLETION_BYTES + 1)
    if text is None:
        return None, why
    size = len(text.encode("utf-8"))
    if size > MAX_COMPLETION_BYTES:
        return None, f"completion too large ({size} bytes > {MAX_COMPLETION_BYTES})"
    if _BINARY.search(text):
        return None, "binary completion (control characters)"
    return text, ""


def usable_code(completion: Any, entry_point: str | None = None) -> tuple[str | None, str]:
    """Validates a raw completion (text checks, size, binary) and extracts its code."""
    text, why = usable_text(completion)
    if text is None:
        return None, why
    code, why = extract_code(text, entry_point)
    if code is not None and not code.strip():
        return None, "empty code block"
    return code, why


def _field(sample: Mapping[str, Any], name: str, reward: str) -> Any:
    if name not in sample:
        raise KeyError(
            f"{reward}: sample {sample.get('id', '?')!r} has no field {name!r} (it has {sorted(sample)})"
        )
    return sample[name]


def humaneval_program(sample: Mapping[str, Any], code: str, *, fenced: bool) -> str:
    """prompt + completion + tests + check call, as one program (the untrusted whole, for `CodeExecutor.run`
    and benchmarks). A fenced answer is usually a whole function: it goes on its own lines after the prompt
    (whose function body is then just the docstring) and redefines it."""
    prompt = _field(sample, "prompt", "code_humaneval")
    test = _field(sample, "test", "code_humaneval")
    entry_point = _field(sample, "entry_point", "code_humaneval")
    return f"{humaneval_source(prompt, code, fenced=fenced)}\n\n{test}\n\ncheck({entry_point})\n"


def humaneval_source(prompt: str, code: str, *, fenced: bool) -> str:
    """What runs in the program's process: the prompt continued by the completion."""
    return f"{prompt}\n{code}" if fenced else f"{prompt}{code}"


def humaneval_tests(sample: Mapping[str, Any], code: str, *, fenced: bool) -> ProgramTests:
    """The program (prompt + completion) apart from its tests: the checker runs the prompt itself (its
    helpers, such as `poly` or `encode_cyclic`, are the data set's, whatever the completion redefines)
    and `check(entry_point)`, where the entry point is the program's function."""
    prompt = _field(sample, "prompt", "code_humaneval")
    return humaneval_checked(sample, humaneval_source(prompt, code, fenced=fenced))


def humaneval_checked(sample: Mapping[str, Any], program: str) -> ProgramTests:
    """A whole program (it holds the prompt) with the sample's tests (see `humaneval_tests`)."""
    prompt = _field(sample, "prompt", "code_humaneval")
    test = _field(sample, "test", "code_humaneval")
    entry_point = _field(sample, "entry_point", "code_humaneval")
    return ProgramTests(
        program=program,
        tests=f"{test}\n\ncheck({entry_point})\n",
        remote=(entry_point,),
        trusted=trusted_prompt(prompt, test, entry_point),
    )


@functools.lru_cache(maxsize=4096)
def trusted_prompt(prompt: str, tests: str, entry_point: str) -> str:
    """What of the prompt the checker runs before the tests: nothing when the tests use none of its names
    (most HumanEval tests; running it would cost its `typing` import, ~10 ms), else the prompt, with
    `pass` as the body of its final function when the prompt is only a signature (it must run alone).
    4 of 164 HumanEval tests call a helper of their prompt (`poly`, `encode_cyclic`, ...)."""
    try:
        read, _ = names_in(tests)
    except SyntaxError:
        return prompt  # the checker reports tests that do not parse
    for source in (prompt, f"{prompt}    pass\n"):
        try:
            _, defined = names_in(source)
        except SyntaxError:
            continue
        return source if (set(read) & defined) - {entry_point} else ""
    return prompt  # the checker reports a prompt that does not run


def mbpp_program(sample: Mapping[str, Any], code: str) -> str:
    """completion + setup (which may use the completion's classes) + one assert per line, as one program."""
    tests = _field(sample, "test_list", "code_mbpp")
    setup = sample.get("test_setup_code") or ""
    return "\n".join([code, "", setup, "", *tests, ""])


def mbpp_tests(sample: Mapping[str, Any], code: str) -> ProgramTests:
    """The completion (plus `test_setup_code`, which builds objects of the completion's classes, so it runs
    in the program's process) apart from the asserts. The names the asserts take from the program are those
    they read that are not builtins, plus builtin names that the task's reference solution (`code`, trusted
    data) defines, as task 126 does with `sum`: a completion cannot turn a builtin the asserts use (say
    `set(f(x)) == set(y)`) into its own function. Standard modules the asserts use without importing them
    (`math.isclose(...)`, imported by the program in a single interpreter) the checker imports itself."""
    tests = "\n".join([*_field(sample, "test_list", "code_mbpp"), ""])
    reference = sample.get("code") or ""
    modules = modules_used(tests, reference)
    return ProgramTests(
        program=code,
        tests=tests,
        remote=tuple(n for n in names_from_program(tests, reference) if n not in modules),
        setup=sample.get("test_setup_code") or "",
        trusted="".join(f"import {m}\n" for m in modules),
    )


@functools.lru_cache(maxsize=4096)
def names_from_program(tests: str, reference: str = "") -> tuple[str, ...]:
    """Names the tests read but do not define: the program's. A builtin name counts only where the trusted
    `reference` program defines it at its top level. Raises SyntaxError for tests that do not parse."""
    read, defined = names_in(tests)
    overridden = top_level_names(reference)
    return tuple(
        dict.fromkeys(n for n in read if n not in defined and (not hasattr(builtins, n) or n in overridden))
    )


@functools.lru_cache(maxsize=4096)
def modules_used(tests: str, reference: str = "") -> tuple[str, ...]:
    """Standard-library modules the tests use as `module.attribute` without importing them (and that the
    trusted `reference` does not define as a function or class of its own)."""
    tree = parse_quietly(tests)
    bases = {
        n.value.id for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
    }
    free = set(names_from_program(tests, reference)) - top_level_names(reference)
    return tuple(sorted(n for n in bases & free if n in sys.stdlib_module_names))


def names_in(source: str) -> tuple[list[str], set[str]]:
    """(names the code reads, in order; names it defines anywhere: assignments, functions, classes,
    parameters, imports). Raises SyntaxError if it does not parse."""
    defined, read = set(), []
    for node in ast.walk(parse_quietly(source)):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            defined.add(node.id)
        elif isinstance(node, ast.Name):
            read.append(node.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            defined.add(node.name)
        elif isinstance(node, ast.arg):
            defined.add(node.arg)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            defined.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return read, defined


def top_level_names(source: str) -> frozenset[str]:
    """Functions and classes a program defines at its top level (none if it does not parse)."""
    try:
        tree = parse_quietly(source)
    except SyntaxError:
        return frozenset()
    kinds = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
    return frozenset(node.name for node in tree.body if isinstance(node, kinds))


def mbpp_entry_point(sample: Mapping[str, Any]) -> str | None:
    """The function the first MBPP assert calls (to pick the right fenced block)."""
    tests = sample.get("test_list") or []
    match = re.match(r"\s*assert\s+(?:not\s+)?\(?\s*([A-Za-z_]\w*)\s*\(", tests[0]) if tests else None
    return match.group(1) if match else None


@dataclasses.dataclass(frozen=True)
class Job:
    """One completion's program and tests (None: not runnable, `why` says why), and for an extracted
    program what the extraction dropped (appended to its reason)."""

    tests: ProgramTests | None
    why: str = ""
    notes: tuple[str, ...] = ()


def extracted_program(
    strict: Job, completion: Any, entry_point: str | None, needed: Sequence[str], prompt: str = ""
) -> tuple[str | None, tuple[str, ...]]:
    """(program, what was dropped) for the solution `code_extract` finds in a completion, or (None, ()) to
    test the `strict` job instead: where the completion is unusable, nothing could be extracted, or the
    extraction keeps the strict program as it is (then one run serves both verdicts). `prompt`: the
    trusted text an unfenced completion continues (HumanEval's), kept as it is; the program starts with
    it."""
    text, _ = usable_text(completion)
    if text is None:
        return None, ()
    block, fenced, closed = lenient_block(text, entry_point)
    if fenced or not prompt:
        extraction = extract_program(block, needed)
    else:  # a body continuing the prompt's function: only the two together parse
        extraction = extract_program(prompt + block, needed, keep_lines=len(source_lines(prompt)))
    notes = (("closed the code fence",) if closed else ()) + extraction.dropped
    if extraction.code is None or (not notes and strict.tests is not None):
        return None, ()
    if fenced and prompt:
        return humaneval_source(prompt, extraction.code, fenced=True), notes
    return extraction.code, notes


def humaneval_jobs(completion: Any, sample: Mapping[str, Any]) -> tuple[Job, Job]:
    """(strict, extracted) jobs of one HumanEval completion."""
    entry_point = _field(sample, "entry_point", "code_humaneval")
    code, why = usable_code(completion, entry_point)
    fenced = code is not None and code != completion
    strict = Job(humaneval_tests(sample, code, fenced=fenced) if code is not None else None, why)
    prompt = _field(sample, "prompt", "code_humaneval")
    program, notes = extracted_program(strict, completion, entry_point, (entry_point,), prompt)
    return strict, strict if program is None else Job(humaneval_checked(sample, program), notes=notes)


def mbpp_jobs(completion: Any, sample: Mapping[str, Any]) -> tuple[Job, Job]:
    """(strict, extracted) jobs of one MBPP completion. The extracted program must keep the names the
    asserts and the setup code take from it."""
    _field(sample, "test_list", "code_mbpp")
    entry_point = mbpp_entry_point(sample)
    code, why = usable_code(completion, entry_point)
    try:
        strict = Job(mbpp_tests(sample, code) if code is not None else None, why)
        needed = mbpp_needed(mbpp_tests(sample, ""))
    except SyntaxError as exc:
        why = f"checker error: the sample's test_list does not parse ({exc.msg}, line {exc.lineno})"
        return Job(None, why), Job(None, why)
    program, notes = extracted_program(strict, completion, entry_point, needed)
    return strict, strict if program is None else Job(mbpp_tests(sample, program), notes=notes)


def mbpp_needed(tests: ProgramTests) -> tuple[str, ...]:
    """The names an MBPP program must define: those the asserts take from it, less the objects the setup
    code makes (task 367's trees), plus the names the setup code takes from it (the `Node` class)."""
    if not tests.setup:
        return tests.remote
    _, made = names_in(tests.setup)
    return tuple(
        dict.fromkeys([*(n for n in tests.remote if n not in made), *names_from_program(tests.setup)])
    )


def run_jobs(
    variants: Mapping[str, Sequence[Job]],
    *,
    executor: CodeExecutor | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    batch_timeout_s: float | None = None,
) -> dict[str, RewardResult]:
    """Runs every variant's runnable jobs in one sandboxed batch (a program that is the same in several
    variants of one completion runs once) and returns each variant's scores and reasons. A reason is the
    checker's ("passed: 7/7 checks", "failed: check 3 (line 12): AssertionError", "timeout: ..."), or the
    rejection of a job that could not run; an extracted program's ends in what was dropped."""
    executor = executor or default_executor()
    runs: dict[tuple[int, ProgramTests], int] = {}
    for jobs in variants.values():
        for i, job in enumerate(jobs):
            if job.tests is not None:
                runs.setdefault((i, job.tests), len(runs))
    limits = dataclasses.replace(executor.limits, timeout_s=timeout_s)
    results = executor.run_tests([tests for _, tests in runs], limits=limits, batch_timeout_s=batch_timeout_s)
    out = {}
    for name, jobs in variants.items():
        scores = np.zeros(len(jobs), np.float32)
        reasons = []
        for i, job in enumerate(jobs):
            reason = job.why
            if job.tests is not None:
                result = results[runs[i, job.tests]]
                scores[i], reason = float(result.passed), result.reason
            reasons.append(reason + _described(job.notes))
        out[name] = RewardResult(scores, reasons)
    return out


def _described(notes: Sequence[str]) -> str:
    if not notes:
        return ""
    shown = "; ".join(notes[:MAX_NOTES]) + (
        f"; {len(notes) - MAX_NOTES} more" if len(notes) > MAX_NOTES else ""
    )
    return f" [extracted: {shown}]"


def run_programs(
    programs: Sequence[ProgramTests | None],
    rejections: Sequence[str],
    *,
    executor: CodeExecutor | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    batch_timeout_s: float | None = None,
) -> RewardResult:
    """Runs the non-None programs against their tests in one sandboxed batch; None entries score 0 with
    their rejection (`run_jobs` with one variant)."""
    jobs = [Job(p, why) for p, why in zip(programs, rejections, strict=True)]
    options = {"executor": executor, "timeout_s": timeout_s, "batch_timeout_s": batch_timeout_s}
    return run_jobs({"strict": jobs}, **options)["strict"]


def score_code(
    jobs: Sequence[tuple[Job, Job]],
    *,
    program: str = "extracted",
    report_strict: bool = False,
    **options: Any,
) -> RewardResult:
    """The verdicts of (strict, extracted) jobs: those of `program`, with the strict ones as
    `variants["strict"]` when `report_strict`."""
    if program not in PROGRAMS:
        raise ValueError(f"program={program!r}: the code rewards test one of {', '.join(PROGRAMS)}")
    strict = [s for s, _ in jobs]
    chosen = strict if program == "strict" else [e for _, e in jobs]
    verdicts = run_jobs({program: chosen, **({"strict": strict} if report_strict else {})}, **options)
    result = verdicts[program]
    if report_strict:
        result.variants["strict"] = verdicts["strict"]
    return result


def _check_lengths(completions: Sequence[Any], samples: Sequence[Mapping[str, Any]]) -> None:
    if len(completions) != len(samples):
        raise ValueError(f"{len(completions)} completions but {len(samples)} samples")


@register_reward("code_humaneval")
def code_humaneval(
    completions: Sequence[Any],
    samples: Sequence[Mapping[str, Any]],
    *,
    program: str = "extracted",
    report_strict: bool = False,
    executor: CodeExecutor | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    batch_timeout_s: float | None = None,
    **_: Any,
) -> RewardResult:
    """1 if prompt + completion passes the HumanEval `check`; fields: prompt, test, entry_point.
    program: "extracted" (the solution in the completion) or "strict" (its whole code block)."""
    _check_lengths(completions, samples)
    jobs = [humaneval_jobs(c, s) for c, s in zip(completions, samples, strict=True)]
    return score_code(
        jobs, program=program, report_strict=report_strict, executor=executor, timeout_s=timeout_s,
        batch_timeout_s=batch_timeout_s,
    )  # fmt: skip


@register_reward("code_mbpp")
def code_mbpp(
    completions: Sequence[Any],
    samples: Sequence[Mapping[str, Any]],
    *,
    program: str = "extracted",
    report_strict: bool = False,
    executor: CodeExecutor | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    batch_timeout_s: float | None = None,
    **_: Any,
) -> RewardResult:
    """1 if the completion (a whole program) passes every assert of `test_list` after `test_setup_code`.
    program: "extracted" (the solution in the completion) or "strict" (its whole code block)."""
    _check_lengths(completions, samples)
    jobs = [mbpp_jobs(c, s) for c, s in zip(completions, samples, strict=True)]
    return score_code(
        jobs, program=program, report_strict=report_strict, executor=executor, timeout_s=timeout_s,
        batch_timeout_s=batch_timeout_s,
    )  # fmt: skip
