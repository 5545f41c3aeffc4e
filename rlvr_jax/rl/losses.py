"""The policy objective of GRPO and its relatives as pure, jit-able functions of per-token log-probs.

Layout: every per-token array is [rows, T] (rows = prompts * G, group members adjacent), `mask` [rows, T]
marks completion tokens (bool or float weights). Padding positions may hold anything, even inf / NaN:
they are replaced before any arithmetic, so neither the loss nor its gradient sees them.

The per-token loss, for a token with importance ratio rho (against the policy that sampled the batch, as
the trainer recomputes it: `old_logprobs`) and advantage A, is

  loss_t = w_t * max(-A rho, -A clip(rho, 1 - eps_low, 1 + eps_high))        PPO clip, DAPO clip-higher
           [for A < 0, further capped at -A c: dual clip]
         + beta * KL_t(pi || pi_ref)                                         GRPO's KL to a reference
         - entropy_coef * H_t                                                entropy bonus

with w_t the truncated importance weight of the sampler / trainer mismatch (TIS, 1 when off), and it is
reduced to a scalar by one of the `aggregate` modes. Everything is a switch of one `LossConfig`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp

from rlvr_jax.registry import Registry

Array = jax.Array

RATIO_TYPES = ("token", "sequence")


@dataclasses.dataclass(frozen=True)
class Aggregation:
    """A way to reduce per-token losses: each row's value from its loss sum, token count and the length
    constant (`per_row(row_sum, row_tokens, max_len)`), summed and divided by the batch's count of `unit`:
    its tokens, or its sequences that have tokens."""

    per_row: Callable[[Array, Array, int], Array]
    unit: Literal["token", "sequence"]


AGGREGATIONS: Registry[Aggregation] = Registry("aggregation")
KL_ESTIMATORS: Registry[Callable[[Array], Array]] = Registry("KL estimator")


def register_aggregation(name: str, per_row: Callable[[Array, Array, int], Array], unit: str) -> Aggregation:
    """Makes an aggregation usable from configs (`rl.aggregation`); see `aggregate` for the built-in ones."""
    if unit not in ("token", "sequence"):
        raise ValueError(f"unit must be 'token' or 'sequence', got {unit!r}")
    return AGGREGATIONS.register(name, Aggregation(per_row, unit))  # type: ignore[arg-type]


def register_kl_estimator(name: str, fn: Callable[[Array], Array]) -> Callable[[Array], Array]:
    """Makes `fn(log_r) -> per-token KL estimate` usable as `rl.kl_estimator`; log_r = log pi_ref - log pi."""
    return KL_ESTIMATORS.register(name, fn)


def _per_token_mean(row_sum: Array, row_n: Array, max_len: int) -> Array:
    return row_sum / jnp.where(row_n > 0, row_n, 1.0)


def _row_sum(row_sum: Array, row_n: Array, max_len: int) -> Array:
    return row_sum


def _over_max_len(row_sum: Array, row_n: Array, max_len: int) -> Array:
    return row_sum / max_len


register_aggregation("token-mean", _row_sum, "token")
register_aggregation("seq-mean-token-mean", _per_token_mean, "sequence")
register_aggregation("seq-mean-token-sum", _row_sum, "sequence")
register_aggregation("seq-mean-token-sum-norm", _over_max_len, "sequence")
register_kl_estimator("k1", lambda log_r: -log_r)
register_kl_estimator("k2", lambda log_r: 0.5 * jnp.square(log_r))
register_kl_estimator("k3", lambda log_r: jnp.expm1(log_r) - log_r)


def _mask(mask: Array) -> Array:
    return jnp.asarray(mask).astype(jnp.float32)


def masked_mean(x: Array, mask: Array) -> Array:
    """Mean of `x` over the masked tokens of the whole batch (0 when there are none)."""
    m = _mask(mask)
    total = jnp.sum(jnp.where(m > 0, x, 0.0) * m)
    n = jnp.sum(m)
    return total / jnp.where(n > 0, n, 1.0)


def aggregate(
    per_token: Array,
    mask: Array,
    mode: str = "token-mean",
    max_len: int | None = None,
    normalizer: Array | float | None = None,
) -> Array:
    """Reduces a per-token loss [rows, T] to a scalar; the choice weights long and short completions.

    With l_it the loss of token t of row i, n_i the row's token count, R the rows that have tokens:

      token-mean               sum_it l_it / sum_i n_i           every token weighs the same (DAPO)
      seq-mean-token-mean      1/R sum_i (sum_t l_it / n_i)      every sequence weighs the same (GRPO,
                                                                 GSPO): a token of a long answer weighs less
      seq-mean-token-sum       1/R sum_i sum_t l_it              long sequences weigh more
      seq-mean-token-sum-norm  1/R sum_i sum_t l_it / max_len    Dr.GRPO: a constant instead of n_i, so
                                                                 no length bias; max_len defaults to T

    normalizer: overrides the denominator (sum_i n_i for token-mean, R otherwise). When an optimizer batch
    is split into micro-batches whose gradients are summed, pass the whole batch's count so that the sum
    equals the loss of the whole batch (a mean of micro-batch means is not).
    """
    if mode not in AGGREGATIONS:
        raise ValueError(AGGREGATIONS.unknown(mode))
    agg = AGGREGATIONS.get(mode)
    m = _mask(mask)
    tok = jnp.where(m > 0, per_token.astype(jnp.float32), 0.0) * m
    length = per_token.shape[-1] if max_len is None else max_len
    if length <= 0:
        raise ValueError(f"max_len must be positive, got {length}")
    row = agg.per_row(jnp.sum(tok, axis=-1), jnp.sum(m, axis=-1), length)
    denom = aggregation_denominator(m, mode) if normalizer is None else jnp.asarray(normalizer, jnp.float32)
    return jnp.sum(row) / jnp.where(denom > 0, denom, 1.0)


def aggregation_denominator(mask: Array, mode: str) -> Array:
    """What `aggregate` divides by: the masked token count, or the count of rows that have tokens. The
    train step computes it once over the whole batch and passes it to every micro-batch's loss."""
    m = _mask(mask)
    if AGGREGATIONS.get(mode).unit == "token":
        return jnp.sum(m)
    return jnp.sum(jnp.any(m > 0, axis=-1)).astype(jnp.float32)


def kl_estimate(logprobs: Array, ref_logprobs: Array, estimator: str = "k3") -> Array:
    """Per-token estimate of KL(pi || pi_ref) from the sampled tokens (Schulman, "Approximating KL", 2020).

    With x ~ pi and r = pi_ref(x) / pi(x) (so log r = ref_logprobs - logprobs):
      k1 = -log r                 unbiased, high variance, negative on some tokens
      k2 = (log r)^2 / 2          biased, low variance, >= 0
      k3 = (r - 1) - log r        unbiased, low variance, >= 0 (GRPO's choice, DeepSeekMath eq. 4)
    The tokens were sampled by the old policy, not pi, so the estimates are approximate off-policy; the
    penalty is differentiated through `logprobs` only (the reference is frozen).
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(KL_ESTIMATORS.unknown(estimator))
    log_r = ref_logprobs.astype(jnp.float32) - logprobs.astype(jnp.float32)
    return KL_ESTIMATORS.get(estimator)(log_r)


def log_importance_ratio(
    logprobs: Array, old_logprobs: Array, mask: Array, ratio_type: str = "token"
) -> Array:
    """log rho [rows, T] of the current policy against the old one; 0 on padding.

    "token" (PPO / GRPO / DAPO): log rho_t = log pi(y_t) - log pi_old(y_t).
    "sequence" (GSPO, Zheng et al. 2025): the length-normalised sequence ratio
      log s_i = 1/n_i sum_t (log pi(y_it) - log pi_old(y_it)), the same value for every token of row i,
    so a sequence is clipped (or not) as a whole and the objective matches the sequence likelihood it
    optimises. Its values stay within about 1e-3 of 0, hence GSPO's far smaller clip ranges (the paper uses
    eps_low = 3e-4, eps_high = 4e-4) and its pairing with "seq-mean-token-mean" aggregation.
    """
    m = _mask(mask)
    diff = jnp.where(m > 0, logprobs.astype(jnp.float32) - old_logprobs.astype(jnp.float32), 0.0)
    if ratio_type == "token":
        return diff
    if ratio_type == "sequence":
        n = jnp.sum(m, axis=-1, keepdims=True)
        seq = jnp.sum(diff * m, axis=-1, keepdims=True) / jnp.where(n > 0, n, 1.0)
        return jnp.broadcast_to(seq, diff.shape) * (m > 0)
    raise ValueError(f"unknown ratio_type {ratio_type!r}; use one of {', '.join(RATIO_TYPES)}")


def clipped_surrogate(
    ratio: Array,
    advantages: Array,
    clip_low: float,
    clip_high: float,
    clip_c: float | None = None,
) -> tuple[Array, dict[str, Array]]:
    """Per-token PPO clipped loss -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A) and where clips act.

    Separate eps_low / eps_high are DAPO's clip-higher (e.g. 0.2 / 0.28): a larger upper range lets
    unlikely tokens with A > 0 grow, against entropy collapse. A clip "acts" (the token gets no gradient)
    when A > 0 and rho > 1 + eps_high ("high") or A < 0 and rho < 1 - eps_low ("low").
    Dual clip (Ye et al. 2020), c > 1: for A < 0 the loss is also capped at -c A, because an unbounded rho
    would otherwise give an unbounded push on tokens the policy already made far more likely ("dual": it
    acts when A < 0 and rho > c).
    """
    unclipped = -advantages * ratio
    clipped = -advantages * jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss = jnp.maximum(unclipped, clipped)
    acts = {
        "low": (advantages < 0) & (ratio < 1.0 - clip_low),
        "high": (advantages > 0) & (ratio > 1.0 + clip_high),
    }
    if clip_c is not None:
        loss = jnp.where(advantages < 0, jnp.minimum(loss, -clip_c * advantages), loss)
        acts["dual"] = (advantages < 0) & (ratio > clip_c)
    return loss, acts


def truncated_is_weights(
    old_logprobs: Array, sampler_logprobs: Array, mask: Array, cap: float
) -> tuple[Array, Array]:
    """Truncated importance weights min(pi_old / pi_sampler, C) per token, and whether each was truncated.

    The sampler (fast inference kernels, other precision or sharding) and the trainer assign the same
    tokens different probabilities, so "on-policy" updates are off-policy against the trainer's policy
    (Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy RL training"). Weighting
    each token's policy-gradient term by pi_old(y) / pi_sampler(y) corrects that; truncating at C bounds
    the variance (truncated IS, Ionides 2008) at the price of a small bias. Constants: no gradient.
    """
    log_w = jnp.where(_mask(mask) > 0, old_logprobs - sampler_logprobs, 0.0).astype(jnp.float32)
    w = jnp.exp(log_w)
    return jax.lax.stop_gradient(jnp.minimum(w, cap)), w > cap


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Switches of `policy_loss` (frozen, so hashable: pass it as a static argument to `jax.jit`).

    ratio_type: "token" (PPO / GRPO / DAPO) or "sequence" (GSPO; use clip ranges near 3e-4 / 4e-4).
    clip_low / clip_high: eps_low / eps_high of the clip range [1 - eps_low, 1 + eps_high]; DAPO uses
      0.2 / 0.28. clip_low = 1 and clip_high = inf disable clipping (plain importance-weighted REINFORCE).
    clip_c: dual-clip bound for A < 0 (e.g. 3.0), None for none.
    aggregation / max_len: see `aggregate`.
    beta / kl_estimator: KL(pi || pi_ref) penalty; beta = 0 needs no reference log-probs.
    tis_cap: truncation C of the sampler-mismatch weights (applied when sampler log-probs are given);
      None turns the correction off.
    entropy_coef: bonus on the per-token entropy passed to `policy_loss` (0: none, entropy not needed).
    """

    ratio_type: Literal["token", "sequence"] = "token"
    clip_low: float = 0.2
    clip_high: float = 0.2
    clip_c: float | None = None
    aggregation: str = "token-mean"
    max_len: int | None = None
    beta: float = 0.0
    kl_estimator: str = "k3"
    tis_cap: float | None = 2.0
    entropy_coef: float = 0.0

    def __post_init__(self) -> None:
        if self.ratio_type not in RATIO_TYPES:
            raise ValueError(f"ratio_type must be one of {RATIO_TYPES}, got {self.ratio_type!r}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation: {AGGREGATIONS.unknown(self.aggregation)}")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"kl_estimator: {KL_ESTIMATORS.unknown(self.kl_estimator)}")
        if not 0.0 <= self.clip_low <= 1.0 or not self.clip_high >= 0.0:
            raise ValueError(
                f"need 0 <= clip_low <= 1 and clip_high >= 0, got {self.clip_low}, {self.clip_high}"
            )
        if self.clip_c is not None and not self.clip_c > 1.0:
            raise ValueError(f"dual-clip clip_c must be > 1, got {self.clip_c}")
        if not self.beta >= 0.0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if self.tis_cap is not None and not self.tis_cap > 0.0:
            raise ValueError(f"tis_cap must be > 0 (or None), got {self.tis_cap}")
        if self.max_len is not None and self.max_len <= 0:
            raise ValueError(f"max_len must be positive, got {self.max_len}")


def policy_loss(
    logprobs: Array,
    old_logprobs: Array | None,
    advantages: Array,
    mask: Array,
    config: LossConfig | None = None,
    *,
    ref_logprobs: Array | None = None,
    sampler_logprobs: Array | None = None,
    entropy: Array | None = None,
    normalizer: Array | float | None = None,
) -> tuple[Array, dict[str, Array]]:
    """The scalar loss to minimise (see the module docstring) and its diagnostics. One function of about 90
    lines on purpose: it reads top to bottom as the module docstring's equation, term by term.

    config: the switches (None: `LossConfig()`, GRPO's clip 0.2 without KL).

    logprobs: [rows, T] log pi(y_t) under the parameters being differentiated.
    old_logprobs: [rows, T] the same tokens under the parameters that sampled the batch, as the trainer
      computes them; None means one update per batch (pi_old = stop_gradient(pi), rho = 1).
    advantages: [rows] (one per completion) or [rows, T].
    ref_logprobs: [rows, T] under the frozen reference; required only when config.beta > 0 (and the KL
      is then logged; given with beta = 0 it is only logged).
    sampler_logprobs: [rows, T] as the sampler reported them; with config.tis_cap they weight the
      policy-gradient term by min(pi_old / pi_sampler, C).
    entropy: [rows, T] per-token entropy (`token_entropy` of the logits), for the bonus and its metric;
      without it the metric is "entropy_proxy" = mean of -log pi(y_t), the Monte-Carlo estimate of the
      entropy from the sampled tokens (exact in expectation only at temperature 1).
    normalizer: see `aggregate`.

    Metrics (over masked tokens): loss, pg_loss, clip_frac_low / clip_frac_high (/ clip_frac_dual),
    ratio_mean / ratio_min / ratio_max, approx_kl_old (k3 of pi against pi_old), kl (when ref given),
    tis_weight_mean / tis_frac_truncated (when TIS applies), entropy or entropy_proxy.
    """
    config = LossConfig() if config is None else config
    logprobs = logprobs.astype(jnp.float32)
    old = jax.lax.stop_gradient(logprobs if old_logprobs is None else old_logprobs.astype(jnp.float32))
    m = _mask(mask)
    adv = jnp.asarray(advantages, jnp.float32)
    adv = jnp.broadcast_to(adv[:, None] if adv.ndim == 1 else adv, logprobs.shape)

    def agg(x: Array) -> Array:
        return aggregate(x, m, config.aggregation, config.max_len, normalizer)

    log_ratio = log_importance_ratio(logprobs, old, m, config.ratio_type)
    ratio = jnp.exp(log_ratio)
    pg, acts = clipped_surrogate(ratio, adv, config.clip_low, config.clip_high, config.clip_c)

    metrics: dict[str, Array] = {}
    if sampler_logprobs is not None and config.tis_cap is not None:
        w, truncated = truncated_is_weights(old, sampler_logprobs.astype(jnp.float32), m, config.tis_cap)
        pg = w * pg
        metrics["tis_weight_mean"] = masked_mean(w, m)
        metrics["tis_frac_truncated"] = masked_mean(truncated, m)
    pg_loss = agg(pg)
    loss = pg_loss

    if config.beta > 0.0 and ref_logprobs is None:
        raise ValueError("config.beta > 0 needs ref_logprobs (log-probs under the frozen reference)")
    if ref_logprobs is not None:
        ref = jnp.where(m > 0, ref_logprobs.astype(jnp.float32), 0.0)
        kl = kl_estimate(jnp.where(m > 0, logprobs, 0.0), ref, config.kl_estimator)
        if config.beta > 0.0:
            loss = loss + config.beta * agg(kl)
        metrics["kl"] = masked_mean(kl, m)

    if config.entropy_coef != 0.0 and entropy is None:
        raise ValueError("config.entropy_coef != 0 needs the per-token entropy (token_entropy(logits))")
    if entropy is not None:
        if config.entropy_coef != 0.0:
            loss = loss - config.entropy_coef * agg(entropy)
        metrics["entropy"] = masked_mean(entropy, m)
    else:
        metrics["entropy_proxy"] = masked_mean(-logprobs, m)

    sg_ratio, sg_log_ratio = jax.lax.stop_gradient((ratio, log_ratio))
    has = m > 0
    n = jnp.sum(m)
    metrics |= {
        "loss": loss,
        "pg_loss": pg_loss,
        "ratio_mean": masked_mean(sg_ratio, m),
        "ratio_min": jnp.where(n > 0, jnp.min(jnp.where(has, sg_ratio, jnp.inf)), 1.0),
        "ratio_max": jnp.where(n > 0, jnp.max(jnp.where(has, sg_ratio, -jnp.inf)), 1.0),
        # KL(pi_old || pi) from the tokens pi_old sampled: k3 with r = pi / pi_old = rho.
        "approx_kl_old": masked_mean(kl_estimate(jnp.zeros_like(sg_log_ratio), sg_log_ratio, "k3"), m),
    }
    for side, act in acts.items():
        metrics[f"clip_frac_{side}"] = masked_mean(act, m)
    return loss, {k: jax.lax.stop_gradient(v) for k, v in metrics.items()}
