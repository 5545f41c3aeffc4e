"""The process pool scores exactly like a direct call, in input order, and overlaps with the caller."""

from __future__ import annotations

import numpy as np
import pytest

from rlvr_jax.data import get_task
from rlvr_jax.rewards import get_reward
from rlvr_jax.rewards.pool import RewardPool


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
    from rlvr_jax.rewards.base import RewardResult

    scores = [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]
    return RewardResult(np.asarray(scores, np.float32), ["digits"] * len(completions))


def test_pool_runs_functions_from_other_modules(pool):
    result = pool.submit(digit_fraction, ["a1", "22", "xy"] * 20, [{}] * 60).result(timeout=120)
    assert result.scores[:3].tolist() == [0.5, 1.0, 0.0]


def test_pool_survives_sigterm_to_its_workers(pool):
    """`timeout` and schedulers signal the whole process group; the trainer must still finish its step."""
    import os
    import signal

    samples = [{"answer": "3"}, {"answer": "4"}]
    assert pool.submit("numeric", ["#### 3", "#### 5"], samples).result(timeout=120).scores.tolist() == [1, 0]
    workers = list(pool._processes._processes.values())  # the worker pids are not public
    assert workers
    for proc in workers:
        os.kill(proc.pid, signal.SIGTERM)
    for proc in workers:
        proc.join(timeout=0.5)
        assert proc.is_alive(), "a reward worker died of SIGTERM"
    result = pool.submit("numeric", ["#### 3", "#### 4"], samples).result(timeout=120)
    assert result.scores.tolist() == [1.0, 1.0]
