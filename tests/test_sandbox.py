"""The code sandbox: hostile programs fail with a reason, and neither the scorer nor their batch-mates notice.

Every hostile program here runs under bwrap only (isolation="bwrap" raises rather than falling back), because
outside a sandbox a fork bomb or `os.kill(-1, 9)` would hit the machine running the tests. The fallback is
exercised with harmless programs only.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import shutil
import time
from pathlib import Path

import pytest

from rlvr_jax.rewards import get_reward, harness
from rlvr_jax.rewards.sandbox import (
    CodeExecutor,
    Limits,
    ProgramTests,
    default_python,
    instrument_tests,
    score_async,
)

REPO = Path(__file__).resolve().parent.parent
needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed")

GOOD = "def add(a, b):\n    return a + b\n\nassert add(2, 3) == 5\n"


def hostile_programs(host_file: Path) -> dict[str, tuple[str, str]]:
    """name -> (program, a substring its failure reason must contain)."""
    return {
        "network": (
            "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=2)\n",
            "Network is unreachable",
        ),
        "write_host_file": (f"open({str(host_file)!r}, 'w').write('pwned')\n", "No such file or directory"),
        "write_repo": (f"open({str(REPO / 'PWNED')!r}, 'w').write('pwned')\n", "Error"),
        "write_usr": ("open('/usr/pwned', 'w').write('pwned')\n", "Read-only file system"),
        "fork_bomb": ("import os\nwhile True:\n    os.fork()\n", "BlockingIOError"),
        "memory_bomb": (
            "blocks = []\nwhile True:\n    blocks.append(bytearray(50 * 2**20))\n",
            "MemoryError",
        ),
        "infinite_loop": ("while True:\n    pass\n", "timeout"),
        "sleep_past_timeout": ("import time\ntime.sleep(60)\n", "timeout"),
        "kill_parent": (
            "import os, signal, time\nos.kill(os.getppid(), signal.SIGKILL)\ntime.sleep(0.2)\nassert False\n",
            "exit status 1",
        ),
        "sys_exit_0": ("import sys\nsys.exit(0)\nassert False, 'tests'\n", "before the tests finished"),
        "os_exit_0": ("import os\nos._exit(0)\nassert False, 'tests'\n", "before the tests finished"),
        "print_flood": ("while True:\n    print('x' * 4096)\n", "output size limit"),
    }


@pytest.fixture(scope="module")
def executor():
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap (bwrap) is not installed")
    limits = Limits(timeout_s=3.0, memory_bytes=512 << 20, nproc=16, fsize_bytes=1 << 20)
    with CodeExecutor(isolation="bwrap", limits=limits, workers=4) as ex:
        yield ex


@needs_bwrap
def test_hostile_programs_fail_and_their_batch_is_unaffected(executor: CodeExecutor, tmp_path: Path) -> None:
    host_file = tmp_path / "pwned.txt"
    hostile = hostile_programs(host_file)
    programs, expected = [], []
    for name, (program, reason) in hostile.items():  # a good program between every two hostile ones
        programs += [program, GOOD]
        expected += [(name, reason), ("good", "passed")]
    start = time.monotonic()
    results = executor.run(programs)
    elapsed = time.monotonic() - start
    for (name, reason), result in zip(expected, results, strict=True):
        if name == "good":
            assert result.passed, f"a good program next to hostile ones failed: {result.reason}"
        else:
            assert not result.passed, f"{name} passed"
            assert reason in result.reason, f"{name}: {result.reason!r} lacks {reason!r}"
    assert not host_file.exists() and not (REPO / "PWNED").exists() and not Path("/usr/pwned").exists()
    assert elapsed < 30, f"the batch took {elapsed:.1f}s"
    # the scorer survived (we are here) and keeps working
    assert executor.run([GOOD])[0].passed


@needs_bwrap
def test_programs_run_as_unprivileged_uid_with_private_tmp(executor: CodeExecutor) -> None:
    program = (
        "import os\n"
        "assert os.getuid() != 0 and os.geteuid() != 0\n"
        "open('/tmp/scratch', 'w').write('ok')\n"
        "assert open('/tmp/scratch').read() == 'ok'\n"
        "assert os.getpid() <= 3, os.getpid()\n"  # own pid namespace: only bwrap's reaper before us
        "assert not os.path.exists('/work') and not os.path.exists('/home')\n"
    )
    marker = Path("/tmp/scratch")
    existed = marker.exists()
    result = executor.run([program])[0]
    assert result.passed, result.reason + "\n" + result.output
    assert marker.exists() == existed


@needs_bwrap
def test_rlimit_nproc_stops_forks_even_though_the_scorer_is_root(executor: CodeExecutor) -> None:
    program = (
        "import os, time\n"
        "children = 0\n"
        "try:\n"
        "    for _ in range(200):\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(5)\n"
        "            os._exit(0)\n"
        "        children += 1\n"
        "except BlockingIOError:\n"
        "    pass\n"
        "assert children < 16, children\n"
    )
    result = executor.run([program])[0]
    assert result.passed, result.reason


@needs_bwrap
def test_syntax_errors_and_wrong_answers_have_reasons(executor: CodeExecutor) -> None:
    wrong, syntax = executor.run(["assert 1 + 1 == 3\n", "def f(:\n"])
    assert not wrong.passed and "AssertionError" in wrong.reason
    assert not syntax.passed and "SyntaxError" in syntax.reason


@needs_bwrap
def test_batch_timeout_bounds_the_whole_batch(executor: CodeExecutor) -> None:
    sleepers = ["import time\ntime.sleep(30)\n"] * (3 * executor.workers)
    start = time.monotonic()
    results = executor.run(sleepers, batch_timeout_s=1.0)
    assert time.monotonic() - start < 5
    assert not any(r.passed for r in results)
    assert any("batch timeout" in r.reason for r in results)


@needs_bwrap
def test_submit_returns_a_future(executor: CodeExecutor) -> None:
    future = executor.submit([GOOD, "import time\ntime.sleep(0.5)\n" + GOOD])
    assert isinstance(future, cf.Future)
    assert [r.passed for r in future.result(timeout=30)] == [True, True]
    assert executor.submit([]).result() == []


@needs_bwrap
def test_score_async_overlaps_with_the_caller() -> None:
    sample = {
        "id": "t/0",
        "prompt": "def add(a, b):\n",
        "test": "def check(f):\n    assert f(2, 3) == 5\n",
        "entry_point": "add",
    }
    future = score_async("code_humaneval", ["    return a + b\n", "    return a - b\n"], [sample, sample])
    assert isinstance(future, cf.Future)
    result = future.result(timeout=60)
    assert result.scores.tolist() == [1.0, 0.0]
    direct = get_reward("code_humaneval")(["    return a + b\n"], [sample])
    assert direct.scores.tolist() == [1.0]


def readable_system_python() -> str | None:
    """A Python an unprivileged uid can run (the fallback drops to one when we are root)."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(candidate) and os.stat(os.path.realpath(candidate)).st_mode & 0o005 == 0o005:
            return candidate
    return None


def test_fallback_without_bwrap_keeps_semantics_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    python = readable_system_python() if os.geteuid() == 0 else None
    if os.geteuid() == 0 and python is None:
        pytest.skip("no Python readable by an unprivileged uid for the root fallback")
    import rlvr_jax.rewards.sandbox as sandbox

    sandbox._WARNED_UNSANDBOXED = False
    with caplog.at_level(logging.WARNING, logger="rlvr_jax.rewards.sandbox"):
        executor = CodeExecutor(isolation="none", python=python, workers=2, limits=Limits(timeout_s=2.0))
    assert executor.mode == "none"
    assert "NOT SANDBOXED" in caplog.text
    harmless = [GOOD, "import sys\nsys.exit(0)\n", "assert False\n", "import time\ntime.sleep(30)\n"]
    good, early_exit, wrong, sleeper = executor.run(harmless)
    liar = (
        "class Equal:\n    def __eq__(self, other):\n        return True\n\ndef inc(x):\n    return Equal()\n"
    )
    checked_good, checked_liar = executor.run_tests(
        [checked(INCREMENT, "assert inc(1) == 2\n"), checked(liar, "assert inc(1) == 2\n")]
    )
    executor.shutdown()
    assert checked_good.passed, checked_good.reason + checked_good.output
    assert not checked_liar.passed and "non-plain value of type Equal" in checked_liar.reason
    assert good.passed, good.reason + good.output
    assert not early_exit.passed and "before the tests finished" in early_exit.reason
    assert not wrong.passed and "AssertionError" in wrong.reason
    assert not sleeper.passed and "timeout" in sleeper.reason


def others_can_run(path: str) -> bool:
    """Whether a uid other than the owner can reach `path` (every ancestor directory is o+x)."""
    parents = Path(os.path.realpath(path)).parents
    return all(os.stat(p).st_mode & 0o001 for p in parents)


def test_root_fallback_never_runs_programs_as_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("only root drops privileges")
    python = default_python()
    if not others_can_run(python):  # e.g. a pyenv Python under /root (0700), as on the CI image
        with pytest.raises(RuntimeError, match="unprivileged uid"):
            CodeExecutor(isolation="none", python=python, workers=1)
        return
    with CodeExecutor(isolation="none", python=python, workers=1) as executor:
        assert executor.launch.drop_uid
        result = executor.run(["import os\nassert os.getuid() != 0\n"])[0]
    assert result.passed, result.reason


# ------------------------------------------------------------------------------ programs with tests apart

INCREMENT = "def inc(x):\n    return x + 1\n"


def checked(program: str, tests: str, remote: tuple[str, ...] = ("inc",), **fields: str) -> ProgramTests:
    return ProgramTests(program=program, tests=tests, remote=remote, **fields)


@needs_bwrap
def test_verdict_reasons_name_the_check(executor: CodeExecutor) -> None:
    """Every verdict says why: how many checks ran, or which one failed (the tests' line) and how."""
    cases = {
        "passed: 3/3 checks": checked(
            INCREMENT, "assert inc(1) == 2\nfor x in (2, 3):\n    assert inc(x) == x + 1\n"
        ),
        "failed: check 2 (line 2): AssertionError: inc(5)": checked(
            INCREMENT, "assert inc(1) == 2\nassert inc(5) == 7, 'inc(5)'\nassert inc(2) == 3\n"
        ),
        "failed: check 1 (line 1): call 1 to inc raised ZeroDivisionError: division by zero": checked(
            "def inc(x):\n    return x / 0\n", "assert inc(1) == 2\n"
        ),
        "failed: check 1 (line 2): call 1 to inc returned a non-plain value of type Box": checked(
            "class Box:\n    pass\n\ndef inc(x):\n    return Box()\n", "# the tests\nassert inc(1) == 2\n"
        ),
        "failed: line 1 of the tests, after 0 checks: call 1 to inc raised ValueError: no": checked(
            "def inc(x):\n    raise ValueError('no')\n", "y = inc(1)\nassert y == 2\n"
        ),
        "failed: check 1 (line 1): the program ended before answering call 1 to inc (exit status 1: "
        "NameError: name 'undefined' is not defined)": checked(
            "undefined\n" + INCREMENT, "assert inc(1) == 2\n"
        ),
        "failed: the tests ran no check": checked(INCREMENT, "inc(1)\n"),
        "failed: the tests never called the program": checked(INCREMENT, "assert 1 + 1 == 2\n"),
        "checker error: the tests do not parse (invalid syntax, line 1)": checked(
            INCREMENT, "assert inc(1) ==\n"
        ),
        "checker error: in the data set's code: ZeroDivisionError: division by zero": checked(
            INCREMENT, "assert inc(1) == 2\n", trusted="1 / 0\n"
        ),
    }
    results = executor.run_tests(list(cases.values()))
    for expected, result in zip(cases, results, strict=True):
        assert result.reason == expected, (result.reason, result.output)
        assert result.passed == expected.startswith("passed")


@needs_bwrap
def test_a_failure_the_tests_catch_still_fails(executor: CodeExecutor) -> None:
    """An ended program, garbage or a non-plain value is final, even inside the tests' own try/except; an
    exception the program raises is ordinary behaviour that tests may expect."""
    catching = "try:\n    inc(1)\nexcept Exception:\n    pass\nassert True\n"
    expects_error = (
        "try:\n    inc(-1)\n    raise AssertionError('no error')\nexcept ValueError:\n    pass\n"
        "assert inc(1) == 2\n"
    )
    jobs = [
        checked("class Box:\n    pass\n\ndef inc(x):\n    return Box()\n", catching),
        checked("import os\n\ndef inc(x):\n    os._exit(0)\n", catching),
        checked("def inc(x):\n    if x < 0:\n        raise ValueError(x)\n    return x + 1\n", expects_error),
    ]
    non_plain, ended, raised = executor.run_tests(jobs)
    assert not non_plain.passed and non_plain.reason.endswith("(the tests caught it)"), non_plain.reason
    assert not ended.passed and "ended before answering" in ended.reason, ended.reason
    assert raised.passed, raised.reason


@needs_bwrap
def test_stop_iteration_from_the_program_cannot_end_a_check_early(executor: CodeExecutor) -> None:
    """A StopIteration raised inside `map` would end the iteration, and `all(...)` would be True without
    checking anything; the checker raises the program's StopIteration as an ordinary exception."""
    program = "def inc(x):\n    raise StopIteration\n"
    result = executor.run_tests([checked(program, "assert all(map(lambda x: inc(x) == x + 1, range(5)))\n")])[
        0
    ]
    assert not result.passed and "raised StopIteration" in result.reason, result.reason


@needs_bwrap
def test_values_round_trip_and_setup_objects_stay_in_the_program(executor: CodeExecutor) -> None:
    """Plain values of every kind cross unchanged; objects the setup code makes are passed by name."""
    program = (
        "class Tree:\n    def __init__(self, *kids):\n        self.kids = kids\n\n"
        "def depth(tree):\n    return 1 + max((depth(k) for k in tree.kids), default=0)\n\n"
        "def echo(*args, **kwargs):\n    return args, kwargs\n"
    )
    values = (
        "(None, True, 0, -0.0, 1e300, float('inf'), float('-inf'), complex(1, -2), '\\ud800\\n\\x00é', "
        "b'\\x00\\xff', [], (), (1,), set(), {1, 2}, frozenset(), frozenset({(1, 2)}), {(1, 2): [3], 4: {}}, "
        "2**200, -2**200)"
    )
    tests = (
        f"values = {values}\n"
        "args, kwargs = echo(*values, key=values)\n"
        "assert args == values and kwargs == {'key': values}\n"
        "assert all(type(a) is type(v) for a, v in zip(args, values))\n"
        "assert str(echo(-0.0)[0][0]) == '-0.0'\n"
        "assert echo(float('nan'))[0][0] != echo(float('nan'))[0][0]\n"
        "assert depth(tree) == 3 and depth(tree=tree) == 3\n"
    )
    setup = "tree = Tree(Tree(Tree()), Tree())\n"
    job = checked(program, tests, remote=("echo", "depth", "tree"), setup=setup)
    result = executor.run_tests([job])[0]
    assert result.passed, result.reason + result.output


def test_instrumented_tests_keep_their_line_numbers() -> None:
    tests = (
        "def check(f):\n    assert f(1) == 2\n    for x in []: assert f(x)\n\n\n"
        "    assert (f(2) ==\n        3)\ncheck(g)\n"
    )
    instrumented = instrument_tests(tests)
    assert instrumented.count("__rlvr_check__") == 3
    assert "__rlvr_check__(2, 2); assert f(1) == 2" in instrumented
    assert "for x in []: __rlvr_check__(3, 3); assert f(x)" in instrumented
    assert "__rlvr_check__(6, 7); assert (f(2) ==" in instrumented
    assert len(instrumented.splitlines()) == len(tests.splitlines())
    # line ends as the tokenizer counts them: \f and \u2028 inside a literal are not line ends, \r is
    odd = 'x = "a\x0cb\u2028c"\nassert x\r\nif 1: assert 2\rassert 3\n'
    assert instrument_tests(odd) == (
        'x = "a\x0cb\u2028c"\n__rlvr_check__(2, 2); assert x\r\nif 1: __rlvr_check__(3, 3); assert 2\r'
        "__rlvr_check__(4, 4); assert 3\n"
    )


@needs_bwrap
def test_hostile_programs_fail_their_tests_and_their_batch_is_unaffected(executor: CodeExecutor) -> None:
    """The program's process of a checked run has the same sandbox as `run`'s."""
    hostile = {
        "network": "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=2)\n",
        "kill everything": "import os, signal\nos.kill(-1, signal.SIGKILL)\n",
        "kill parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
        "fork bomb": "import os\nwhile True:\n    os.fork()\n",
        "memory bomb": "blocks = []\nwhile True:\n    blocks.append(bytearray(50 * 2**20))\n",
        "print flood": "while True:\n    print('x' * 4096)\n",
    }
    jobs = []
    for program in hostile.values():
        jobs += [
            checked(program + INCREMENT, "assert inc(1) == 2\n"),
            checked(INCREMENT, "assert inc(1) == 2\n"),
        ]
    results = executor.run_tests(jobs)
    for name, bad, good in zip(hostile, results[::2], results[1::2], strict=True):
        assert not bad.passed, name
        assert good.passed, f"a good program next to {name!r} failed: {good.reason}"
    assert "output size limit" in results[-2].reason


# ------------------------------------------------------------------------------ the value codec


PLAIN_VALUES = [
    None,
    True,
    False,
    0,
    -7,
    2**300,
    1.5,
    -0.0,
    float("inf"),
    float("-inf"),
    complex(-1.5, float("inf")),
    "",
    "quote ' \" and \\ newline \n tab \t nul \x00 surrogate \ud800 é ✓",
    b"\x00\xff'\"",
    [],
    [1, [2, [3]]],
    (),
    (1,),
    (1, (2, "x")),
    set(),
    {1, "a", (2, 3)},
    frozenset(),
    frozenset({frozenset({1})}),
    {},
    {1: 2, "a": [3], (4, 5): {6: None}, frozenset({7}): b""},
]


# Ids by position and type: a set's repr depends on string hashing, which differs between the xdist
# workers, and workers that collect different ids stop the run.
PLAIN_IDS = [f"{i}-{type(v).__name__}" for i, v in enumerate(PLAIN_VALUES)]


@pytest.mark.parametrize("value", PLAIN_VALUES, ids=PLAIN_IDS)
def test_plain_values_round_trip_as_the_same_builtin_types(value: object) -> None:
    decoded = harness.decode_value(harness.encode_value(value))
    assert decoded == value and repr(decoded) == repr(value)
    assert "\n" not in harness.encode_value(value)


def test_nan_and_collections_dicts() -> None:
    import collections
    import math

    assert math.isnan(harness.decode_value(harness.encode_value(float("nan"))))
    counted = harness.decode_value(harness.encode_value(collections.Counter("abca")))
    assert type(counted) is dict and counted == {"a": 2, "b": 1, "c": 1}


def test_non_plain_values_are_refused_by_the_program_side() -> None:
    class Str(str):
        pass

    class Equal:
        def __eq__(self, other: object) -> bool:
            return True

    loop: list = []
    loop.append(loop)
    for value in (Str("x"), Equal(), [Equal()], {1: Equal()}, True.__class__, print, iter([]), loop):
        with pytest.raises(harness.NonPlain):
            harness.encode_value(value)


HOSTILE_ANSWERS = [
    "__import__('os').system('touch /tmp/pwned-by-answer')",
    "(lambda: 1)()",
    "open('/etc/passwd').read()",
    "[x for x in (1, 2)]",
    "f'{1}'",
    "'a' + 'b'",
    "1 + 2j",
    "-'a'",
    "-True",
    "not 1",
    "x",
    "True.__class__",
    "[1][0]",
    "[*range(3)]",
    "{**{}}",
    "...",
    "frozenset({1})",
    "frozenset('ab')",
    "set([1])",
    "complex('1+2j')",
    "complex(1, 2, 3)",
    "{[1]: 2}",
    "{[1]}",
    "1\x00",
    "(" * 300 + ")" * 300,
    "[" * 150 + "]" * 150,
    "1" * 5000,
    "1; 2",
    "",
]


@pytest.mark.parametrize("text", HOSTILE_ANSWERS, ids=lambda t: repr(t[:30]))
def test_the_checker_rejects_anything_but_plain_literals(text: str) -> None:
    with pytest.raises(harness.Malformed):
        harness.decode_value(text)
    assert not Path("/tmp/pwned-by-answer").exists()


def test_parse_is_retried_after_cpythons_spurious_recursion_depth_error(monkeypatch):
    """CPython 3.11's AST constructor can raise "recursion depth mismatch" when another compile in the
    process races a parse (python/cpython#106905; seen once in the suite): the parse is tried again, at
    most three times in all, and any other SystemError stands."""
    import ast

    from rlvr_jax.rewards import sandbox

    real, calls = ast.parse, []

    def flaky(source, *a, failures=2, message="AST constructor recursion depth mismatch (before=9, after=4)"):
        calls.append(source)
        if len(calls) <= failures:
            raise SystemError(message)
        return real(source, *a)

    monkeypatch.setattr(sandbox.ast, "parse", flaky)
    assert isinstance(sandbox.parse_quietly("x = 1"), ast.Module) and len(calls) == 3
    calls.clear()
    monkeypatch.setattr(sandbox.ast, "parse", lambda s, *a: flaky(s, *a, failures=3))
    with pytest.raises(SystemError, match="mismatch"):
        sandbox.parse_quietly("x = 1")
    assert len(calls) == 3
    calls.clear()
    monkeypatch.setattr(sandbox.ast, "parse", lambda s, *a: flaky(s, *a, failures=1, message="other"))
    with pytest.raises(SystemError, match="other"):
        sandbox.parse_quietly("x = 1")
    assert len(calls) == 1
