"""The statistics of model evaluation: intervals for scores, pass@k, and paired tests between two models.

An evaluation score on a few hundred items is a noisy estimate, and two checkpoints scored on the same
items are paired, so comparing them item by item (McNemar, paired bootstrap, sign-flip permutation) is far
more sensitive than comparing two independent intervals. Training runs that differ only in their seed
are summarised by their mean with a t interval over the runs. These are small pure functions on numpy arrays
so that the evaluation CLI, training-time evaluation and notebooks all report the same numbers.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats as _scipy_stats

# Largest number of array elements a vectorised resampling step holds at once (about 32 MB of float64):
# resamples are drawn in blocks of rows so memory stays bounded however many items or resamples there are.
_BLOCK_ELEMENTS = 1 << 22

# The permutation test enumerates every sign pattern up to this many non-zero differences (65536 patterns).
_EXACT_MAX_DIFFERENCES = 16

# Permuted statistics this close to the observed one count as ties (they differ only by rounding).
_TIE_TOLERANCE = 1e-12


@dataclasses.dataclass(frozen=True)
class Interval:
    """A point estimate with a confidence interval, and how the interval was computed (for reports)."""

    value: float  # the point estimate
    low: float
    high: float
    confidence: float  # e.g. 0.95
    method: str  # e.g. "wilson", "bootstrap percentile over items (10000 resamples)"

    def to_dict(self) -> dict[str, float | str]:
        """Flat keys, so an interval can go straight into a JSON report or a metrics logger."""
        return {
            "value": self.value,
            "ci_low": self.low,
            "ci_high": self.high,
            "confidence": self.confidence,
            "method": self.method,
        }


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be strictly between 0 and 1, got {confidence}")


def _check_resamples(n_resamples: int) -> None:
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")


def _as_1d_float(values: ArrayLike, name: str) -> np.ndarray:
    """Per-item values as a 1-D float array; NaN or inf would quietly poison every resample, so they raise."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional (one value per item), got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def _as_1d_bool(values: ArrayLike, name: str) -> np.ndarray:
    """Pass/fail outcomes: booleans or 0/1 only, so that a reward like 0.5 is not quietly read as a pass."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional (one outcome per item), got shape {array.shape}")
    if array.dtype != np.bool_:
        if array.size and not np.all((array == 0) | (array == 1)):
            raise ValueError(f"{name} must hold booleans or 0/1 values")
        array = array.astype(bool)
    return array


def _nan_interval(confidence: float, method: str) -> Interval:
    return Interval(math.nan, math.nan, math.nan, confidence, method)


def _bootstrap_means(values: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """Means of `n_resamples` resamples (with replacement) of `values`, vectorised in blocks of resamples."""
    n = values.size
    rng = np.random.default_rng(seed)
    rows_per_block = max(1, _BLOCK_ELEMENTS // n)
    means = np.empty(n_resamples)
    for start in range(0, n_resamples, rows_per_block):
        rows = min(rows_per_block, n_resamples - start)
        means[start : start + rows] = values[rng.integers(0, n, size=(rows, n))].mean(axis=1)
    return means


def _bootstrap_interval(
    values: np.ndarray, confidence: float, n_resamples: int, seed: int, method: str
) -> Interval:
    """Mean of `values` with a percentile bootstrap interval; empty -> NaN, one item -> the point itself."""
    if values.size == 0:
        return _nan_interval(confidence, method)
    value = float(values.mean())
    if values.size == 1:  # every resample is the one item
        return Interval(value, value, value, confidence, method)
    alpha = 1.0 - confidence
    means = _bootstrap_means(values, n_resamples, seed)
    low, high = np.quantile(means, [alpha / 2, 1.0 - alpha / 2])
    return Interval(value, float(low), float(high), confidence, method)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> Interval:
    """The proportion successes/n with the Wilson score interval.

    Wilson rather than the normal ("Wald") interval because it stays inside [0, 1] and keeps its coverage
    at the scores that matter most in evaluation: near 0, near 1, and on small item counts.
    """
    _check_confidence(confidence)
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be between 0 and n={n}, got {successes}")
    if n == 0:
        return _nan_interval(confidence, "wilson")
    ci = _scipy_stats.binomtest(int(successes), int(n)).proportion_ci(confidence, method="wilson")
    # At 0 or n successes the bound is exactly 0 or 1; the formula gets there only up to rounding.
    low = 0.0 if successes == 0 else min(max(float(ci.low), 0.0), 1.0)
    high = 1.0 if successes == n else min(max(float(ci.high), 0.0), 1.0)
    return Interval(successes / n, low, high, confidence, "wilson")


def bootstrap_mean(
    values: ArrayLike, confidence: float = 0.95, n_resamples: int = 10_000, seed: int = 0
) -> Interval:
    """The mean of per-item values (pass rates, rewards) with a percentile bootstrap over items.

    Resampling items, not samples, because items are the unit of variation: the several completions drawn
    for one prompt are correlated. Empty input gives a NaN interval; one item gives the point itself.
    """
    _check_confidence(confidence)
    _check_resamples(n_resamples)
    array = _as_1d_float(values, "values")
    method = f"bootstrap percentile over items ({n_resamples} resamples)"
    return _bootstrap_interval(array, confidence, n_resamples, seed, method)


def t_interval(values: ArrayLike, confidence: float = 0.95) -> Interval:
    """The mean of a few independent measurements with Student's t interval, mean +- t s / sqrt(n).

    For numbers that vary between runs more than a bootstrap over items can see: the held-out accuracy of
    training runs that differ only in their seed. The runs are the units, so three of them give a wide
    interval (t = 4.30 at 95%), as they should. One value has no spread to estimate: NaN bounds; none: NaN.
    """
    _check_confidence(confidence)
    array = _as_1d_float(values, "values")
    method = f"Student t over {array.size} runs"
    if array.size == 0:
        return _nan_interval(confidence, method)
    value = float(array.mean())
    if array.size == 1:
        return Interval(value, math.nan, math.nan, confidence, method)
    t = _scipy_stats.t.ppf(0.5 + confidence / 2, array.size - 1)
    half = t * array.std(ddof=1) / math.sqrt(array.size)
    return Interval(value, value - float(half), value + float(half), confidence, method)


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k estimator of Chen et al. 2021 (HumanEval): 1 - C(n-c, k) / C(n, k).

    From n samples of which c are correct, the probability that k drawn without replacement include a
    correct one. Computed as a product of ratios, since the binomial coefficients overflow floats for
    large n.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if k > n:
        raise ValueError(f"k={k} is larger than the number of samples n={n}; pass@k needs n >= k")
    if not 0 <= c <= n:
        raise ValueError(f"c (correct samples) must be between 0 and n={n}, got {c}")
    if n - c < k:  # every draw of k samples includes a correct one
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def mean_pass_at_k(num_samples: ArrayLike, num_correct: ArrayLike, k: int) -> float:
    """pass@k averaged over items; `num_samples` may be one number shared by all items. Empty -> NaN."""
    samples = np.asarray(num_samples)
    correct = np.asarray(num_correct)
    if correct.ndim != 1:
        raise ValueError(
            f"num_correct must be one-dimensional (one count per item), got shape {correct.shape}"
        )
    if samples.ndim == 0:
        samples = np.full(correct.shape, samples)
    if samples.shape != correct.shape:
        raise ValueError(
            f"num_samples and num_correct must have the same length, got {samples.shape} and {correct.shape}"
        )
    if correct.size == 0:
        return math.nan
    if not (np.all(np.mod(samples, 1) == 0) and np.all(np.mod(correct, 1) == 0)):
        raise ValueError("num_samples and num_correct must be whole counts (a pass rate is not a count)")
    return float(np.mean([pass_at_k(int(n), int(c), k) for n, c in zip(samples, correct, strict=True)]))


def mcnemar_table(a_pass: ArrayLike, b_pass: ArrayLike) -> tuple[int, int, int, int]:
    """Paired pass/fail outcomes of two models on the same items -> (both pass, only A, only B, neither).

    Only the discordant counts (only A, only B) carry evidence about which model is better.
    """
    a = _as_1d_bool(a_pass, "a_pass")
    b = _as_1d_bool(b_pass, "b_pass")
    if a.shape != b.shape:
        raise ValueError(f"a_pass and b_pass must be paired (same length), got {a.size} and {b.size}")
    return (
        int(np.sum(a & b)),
        int(np.sum(a & ~b)),
        int(np.sum(~a & b)),
        int(np.sum(~a & ~b)),
    )


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: a binomial test of only_a out of the discordant pairs at p = 0.5.

    Exact rather than the chi-squared approximation, because the discordant counts between two
    checkpoints are often small. No discordant pairs -> 1.0 (no evidence either way).
    """
    if only_a < 0 or only_b < 0:
        raise ValueError(f"discordant counts must be non-negative, got only_a={only_a}, only_b={only_b}")
    discordant = int(only_a) + int(only_b)
    if discordant == 0:
        return 1.0
    return float(_scipy_stats.binomtest(int(only_a), discordant, 0.5, alternative="two-sided").pvalue)


def paired_bootstrap_diff(
    a: ArrayLike, b: ArrayLike, confidence: float = 0.95, n_resamples: int = 10_000, seed: int = 0
) -> Interval:
    """mean(b - a) over paired items, with a percentile bootstrap that resamples items keeping pairs together.

    Keeping pairs together removes the item-difficulty variance both models share, so the interval on the
    difference is much narrower than one built from two independent intervals.
    """
    _check_confidence(confidence)
    _check_resamples(n_resamples)
    x = _as_1d_float(a, "a")
    y = _as_1d_float(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"a and b must be paired (same length), got {x.size} and {y.size}")
    method = f"paired bootstrap percentile over items ({n_resamples} resamples)"
    return _bootstrap_interval(y - x, confidence, n_resamples, seed, method)


def paired_permutation_test(a: ArrayLike, b: ArrayLike, n_resamples: int = 10_000, seed: int = 0) -> float:
    """Two-sided p-value for mean(b - a) == 0, by flipping the sign of each paired difference at random.

    Under the null the two models are exchangeable on every item, so each difference is as likely to have
    either sign. Exact (all 2^m sign patterns of the m non-zero differences) when m <= 16, otherwise Monte
    Carlo with p = (count + 1) / (n_resamples + 1), which never reports an impossible p of 0. Permuted
    means within 1e-12 (relative to the largest difference, when that exceeds 1) of the observed one count
    as ties.
    """
    _check_resamples(n_resamples)
    x = _as_1d_float(a, "a")
    y = _as_1d_float(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"a and b must be paired (same length), got {x.size} and {y.size}")
    differences = y - x
    nonzero = differences[differences != 0]  # zero differences are unchanged by a sign flip
    m = nonzero.size
    if m == 0:
        return 1.0
    n = differences.size
    observed = abs(nonzero.sum() / n)
    threshold = observed - _TIE_TOLERANCE * max(1.0, float(np.abs(nonzero).max()))

    if m <= _EXACT_MAX_DIFFERENCES:
        patterns = (np.arange(2**m)[:, None] >> np.arange(m)) & 1  # row i: the bits of i
        means = (1.0 - 2.0 * patterns) @ nonzero / n
        return float(np.count_nonzero(np.abs(means) >= threshold) / 2**m)

    rng = np.random.default_rng(seed)
    rows_per_block = max(1, _BLOCK_ELEMENTS // m)
    count = 0
    for start in range(0, n_resamples, rows_per_block):
        rows = min(rows_per_block, n_resamples - start)
        signs = 1.0 - 2.0 * rng.integers(0, 2, size=(rows, m))
        count += int(np.count_nonzero(np.abs(signs @ nonzero / n) >= threshold))
    return (count + 1) / (n_resamples + 1)
