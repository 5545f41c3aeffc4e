"""Code-execution rewards: run a completion against its task's unit tests in the sandbox; 1 if all pass.

`code_humaneval`: the completion continues the HumanEval prompt (a function signature and docstring), so the
program is prompt + completion + the task's `check` function + `check(entry_point)`.
`code_mbpp`: the completion is a whole program; the program is completion + `test_setup_code` + the asserts
of `test_list`.

Instruct models answer in markdown ("```python ... ```"), so when a completion contains a code fence the
code inside it is used (the block that defines the entry point, else the first one). Completions that
cannot be a program (None, empty, over 100 KB, binary, invalid UTF-8, an unterminated fence) score 0 with
a reason without running anything. Execution happens in `sandbox.CodeExecutor` (see there for isolation).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rlvr_jax.rewards.base import RewardResult, register_reward
from rlvr_jax.rewards.sandbox import CodeExecutor, default_executor
from rlvr_jax.rewards.shaping import checked_text

MAX_COMPLETION_BYTES = 100_000
DEFAULT_TIMEOUT_S = 10.0
# Control characters other than whitespace do not occur in real source code; they mean binary garbage.
_BINARY = re.compile(r"[\x00-\x08\x0e-\x1f]")
_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+#.-]*)[ \t]*$", re.MULTILINE)
_PYTHON_TAGS = {"", "python", "python3", "py", "py3"}


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


def usable_code(completion: Any, entry_point: str | None = None) -> tuple[str | None, str]:
    """Validates a raw completion (text checks, size, binary) and extracts its code."""
    text, why = checked_text(completion, max_chars=MAX_COMPLETION_BYTES + 1)
    if text is None:
        return None, why
    size = len(text.encode("utf-8"))
    if size > MAX_COMPLETION_BYTES:
        return None, f"completion too large ({size} bytes > {MAX_COMPLETION_BYTES})"
    if _BINARY.search(text):
        return None, "binary completion (control characters)"
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
    """prompt + completion + tests + check call. A fenced answer is usually a whole function: it goes on
    its own lines after the prompt (whose function body is then just the docstring) and redefines it."""
    prompt = _field(sample, "prompt", "code_humaneval")
    test = _field(sample, "test", "code_humaneval")
    entry_point = _field(sample, "entry_point", "code_humaneval")
    body = f"\n{code}" if fenced else code
    return f"{prompt}{body}\n\n{test}\n\ncheck({entry_point})\n"


def mbpp_program(sample: Mapping[str, Any], code: str) -> str:
    """completion + setup (which may use the completion's classes) + one assert per line."""
    tests = _field(sample, "test_list", "code_mbpp")
    setup = sample.get("test_setup_code") or ""
    return "\n".join([code, "", setup, "", *tests, ""])


def mbpp_entry_point(sample: Mapping[str, Any]) -> str | None:
    """The function the first MBPP assert calls (to pick the right fenced block)."""
    tests = sample.get("test_list") or []
    match = re.match(r"\s*assert\s+(?:not\s+)?\(?\s*([A-Za-z_]\w*)\s*\(", tests[0]) if tests else None
    return match.group(1) if match else None


def run_programs(
    programs: Sequence[str | None],
    rejections: Sequence[str],
    *,
    executor: CodeExecutor | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    batch_timeout_s: float | None = None,
) -> RewardResult:
    """Runs the non-None programs in one sandboxed batch; None entries score 0 with their rejection."""
    executor = executor or default_executor()
    runnable = [i for i, p in enumerate(programs) if p is not None]
    limits = dataclasses.replace(executor.limits, timeout_s=timeout_s)
    results = executor.run([programs[i] for i in runnable], limits=limits, batch_timeout_s=batch_timeout_s)
    scores = np.zeros(len(programs), np.float32)
    reasons = list(rejections)
    for i, result in zip(runnable, results, strict=True):
        scores[i] = float(result.passed)
        reasons[i] = result.reason
    return RewardResult(scores, reasons)


def _check_lengths(completions: Sequence[Any], samples: Sequence[Mapping[str, Any]]) -> None:
    if len(completions) != len(samples):
        raise ValueError(f"{len(completions)} completions but {len(samples)} samples")


@register_reward("code_humaneval")
def code_humaneval(
    completions: Sequence[Any],
    samples: Sequence[Mapping[str, Any]],
    *,
    executor: CodeExecutor | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    batch_timeout_s: float | None = None,
    **_: Any,
) -> RewardResult:
    """1 if prompt + completion passes the HumanEval `check`; fields: prompt, test, entry_point."""
    _check_lengths(completions, samples)
    programs: list[str | None] = []
    rejections: list[str] = []
    for completion, sample in zip(completions, samples, strict=True):
        entry_point = _field(sample, "entry_point", "code_humaneval")
        code, why = usable_code(completion, entry_point)
        fenced = code is not None and code != completion
        programs.append(humaneval_program(sample, code, fenced=fenced) if code is not None else None)
        rejections.append(why)
    return run_programs(
        programs, rejections, executor=executor, timeout_s=timeout_s, batch_timeout_s=batch_timeout_s
    )


@register_reward("code_mbpp")
def code_mbpp(
    completions: Sequence[Any],
    samples: Sequence[Mapping[str, Any]],
    *,
    executor: CodeExecutor | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    batch_timeout_s: float | None = None,
    **_: Any,
) -> RewardResult:
    """1 if the completion (a whole program) passes every assert of `test_list` after `test_setup_code`."""
    _check_lengths(completions, samples)
    programs: list[str | None] = []
    rejections: list[str] = []
    for completion, sample in zip(completions, samples, strict=True):
        _field(sample, "test_list", "code_mbpp")
        code, why = usable_code(completion, mbpp_entry_point(sample))
        programs.append(mbpp_program(sample, code) if code is not None else None)
        rejections.append(why)
    return run_programs(
        programs, rejections, executor=executor, timeout_s=timeout_s, batch_timeout_s=batch_timeout_s
    )
