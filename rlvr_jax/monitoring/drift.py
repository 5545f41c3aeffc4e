"""Drift detection: is the traffic a deployed policy sees still like the data it was trained on?

A `ReferenceProfile` summarises training prompts (and optionally training outputs and their verified
outcomes); `compare` (a file of live records) or a `DriftMonitor` (a sliding window of a server's
requests) measures how far live traffic has moved from it, feature by feature:

features (for each side, `prompt` and `response`)
    `<side>_chars`      characters per text                   statistics: psi, ks, js
    `<side>_words`      tokens per text (regex words by default, see `regex_words`; a tokenizer's tokens
                        when one is given, the name stays)   statistics: psi, ks, js
    `<side>_vocab`      the token frequency distribution over the reference's top-K tokens plus one
                        "other" bucket                        statistic:  js
    `<side>_embedding`  optional: the mean of text embeddings (`HashedEmbedding` or any
                        `embed(texts) -> array`)              statistic:  mean_shift
    `pass_rate`         the mean verified outcome (0/1 or a reward in [0, 1])   statistic: abs_diff

statistics (all effect sizes, so a verdict does not flip with the number of samples the way a p-value does:
with thousands of samples a KS p-value flags differences nobody cares about)
    psi         population stability index over `bins` bins cut at the reference's quantiles (equal
                reference mass per bin). Empty bins: every bin count gets a Jeffreys pseudo-count of 0.5,
                p = (count + 0.5) / (n + 0.5 * bins), instead of flooring proportions at a fixed epsilon such
                as 1e-4, whose log makes one empty bin of a 50-sample window worth 0.69 on its own.
    ks          the two-sample Kolmogorov-Smirnov statistic D (`scipy.stats.ks_2samp`): the largest gap
                between the two empirical CDFs. Its p-value is reported, never used for the verdict.
    js          Jensen-Shannon *distance* (the square root of the divergence), base 2, so 0 = identical and
                1 = disjoint supports (`scipy.spatial.distance.jensenshannon`); on the PSI bins for numeric
                features, on top-K + other for the vocabulary.
    mean_shift  |mean(live embeddings) - mean(reference embeddings)| / sqrt(trace of the reference
                covariance): how far the centre moved, in units of the reference's own spread (a
                multivariate Cohen's d). Under no drift it is about sqrt(1/n_live).
    abs_diff    |live pass rate - reference pass rate|, with a two-proportion z-test. Rewards in [0, 1]
                are tested as proportions: p(1 - p) bounds the variance of any [0, 1] variable with mean p,
                so the test is conservative for graded rewards.

Default thresholds (`DriftConfig`), set as effect sizes that stay quiet on unchanged traffic even in the
smallest window judged (`min_samples` = 100) and still flag a change of task by a wide margin:
    psi 0.25          the usual "major shift" line (0.1 is the usual "minor"). With 10 bins, n * PSI is
                      roughly chi-square with 9 degrees of freedom under no drift: at 100 samples about a
                      0.3% false alarm.
    ks 0.2            a 20-point gap between the CDFs; about the 0.1% critical value at 100 live samples
                      (1.95 * sqrt(1/100)).
    js 0.25           for small shifts PSI ~ 8 ln2 * JS divergence (bits), so JS distance 0.25 is about
                      PSI 0.35; being bounded, JS does not blow up on one empty bin as PSI can. Top-K = 200
                      tokens keeps the small-sample bias of the vocabulary JS low.
    mean_shift 0.3    three times the no-drift noise at 100 samples.
    pass_rate 0.1     ten points of pass rate, and significant at alpha = 0.05.
Calibration, regex words: 300 windows of 100 GSM8K test questions against the GSM8K train profile
reached at most psi 0.27 (one window in 300), ks 0.18, js 0.23 (numeric) and 0.13 (vocabulary); the
whole test split has psi 0.013, ks 0.039, js 0.048, vocabulary js 0.034. MBPP task texts: psi 5.4,
ks 0.89, js 0.83, vocabulary js 0.49.

Verdict: a feature drifts when it has at least `min_samples` live samples (`min_outcomes` for the pass
rate) and any of its statistics is above its threshold. The report's `drift` is then `rule` over the
features that had enough samples: "any" (default) one of them drifts, "majority" more than half, "all"
every one. Features the live data lacks (no responses, no outcomes) are listed under `skipped`.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import re
import threading
import time
import zlib
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats as scipy_stats
from scipy.spatial.distance import jensenshannon

PROFILE_FORMAT = "rlvr_jax.drift_profile/1"
REGEX_WORDS = "regex-words"
SIDES = ("prompt", "response")
RULES = ("any", "majority", "all")
PSEUDO_COUNT = 0.5  # Jeffreys prior per PSI bin; see the module docstring

Tokenize = Callable[[str], Sequence[Hashable]]
Embed = Callable[[Sequence[str]], np.ndarray]
Report = dict[str, Any]

_WORD = re.compile(r"\w+|[^\w\s]")


# ------------------------------------------------------------------------------------------ settings


@dataclasses.dataclass(frozen=True)
class DriftConfig:
    """Thresholds and the verdict rule; the module docstring says why each default is what it is."""

    psi_threshold: float = 0.25
    ks_threshold: float = 0.2
    js_threshold: float = 0.25
    embedding_threshold: float = 0.3
    pass_rate_threshold: float = 0.1
    alpha: float = 0.05  # significance the pass-rate change must also reach
    bins: int = 10  # PSI / JS bins for numeric features, at reference quantiles
    min_samples: int = 100  # live texts needed before a text feature may drift
    min_outcomes: int = 30  # live outcomes needed before the pass rate may drift
    rule: str = "any"

    def __post_init__(self) -> None:
        for name in ("psi_threshold", "ks_threshold", "js_threshold", "embedding_threshold"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 < self.pass_rate_threshold <= 1:
            raise ValueError(f"pass_rate_threshold must be in (0, 1], got {self.pass_rate_threshold}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be strictly between 0 and 1, got {self.alpha}")
        if self.bins < 2:
            raise ValueError(f"bins must be at least 2, got {self.bins}")
        if self.min_samples < 1 or self.min_outcomes < 1:
            raise ValueError(
                f"min_samples and min_outcomes must be >= 1, got {self.min_samples}, {self.min_outcomes}"
            )
        if self.rule not in RULES:
            raise ValueError(f"rule must be one of {', '.join(RULES)}; got {self.rule!r}")

    def thresholds(self) -> dict[str, float]:
        """Threshold by statistic name, as the report and the gauges name them."""
        return {
            "psi": self.psi_threshold,
            "ks": self.ks_threshold,
            "js": self.js_threshold,
            "mean_shift": self.embedding_threshold,
            "abs_diff": self.pass_rate_threshold,
        }


# ------------------------------------------------------------------------------------------ statistics


def quantile_bins(reference: ArrayLike, live: ArrayLike, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Counts of both samples in bins cut at the reference's quantiles: (-inf, q1], (q1, q2], ..., (qk, inf).

    Equal reference mass per bin puts the resolution where the reference has its data. Tied quantiles (a
    discrete feature such as a word count) merge, so there may be fewer than `bins` bins.
    """
    ref, cur = np.asarray(reference, float), np.asarray(live, float)
    edges = np.unique(np.quantile(ref, np.arange(1, bins) / bins))
    size = len(edges) + 1
    return (
        np.bincount(np.searchsorted(edges, ref, side="left"), minlength=size),
        np.bincount(np.searchsorted(edges, cur, side="left"), minlength=size),
    )


def psi_from_counts(reference: ArrayLike, live: ArrayLike, pseudo_count: float = PSEUDO_COUNT) -> float:
    """Population stability index sum((q - p) ln(q / p)) of two histograms over the same bins.

    p and q are smoothed proportions (count + pseudo_count) / (n + pseudo_count * bins), so an empty bin
    gives a finite value; PSI is the symmetrised Kullback-Leibler divergence, in nats.
    """
    r, c = np.asarray(reference, float), np.asarray(live, float)
    p = (r + pseudo_count) / (r.sum() + pseudo_count * len(r))
    q = (c + pseudo_count) / (c.sum() + pseudo_count * len(c))
    return float(np.sum((q - p) * np.log(q / p)))


def js_distance(reference: ArrayLike, live: ArrayLike) -> float:
    """Jensen-Shannon distance (square root of the divergence), base 2: 0 identical, 1 disjoint.

    Takes counts or proportions (each side is normalised). An empty side has no distribution: NaN.
    """
    p, q = np.asarray(reference, float), np.asarray(live, float)
    if p.sum() <= 0 or q.sum() <= 0:
        return math.nan
    return float(jensenshannon(p, q, base=2))


def psi(reference: ArrayLike, live: ArrayLike, bins: int = 10) -> float:
    """PSI of two samples of a numeric feature, binned at the reference's quantiles."""
    return psi_from_counts(*quantile_bins(reference, live, bins))


def ks_test(reference: ArrayLike, live: ArrayLike) -> tuple[float, float]:
    """(D, p-value) of the two-sample Kolmogorov-Smirnov test (scipy.stats.ks_2samp, two-sided)."""
    result = scipy_stats.ks_2samp(np.asarray(reference, float), np.asarray(live, float))
    return float(result.statistic), float(result.pvalue)


def vocab_histograms(
    reference_top: Mapping[str, int], reference_total: int, live_counts: Mapping[str, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Both token distributions over the reference's top tokens plus a last "other" bucket.

    Tokens the reference rarely or never saw all land in "other", so a new topic shows up as mass moving
    there, and the histogram's size stays fixed however large the live vocabulary grows.
    """
    words = list(reference_top)
    ref = np.array([reference_top[w] for w in words] + [0], float)
    ref[-1] = reference_total - ref[:-1].sum()
    live = np.array([live_counts.get(w, 0) for w in words] + [0], float)
    live[-1] = sum(live_counts.values()) - live[:-1].sum()
    return ref, live


def mean_shift(reference_mean: ArrayLike, reference_spread: float, live: ArrayLike) -> float:
    """|mean(live) - reference_mean| / reference_spread, where spread = sqrt(trace of the reference
    covariance): the move of the embedding centroid in units of the reference's own scatter."""
    centre = np.asarray(live, float).mean(axis=0)
    if reference_spread <= 0:
        return 0.0 if np.allclose(centre, reference_mean) else math.inf
    return float(np.linalg.norm(centre - np.asarray(reference_mean, float)) / reference_spread)


def two_proportion_test(
    reference_rate: float, reference_n: int, live_rate: float, live_n: int
) -> tuple[float, float]:
    """(z, two-sided p-value) of live_rate - reference_rate under the pooled two-proportion z-test.

    Works on mean rewards in [0, 1] too, conservatively (see the module docstring). Equal rates with no
    spread at all (both 0 or both 1) give z = 0, p = 1.
    """
    pooled = (reference_rate * reference_n + live_rate * live_n) / (reference_n + live_n)
    se = math.sqrt(pooled * (1 - pooled) * (1 / reference_n + 1 / live_n))
    diff = live_rate - reference_rate
    if se == 0:
        return (0.0, 1.0) if diff == 0 else (math.copysign(math.inf, diff), 0.0)
    z = diff / se
    return z, float(2 * scipy_stats.norm.sf(abs(z)))


# ------------------------------------------------------------------------------------------ text features


def regex_words(text: str) -> list[str]:
    """The default tokenizer: lowercased runs of word characters, and each other non-space character alone.

    Model-free, so a profile means the same thing whichever model serves, and cheap enough for a server.
    """
    return _WORD.findall(text.lower())


def encoder_tokens(tokenizer: Any) -> Tokenize:
    """A tokenize function from an object with `.encode(text) -> ids` (ids become strings: JSON keys)."""

    def tokenize(text: str) -> list[str]:
        return [str(t) for t in tokenizer.encode(text)]

    tokenize.name = getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__  # type: ignore[attr-defined]
    return tokenize


def tokenizer_name(tokenize: Tokenize | None) -> str:
    if tokenize is None or tokenize is regex_words:
        return REGEX_WORDS
    return _name_of(tokenize)


def _name_of(fn: Callable[..., Any]) -> str:
    """What a profile records about a tokenizer or an embedder: its `name`, else its function name."""
    return str(getattr(fn, "name", None) or getattr(fn, "__name__", "custom"))


class HashedEmbedding:
    """A cheap, deterministic, model-free text embedding: signed feature hashing of `regex_words`, L2-normed.

    Bag-of-words in `dim` buckets (CRC32 of the token picks the bucket and the sign, so collisions cancel
    on average). Not semantic, but it moves when the topics or the wording of traffic move, costs a few
    microseconds a text, and needs no model on the server. Pass any `embed(texts) -> (n, d)` instead for
    semantic embeddings.
    """

    def __init__(self, dim: int = 256):
        if dim < 2:
            raise ValueError(f"the hashed embedding needs at least 2 dimensions, got {dim}")
        self.dim = dim
        self.name = f"hashed-{dim}"

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim))
        for i, text in enumerate(texts):
            for token in regex_words(text):
                h = zlib.crc32(token.encode("utf-8"))
                out[i, h % self.dim] += 1.0 if h & 0x80000000 else -1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms > 0, norms, 1.0)


def embedder_named(name: str) -> Embed | None:
    """The built-in embedder a profile names (`hashed-<dim>`), or None for a caller's own embedder."""
    match = re.fullmatch(r"hashed-(\d+)", name)
    return HashedEmbedding(int(match.group(1))) if match else None


@dataclasses.dataclass
class TextSample:
    """The features of a batch of texts (the live side of a comparison)."""

    chars: np.ndarray
    words: np.ndarray
    counts: collections.Counter[str]
    embeddings: np.ndarray | None = None

    @property
    def size(self) -> int:
        return len(self.chars)

    @classmethod
    def of(cls, chars: list[int], tokens: list[list[str]], embeddings: np.ndarray | None) -> TextSample:
        """The sample of texts with these character counts and tokens (one list per text)."""
        counts = collections.Counter(t for ts in tokens for t in ts)
        return cls(np.array(chars, float), np.array([len(t) for t in tokens], float), counts, embeddings)


def text_sample(
    texts: Sequence[str], tokenize: Tokenize | None = None, embed: Embed | None = None
) -> TextSample:
    """Lengths, token counts and (optionally) embeddings of `texts`."""
    tokenize = tokenize or regex_words
    tokens = [[str(t) for t in tokenize(text)] for text in texts]
    return TextSample.of([len(t) for t in texts], tokens, _embed(embed, texts))


def _embed(embed: Embed | None, texts: Sequence[str]) -> np.ndarray | None:
    if embed is None:
        return None
    if not texts:
        return np.zeros((0, 0))
    vectors = np.asarray(embed(list(texts)), float)
    if vectors.ndim != 2 or len(vectors) != len(texts):
        raise ValueError(f"embed(texts) must return an array of shape (len(texts), dim); got {vectors.shape}")
    return vectors


def quantile_sketch(values: ArrayLike, max_samples: int) -> np.ndarray:
    """The sorted values, or `max_samples` evenly spaced order statistics of them when there are more.

    Keeps the empirical CDF within about 1/max_samples of the original, which is all PSI, KS and the
    quantile bins need, while a profile of a million prompts stays a small JSON file.
    """
    ordered = np.sort(np.asarray(values, float))
    if len(ordered) <= max_samples:
        return ordered
    return ordered[np.round(np.linspace(0, len(ordered) - 1, max_samples)).astype(int)]


# ------------------------------------------------------------------------------------------ the profile


@dataclasses.dataclass
class SideProfile:
    """What the reference looked like on one side (prompts or responses)."""

    count: int  # texts summarised
    chars: np.ndarray  # sorted sketch of characters per text
    words: np.ndarray  # sorted sketch of tokens per text
    vocab: dict[str, int]  # the top-K tokens and their counts, most frequent first
    tokens: int  # all tokens, so "other" = tokens - sum(vocab)
    embedding_mean: np.ndarray | None = None
    embedding_spread: float | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "count": self.count,
            "chars": self.chars.tolist(),
            "words": self.words.tolist(),
            "vocab": self.vocab,
            "tokens": self.tokens,
        }
        if self.embedding_mean is not None:
            out["embedding_mean"] = self.embedding_mean.tolist()
            out["embedding_spread"] = self.embedding_spread
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SideProfile:
        mean = data.get("embedding_mean")
        return cls(
            count=int(data["count"]),
            chars=np.asarray(data["chars"], float),
            words=np.asarray(data["words"], float),
            vocab={str(k): int(v) for k, v in data["vocab"].items()},
            tokens=int(data["tokens"]),
            embedding_mean=None if mean is None else np.asarray(mean, float),
            embedding_spread=None if mean is None else float(data["embedding_spread"]),
        )


def side_profile(sample: TextSample, top_k: int, max_samples: int) -> SideProfile:
    """Summarises a reference `TextSample`: quantile sketches, top-K vocabulary, embedding centre, spread."""
    mean = spread = None
    if sample.embeddings is not None and sample.size:
        mean = sample.embeddings.mean(axis=0)
        spread = float(np.sqrt(sample.embeddings.var(axis=0).sum()))
    return SideProfile(
        count=sample.size,
        chars=quantile_sketch(sample.chars, max_samples),
        words=quantile_sketch(sample.words, max_samples),
        vocab=dict(sample.counts.most_common(top_k)),
        tokens=sum(sample.counts.values()),
        embedding_mean=mean,
        embedding_spread=spread,
    )


@dataclasses.dataclass
class ReferenceProfile:
    """The reference a live window is compared with; saved as JSON so a server needs no training data."""

    sides: dict[str, SideProfile]  # "prompt", and "response" when outputs were given
    tokenizer: str = REGEX_WORDS  # which tokenizer counted words; live traffic must use the same one
    embedding: str | None = None  # the embedder's name (e.g. "hashed-256"), when embeddings were profiled
    pass_rate: float | None = None  # mean outcome of the reference, when outcomes were given
    outcomes: int = 0  # how many outcomes that mean is over

    def to_json(self) -> dict[str, Any]:
        return {
            "format": PROFILE_FORMAT,
            "tokenizer": self.tokenizer,
            "embedding": self.embedding,
            "pass_rate": self.pass_rate,
            "outcomes": self.outcomes,
            "sides": {name: side.to_json() for name, side in self.sides.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReferenceProfile:
        if not isinstance(data, Mapping) or data.get("format") != PROFILE_FORMAT:
            found = data.get("format") if isinstance(data, Mapping) else type(data).__name__
            raise ValueError(f"not a drift profile (expected format {PROFILE_FORMAT!r}, found {found!r})")
        try:
            return cls(
                sides={name: SideProfile.from_json(side) for name, side in data["sides"].items()},
                tokenizer=str(data["tokenizer"]),
                embedding=data.get("embedding"),
                pass_rate=None if data.get("pass_rate") is None else float(data["pass_rate"]),
                outcomes=int(data.get("outcomes") or 0),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"the drift profile is damaged: {type(e).__name__}: {e}") from e

    def save(self, path: str | Path) -> None:
        """Writes the profile as JSON, creating missing parent folders (`runs/` on a fresh checkout)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json()) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> ReferenceProfile:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"drift profile {path} does not exist")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"drift profile {path} is not JSON: {e}") from e
        try:
            return cls.from_json(data)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e


def check_outcomes(outcomes: Iterable[float | None]) -> np.ndarray:
    """The outcomes that are known (None dropped), as floats; each must be in [0, 1]."""
    known = np.array([float(o) for o in outcomes if o is not None], float)
    bad = known[~((known >= 0) & (known <= 1))]
    if len(bad):
        raise ValueError(f"outcomes must be 0/1 or rewards in [0, 1]; got {bad[0]}")
    return known


def build_profile(
    prompts: Sequence[str],
    responses: Sequence[str] | None = None,
    outcomes: Sequence[float | None] | None = None,
    *,
    tokenize: Tokenize | None = None,
    embed: Embed | None = None,
    top_k: int = 200,
    max_samples: int = 10_000,
) -> ReferenceProfile:
    """A profile of training prompts, optionally their outputs (responses) and verified outcomes.

    `tokenize` defaults to `regex_words` (see `encoder_tokens` for a model tokenizer); `embed` (e.g.
    `HashedEmbedding()`) adds embedding statistics. Numeric features keep at most `max_samples` values
    (`quantile_sketch`); the vocabulary keeps its `top_k` tokens.
    """
    if not prompts:
        raise ValueError("the reference has no prompts to profile")
    if top_k < 1 or max_samples < 2:
        raise ValueError(f"top_k must be >= 1 and max_samples >= 2; got {top_k}, {max_samples}")
    sides = {"prompt": side_profile(text_sample(prompts, tokenize, embed), top_k, max_samples)}
    if responses is not None and len(responses):
        sides["response"] = side_profile(text_sample(responses, tokenize, embed), top_k, max_samples)
    known = check_outcomes(outcomes or [])
    return ReferenceProfile(
        sides=sides,
        tokenizer=tokenizer_name(tokenize),
        embedding=None if embed is None else _name_of(embed),
        pass_rate=float(known.mean()) if len(known) else None,
        outcomes=len(known),
    )


# ------------------------------------------------------------------------------------------ comparison


def _statistic(value: float, threshold: float, **extra: float) -> dict[str, Any]:
    """One statistic for the report; NaN (nothing to measure, e.g. texts without tokens) becomes None."""
    extra = {k: _significant(v) for k, v in extra.items()}
    if math.isnan(value):
        return {"value": None, "threshold": threshold, "exceeded": False, **extra}
    return {
        "value": _significant(value),
        "threshold": threshold,
        "exceeded": bool(value > threshold),
        **extra,
    }


def _significant(x: float, digits: int = 6) -> float:
    """x to `digits` significant digits: reports stay readable, and tiny p-values keep their exponent."""
    return float(f"{x:.{digits}g}")


def _feature(statistics: dict[str, dict[str, Any]], reference: int, live: int, needed: int) -> dict[str, Any]:
    enough = live >= needed and reference > 0
    return {
        "drift": enough and any(s["exceeded"] for s in statistics.values()),
        "enough_samples": enough,
        "samples": {"reference": reference, "live": live},
        "statistics": statistics,
    }


def numeric_feature(
    reference: np.ndarray, live: np.ndarray, config: DriftConfig
) -> dict[str, dict[str, Any]]:
    """psi, ks (with its p-value) and js of one numeric feature."""
    ref_counts, live_counts = quantile_bins(reference, live, config.bins)
    d, p_value = ks_test(reference, live)
    return {
        "psi": _statistic(psi_from_counts(ref_counts, live_counts), config.psi_threshold),
        "ks": _statistic(d, config.ks_threshold, p_value=p_value),
        "js": _statistic(js_distance(ref_counts, live_counts), config.js_threshold),
    }


def compare_side(
    side: str, reference: SideProfile, live: TextSample, config: DriftConfig
) -> dict[str, dict[str, Any]]:
    """One side's features: `<side>_chars`, `<side>_words`, `<side>_vocab`, maybe `<side>_embedding`."""
    n_ref, n_live, need = reference.count, live.size, config.min_samples
    features = {
        f"{side}_chars": _feature(numeric_feature(reference.chars, live.chars, config), n_ref, n_live, need),
        f"{side}_words": _feature(numeric_feature(reference.words, live.words, config), n_ref, n_live, need),
    }
    ref_hist, live_hist = vocab_histograms(reference.vocab, reference.tokens, live.counts)
    vocab = {"js": _statistic(js_distance(ref_hist, live_hist), config.js_threshold)}
    features[f"{side}_vocab"] = _feature(vocab, n_ref, n_live, need)
    if reference.embedding_mean is not None and live.embeddings is not None:
        shift = mean_shift(reference.embedding_mean, reference.embedding_spread or 0.0, live.embeddings)
        embedding = {"mean_shift": _statistic(shift, config.embedding_threshold)}
        features[f"{side}_embedding"] = _feature(embedding, n_ref, n_live, need)
    return features


def pass_rate_feature(
    reference_rate: float, reference_n: int, live: np.ndarray, config: DriftConfig
) -> dict[str, Any]:
    """The pass-rate feature: drifts when the change is above the threshold *and* significant at alpha."""
    live_rate = float(live.mean())
    z, p_value = two_proportion_test(reference_rate, reference_n, live_rate, len(live))
    diff = abs(live_rate - reference_rate)
    stat = _statistic(diff, config.pass_rate_threshold, z=z, p_value=p_value, alpha=config.alpha)
    stat["exceeded"] = bool(diff > config.pass_rate_threshold and p_value < config.alpha)
    return _feature({"abs_diff": stat}, reference_n, len(live), config.min_outcomes)


def verdict(features: Mapping[str, Mapping[str, Any]], rule: str) -> bool:
    """`rule` ("any" | "majority" | "all") over the features that had enough samples; none: no drift."""
    judged = [f["drift"] for f in features.values() if f["enough_samples"]]
    if not judged:
        return False
    if rule == "any":
        return any(judged)
    if rule == "majority":
        return sum(judged) * 2 > len(judged)
    return all(judged)


def compare_samples(
    profile: ReferenceProfile,
    live: Mapping[str, TextSample],
    outcomes: np.ndarray,
    config: DriftConfig,
) -> Report:
    """The drift report of live text samples (by side) and known outcomes against a profile."""
    features: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    for side in SIDES:
        sample = live.get(side)
        if side not in profile.sides:
            if sample is not None and sample.size:
                skipped[side] = f"the reference profile has no {side}s"
            continue
        if sample is None or not sample.size:
            skipped[side] = f"the live data has no {side}s"
            continue
        features.update(compare_side(side, profile.sides[side], sample, config))
        if profile.sides[side].embedding_mean is not None and sample.embeddings is None:
            skipped[f"{side}_embedding"] = "no embedder for the live texts"
    if profile.pass_rate is None or profile.outcomes < 1:
        if len(outcomes):
            skipped["pass_rate"] = "the reference profile has no outcomes"
    elif not len(outcomes):
        skipped["pass_rate"] = "the live data has no outcomes"
    else:
        features["pass_rate"] = pass_rate_feature(profile.pass_rate, profile.outcomes, outcomes, config)
    judged = [name for name, f in features.items() if f["enough_samples"]]
    drifted = [name for name in judged if features[name]["drift"]]
    return {
        "drift": verdict(features, config.rule),
        "status": "ok" if judged else "insufficient_data",
        "rule": config.rule,
        "drifted_features": drifted,
        "samples": {
            "reference": profile.sides["prompt"].count,
            "live": max((s.size for s in live.values()), default=0),
            "reference_outcomes": profile.outcomes,
            "live_outcomes": len(outcomes),
        },
        "pass_rate": {
            "reference": profile.pass_rate,
            "live": float(outcomes.mean()) if len(outcomes) else None,
        },
        "features": features,
        "skipped": skipped,
        "config": {
            "thresholds": config.thresholds(),
            "alpha": config.alpha,
            "bins": config.bins,
            "min_samples": config.min_samples,
            "min_outcomes": config.min_outcomes,
            "tokenizer": profile.tokenizer,
            "embedding": profile.embedding,
        },
    }


def resolve_tokenize(profile: ReferenceProfile, tokenize: Tokenize | None) -> Tokenize:
    """The tokenizer to count live words with: the profile's, which must be the one given (if any)."""
    name = tokenizer_name(tokenize)
    if name != profile.tokenizer:
        raise ValueError(
            f"the profile counted words with tokenizer {profile.tokenizer!r}, but {name!r} was given; "
            "live traffic must be tokenized the same way"
        )
    return tokenize or regex_words


def resolve_embed(profile: ReferenceProfile, embed: Embed | None) -> Embed | None:
    """The embedder for live texts: the one given, else the built-in one the profile names (or None)."""
    if embed is not None or profile.embedding is None:
        return embed
    return embedder_named(profile.embedding)


def compare(
    profile: ReferenceProfile,
    prompts: Sequence[str],
    responses: Sequence[str] | None = None,
    outcomes: Sequence[float | None] | None = None,
    *,
    config: DriftConfig | None = None,
    tokenize: Tokenize | None = None,
    embed: Embed | None = None,
) -> Report:
    """Compares a batch of live prompts (and optionally responses and outcomes) with a reference profile.

    The report is a JSON-ready dict: `drift` (the verdict), `status`, `drifted_features`, `samples`, and
    per feature its statistics, each with `value`, `threshold` and `exceeded` (see the module docstring).
    """
    config = config or DriftConfig()
    tokenize = resolve_tokenize(profile, tokenize)
    embed = resolve_embed(profile, embed)
    live = {"prompt": text_sample(prompts, tokenize, embed)}
    if responses is not None:
        live["response"] = text_sample(responses, tokenize, embed)
    return compare_samples(profile, live, check_outcomes(outcomes or []), config)


# ------------------------------------------------------------------------------------------ live monitoring


@dataclasses.dataclass(eq=False)
class _Observation:
    """One request in the live window; its features are computed lazily, off the request path."""

    prompt: str
    response: str | None
    outcome: float | None
    key: Hashable | None = None
    features: dict[str, tuple[int, list[str]]] | None = None  # side -> (characters, tokens)
    embeddings: dict[str, np.ndarray] | None = None  # side -> embedding, when the monitor embeds


class DriftMonitor:
    """A reference profile and a sliding window of recent traffic, with drift gauges for Prometheus.

    `observe` only appends to a bounded deque (O(1), safe from any thread), so the request path pays
    nothing. `report()` recomputes when something was observed since the last report and at least
    `min_interval_s` has passed, else returns the cached report; the cost is bounded by the window size
    (new texts are tokenized once; the statistics run over at most `window` samples). Gauges registered
    with `register(registry)` are computed at scrape time through the same cache:

        rlvr_drift_statistic{feature, statistic}   rlvr_drift_threshold{feature, statistic}
        rlvr_drift_detected{feature}               rlvr_drift_detected_any
        rlvr_drift_window_samples                  rlvr_drift_pass_rate{window="reference"|"live"}

    Outcomes that are verified later are attached with `record_outcome(key, outcome)`, where `key` is what
    was passed to `observe` (the server uses (response id, prompt index)); outcomes already known at
    observation time go straight to `observe(..., outcome=...)`.
    """

    def __init__(
        self,
        profile: ReferenceProfile,
        *,
        window: int = 1000,
        config: DriftConfig | None = None,
        tokenize: Tokenize | None = None,
        embed: Embed | None = None,
        min_interval_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        if window < 1:
            raise ValueError(f"the drift window must hold at least 1 request, got {window}")
        self.profile = profile
        self.config = config or DriftConfig()
        self.tokenize = resolve_tokenize(profile, tokenize)
        self.embed = resolve_embed(profile, embed)
        self.min_interval_s = min_interval_s
        self._clock = clock
        self._window: collections.deque[_Observation] = collections.deque(maxlen=window)
        self._by_key: dict[Hashable, _Observation] = {}
        self._lock = threading.Lock()  # guards the window, the key index and the version
        self._compute_lock = threading.Lock()  # one recomputation at a time
        self._version = 0
        self._report: Report | None = None
        self._report_version = -1
        self._report_at = -math.inf

    @property
    def window_samples(self) -> int:
        return len(self._window)

    @property
    def capacity(self) -> int:
        """The most requests the window holds."""
        return self._window.maxlen or 0

    def observe(
        self,
        prompt: str,
        response: str | None = None,
        outcome: float | None = None,
        *,
        key: Hashable | None = None,
    ) -> None:
        """Adds one request to the window (evicting the oldest when full)."""
        if outcome is not None:
            check_outcomes([outcome])
        item = _Observation(prompt, response, None if outcome is None else float(outcome), key)
        with self._lock:
            if len(self._window) == self._window.maxlen:
                old = self._window[0]
                if old.key is not None and self._by_key.get(old.key) is old:
                    del self._by_key[old.key]
            self._window.append(item)
            if key is not None:
                self._by_key[key] = item
            self._version += 1

    def recent(self) -> list[tuple[str, str | None, float | None]]:
        """(prompt, response, outcome) of every request in the window, oldest first (to see what was seen)."""
        with self._lock:
            return [(item.prompt, item.response, item.outcome) for item in self._window]

    def record_outcome(self, key: Hashable, outcome: float) -> bool:
        """Sets the verified outcome of an observed request; False when it is not (or no longer) observed."""
        check_outcomes([outcome])
        with self._lock:
            item = self._by_key.get(key)
            if item is None:
                return False
            item.outcome = float(outcome)
            self._version += 1
        return True

    def report(self, *, fresh: bool = False) -> Report:
        """The drift report of the current window (cached; see the class docstring). `fresh` forces it."""
        with self._compute_lock:
            with self._lock:
                version, items = self._version, list(self._window)
                outcomes = [item.outcome for item in items]
            due = self._clock() - self._report_at >= self.min_interval_s
            if self._report is not None and (version == self._report_version or not (due or fresh)):
                return self._report
            report = self._compute(items, outcomes)
            self._report, self._report_version, self._report_at = report, version, self._clock()
            return report

    def _compute(self, items: Sequence[_Observation], outcomes: Sequence[float | None]) -> Report:
        for item in items:
            if item.features is None:  # tokenized once per observation, whichever report comes first
                texts = {"prompt": item.prompt, "response": item.response}
                item.features = {
                    side: (len(text), [str(t) for t in self.tokenize(text)])
                    for side, text in texts.items()
                    if text is not None
                }
        if self.embed is not None:
            self._embed_new(items)
        live = {}
        for side in SIDES:
            rows = [item for item in items if side in item.features]
            embedded = self.embed is not None and bool(rows)
            live[side] = TextSample.of(
                [item.features[side][0] for item in rows],
                [item.features[side][1] for item in rows],
                np.stack([item.embeddings[side] for item in rows]) if embedded else None,
            )
        report = compare_samples(self.profile, live, check_outcomes(outcomes), self.config)
        report["window"] = {"samples": len(items), "capacity": self.capacity}
        return report

    def _embed_new(self, items: Sequence[_Observation]) -> None:
        """Embeds the texts of observations not embedded yet, in one batch (embedders like batches)."""
        todo = [(item, side) for item in items if item.embeddings is None for side in item.features]
        if not todo:
            return
        texts = [item.prompt if side == "prompt" else item.response or "" for item, side in todo]
        for (item, side), vector in zip(todo, _embed(self.embed, texts), strict=True):
            if item.embeddings is None:
                item.embeddings = {}
            item.embeddings[side] = vector

    def register(self, registry: Any) -> None:
        """Adds the drift gauges to a `prometheus_client.CollectorRegistry` (computed when it is scraped)."""
        registry.register(_DriftCollector(self))


# ------------------------------------------------------------------------------------------ Prometheus

# name -> (help, labels). Dashboards and alerts are built on these names: keep them.
GAUGES: dict[str, tuple[str, list[str]]] = {
    "rlvr_drift_statistic": (
        "a drift statistic of a feature, live window vs reference",
        ["feature", "statistic"],
    ),
    "rlvr_drift_threshold": ("the value above which the statistic counts as drift", ["feature", "statistic"]),
    "rlvr_drift_detected": (
        "1 when the feature drifts (enough live samples and a statistic above its threshold)",
        ["feature"],
    ),
    "rlvr_drift_detected_any": ("1 when the verdict over all features (the rule) is drift", []),
    "rlvr_drift_window_samples": ("requests in the live drift window", []),
    "rlvr_drift_pass_rate": ("mean verified outcome of the reference or of the live window", ["window"]),
}


def _families() -> dict[str, Any]:
    from prometheus_client.core import GaugeMetricFamily  # the serve extra; only needed for gauges

    return {name: GaugeMetricFamily(name, text, labels=labels) for name, (text, labels) in GAUGES.items()}


def gauge_families(report: Report, window_samples: int) -> list[Any]:
    """The drift gauges of a report, as prometheus_client metric families (see `DriftMonitor`)."""
    families = _families()
    for feature, entry in report["features"].items():
        for statistic, stat in entry["statistics"].items():
            if stat["value"] is not None:
                families["rlvr_drift_statistic"].add_metric([feature, statistic], stat["value"])
            families["rlvr_drift_threshold"].add_metric([feature, statistic], stat["threshold"])
        families["rlvr_drift_detected"].add_metric([feature], float(entry["drift"]))
    families["rlvr_drift_detected_any"].add_metric([], float(report["drift"]))
    families["rlvr_drift_window_samples"].add_metric([], float(window_samples))
    for window, rate in report["pass_rate"].items():
        if rate is not None:
            families["rlvr_drift_pass_rate"].add_metric([window], rate)
    return list(families.values())


class _DriftCollector:
    """A prometheus_client collector: the monitor's (cached) report as gauges, at scrape time."""

    def __init__(self, monitor: DriftMonitor):
        self.monitor = monitor

    def describe(self) -> list[Any]:
        """The names, without samples: lets the registry refuse a second monitor without computing."""
        return list(_families().values())

    def collect(self) -> list[Any]:
        return gauge_families(self.monitor.report(), self.monitor.window_samples)
