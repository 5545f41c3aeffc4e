"""Reward hacking against the code rewards (issue 19): every attack here must score 0, while every canonical
HumanEval and MBPP solution still scores 1.

The attacks are what a policy under RL pressure finds: values that lie in comparisons, exits and exceptions
that end the harness early, patched builtins or test functions, stolen secrets and forged success markers.
Where an attack beat the old single-process harness, a test shows that too (on a few problems, through
`CodeExecutor.run`, which still runs a whole program in one interpreter), so a pass here is not vacuous.
"""

from __future__ import annotations

import shutil

import pytest

from rlvr_jax.rewards import get_reward
from rlvr_jax.rewards.code import PROGRAMS, humaneval_program, mbpp_program, names_from_program
from rlvr_jax.rewards.sandbox import CodeExecutor, Limits, ProgramTests

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed")


@pytest.fixture(scope="module")
def executor():
    limits = Limits(timeout_s=5.0, memory_bytes=512 << 20, nproc=16, fsize_bytes=1 << 20)
    with CodeExecutor(isolation="bwrap", limits=limits) as ex:
        yield ex


def indent(code: str) -> str:
    return "".join(f"    {line}\n" if line.strip() else "\n" for line in code.splitlines())


# A value that says yes to everything: equal to all, hash 0, true, no length, iterable, a number in
# arithmetic, and an `int` to `isinstance` (its __class__ lies).
LIES = """
    def __eq__(self, other):
        return True
    def __ne__(self, other):
        return False
    __lt__ = __le__ = __gt__ = __ge__ = __eq__
    def __hash__(self):
        return 0
    def __bool__(self):
        return True
"""
LIAR = (
    "\nclass Liar:"
    + LIES
    + """    def __len__(self):
        return 0
    def __iter__(self):
        return iter(())
    def __getitem__(self, key):
        return self
    def __sub__(self, other):
        return 0
    __rsub__ = __add__ = __radd__ = __mul__ = __rmul__ = __truediv__ = __abs__ = __sub__
    def __float__(self):
        return 0.0
    def __index__(self):
        return 0
    @property
    def __class__(self):
        return int
"""
)
# The same, as subclasses of builtins that override comparisons (a dict subclass even claims to be from
# `collections`, whose dict subclasses the program's side sends as dicts).
BUILTIN_LIARS = {
    base: f"""
class Liar({base}):
    {"__module__ = 'collections'" if base == "dict" else ""}"""
    + LIES
    for base in ("str", "int", "float", "list", "tuple", "dict")
}


def liar_body(liar: str = LIAR) -> str:
    """The issue's attack: one completion, the same for every HumanEval problem (a function body)."""
    return indent(f"{liar}\nreturn Liar()")


def mbpp_liar(sample: dict, liar: str = LIAR) -> str:
    """The MBPP form: the liar class and every function the asserts call returning one."""
    names = names_from_program("\n".join(sample["test_list"]), sample.get("code") or "")
    functions = "".join(f"def {n}(*args, **kwargs):\n    return Liar()\n\n" for n in names)
    return f"{liar}\n{functions}"


def caught_lying(reason: str) -> bool:
    """The reason names the liar's type (qualified: has_close_elements.<locals>.Liar)."""
    return "returned a non-plain value of type" in reason and reason.endswith("Liar")


# ------------------------------------------------------------------------------------------ full sets


def test_canonical_solutions_pass_and_the_liar_fails_on_every_humaneval_problem(
    humaneval: list[dict],
) -> None:
    """All 164 canonical solutions pass; the issue's always-equal completion (157/164 before) passes none."""
    body = liar_body()
    completions = [s["canonical_solution"] for s in humaneval] + [body] * len(humaneval)
    result = get_reward("code_humaneval")(completions, humaneval + humaneval)
    canonical, liar = result.scores[: len(humaneval)], result.scores[len(humaneval) :]
    failures = [
        (s["id"], why) for s, x, why in zip(humaneval, canonical, result.reasons, strict=False) if x != 1
    ]
    assert not failures, failures
    assert all(why.startswith("passed: ") and why.endswith(" checks") for why in result.reasons[:164])
    assert liar.sum() == 0, [why for x, why in zip(liar, result.reasons[164:], strict=True) if x]
    assert sum(caught_lying(why) for why in result.reasons[164:]) >= 150


def test_reference_solutions_pass_and_the_liar_fails_on_every_mbpp_problem(mbpp: list[dict]) -> None:
    """All 500 MBPP references pass (task 126 defines `sum`, 367 needs its setup code); liars pass none."""
    completions = [s["code"] for s in mbpp] + [mbpp_liar(s) for s in mbpp]
    # Task 123's reference (amicable numbers up to 9,999) takes 8-9 s of wall time on a 2-core machine
    # under the test suite's load (measured 2026-12-07), close to the 10 s default: this test is about
    # what passes, not about the time limit, so it gives every program 30 s.
    result = get_reward("code_mbpp")(completions, mbpp + mbpp, timeout_s=30.0)
    reference, liar = result.scores[:500], result.scores[500:]
    failures = {s["id"]: why for s, x, why in zip(mbpp, reference, result.reasons, strict=False) if x != 1}
    assert failures == {}
    assert liar.sum() == 0, [why for x, why in zip(liar, result.reasons[500:], strict=True) if x]


def test_the_liar_beats_a_single_process_harness(executor: CodeExecutor, humaneval: list[dict]) -> None:
    """Why the tests moved out of the program's process: in one interpreter the liar passes."""
    samples = humaneval[:10]
    whole = [humaneval_program(s, liar_body(), fenced=False) for s in samples]
    assert sum(r.passed for r in executor.run(whole)) >= 8


# ------------------------------------------------------------------------------------------ value lies


@pytest.mark.parametrize("base", sorted(BUILTIN_LIARS))
def test_builtin_subclasses_that_lie_fail(base: str, humaneval: list[dict], mbpp: list[dict]) -> None:
    he, mb = humaneval[:12], mbpp[:12]
    humaneval_result = get_reward("code_humaneval")([liar_body(BUILTIN_LIARS[base])] * len(he), he)
    mbpp_result = get_reward("code_mbpp")([mbpp_liar(s, BUILTIN_LIARS[base]) for s in mb], mb)
    assert humaneval_result.scores.sum() == 0, humaneval_result.reasons
    assert mbpp_result.scores.sum() == 0, mbpp_result.reasons
    if base != "dict":  # a dict subclass "from collections" is sent as the plain dict it holds: {}
        assert caught_lying(humaneval_result.reasons[0]), humaneval_result.reasons[0]


# ------------------------------------------------------------------------------------------ harness attacks

# Completions for HumanEval/0 (has_close_elements: answers True and False) that try to pass without
# computing anything; each must score 0. Module-level code goes in a fenced block.
FRAME_WALK = """
import os, sys

def has_close_elements(numbers, threshold):
    found = []
    frame = sys._getframe()
    while frame is not None:
        found += [f"{k}={v!r}" for k, v in {**frame.f_globals, **frame.f_locals}.items()]
        frame = frame.f_back
    try:
        raise ValueError
    except ValueError as exc:
        frame = exc.__traceback__.tb_frame
        while frame is not None:
            found += [repr(v) for v in frame.f_locals.values()]
            frame = frame.f_back
    print("\\n".join(found)[:200000])
    sys.stdout.flush()
    os._exit(0)
"""
FORGED_MARKERS = """
import os, sys
verdict = {'passed': True, 'reason': 'passed: 9/9 checks', 'checks': 9, 'calls': 9, 'ended': False}
for fd in sorted(int(n) for n in os.listdir("/proc/self/fd")):
    for text in (repr(verdict), "passed: 9/9 checks", "('ok', True)", "0123456789abcdef" * 2):
        try:
            os.write(fd, (text + "\\n").encode())
        except OSError:
            pass
sys.exit(0)
"""
PATCHED = """
import builtins, __main__, sys
builtins.AssertionError = type("AssertionError", (Exception,), {})
builtins.isinstance = lambda *args: True
builtins.abs = lambda x: 0
def check(candidate):
    pass
__main__.check = check
__main__.encode_value = lambda value, depth=0: "True"
sys.modules["builtins"].print = lambda *a, **k: None

def has_close_elements(numbers, threshold):
    return None
"""
EXIT_AT_TEARDOWN = """
import atexit, os, signal

class Bomb:
    def __del__(self):
        os._exit(0)

bomb = Bomb()
atexit.register(os._exit, 0)
signal.signal(signal.SIGTERM, lambda *args: os._exit(0))

def has_close_elements(numbers, threshold):
    del globals()["bomb"]
    raise SystemExit(0)
"""
KILL_SELF = """
import os, signal

def has_close_elements(numbers, threshold):
    os.kill(os.getpid(), signal.SIGKILL)
"""
RAW_ANSWERS = """
import os

def has_close_elements(numbers, threshold):
    for fd in [int(n) for n in os.listdir("/proc/self/fd")]:  # answer the checker directly, in advance
        try:
            os.write(fd, b"('ok', True)\\n" * 50 + b"('raised', 'StopIteration', '')\\n")
        except OSError:
            pass
    return True
"""


def fenced(code: str) -> str:
    return f"```python\n{code}\n```\n"


RAISERS = {
    name: fenced(
        f"class Boom(BaseException):\n    pass\n\ndef has_close_elements(numbers, threshold):\n"
        f"    raise {name}\n"
    )
    for name in ("KeyboardInterrupt", "SystemExit(0)", "GeneratorExit", "Boom", "StopIteration")
}
HARNESS_ATTACKS = {
    "frame walk to a secret, then exit 0": (fenced(FRAME_WALK), "ended before answering"),
    "forged success markers on every fd": (fenced(FORGED_MARKERS), "failed"),
    "patched builtins and test function": (fenced(PATCHED), "AssertionError"),
    "exit 0 from __del__, atexit, SIGTERM": (fenced(EXIT_AT_TEARDOWN), "ended before answering"),
    "SIGKILL itself": (fenced(KILL_SELF), "killed"),
    "answers written straight to the pipe": (fenced(RAW_ANSWERS), "failed"),
    **{f"raises {name}": (code, "failed") for name, code in RAISERS.items()},
}


@pytest.mark.parametrize("program", PROGRAMS)
@pytest.mark.parametrize("name", sorted(HARNESS_ATTACKS))
def test_harness_attacks_score_zero(name: str, program: str, humaneval: list[dict]) -> None:
    """Whether the reward tests the extracted solution (the default) or the whole code block."""
    completion, reason = HARNESS_ATTACKS[name]
    result = get_reward("code_humaneval")(
        [completion, humaneval[0]["canonical_solution"]], humaneval[:1] * 2, program=program
    )
    assert result.scores.tolist() == [0.0, 1.0], result.reasons
    assert reason in result.reasons[0], result.reasons[0]


# ------------------------------------------------------------------------------------------ extraction

# Completions for HumanEval/0 written against the extraction (rlvr_jax/rewards/code_extract.py), which
# tests the solution without the model's module-level demo code: each must still score 0.
EXTRACTION_ATTACKS = {
    "the liar kept as a module value, self-tests around it": fenced(
        f"{LIAR}\nANSWER = Liar()\n\ndef has_close_elements(numbers, threshold):\n    return ANSWER\n\n"
        "assert has_close_elements([1.0], 0.5) == True\nprint(has_close_elements([1.0, 2.0], 0.5))\n"
    ),
    "the liar defined in the main guard": fenced(
        f"if __name__ == '__main__':\n{indent(LIAR)}\n    def has_close_elements(numbers, threshold):\n"
        "        return Liar()\n    print(has_close_elements([1.0], 0.5))\n"
    ),
    "a rebound builtin the function uses (kept, so the function computes with it)": fenced(
        "abs = lambda x: 0\n\ndef has_close_elements(numbers, threshold):\n"
        "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1 :])\n"
    ),
    "an assert inside the function (kept)": fenced(
        "def has_close_elements(numbers, threshold):\n    assert len(numbers) > 100, 'too short'\n"
        "    return True\n\nassert True\n"
    ),
    "an exit in a module value the function reads (kept)": fenced(
        "import sys\nLIMIT = sys.exit(0)\n\ndef has_close_elements(numbers, threshold):\n    return LIMIT\n"
    ),
    "answers queued by a demo call (dropped: the function finds none)": fenced(
        "ANSWERS = []\n\ndef queue():\n    ANSWERS.extend([True, False, True, False, True, True, False])\n\n"
        "queue()\n\ndef has_close_elements(numbers, threshold):\n    return ANSWERS.pop(0)\n"
    ),
}


@pytest.mark.parametrize("name", sorted(EXTRACTION_ATTACKS))
def test_extraction_gives_attacks_nothing(name: str, humaneval: list[dict]) -> None:
    """Extraction only removes the model's own statements and keeps every module-level write the solution
    reads: a liar is still not plain data, a kept assert or exit still fails, and what a dropped call
    would have set up is missing (a failure, never a pass)."""
    result = get_reward("code_humaneval")([EXTRACTION_ATTACKS[name]], humaneval[:1], report_strict=True)
    assert result.scores.tolist() == [0.0], result.reasons


def test_a_program_that_needs_a_dropped_call_passes_only_whole(humaneval: list[dict]) -> None:
    """Why the queued answers above are not a way in: the whole program passes HumanEval/0 (a memorised
    table), the extracted one cannot, since the call that fills the table is demo code to the extraction."""
    result = get_reward("code_humaneval")(
        [EXTRACTION_ATTACKS["answers queued by a demo call (dropped: the function finds none)"]],
        humaneval[:1],
        report_strict=True,
    )
    assert result.variants["strict"].scores.tolist() == [1.0], result.variants["strict"].reasons
    assert result.scores.tolist() == [0.0] and "IndexError" in result.reasons[0], result.reasons


def test_the_body_continuation_forms_of_the_attacks_score_zero(humaneval: list[dict]) -> None:
    """The same attacks written as a body continuing the prompt (the HumanEval completion format)."""
    bodies = [
        indent("import sys, os\nprint(sys._getframe().f_back.f_locals)\nos._exit(0)"),
        indent("import sys\nsys.exit(0)"),
        indent("raise KeyboardInterrupt"),
        indent("import builtins\nbuiltins.AssertionError = Exception\nreturn None"),
        indent("class E(float):\n    def __eq__(self, o):\n        return True\nreturn E(0)"),
    ]
    samples = humaneval[:8]
    result = get_reward("code_humaneval")(
        [b for b in bodies for _ in samples], [s for _ in bodies for s in samples]
    )
    assert result.scores.sum() == 0, result.reasons


def test_redefined_prompt_helpers_do_not_reach_the_tests(
    executor: CodeExecutor, humaneval: list[dict]
) -> None:
    """HumanEval/32 and /38 test with helpers of the prompt (`poly`, `encode_cyclic`). A completion that
    redefines them (`poly` = 0, `encode_cyclic` = identity) passed in one interpreter; the checker uses the
    data set's helpers, so it fails now."""
    by_id = {s["id"]: s for s in humaneval}
    cheats = {
        "HumanEval/32": "def poly(xs, x):\n    return 0\n\ndef find_zero(xs):\n    return 0.0\n",
        "HumanEval/38": "def encode_cyclic(s):\n    return s\n\ndef decode_cyclic(s):\n    return s\n",
    }
    samples = [by_id[i] for i in cheats]
    whole = [
        humaneval_program(s, code, fenced=True) for s, code in zip(samples, cheats.values(), strict=True)
    ]
    assert [r.passed for r in executor.run(whole)] == [True, True]
    result = get_reward("code_humaneval")([fenced(code) for code in cheats.values()], samples)
    assert result.scores.tolist() == [0.0, 0.0], result.reasons
    right = get_reward("code_humaneval")([s["canonical_solution"] for s in samples], samples)
    assert right.scores.tolist() == [1.0, 1.0], right.reasons


SIMILAR = {  # an MBPP-style task whose assert wraps the answer in a builtin (MBPP train task 2)
    "id": "similar",
    "test_list": ["assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))"],
    "code": "def similar_elements(a, b):\n    return tuple(set(a) & set(b))\n",
}
CIRCLE = {  # an MBPP-style assert that uses a standard module without importing it (the program does)
    "id": "circle",
    "test_list": ["assert math.isclose(area(2), 12.566, rel_tol=0.001)", "assert area(0) == 0"],
    "code": "import math\n\ndef area(r):\n    return math.pi * r * r\n",
}
PATCHED_ISCLOSE = "import math\nmath.isclose = lambda *args, **kwargs: True\n\ndef area(r):\n    return 0\n"
EQUAL_NODES = """
class Node:
    def __init__(self, data):
        self.data = data
        self.left = self.right = None
    def __eq__(self, other):
        return True

def is_tree_balanced(root):
    return root
"""


def test_mbpp_attacks_on_builtins_and_setup_objects(executor: CodeExecutor, mbpp: list[dict]) -> None:
    """A completion cannot turn a builtin the asserts use into its own function (`set(f(x)) == set(y)`
    would compare two answers of its own) or patch a module they use (`math.isclose`), and the objects
    task 367's setup builds stay in the program's process: returning one (equal to everything) is a
    non-plain value, not a pass."""
    shadow = "def set(*args):\n    return 0\n\ndef similar_elements(*args):\n    return 1\n"
    tree = next(s for s in mbpp if s["id"] == "367")
    assert [
        r.passed for r in executor.run([mbpp_program(SIMILAR, shadow), mbpp_program(tree, EQUAL_NODES)])
    ] == [
        True,
        True,
    ]  # both win in one interpreter
    assert executor.run([mbpp_program(CIRCLE, PATCHED_ISCLOSE)])[0].passed
    samples = [SIMILAR, tree, CIRCLE, SIMILAR, tree, CIRCLE]
    completions = [shadow, EQUAL_NODES, PATCHED_ISCLOSE, SIMILAR["code"], tree["code"], CIRCLE["code"]]
    result = get_reward("code_mbpp")(completions, samples)
    assert result.scores.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0], result.reasons
    assert "non-plain value of type Node" in result.reasons[1]


# ------------------------------------------------------------------------------ what the program sees

# The program's function answers True if any of these strings from the tests can be found anywhere it can
# look: its interpreter's objects and frames, its stdin, its process's files, the processes it can see.
SEARCH = r"""
import gc, os, sys

TAG = "".join(chr(c) for c in (55, 102, 51, 97))  # the needles' tail, never written out whole here


def seen(text):
    return ("expected-" + TAG) in text or ("SECRET_" + TAG) in text


def leaked():
    for obj in gc.get_objects():
        try:
            if isinstance(obj, dict) and any(isinstance(v, str) and seen(v) for v in obj.values()):
                return True
            if isinstance(obj, (list, tuple)) and any(isinstance(v, str) and seen(v) for v in obj):
                return True
        except Exception:
            pass
    frame = sys._getframe()
    while frame is not None:
        if seen(repr(frame.f_locals)) or seen(repr(frame.f_code.co_consts)):
            return True
        frame = frame.f_back
    for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
        for name in ("cmdline", "environ"):
            try:
                with open(f"/proc/{pid}/{name}", "rb") as f:
                    if seen(f.read().decode("latin-1")):
                        return True
            except OSError:
                pass
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(("pipe:", "socket:")):
                    continue  # reading the checker's request pipe would block; its contents are ours anyway
                with open(f"/proc/{pid}/fd/{fd}", "rb") as f:
                    if seen(f.read(1 << 20).decode("latin-1")):
                        return True
            except OSError:
                pass
    return False
"""


def test_the_program_never_sees_the_tests_or_the_expected_values(executor: CodeExecutor) -> None:
    job = ProgramTests(
        program=SEARCH,
        tests="SECRET_7f3a = 'expected-7f3a'\nassert leaked() is False, SECRET_7f3a\n",
        remote=("leaked",),
    )
    result = executor.run_tests([job])[0]
    assert result.passed, result.reason + result.output
    # the search itself works: it finds what the program's own process holds
    planted = ProgramTests(
        program=SEARCH + "PLANTED = 'SECRET_' + TAG\n", tests=job.tests, remote=("leaked",)
    )
    assert not executor.run_tests([planted])[0].passed
