"""Evaluation statistics against independent references: statsmodels, scipy, exact arithmetic, brute force.

statsmodels is used here only, as a second implementation to check against; `rlvr_jax.evaluation.stats`
itself depends on numpy and scipy alone.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats as scipy_stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import proportion_confint

from rlvr_jax.evaluation.stats import (
    Interval,
    bootstrap_mean,
    mcnemar_exact,
    mcnemar_table,
    mean_pass_at_k,
    paired_bootstrap_diff,
    paired_permutation_test,
    pass_at_k,
    t_interval,
    wilson_interval,
)

# ---------------------------------------------------------------------------------------------- Interval


def test_interval_to_dict_has_flat_report_keys():
    interval = Interval(0.5, 0.25, 0.75, 0.9, "wilson")
    assert interval.to_dict() == {
        "value": 0.5,
        "ci_low": 0.25,
        "ci_high": 0.75,
        "confidence": 0.9,
        "method": "wilson",
    }


# ---------------------------------------------------------------------------------------------- t interval


@pytest.mark.parametrize("values", [[0.4, 0.5, 0.6], [0.31, 0.35], [0.2, 0.25, 0.22, 0.3, 0.27]])
def test_t_interval_equals_statsmodels(values):
    from statsmodels.stats.weightstats import DescrStatsW

    interval = t_interval(values)
    low, high = DescrStatsW(np.array(values)).tconfint_mean(alpha=0.05)
    assert interval.value == pytest.approx(np.mean(values))
    assert (interval.low, interval.high) == (pytest.approx(low), pytest.approx(high))
    assert interval.method == f"Student t over {len(values)} runs"


def test_t_interval_of_one_or_no_runs_has_no_bounds():
    one = t_interval([0.4])
    assert one.value == 0.4 and math.isnan(one.low) and math.isnan(one.high)
    assert math.isnan(t_interval([]).value)
    with pytest.raises(ValueError, match="NaN or infinite"):
        t_interval([0.4, float("nan")])


# ---------------------------------------------------------------------------------------------- Wilson


def _wilson_cases():
    for n in [1, 2, 3, 4, 5, 7, 10, 13, 20, 37]:
        for successes in range(n + 1):
            yield successes, n
    for n in [100, 500, 1319, 10_000]:
        for successes in [0, 1, 2, n // 10, n // 3, n // 2, n - 2, n - 1, n]:
            yield successes, n


@pytest.mark.parametrize("confidence", [0.5, 0.8, 0.9, 0.95, 0.99, 0.999])
def test_wilson_interval_equals_statsmodels(confidence):
    for successes, n in _wilson_cases():
        interval = wilson_interval(successes, n, confidence)
        low, high = proportion_confint(successes, n, alpha=1 - confidence, method="wilson")
        assert interval.value == successes / n
        assert interval.low == pytest.approx(low, abs=1e-12), (successes, n)
        assert interval.high == pytest.approx(high, abs=1e-12), (successes, n)
        assert 0.0 <= interval.low <= interval.value <= interval.high <= 1.0
        assert interval.confidence == confidence and interval.method == "wilson"


def test_wilson_interval_is_exactly_closed_at_zero_and_n():
    assert wilson_interval(0, 50).low == 0.0
    assert wilson_interval(50, 50).high == 1.0


def test_wilson_interval_narrows_with_n_and_widens_with_confidence():
    assert wilson_interval(500, 1000).high - wilson_interval(500, 1000).low < (
        wilson_interval(50, 100).high - wilson_interval(50, 100).low
    )
    narrow, wide = wilson_interval(30, 100, 0.9), wilson_interval(30, 100, 0.99)
    assert wide.low < narrow.low and narrow.high < wide.high


def test_wilson_interval_of_no_items_is_nan():
    interval = wilson_interval(0, 0, 0.9)
    assert math.isnan(interval.value) and math.isnan(interval.low) and math.isnan(interval.high)
    assert interval.confidence == 0.9 and interval.method == "wilson"


@pytest.mark.parametrize(
    ("successes", "n", "confidence", "message"),
    [
        (-1, 10, 0.95, "successes"),
        (11, 10, 0.95, "successes"),
        (1, 0, 0.95, "successes"),
        (0, -1, 0.95, "n must be non-negative"),
        (5, 10, 0.0, "confidence"),
        (5, 10, 1.0, "confidence"),
        (5, 10, 95, "confidence"),
        (5, 10, -0.5, "confidence"),
    ],
)
def test_wilson_interval_rejects_bad_input(successes, n, confidence, message):
    with pytest.raises(ValueError, match=message):
        wilson_interval(successes, n, confidence)


# ---------------------------------------------------------------------------------------------- pass@k


def test_pass_at_k_equals_exact_closed_form_on_a_grid():
    cases = 0
    for n in range(1, 21):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
                assert pass_at_k(n, c, k) == pytest.approx(float(exact), abs=1e-12), (n, c, k)
                cases += 1
    assert cases == sum(n * (n + 1) for n in range(1, 21))


def test_pass_at_k_known_values():
    assert pass_at_k(2, 1, 1) == 0.5
    assert pass_at_k(10, 0, 1) == 0.0
    assert pass_at_k(10, 0, 10) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(10, 1, 10) == 1.0  # n - c < k: any 10 of the 10 include the correct one
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3, abs=1e-15)  # pass@1 is the fraction correct
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10, abs=1e-15)  # 1 - C(3,2)/C(5,2)


def test_pass_at_k_is_stable_for_large_n():
    # C(1000, 100) overflows a float; the product form does not.
    exact = 1 - Fraction(math.comb(1000 - 7, 100), math.comb(1000, 100))
    assert pass_at_k(1000, 7, 100) == pytest.approx(float(exact), abs=1e-12)


@pytest.mark.parametrize(
    ("n", "c", "k", "message"),
    [
        (10, 3, 0, "k must be at least 1"),
        (10, 3, -2, "k must be at least 1"),
        (10, 3, 11, "n >= k"),
        (10, -1, 1, "c"),
        (10, 11, 1, "c"),
    ],
)
def test_pass_at_k_rejects_bad_input(n, c, k, message):
    with pytest.raises(ValueError, match=message):
        pass_at_k(n, c, k)


def test_mean_pass_at_k_averages_items():
    num_samples, num_correct = [10, 10, 5, 20], [0, 3, 5, 1]
    expected = np.mean([pass_at_k(n, c, 2) for n, c in zip(num_samples, num_correct, strict=True)])
    assert mean_pass_at_k(num_samples, num_correct, 2) == pytest.approx(expected, abs=1e-15)
    assert mean_pass_at_k(10, [0, 3, 10], 1) == pytest.approx((0 + 0.3 + 1) / 3, abs=1e-15)
    assert math.isnan(mean_pass_at_k([], [], 1))
    with pytest.raises(ValueError, match="same length"):
        mean_pass_at_k([10, 10], [1, 2, 3], 1)
    with pytest.raises(ValueError, match="n >= k"):
        mean_pass_at_k([10, 4], [1, 2], 5)
    with pytest.raises(ValueError, match="whole counts"):
        mean_pass_at_k([10, 10], [0.5, 0.2], 1)


# ---------------------------------------------------------------------------------------------- McNemar


def test_mcnemar_table_counts_a_hand_built_example():
    a = [True, True, True, False, False, True, False, False, True]
    b = [True, False, True, True, False, False, False, True, True]
    # both: items 0, 2, 8; only A: 1, 5; only B: 3, 7; neither: 4, 6
    assert mcnemar_table(a, b) == (3, 2, 2, 2)
    assert mcnemar_table(np.array(a, int), np.array(b, int)) == (3, 2, 2, 2)
    assert mcnemar_table([], []) == (0, 0, 0, 0)
    assert all(isinstance(count, int) for count in mcnemar_table(a, b))


def test_mcnemar_table_rejects_unpaired_or_non_boolean_outcomes():
    with pytest.raises(ValueError, match="same length"):
        mcnemar_table([True, False], [True])
    with pytest.raises(ValueError, match="0/1"):
        mcnemar_table([0.5, 1.0], [1, 0])


def test_mcnemar_exact_equals_statsmodels_and_binomtest():
    for only_a, only_b in itertools.product(range(0, 21), repeat=2):
        table = np.array([[17, only_a], [only_b, 4]])  # concordant cells (17 both, 4 neither) carry no weight
        p = mcnemar_exact(only_a, only_b)
        assert p == pytest.approx(mcnemar(table, exact=True).pvalue, rel=1e-10, abs=1e-15)
        if only_a + only_b:
            assert p == pytest.approx(scipy_stats.binomtest(only_a, only_a + only_b).pvalue, rel=1e-12)
    for only_a, only_b in [(120, 80), (3, 300), (500, 500)]:
        table = np.array([[10, only_a], [only_b, 10]])
        assert mcnemar_exact(only_a, only_b) == pytest.approx(mcnemar(table, exact=True).pvalue, rel=1e-8)


def test_mcnemar_exact_edge_cases():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(7, 7) == 1.0
    assert mcnemar_exact(0, 10) == pytest.approx(2 / 2**10)
    assert mcnemar_exact(3, 9) == mcnemar_exact(9, 3)
    with pytest.raises(ValueError, match="non-negative"):
        mcnemar_exact(-1, 3)


# ---------------------------------------------------------------------------------------------- permutation


def _brute_force_sign_flip_p(a, b) -> float:
    """Every one of the 2^n sign patterns over all n differences (zeros included), written out plainly."""
    differences = np.asarray(b, float) - np.asarray(a, float)
    observed = abs(differences.mean())
    hits = total = 0
    for signs in itertools.product([1.0, -1.0], repeat=differences.size):
        total += 1
        hits += abs(np.mean(np.array(signs) * differences)) >= observed - 1e-12
    return hits / total


def _scipy_exact_p(a, b) -> float:
    result = scipy_stats.permutation_test(
        (np.asarray(a, float), np.asarray(b, float)),
        lambda x, y, axis: np.mean(y - x, axis=axis),
        permutation_type="samples",
        vectorized=True,
        alternative="two-sided",
        n_resamples=np.inf,
    )
    return float(result.pvalue)


def _small_paired_cases():
    rng = np.random.default_rng(123)
    yield [0.1, 0.5, 0.9, 0.3], [0.2, 0.7, 0.8, 0.9]
    yield [1, 0, 1, 1, 0, 0, 1, 0, 1, 1], [1, 1, 1, 0, 1, 1, 1, 1, 1, 1]  # 0/1 outcomes: many ties
    yield [0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]
    yield [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5], [3, 2, 4, 0, 5, 7, 2, 8, 5, 3, 6]  # zero differences mixed in
    for n in [5, 8, 12]:
        a = rng.uniform(size=n)
        yield a, a + rng.normal(0.2, 0.5, size=n)


@pytest.mark.parametrize("case", range(7))
def test_paired_permutation_exact_equals_brute_force_and_scipy(case):
    a, b = list(_small_paired_cases())[case]
    p = paired_permutation_test(a, b)
    assert p == pytest.approx(_brute_force_sign_flip_p(a, b), abs=1e-12)
    assert p == pytest.approx(_scipy_exact_p(a, b), abs=1e-12)
    assert p == paired_permutation_test(b, a)  # two-sided: symmetric in the order of the models


def test_paired_permutation_switches_to_monte_carlo_above_sixteen_nonzero_differences():
    rng = np.random.default_rng(7)
    a = rng.uniform(size=17)
    b = a + rng.normal(0.4, 1.0, size=17)
    b[16] = a[16]  # 16 non-zero differences: still exact
    assert paired_permutation_test(a, b) == pytest.approx(_scipy_exact_p(a, b), abs=1e-12)
    # 17: Monte Carlo, whose p is (count + 1) / (n_resamples + 1). Differences of +-1 make the exact p a
    # binomial tail: the sign-flipped sum is 2B - 17 with B ~ Binomial(17, 1/2), and 13 - 4 = 9 was observed.
    signs = np.array([1.0] * 13 + [-1.0] * 4)
    exact = float(2 * scipy_stats.binom.sf(12, 17, 0.5))  # P(B >= 13) + P(B <= 4)
    p = paired_permutation_test(np.zeros(17), signs, n_resamples=4000, seed=0)
    assert p * 4001 == pytest.approx(round(p * 4001), abs=1e-9)
    assert p == pytest.approx(exact, abs=0.01)  # exact is 0.049; 0.01 is ~3 Monte Carlo standard errors
    assert p != exact


def test_paired_permutation_monte_carlo_is_close_to_exact_binomial_answer():
    # Differences of +-1: the sign-flip sum is 2B - m with B ~ Binomial(m, 1/2), so the exact p is known.
    plus, minus, zeros = 20, 10, 15
    a = np.zeros(plus + minus + zeros)
    b = np.concatenate([np.ones(plus), -np.ones(minus), np.zeros(zeros)])
    m, observed = plus + minus, plus - minus
    exact = float(scipy_stats.binom.sf((m + observed) // 2 - 1, m, 0.5) * 2)  # P(|2B - m| >= observed)
    p = paired_permutation_test(a, b, n_resamples=10_000, seed=0)
    assert exact == pytest.approx(0.0987, abs=1e-3)
    assert p == pytest.approx(exact, abs=0.015)  # ~5 Monte Carlo standard errors
    assert p == paired_permutation_test(a, b, n_resamples=10_000, seed=0)  # deterministic for a seed


def test_paired_permutation_monte_carlo_is_close_to_large_sample_answer():
    rng = np.random.default_rng(1)
    a = rng.uniform(size=300)
    b = a + rng.normal(0.05, 0.5, size=300)
    differences = b - a
    z = differences.sum() / np.sqrt(np.sum(differences**2))  # the sign-flip sum's null variance is sum d^2
    normal_p = float(2 * scipy_stats.norm.sf(abs(z)))
    assert 0.02 < normal_p < 0.5  # a case where the p-value is neither tiny nor trivially 1
    assert paired_permutation_test(a, b, n_resamples=20_000, seed=3) == pytest.approx(normal_p, abs=0.02)


def test_paired_permutation_identical_models_give_one():
    assert paired_permutation_test([0.1, 0.5, 1.0], [0.1, 0.5, 1.0]) == 1.0
    same = np.random.default_rng(0).uniform(size=1000)
    assert paired_permutation_test(same, same.copy()) == 1.0
    assert paired_permutation_test([], []) == 1.0


def test_paired_permutation_strong_shift_gives_tiny_p():
    rng = np.random.default_rng(2)
    a = rng.uniform(size=10)
    assert paired_permutation_test(a, a + 1.0) == pytest.approx(2 / 2**10)  # only all-+ and all-- reach it
    a = rng.uniform(size=200)
    assert paired_permutation_test(a, a + 0.5 + rng.normal(0, 0.1, 200), n_resamples=5000) == 1 / 5001


def test_paired_permutation_rejects_unpaired_input():
    with pytest.raises(ValueError, match="same length"):
        paired_permutation_test([1, 2, 3], [1, 2])


# ---------------------------------------------------------------------------------------------- bootstrap


def test_bootstrap_mean_contains_the_mean_and_narrows_with_n():
    rng = np.random.default_rng(0)
    small, large = rng.uniform(size=50), rng.uniform(size=2000)
    widths = []
    for values in (small, large):
        interval = bootstrap_mean(values)
        assert interval.value == pytest.approx(values.mean(), abs=1e-15)
        assert interval.low < interval.value < interval.high
        assert interval.method == "bootstrap percentile over items (10000 resamples)"
        widths.append(interval.high - interval.low)
    assert widths[1] < widths[0] / 3  # width ~ 1/sqrt(n): sqrt(2000/50) = 6.3


def test_bootstrap_mean_matches_scipy_percentile_bootstrap():
    rng = np.random.default_rng(4)
    values = rng.binomial(8, 0.4, size=200) / 8  # bounded per-item pass rates, many ties
    for confidence in (0.9, 0.95):
        ours = bootstrap_mean(values, confidence=confidence)
        ref = scipy_stats.bootstrap(
            (values,),
            np.mean,
            confidence_level=confidence,
            n_resamples=10_000,
            method="percentile",
            rng=np.random.default_rng(99),
        ).confidence_interval
        assert ours.low == pytest.approx(ref.low, abs=0.01)
        assert ours.high == pytest.approx(ref.high, abs=0.01)
        assert ours.confidence == confidence


def test_bootstrap_mean_edge_cases_and_determinism():
    empty = bootstrap_mean([])
    assert math.isnan(empty.value) and math.isnan(empty.low) and math.isnan(empty.high)
    assert bootstrap_mean([0.7]) == Interval(0.7, 0.7, 0.7, 0.95, empty.method)
    assert bootstrap_mean([0.25, 0.25, 0.25]).low == bootstrap_mean([0.25, 0.25, 0.25]).high == 0.25
    values = np.random.default_rng(5).uniform(size=100)
    assert bootstrap_mean(values, seed=11) == bootstrap_mean(values, seed=11)
    assert bootstrap_mean(values, seed=11) != bootstrap_mean(values, seed=12)
    narrow, wide = bootstrap_mean(values, confidence=0.8), bootstrap_mean(values, confidence=0.99)
    assert wide.low < narrow.low and narrow.high < wide.high
    assert bootstrap_mean(values, n_resamples=500).method.endswith("(500 resamples)")
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_mean([0.1, np.nan])
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_mean(values, confidence=1.5)
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_mean(values, n_resamples=0)
    with pytest.raises(ValueError, match="one-dimensional"):
        bootstrap_mean(np.ones((3, 2)))


def test_paired_bootstrap_diff_of_a_constant_shift_is_degenerate():
    a = np.random.default_rng(6).uniform(size=100)
    interval = paired_bootstrap_diff(a, a + 0.1)
    # b - a is 0.1 up to the rounding of (a + 0.1) - a, so "exactly" means to a few ulps.
    assert interval.value == pytest.approx(0.1, abs=1e-15)
    assert interval.low == pytest.approx(0.1, abs=1e-15)
    assert interval.high == pytest.approx(0.1, abs=1e-15)
    assert interval.method == "paired bootstrap percentile over items (10000 resamples)"


def test_paired_bootstrap_diff_matches_scipy_paired_bootstrap():
    rng = np.random.default_rng(8)
    difficulty = rng.uniform(size=300)  # shared by both models: pairing should cancel it
    a = np.clip(difficulty + rng.normal(0, 0.1, 300), 0, 1)
    b = np.clip(difficulty + 0.05 + rng.normal(0, 0.1, 300), 0, 1)
    ours = paired_bootstrap_diff(a, b)
    assert ours.value == pytest.approx(np.mean(b - a), abs=1e-15)
    assert ours.low < ours.value < ours.high
    ref = scipy_stats.bootstrap(
        (a, b),
        lambda x, y, axis: np.mean(y - x, axis=axis),
        paired=True,
        n_resamples=10_000,
        method="percentile",
        rng=np.random.default_rng(99),
    ).confidence_interval
    assert ours.low == pytest.approx(ref.low, abs=0.005)
    assert ours.high == pytest.approx(ref.high, abs=0.005)
    # Pairing matters: the unpaired interval of the difference would be several times wider.
    unpaired = (bootstrap_mean(b).high - bootstrap_mean(b).low) + (
        bootstrap_mean(a).high - bootstrap_mean(a).low
    )
    assert ours.high - ours.low < unpaired / 3
    assert paired_bootstrap_diff(a, b, seed=3) == paired_bootstrap_diff(a, b, seed=3)


def test_paired_bootstrap_diff_edge_cases():
    assert math.isnan(paired_bootstrap_diff([], []).value)
    single = paired_bootstrap_diff([0.0], [1.0])
    assert (single.value, single.low, single.high) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="same length"):
        paired_bootstrap_diff([1.0, 2.0], [1.0])
