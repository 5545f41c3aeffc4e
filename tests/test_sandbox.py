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

from rlvr_jax.rewards import get_reward
from rlvr_jax.rewards.sandbox import CodeExecutor, Limits, default_python, score_async

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
    executor.shutdown()
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
