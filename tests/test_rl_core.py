"""The functional RL core against hand-computed values: advantages, losses, KL, TIS, entropy, sampling."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlvr_jax import rl
from rlvr_jax.models import logprobs
from rlvr_jax.rl import (
    LossConfig,
    aggregate,
    fill_batch,
    get_advantage_fn,
    group_keep_mask,
    kl_estimate,
    registered_advantages,
    truncated_is_weights,
)

# Jitted once here: eager dispatch would compile every primitive per shape (slower on CPU), and every test
# then also checks that its path traces (config errors are raised at trace time).
policy_loss = jax.jit(rl.policy_loss, static_argnames="config")
token_entropy = jax.jit(logprobs.token_entropy)

# ---------------------------------------------------------------------------------------------- advantages
# G = 4, three groups:
#   [1, 0, 0, 1]  mean 0.5, deviations +-0.5, population std 0.5, sample std sqrt(1/3) = 0.57735
#   [1, 1, 1, 1]  zero variance: every estimator gives 0
#   [3, 0, 0, 1]  mean 1, deviations [2, -1, -1, 0], population var 6/4 = 1.5, std 1.2247449
REWARDS = jnp.array([1, 0, 0, 1, 1, 1, 1, 1, 3, 0, 0, 1], jnp.float32)
S15 = math.sqrt(1.5)


def adv(name: str, **options) -> np.ndarray:
    return np.asarray(get_advantage_fn(name)(REWARDS, 4, **options))


def test_registry() -> None:
    assert registered_advantages() == ["batch_norm", "dr_grpo", "grpo", "rloo"]
    with pytest.raises(KeyError, match="unknown advantage 'ppo'"):
        get_advantage_fn("ppo")


def test_grpo_population_and_sample_std() -> None:
    # (r - mean) / std: [+-0.5 / 0.5] = [1, -1, -1, 1]; [2, -1, -1, 0] / 1.2247449
    expected = [1, -1, -1, 1, 0, 0, 0, 0, 2 / S15, -1 / S15, -1 / S15, 0]
    np.testing.assert_allclose(adv("grpo"), expected, atol=1e-5)
    # ddof=1: std sqrt(1/3) -> +-0.5 / 0.57735 = +-0.8660254; std of [3,0,0,1] = sqrt(6/3) = sqrt(2)
    s2 = math.sqrt(2)
    expected1 = [0.8660254, -0.8660254, -0.8660254, 0.8660254, 0, 0, 0, 0, 2 / s2, -1 / s2, -1 / s2, 0]
    np.testing.assert_allclose(adv("grpo", ddof=1), expected1, atol=1e-5)


def test_dr_grpo_is_centred_only() -> None:
    np.testing.assert_allclose(adv("dr_grpo"), [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0, 2, -1, -1, 0], atol=1e-6)


def test_rloo_leave_one_out() -> None:
    # 1 - (0 + 0 + 1)/3 = 2/3; 0 - (1 + 0 + 1)/3 = -2/3; 3 - (0 + 0 + 1)/3 = 8/3; 0 - 4/3; 1 - 3/3 = 0
    t = 1 / 3
    expected = [2 * t, -2 * t, -2 * t, 2 * t, 0, 0, 0, 0, 8 * t, -4 * t, -4 * t, 0]
    np.testing.assert_allclose(adv("rloo"), expected, atol=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        get_advantage_fn("rloo")(jnp.ones(3), 1)


def test_batch_norm_both_definitions() -> None:
    # REINFORCE++ baseline: centred = [.5,-.5,-.5,.5, 0,0,0,0, 2,-1,-1,0], mean 0, sum of squares 1 + 6 = 7,
    # population std sqrt(7/12) = 0.7637626
    s = math.sqrt(7 / 12)
    expected = np.array([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0, 2, -1, -1, 0]) / s
    np.testing.assert_allclose(adv("batch_norm"), expected, atol=1e-5)
    # Lite PPO: std of the raw rewards: mean 10/12, mean of squares 16/12, var 16/12 - 100/144 = 0.6388889
    s_raw = math.sqrt(16 / 12 - 100 / 144)
    expected_raw = np.array([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0, 2, -1, -1, 0]) / s_raw
    np.testing.assert_allclose(adv("batch_norm", batch_std_of="rewards"), expected_raw, atol=1e-5)


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo", "batch_norm"])
def test_zero_variance_groups_give_exact_zeros(name: str) -> None:
    # 0.1 * 3 / 3 != 0.1 in floating point, so r - mean is rounding noise unless degenerate groups are zeroed
    r = jnp.array([0.1, 0.1, 0.1, 0.7, 0.7, 0.7], jnp.float32)
    out = np.asarray(get_advantage_fn(name)(r, 3))
    assert np.all(out == 0.0)


@pytest.mark.parametrize("name", ["grpo", "batch_norm"])
def test_single_member_groups_with_unbiased_std_are_zero_not_nan(name: str) -> None:
    # G = 1, ddof = 1: the std is 0 / 0 inside; every group is degenerate
    assert np.asarray(get_advantage_fn(name)(jnp.array([0.3, 1.0]), 1, ddof=1)).tolist() == [0.0, 0.0]


def test_advantage_shape_errors() -> None:
    with pytest.raises(ValueError, match="whole number of groups"):
        get_advantage_fn("grpo")(jnp.ones(5), 4)
    with pytest.raises(ValueError, match=r"\[rows\]"):
        get_advantage_fn("grpo")(jnp.ones((2, 4)), 4)


# --------------------------------------------------------------------------------------------- aggregation
# row 0: tokens [1, 2, 3 | pad], row 1: [5, 6 | pad pad], row 2: all padding (excluded from sequence counts)
PER_TOKEN = jnp.array([[1, 2, 3, jnp.inf], [5, 6, jnp.nan, 7], [9, 9, 9, 9]], jnp.float32)
MASK = jnp.array([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]], bool)


@pytest.mark.parametrize(
    ("mode", "max_len", "expected"),
    [
        ("token-mean", None, 17 / 5),  # (1+2+3+5+6) / 5 tokens
        ("seq-mean-token-mean", None, (6 / 3 + 11 / 2) / 2),  # (2 + 5.5) / 2 rows = 3.75
        ("seq-mean-token-sum", None, (6 + 11) / 2),  # 8.5
        ("seq-mean-token-sum-norm", None, (6 / 4 + 11 / 4) / 2),  # max_len = T = 4: 2.125
        ("seq-mean-token-sum-norm", 10, (6 / 10 + 11 / 10) / 2),  # 0.85
    ],
)
def test_aggregation_modes(mode: str, max_len: int | None, expected: float) -> None:
    assert float(aggregate(PER_TOKEN, MASK, mode, max_len)) == pytest.approx(expected, rel=1e-6)


def test_aggregation_normalizer_and_errors() -> None:
    # micro-batch of a larger batch: 17 / 10 tokens, 17 / 4 sequences
    assert float(aggregate(PER_TOKEN, MASK, "token-mean", normalizer=10)) == pytest.approx(1.7)
    assert float(aggregate(PER_TOKEN, MASK, "seq-mean-token-sum", normalizer=4)) == pytest.approx(4.25)
    assert float(aggregate(PER_TOKEN, jnp.zeros_like(MASK), "seq-mean-token-mean")) == 0.0
    with pytest.raises(ValueError, match="unknown aggregation"):
        aggregate(PER_TOKEN, MASK, "sum")


# ------------------------------------------------------------------------------------------------ clipping
def test_clip_higher_low_high_and_counts() -> None:
    # ratios [0.5, 0.9, 1.1, 1.5]; eps_low 0.2 -> lower bound 0.8, eps_high 0.28 -> upper bound 1.28
    # A = +1: loss = -min(r, clip r) = [-0.5, -0.9, -1.1, -1.28]       (1.5 clipped high: no gradient)
    # A = -1: loss =  max(r, clip r) = [ 0.8,  0.9,  1.1,  1.5]        (0.5 clipped low: no gradient)
    ratios = jnp.array([[0.5, 0.9, 1.1, 1.5]] * 2)
    logp = jnp.log(ratios)
    old = jnp.zeros_like(logp)
    a = jnp.array([1.0, -1.0])
    mask = jnp.ones_like(logp, bool)
    cfg = LossConfig(clip_low=0.2, clip_high=0.28)
    loss, m = policy_loss(logp, old, a, mask, cfg)
    assert float(loss) == pytest.approx((-0.5 - 0.9 - 1.1 - 1.28 + 0.8 + 0.9 + 1.1 + 1.5) / 8, abs=1e-6)
    assert float(m["clip_frac_high"]) == pytest.approx(1 / 8)
    assert float(m["clip_frac_low"]) == pytest.approx(1 / 8)
    assert float(m["ratio_min"]) == pytest.approx(0.5) and float(m["ratio_max"]) == pytest.approx(1.5)
    assert float(m["ratio_mean"]) == pytest.approx(1.0)
    # d loss / d logp = -A r / 8 where unclipped (d r / d logp = r), 0 where a clip acts
    g = jax.grad(lambda lp: policy_loss(lp, old, a, mask, cfg)[0])(logp)
    expected = np.array([[-0.5, -0.9, -1.1, 0.0], [0.0, 0.9, 1.1, 1.5]]) / 8
    np.testing.assert_allclose(np.asarray(g), expected, atol=1e-6)


def test_dual_clip_caps_negative_advantages() -> None:
    # A = -1, ratios [1.5, 4]: plain clip gives max(r, 1.2) = [1.5, 4]; dual clip c = 3 caps at -c A = 3
    logp = jnp.log(jnp.array([[1.5, 4.0]]))
    mask = jnp.ones((1, 2), bool)
    loss, m = policy_loss(logp, jnp.zeros_like(logp), jnp.array([-1.0]), mask, LossConfig(clip_c=3.0))
    assert float(loss) == pytest.approx((1.5 + 3.0) / 2, rel=1e-6)
    assert float(m["clip_frac_dual"]) == pytest.approx(0.5)
    loss_plain, m_plain = policy_loss(logp, jnp.zeros_like(logp), jnp.array([-1.0]), mask)
    assert float(loss_plain) == pytest.approx((1.5 + 4.0) / 2, rel=1e-6) and "clip_frac_dual" not in m_plain
    with pytest.raises(ValueError, match="clip_c"):
        LossConfig(clip_c=0.5)


def test_gspo_sequence_ratio() -> None:
    # log-ratios [0.3, -0.1, 0.1 | pad 99]: sequence log-ratio = 0.3 / 3 = 0.1, s = exp(0.1) on every token
    logp = jnp.array([[0.3, -0.1, 0.1, 99.0]])
    old = jnp.zeros_like(logp)
    mask = jnp.array([[1, 1, 1, 0]], bool)
    s = math.exp(0.1)
    cfg = LossConfig(ratio_type="sequence", clip_low=3e-4, clip_high=4e-4, aggregation="seq-mean-token-mean")
    # A = +1: s = 1.105 > 1.0004, the whole sequence is clipped: loss -1.0004, no gradient
    loss, m = policy_loss(logp, old, jnp.array([1.0]), mask, cfg)
    assert float(loss) == pytest.approx(-1.0004, rel=1e-6)
    assert float(m["clip_frac_high"]) == 1.0 and float(m["ratio_mean"]) == pytest.approx(s, rel=1e-6)
    # A = -1: not clipped, loss = s; d s / d logp_t = s / 3 on each of the 3 tokens (0 on padding)
    loss, m = policy_loss(logp, old, jnp.array([-1.0]), mask, cfg)
    assert float(loss) == pytest.approx(s, rel=1e-6) and float(m["clip_frac_low"]) == 0.0
    g = jax.grad(lambda lp: policy_loss(lp, old, jnp.array([-1.0]), mask, cfg)[0])(logp)
    np.testing.assert_allclose(np.asarray(g), [[s / 3, s / 3, s / 3, 0.0]], rtol=1e-6)


# ---------------------------------------------------------------------------------------------------- KL
def test_kl_estimators_by_hand() -> None:
    # token 1: pi = 0.5, pi_ref = 0.25 -> r = 0.5, log r = -ln 2; token 2: pi = 0.25, pi_ref = 0.5 -> r = 2
    logp = jnp.log(jnp.array([0.5, 0.25]))
    ref = jnp.log(jnp.array([0.25, 0.5]))
    ln2 = math.log(2)
    # k1 = -log r = [ln 2, -ln 2]; k2 = (log r)^2 / 2 = ln2^2 / 2 = 0.2402265; k3 = r - 1 - log r
    np.testing.assert_allclose(np.asarray(kl_estimate(logp, ref, "k1")), [ln2, -ln2], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(kl_estimate(logp, ref, "k2")), [ln2**2 / 2] * 2, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(kl_estimate(logp, ref, "k3")), [ln2 - 0.5, 1 - ln2], rtol=1e-6)
    with pytest.raises(ValueError, match="unknown KL estimator"):
        kl_estimate(logp, ref, "k4")


def test_kl_penalty_in_loss_and_its_gradient() -> None:
    # A = 0 so only the KL term counts: beta * token-mean(k3) = 0.1 * ((ln2 - 0.5) + (1 - ln2)) / 2 = 0.025
    logp = jnp.log(jnp.array([[0.5, 0.25]]))
    ref = jnp.log(jnp.array([[0.25, 0.5]]))
    mask = jnp.ones((1, 2), bool)
    cfg = LossConfig(beta=0.1, kl_estimator="k3")
    loss, m = policy_loss(logp, logp, jnp.zeros(1), mask, cfg, ref_logprobs=ref)
    assert float(loss) == pytest.approx(0.025, rel=1e-6)
    assert float(m["kl"]) == pytest.approx(0.25, rel=1e-6)
    # d k3 / d logp = 1 - r = [0.5, -1], times beta / 2 tokens
    g = jax.grad(lambda lp: policy_loss(lp, logp, jnp.zeros(1), mask, cfg, ref_logprobs=ref)[0])(logp)
    np.testing.assert_allclose(np.asarray(g), [[0.025, -0.05]], rtol=1e-5)


def test_beta_zero_needs_no_reference() -> None:
    logp = jnp.log(jnp.array([[0.5, 0.25]]))
    mask = jnp.ones((1, 2), bool)
    loss, m = policy_loss(logp, logp, jnp.array([1.0]), mask, LossConfig(beta=0.0), ref_logprobs=None)
    assert float(loss) == pytest.approx(-1.0) and "kl" not in m
    with pytest.raises(ValueError, match="ref_logprobs"):
        policy_loss(logp, logp, jnp.array([1.0]), mask, LossConfig(beta=0.04))


# --------------------------------------------------------------------------------------------------- TIS
def test_truncated_importance_sampling() -> None:
    # pi_old / pi_sampler = [0.5/0.1, 0.3/0.6, 1] = [5, 0.5, 1]; cap 2 -> [2, 0.5, 1], one of three truncated
    old = jnp.log(jnp.array([[0.5, 0.3, 0.2]]))
    sampler = jnp.log(jnp.array([[0.1, 0.6, 0.2]]))
    mask = jnp.ones((1, 3), bool)
    w, truncated = truncated_is_weights(old, sampler, mask, 2.0)
    np.testing.assert_allclose(np.asarray(w), [[2.0, 0.5, 1.0]], rtol=1e-6)
    assert np.asarray(truncated).tolist() == [[True, False, False]]
    # ratio 1, A = 1: per-token loss -w, token-mean -(2 + 0.5 + 1) / 3 = -7/6
    loss, m = policy_loss(old, old, jnp.array([1.0]), mask, LossConfig(tis_cap=2.0), sampler_logprobs=sampler)
    assert float(loss) == pytest.approx(-7 / 6, rel=1e-6)
    assert float(m["tis_weight_mean"]) == pytest.approx(7 / 6, rel=1e-6)
    assert float(m["tis_frac_truncated"]) == pytest.approx(1 / 3)
    # switched off, or no sampler log-probs: plain -1
    off, m_off = policy_loss(
        old, old, jnp.array([1.0]), mask, LossConfig(tis_cap=None), sampler_logprobs=sampler
    )
    assert float(off) == pytest.approx(-1.0) and "tis_weight_mean" not in m_off
    assert float(policy_loss(old, old, jnp.array([1.0]), mask)[0]) == pytest.approx(-1.0)


# ----------------------------------------------------------------------------------------------- entropy
def test_token_entropy_known_distributions() -> None:
    uniform = jnp.zeros((2, 3, 8))
    np.testing.assert_allclose(np.asarray(token_entropy(uniform)), np.full((2, 3), math.log(8)), rtol=1e-6)
    # [0.5, 0.25, 0.25]: 0.5 ln 2 + 2 * 0.25 ln 4 = 1.5 ln 2
    probs = jnp.log(jnp.array([0.5, 0.25, 0.25])) + 3.0  # shift-invariant
    assert float(token_entropy(probs)) == pytest.approx(1.5 * math.log(2), rel=1e-6)
    # masked vocabulary (-inf logits): entropy 0 of a one-hot, finite gradient
    one_hot = jnp.array([0.0, -jnp.inf, -jnp.inf])
    assert float(token_entropy(one_hot)) == pytest.approx(0.0, abs=1e-7)
    assert np.all(np.isfinite(np.asarray(jax.grad(lambda z: token_entropy(z))(one_hot))))


def test_entropy_bonus_and_proxy() -> None:
    logp = jnp.log(jnp.array([[0.5, 0.25]]))
    mask = jnp.ones((1, 2), bool)
    ent = jnp.array([[1.0, 3.0]])
    loss, m = policy_loss(logp, logp, jnp.zeros(1), mask, LossConfig(entropy_coef=0.01), entropy=ent)
    assert float(loss) == pytest.approx(-0.01 * 2.0) and float(m["entropy"]) == pytest.approx(2.0)
    # without entropy: the proxy -mean log pi = (ln 2 + ln 4) / 2 = 1.5 ln 2
    _, m = policy_loss(logp, logp, jnp.zeros(1), mask)
    assert float(m["entropy_proxy"]) == pytest.approx(1.5 * math.log(2), rel=1e-6) and "entropy" not in m
    with pytest.raises(ValueError, match="entropy"):
        policy_loss(logp, logp, jnp.zeros(1), mask, LossConfig(entropy_coef=0.01))


# ------------------------------------------------------------------------------------------ jit and grad
def _batch():
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    logp = -jax.random.uniform(k1, (4, 6), minval=0.1, maxval=3.0)
    old = logp + 0.1 * jax.random.normal(k2, (4, 6))
    mask = jnp.array([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4, [1] * 5 + [0]], bool)
    # padding holds garbage the loss must never see
    logp = jnp.where(mask, logp, -jnp.inf)
    old = jnp.where(mask, old, jnp.nan)
    adv = jax.random.normal(k3, (4,))
    return logp, old, adv, mask


@pytest.mark.parametrize("ratio_type", ["token", "sequence"])
@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_jit_and_grad_finite_with_garbage_padding(ratio_type: str, aggregation: str) -> None:
    logp, old, adv, mask = _batch()
    cfg = LossConfig(ratio_type=ratio_type, aggregation=aggregation, beta=0.04, clip_c=3.0, clip_high=0.28)
    ref = old - 0.05
    sampler = old + 0.2

    @jax.jit
    def f(lp):
        return policy_loss(lp, old, adv, mask, cfg, ref_logprobs=ref, sampler_logprobs=sampler)

    (loss, metrics), g = jax.value_and_grad(f, has_aux=True)(logp)
    assert np.isfinite(float(loss)) and all(np.all(np.isfinite(np.asarray(v))) for v in metrics.values())
    g = np.asarray(g)
    assert np.all(np.isfinite(g)) and np.all(g[~np.asarray(mask)] == 0.0)
    # eager gives the same value
    loss2, _ = rl.policy_loss(logp, old, adv, mask, config=cfg, ref_logprobs=ref, sampler_logprobs=sampler)
    assert float(loss2) == pytest.approx(float(loss), rel=1e-6)


@pytest.mark.parametrize(
    ("aggregation", "weight"),
    [
        # d loss / d logp_it at ratio 1 = -A_i * m_it * weight_i
        ("token-mean", lambda n, rows, T: np.full_like(n, 1 / n.sum())),  # 1 / all tokens
        ("seq-mean-token-mean", lambda n, rows, T: 1 / (n * rows)),  # 1 / (n_i R)
        ("seq-mean-token-sum", lambda n, rows, T: np.full_like(n, 1 / rows)),  # 1 / R
        ("seq-mean-token-sum-norm", lambda n, rows, T: np.full_like(n, 1 / (rows * T))),  # 1 / (R max_len)
    ],
)
def test_gradient_at_ratio_one_is_advantage_weighted_score(aggregation: str, weight) -> None:
    logp, _, adv, mask = _batch()
    m = np.asarray(mask, np.float64)
    n = m.sum(axis=1)
    expected = -np.asarray(adv)[:, None] * m * weight(n, 4, 6)[:, None]
    cfg = LossConfig(aggregation=aggregation)
    for old in (logp, None):  # explicit pi_old == pi, or None (one update per batch)
        g = jax.grad(lambda lp, old=old: policy_loss(lp, old, adv, mask, cfg)[0])(logp)
        np.testing.assert_allclose(np.asarray(g), expected, rtol=1e-5, atol=1e-7)


def test_loss_config_validation() -> None:
    for bad in (
        {"ratio_type": "seq"},
        {"aggregation": "mean"},
        {"kl_estimator": "k5"},
        {"clip_low": 1.5},
        {"beta": -1.0},
        {"tis_cap": 0.0},
        {"max_len": 0},
    ):
        with pytest.raises(ValueError):
            LossConfig(**bad)
    hash(LossConfig())  # static jit argument


# -------------------------------------------------------------------------------------- dynamic sampling
def test_group_keep_mask() -> None:
    # G = 4: [1,0,0,1] kept; [1,1,1,1] and [.1,.1,.1,.1] zero variance; [0,0,0,.05] std .05*sqrt(3)/4 = .0217
    r = np.array([1, 0, 0, 1, 1, 1, 1, 1, 0.1, 0.1, 0.1, 0.1, 0, 0, 0, 0.05])
    assert group_keep_mask(r, 4).tolist() == [True, False, False, True]
    assert group_keep_mask(r, 4, tol=0.02).tolist() == [True, False, False, True]
    assert group_keep_mask(r, 4, tol=0.03).tolist() == [True, False, False, False]
    # equal rewards whose computed std is not exactly 0 (0.7 * 3 / 3 != 0.7): still dropped with tol = 0
    assert np.full(3, 0.7).std() > 0 and group_keep_mask(np.full(3, 0.7), 3).tolist() == [False]
    with pytest.raises(ValueError, match="whole groups"):
        group_keep_mask(r[:-1], 4)
    with pytest.raises(ValueError, match="non-finite"):
        group_keep_mask(np.array([np.nan, 1.0]), 2)


class ScriptedSampler:
    """generate_round stand-in: round k returns the groups of rewards script[k] (G = 2), each with its id."""

    def __init__(self, script: list[list[tuple[float, float]]]) -> None:
        self.script = script
        self.asked: list[int] = []
        self.next_id = 0

    def __call__(self, n_groups: int) -> dict[str, np.ndarray]:
        groups = self.script[min(len(self.asked), len(self.script) - 1)]
        self.asked.append(n_groups)
        ids = np.arange(self.next_id, self.next_id + len(groups))
        self.next_id += len(groups)
        rows = np.repeat(ids, 2)
        return {
            "rewards": np.array(groups, np.float32).reshape(-1),
            "group_id": rows,
            "tokens": np.stack([rows, rows * 10], axis=1),  # [rows, T] field
        }


def test_fill_batch_refills_across_rounds() -> None:
    # round 1 (asked 3): ids 0..2 = [1,0] kept, [1,1] dropped, [0,0] dropped
    # round 2 (asked 2): ids 3..5 = [0,1] kept, [0,0] dropped, [1,0] kept -> 3 groups, done
    sampler = ScriptedSampler([[(1, 0), (1, 1), (0, 0)], [(0, 1), (0, 0), (1, 0)]])
    out = fill_batch(sampler, target_groups=3, group_size=2, max_rounds=5)
    assert sampler.asked == [3, 2]
    assert out.rollouts["group_id"].tolist() == [0, 0, 3, 3, 5, 5]
    assert out.rollouts["tokens"][:, 1].tolist() == [0, 0, 30, 30, 50, 50]
    assert out.rollouts["rewards"].tolist() == [1, 0, 0, 1, 1, 0]
    assert out.kept.all()
    assert out.stats == {
        "rounds": 2,
        "groups_generated": 6,
        "groups_dropped": 3,
        "dropped_fraction": 0.5,
        "groups_kept": 3,
        "groups_padded": 0,
        "groups_surplus": 0,
    }


def test_fill_batch_discards_surplus() -> None:
    # one round returns 4 good groups for a target of 2 (a caller rounding up to its compiled batch size)
    sampler = ScriptedSampler([[(1, 0), (0, 1), (1, 0), (0, 1)]])
    out = fill_batch(sampler, target_groups=2, group_size=2, max_rounds=3)
    assert out.rollouts["group_id"].tolist() == [0, 0, 1, 1]
    assert (
        out.stats["rounds"] == 1 and out.stats["groups_surplus"] == 2 and out.stats["dropped_fraction"] == 0
    )


def test_fill_batch_is_bounded_and_pads_with_dropped_groups() -> None:
    # every round: [1,1] dropped, [0,1] kept -> after 2 rounds (the bound) only 2 of 4 groups
    sampler = ScriptedSampler([[(1, 1), (0, 1)]])
    out = fill_batch(sampler, target_groups=4, group_size=2, max_rounds=2)
    assert sampler.asked == [4, 3]
    assert out.rollouts["group_id"].tolist() == [1, 1, 3, 3, 0, 0, 2, 2]  # kept first, then dropped padding
    assert out.kept.tolist() == [True] * 4 + [False] * 4
    assert out.stats["groups_kept"] == 2 and out.stats["groups_padded"] == 2 and out.stats["rounds"] == 2
    assert out.stats["dropped_fraction"] == 0.5
    # pad=False: returned short
    short = fill_batch(
        ScriptedSampler([[(1, 1), (0, 1)]]), target_groups=4, group_size=2, max_rounds=2, pad=False
    )
    assert short.rollouts["group_id"].tolist() == [1, 1, 3, 3] and short.kept.all()


def test_fill_batch_all_degenerate_never_loops_forever() -> None:
    sampler = ScriptedSampler([[(0, 0), (1, 1)]])
    out = fill_batch(sampler, target_groups=3, group_size=2, max_rounds=4)
    assert len(sampler.asked) == 4 and sampler.asked == [3, 3, 3, 3]
    assert out.stats["dropped_fraction"] == 1.0 and out.stats["groups_padded"] == 3
    assert not out.kept.any() and out.rollouts["tokens"].shape == (6, 2)
    empty = fill_batch(ScriptedSampler([[(0, 0)]]), target_groups=2, group_size=2, max_rounds=2, pad=False)
    assert empty.rollouts["tokens"].shape == (0, 2) and empty.kept.shape == (0,)


def test_fill_batch_input_errors() -> None:
    with pytest.raises(ValueError, match="whole groups"):
        fill_batch(lambda n: {"rewards": np.ones(3)}, target_groups=1, group_size=2, max_rounds=1)
    with pytest.raises(KeyError, match="rewards"):
        fill_batch(lambda n: {"score": np.ones(2)}, target_groups=1, group_size=2, max_rounds=1)
    with pytest.raises(ValueError, match="leading axis"):
        fill_batch(
            lambda n: {"rewards": np.ones(2), "x": np.ones(3)}, target_groups=1, group_size=2, max_rounds=1
        )
    with pytest.raises(ValueError, match=">= 1"):
        fill_batch(lambda n: {"rewards": np.ones(2)}, target_groups=1, group_size=2, max_rounds=0)


def _round(prompts: list[list[int]], width: int, G: int, rewards: list[float]):
    """rollout_rows of one generation round whose prompts are left-padded to `width`."""
    from rlvr_jax.generate.sampler import GenerateOutput

    ids = np.zeros((len(prompts), width), np.int32)
    mask = np.zeros((len(prompts), width), bool)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :], mask[i, width - len(p) :] = p, True
    rows = len(prompts) * G
    tokens = np.arange(100, 100 + rows * 3, dtype=np.int32).reshape(rows, 3)
    out = GenerateOutput(
        tokens=tokens, logprobs=-np.ones((rows, 3), np.float32), mask=np.ones((rows, 3), bool),
        lengths=np.full(rows, 3, np.int32), finished=np.ones(rows, bool), steps=np.int32(3),
    )  # fmt: skip
    return rl.rollout_rows(ids, mask, out, np.asarray(rewards, np.float32), G)


def test_rounds_padded_to_different_prompt_buckets_concatenate_without_per_row_copies():
    """Dynamic sampling joins rounds whose prompts were padded to different widths: the narrower round is
    left-padded, so each row keeps its own prompt tokens right before its completion."""
    G = 2
    narrow = _round([[5, 6], [7]], width=4, G=G, rewards=[0, 1, 0, 0])  # group 2 has no spread: dropped
    wide = _round([[8, 9, 10, 11, 12]], width=8, G=G, rewards=[1, 0])
    rounds = iter([narrow, wide])
    filled = fill_batch(lambda _: next(rounds), target_groups=2, group_size=G, max_rounds=2)
    assert filled.stats["groups_kept"] == 2
    batch = rl.batch_from_rows(filled.rollouts, np.zeros(4, np.float32))
    tokens, attn = np.asarray(batch["tokens"]), np.asarray(batch["attn_mask"])
    assert tokens.shape == (4, 8 + 3)
    for r, prompt in enumerate([[5, 6], [5, 6], [8, 9, 10, 11, 12], [8, 9, 10, 11, 12]]):
        assert tokens[r][attn[r]].tolist()[: len(prompt)] == prompt  # the prompt, then the completion
        assert attn[r].sum() == len(prompt) + 3 and attn[r, -3:].all()
    np.testing.assert_array_equal(tokens[:, -3:], np.concatenate([narrow["tokens"][:2], wide["tokens"]]))
    # One round: the same batch as batch_from_rollout builds from the prompts and the sampler's output.
    assert np.asarray(rl.batch_from_rows(narrow, np.zeros(4))["tokens"]).shape == (4, 4 + 3)


def test_skipped_updates_count_steps_in_a_row_and_reset_on_an_applied_update():
    from rlvr_jax.config import RunStopped
    from rlvr_jax.trainer.step import SkippedUpdates

    said = []
    watch = SkippedUpdates(limit=3, start_count=5, say=said.append)  # a resumed run had skipped 5
    watch.check(1, {"train/skipped_updates": 5}, updates=2)
    watch.check(2, {"train/skipped_updates": 6}, updates=2)  # one of two skipped: the policy moved
    assert watch.in_a_row == 0 and len(said) == 1 and "step 2: 1 of 2 update(s) skipped" in said[0]
    watch.check(3, {"train/skipped_updates": 8}, updates=2)
    watch.check(4, {"train/skipped_updates": 10}, updates=2)
    with pytest.raises(RunStopped, match=r"last 3 steps \(to step 5\) .* not changed since step 2"):
        watch.check(5, {"train/skipped_updates": 12, "train/grad_norm": float("nan")}, updates=2)
    assert len(said) == 1  # said once, not every step
    never = SkippedUpdates(limit=0, start_count=0, say=said.append)
    for step in range(1, 50):
        never.check(step, {"train/skipped_updates": step}, updates=1)
    assert never.in_a_row == 49


def test_a_policy_whose_samples_all_run_to_the_budget_stops_the_run():
    """The NQ run of 2026-12-07: 0-5% of samples cut off for 30 steps, then 100% (junk to the budget)."""
    from rlvr_jax.config import RunStopped
    from rlvr_jax.trainer.step import DegeneratePolicy

    watch = DegeneratePolicy(limit=3, checkpoint_every=4)
    for step, rate in enumerate([0.02, 0.0, 0.97, 0.99, 0.5, 1.0, 1.0], start=1):  # a healthy step resets
        watch.check(step, {"response/truncation_rate": rate, "reward/mean": 0.02})
    assert watch.in_a_row == 2 and watch.fewest == (0.0, 2)
    with pytest.raises(RunStopped, match=r"last 3 steps \(steps 6-8\) .* against 0% at step 2") as stopped:
        watch.check(8, {"response/truncation_rate": 0.96, "reward/mean": 0.02})
    assert "checkpoints up to step 4 predate it" in str(stopped.value)
    assert "--checkpoint_step=4" in str(stopped.value) and "rl.beta" in str(stopped.value)
    # Long answers from the start (a short budget on a verbose task) are the task, not a degeneration.
    long = DegeneratePolicy(limit=2, checkpoint_every=10)
    for step, rate in enumerate([0.9, 0.6, 1.0, 1.0, 1.0], start=1):
        long.check(step, {"response/truncation_rate": rate})
    assert long.in_a_row == 0
    never = DegeneratePolicy(limit=0, checkpoint_every=1)
    for step, rate in enumerate([0.0] + [1.0] * 30, start=1):
        never.check(step, {"response/truncation_rate": rate})
    early = DegeneratePolicy(limit=1, checkpoint_every=5)
    early.check(1, {"response/truncation_rate": 0.1})
    with pytest.raises(RunStopped, match=r"no checkpoint predates it \(the first is written at step 5\)"):
        early.check(2, {"response/truncation_rate": 1.0})


def test_the_degeneration_guard_would_have_stopped_the_committed_nq_run_at_step_41():
    """Replayed on the metrics of the NQ run that degenerated (results/learning/qwen_nq_fixed_h100): the
    default limit stops it 10 steps after its samples began to run to the budget, naming the checkpoint
    from before, instead of training on junk to step 100."""
    import json

    from rlvr_jax.config import RunStopped, base_config
    from rlvr_jax.trainer.step import DegeneratePolicy
    from tests.tiny import REPO

    path = REPO / "benchmarks" / "results" / "learning" / "qwen_nq_fixed_h100" / "metrics.jsonl"
    steps = [r for r in map(json.loads, path.read_text().splitlines()) if "response/truncation_rate" in r]
    guard = DegeneratePolicy(base_config().train.max_truncated_in_a_row, checkpoint_every=25)
    with pytest.raises(RunStopped, match=r"steps 32-41\).* --checkpoint_step=25"):
        for row in steps:
            guard.check(row["step"], row)
    assert row["step"] == 41 and len(steps) == 100
