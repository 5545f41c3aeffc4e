"""The process pool scores exactly like a direct call, in input order, and overlaps with the caller; a
reward that raises, hangs or kills its worker fails the batch or scores 0 (reward.on_error), and the
workers never outlive the process that started them, even one killed with SIGKILL."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from rlvr_jax.data import get_task
from rlvr_jax.rewards import get_reward
from rlvr_jax.rewards.base import RewardResult
from rlvr_jax.rewards.pool import RewardError, RewardPool

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pool():
    with RewardPool(workers=2, min_chunk=16) as p:
        yield p


def test_pool_matches_direct_scoring_in_order(pool, shared_dir):
    samples = get_task("gsm8k").load("test", path=shared_dir / "data" / "gsm8k")[:200]
    # Every third completion is wrong, so order mistakes would show.
    completions = [
        s["answer"] if i % 3 else f"The answer is #### {i + 100000}" for i, s in enumerate(samples)
    ]
    direct = get_reward("numeric")(completions, samples)
    pooled = pool.submit("numeric", completions, samples).result(timeout=120)
    np.testing.assert_array_equal(pooled.scores, direct.scores)
    assert pooled.reasons == direct.reasons
    assert pooled.scores.sum() == 133  # 200 minus the 67 rows with i % 3 == 0


def test_math_verify_in_workers(pool):
    samples = [{"answer": "\\frac{1}{2}"}, {"answer": "3"}]
    result = pool.submit("math", ["so \\boxed{0.5}", "\\boxed{4}"], samples).result(timeout=120)
    assert result.scores.tolist() == [1.0, 0.0]


def test_code_rewards_go_to_the_sandbox(pool):
    samples = [{"prompt": "def f(x):\n", "test": "def check(f):\n    assert f(2) == 4\n", "entry_point": "f"}]
    result = pool.submit("code_humaneval", ["    return x * 2\n"], samples).result(timeout=120)
    assert result.scores.tolist() == [1.0]


def test_mismatched_lengths_are_an_error(pool):
    with pytest.raises(ValueError, match="2 completions for 1 samples"):
        pool.submit("numeric", ["1", "2"], [{"answer": "1"}])


def digit_fraction(completions, samples, **_):
    """A reward defined outside the package: the pool must run it in its workers too."""
    scores = [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]
    return RewardResult(np.asarray(scores, np.float32), ["digits"] * len(completions))


def test_pool_runs_functions_from_other_modules(pool):
    result = pool.submit(digit_fraction, ["a1", "22", "xy"] * 20, [{}] * 60).result(timeout=120)
    assert result.scores[:3].tolist() == [0.5, 1.0, 0.0]


def ignored_signals(pid: int) -> set[int]:
    """The signals process `pid` ignores (Linux: the SigIgn mask in /proc/PID/status)."""
    status = Path(f"/proc/{pid}/status").read_text()
    mask = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigIgn:")), 16)
    return {sig for sig in range(1, 65) if mask & (1 << (sig - 1))}


def test_pool_survives_sigterm_to_its_workers(pool):
    """`timeout` and schedulers signal the whole process group; the trainer must still finish its step."""
    samples = [{"answer": "3"}, {"answer": "4"}]
    assert pool.submit("numeric", ["#### 3", "#### 5"], samples).result(timeout=120).scores.tolist() == [1, 0]
    workers = pool.worker_pids()
    assert workers
    assert all({signal.SIGINT, signal.SIGTERM} <= ignored_signals(pid) for pid in workers)
    for pid in workers:
        os.kill(pid, signal.SIGTERM)
    result = pool.submit("numeric", ["#### 3", "#### 4"], samples)
    assert result.result(timeout=120).scores.tolist() == [1.0, 1.0]
    assert pool.worker_pids() == workers, "a reward worker died of SIGTERM"


# ------------------------------------------------------------------------------------------------ faults


def faulty(completions, samples, **_):
    """Scores 1 per completion, except that "raise" raises, "hang" sleeps for an hour and "die" SIGKILLs
    its own process: what a buggy verifier, a regex that backtracks forever and a segfault look like."""
    for completion in completions:
        if completion == "raise":
            raise ZeroDivisionError("no answer to divide by")
        if completion == "hang":
            time.sleep(3600)
        if completion == "die":
            os.kill(os.getpid(), signal.SIGKILL)
    return RewardResult(np.ones(len(completions), np.float32), ["fine"] * len(completions))


TIMEOUT_S = 5.0  # long enough for a fresh worker to start and import this module on a busy machine


@pytest.fixture(scope="module", params=["fail", "zero"])
def faulty_pool(request):
    with RewardPool(workers=2, min_chunk=4, timeout_s=TIMEOUT_S, on_error=request.param) as p:
        assert p.submit(faulty, ["ok"] * 8, [{}] * 8).result(timeout=120).scores.sum() == 8  # warm
        yield p


def batch_with(bad: str, at: tuple[int, ...] = (5,), n: int = 8) -> tuple[list[str], list[dict]]:
    completions = [bad if i in at else "ok" for i in range(n)]
    return completions, [{"id": f"item-{i}"} for i in range(n)]


def alive(pid: int) -> bool:
    """Whether `pid` is a running process (a zombie waiting to be reaped counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.mark.parametrize(
    ("bad", "what"),
    [
        ("raise", "raised ZeroDivisionError: no answer to divide by (at test_reward_pool.py:"),
        ("hang", f"did not finish within reward.timeout_s={TIMEOUT_S:g} s (its worker was killed)"),
        ("die", "killed its worker process (killed by SIGKILL)"),
    ],
    ids=["raises", "hangs", "kills_its_worker"],
)
def test_a_failing_reward_fails_the_batch_or_scores_its_samples_zero(faulty_pool, bad, what, caplog):
    completions, samples = batch_with(bad)
    started = time.monotonic()
    future = faulty_pool.submit(faulty, completions, samples)
    with caplog.at_level(logging.WARNING, logger="rlvr_jax.rewards.pool"):
        if faulty_pool.on_error == "fail":
            with pytest.raises(RewardError) as info:
                future.result(timeout=120)
            message = str(info.value)
            assert message.startswith(f"reward 'faulty' {what}")
            assert "while scoring 4 samples (rows 4-7 of 8)" in message and "\n" not in message
            if bad == "raise":  # the worker's traceback travels along as the cause
                assert "ZeroDivisionError" in str(info.value.__cause__)
        else:
            result = future.result(timeout=120)
            assert result.scores.tolist() == [1, 1, 1, 1, 1, 0, 1, 1]  # only the culprit scores 0
            assert result.reasons[5].startswith(f"reward error: {what}")
            assert result.reasons[4] == "fine"
            (warning,) = [r.getMessage() for r in caplog.records if "faulty" in r.getMessage()]
            assert "failed on 1 of 8 samples, scored 0" in warning and "sample 5 (id item-5)" in warning
    # Never a hung caller: a hang costs the timeout (twice with "zero": chunk, then the sample alone).
    assert time.monotonic() - started < (3 if faulty_pool.on_error == "zero" else 2) * TIMEOUT_S + 30
    # The pool goes on: a killed or hung worker was replaced.
    assert faulty_pool.submit(faulty, ["ok"] * 8, [{}] * 8).result(timeout=120).scores.sum() == 8
    assert len(faulty_pool.worker_pids()) <= 2


def test_closures_travel_by_value_and_what_cannot_travel_fails_its_batch_by_name(pool):
    bonus = {"a": 0.5}

    def local(completions, samples, **_):  # a closure: no module can give it to a worker by name
        scores = [bonus.get(c, 0.0) for c in completions]
        return RewardResult(np.asarray(scores, np.float32), [""] * len(completions))

    assert pool.submit(local, ["a", "b"] * 20, [{}] * 40).result(timeout=120).scores[:2].tolist() == [0.5, 0]

    lock = threading.Lock()

    def holds_a_lock(completions, samples, **_):
        with lock:
            return RewardResult(np.ones(len(completions), np.float32), [""] * len(completions))

    for on_error in ("fail", "zero"):  # a reward that cannot travel fails whatever on_error says
        pool.on_error = on_error
        with pytest.raises(
            RewardError, match=r"reward 'holds_a_lock' could not be sent to a worker \(TypeError"
        ):
            pool.submit(holds_a_lock, ["a", "b"], [{}, {}]).result(timeout=120)
    pool.on_error = "fail"
    assert pool.submit("numeric", ["#### 3"], [{"answer": "3"}]).result(timeout=120).scores.tolist() == [1.0]


def test_a_reward_the_workers_cannot_load_or_that_returns_a_list_says_so(pool, tmp_path, monkeypatch):
    """The worker's own error reaches the caller with the reward's name: a module that the parent imported
    but the workers cannot (here: deleted since), and a return value that is not a RewardResult."""
    (tmp_path / "gone_rewards.py").write_text(
        "def gone(completions, samples, **_):\n    return [1.0] * len(completions)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import gone_rewards

    sys.modules.pop("gone_rewards")
    with pytest.raises(
        RewardError, match=r"reward 'gone' returned a list, not a RewardResult\(scores, reasons\)"
    ):
        pool.submit(gone_rewards.gone, ["a"], [{}]).result(timeout=120)
    sys.modules["gone_rewards"] = gone_rewards  # cloudpickle sends it by reference to its module ...
    (tmp_path / "gone_rewards.py").unlink()  # ... which the workers cannot import any more
    with pytest.raises(RewardError) as info:
        pool.submit(gone_rewards.gone, ["a"], [{}]).result(timeout=120)
    assert str(info.value).startswith(
        "reward 'gone' raised ModuleNotFoundError: No module named 'gone_rewards'"
    )
    sys.modules.pop("gone_rewards")


def test_on_error_and_timeout_are_checked():
    with pytest.raises(ValueError, match="on_error must be one of fail, zero"):
        RewardPool(on_error="ignore")
    with pytest.raises(ValueError, match="timeout_s must be > 0"):
        RewardPool(timeout_s=0)


def test_close_ends_the_workers():
    with RewardPool(workers=2, min_chunk=1) as p:
        assert p.submit(faulty, ["ok"] * 4, [{}] * 4).result(timeout=120).scores.sum() == 4
        pids = p.worker_pids()
        assert len(pids) == 2 and all(alive(pid) for pid in pids)
    assert not any(alive(pid) for pid in pids)


def sleepy(completions, samples, **_):
    """Marks that it started (a file named for its process), then scores for an hour."""
    for sample in samples:
        Path(sample["dir"], str(os.getpid())).touch()
    time.sleep(3600)


PARENT = """
import sys
from rlvr_jax.rewards import pool as pool_module
from tests.test_reward_pool import sleepy
pool_module._PARENT_DEATH = tuple(sys.argv[2:])
pool = pool_module.RewardPool(workers=2, min_chunk=1, timeout_s=None)
pool.submit(sleepy, ["a", "b"], [{"dir": sys.argv[1]}] * 2)  # both workers busy, never done
sys.stdin.read()  # until killed
"""


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)  # polling, bounded by the deadline


@pytest.mark.parametrize("mechanism", ["pdeathsig", "watchdog"])
def test_busy_workers_die_with_a_parent_killed_by_sigkill(mechanism, tmp_path):
    """Each way alone: the kernel's SIGKILL when the parent dies (Linux); each worker's parent watchdog.
    The workers are busy in a reward, so neither notices its pipe closing."""
    proc = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path), mechanism], stdin=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    try:
        wait_until(lambda: len(list(tmp_path.iterdir())) == 2 or proc.poll() is not None, 120, "both score")
        pids = [int(p.name) for p in tmp_path.iterdir()]
        assert len(pids) == 2 and all(alive(pid) for pid in pids), proc.stderr.read()[-3000:]
    finally:
        proc.kill()
        proc.wait(timeout=60)
    try:
        wait_until(lambda: not any(alive(pid) for pid in pids), 10, f"the workers die ({mechanism})")
    finally:
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)  # no stray process, even when the test fails
