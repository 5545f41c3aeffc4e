"""The config and the library: names resolve through the registries, sections map onto the dataclasses."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from rlvr_jax import rl
from rlvr_jax.config import ConfigError, base_config, loss_config, optim_config, validate
from rlvr_jax.optim import OptimConfig
from rlvr_jax.registry import Registry
from rlvr_jax.rl import LossConfig


@pytest.fixture(autouse=True)
def _registries_restored(monkeypatch):
    """What a test registers is gone after it: other tests list the built-in names."""
    for registry in (rl.ADVANTAGES, rl.AGGREGATIONS, rl.KL_ESTIMATORS):
        monkeypatch.setattr(registry, "_items", dict(registry._items))


def _config():
    c = base_config()
    c.model.path = "Qwen/Qwen2.5-0.5B-Instruct"  # a hub id: validation does not load it
    return c


def test_a_registered_advantage_is_usable_from_a_config_at_once():
    c = _config()
    c.rl.advantage = "median_baseline_test"
    with pytest.raises(ConfigError, match="unknown advantage 'median_baseline_test'"):
        validate(c)

    def median_baseline(rewards, group_size, **_):
        groups = jnp.asarray(rewards, jnp.float32).reshape(-1, group_size)
        return (groups - jnp.median(groups, axis=1, keepdims=True)).reshape(-1)

    rl.register_advantage("median_baseline_test", median_baseline)
    validate(c)  # no error now
    assert rl.get_advantage_fn("median_baseline_test") is median_baseline


def test_registered_aggregations_and_kl_estimators_reach_the_loss():
    rl.register_aggregation("token-sum-test", lambda row_sum, row_n, max_len: row_sum, "sequence")
    rl.register_kl_estimator("abs-test", lambda log_r: jnp.abs(log_r))
    c = _config()
    c.rl.aggregation, c.rl.kl_estimator = "token-sum-test", "abs-test"
    validate(c)
    loss = rl.aggregate(jnp.ones((2, 3)), jnp.array([[1, 1, 0], [1, 0, 0]]), "token-sum-test")
    assert float(loss) == pytest.approx((2 + 1) / 2)  # row sums over the 2 rows that have tokens
    kl = rl.kl_estimate(jnp.zeros(2), jnp.array([-0.5, 0.25]), "abs-test")
    np.testing.assert_allclose(np.asarray(kl), [0.5, 0.25])


@pytest.mark.parametrize(
    ("key", "value", "closest"),
    [("rl.advantage", "grpoo", "grpo"), ("rl.aggregation", "token_mean", "token-mean"),
     ("rl.kl_estimator", "kk3", "k3"), ("data.task", "gsm8kk", "gsm8k")],
)  # fmt: skip
def test_a_misspelt_name_fails_with_the_closest_registered_one(key, value, closest):
    c = _config()
    section, name = key.split(".")
    c[section][name] = value
    with pytest.raises(ConfigError, match=f"did you mean '{closest}'"):
        validate(c)


def test_a_different_definition_under_a_taken_name_is_an_error_and_the_same_one_replaces():
    registry: Registry = Registry("widget")

    def make():
        def widget():
            return 1

        return widget

    first, again = make(), make()  # the same definition twice (a re-run notebook cell)
    registry.register("w", first)
    assert registry.register("w", again) is again and registry.get("w") is again
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("w", lambda: 2)
    with pytest.raises(KeyError, match="unknown widget 'ww' \\(did you mean 'w'\\?\\)"):
        registry.get("ww")


def test_every_loss_and_optimizer_switch_is_reachable_from_the_config():
    derived = {"max_len", "total_steps", "micro_batches"}  # set from other sections, checked below
    c = _config()
    for cls, section in ((LossConfig, c.rl), (OptimConfig, c.optim)):
        missing = {f.name for f in dataclasses.fields(cls)} - set(section) - derived
        assert not missing, f"{cls.__name__} fields no config key reaches: {missing}"
    c.optim.end_lr_ratio, c.optim.schedule, c.optim.warmup_steps = 0.1, "cosine", 2
    c.rl.clip_c, c.rl.tis_cap = 3.0, 0.0
    c.train.steps, c.sampling.max_new_tokens, c.optim.micro_batches = 50, 77, 0
    optim, loss = optim_config(c), loss_config(c)
    assert (optim.end_lr_ratio, optim.total_steps, optim.micro_batches) == (0.1, 50, 1)  # 0 = auto -> 1
    assert optim_config(c, micro_batches=4).micro_batches == 4
    assert (loss.clip_c, loss.tis_cap, loss.max_len, loss.clip_high) == (3.0, None, 77, 0.28)


def test_library_checks_run_at_validation_before_any_model_loads():
    c = _config()
    c.optim.learning_rate = float("nan")  # NaN passes `<= 0`; it once surfaced only after the model loaded
    with pytest.raises(ConfigError, match=r"optim\.learning_rate=nan is not a finite number"):
        validate(c)
    c = _config()
    c.optim.learning_rate = 1e-6
    c.optim.warmup_steps, c.optim.schedule, c.train.steps = 10, "cosine", 5
    with pytest.raises(ConfigError, match="optim: invalid OptimConfig"):  # OptimConfig's own check
        validate(c)
    c = _config()
    c.rl.clip_c = 0.5
    with pytest.raises(ConfigError, match="clip_c must be > 1"):
        validate(c)
    c = _config()
    c.optim.end_lr_ratio = 2.0
    with pytest.raises(ConfigError, match="end_lr_ratio must be in"):
        validate(c)


def test_the_attention_kernel_choice_reaches_the_model_and_a_wrong_one_is_named(tmp_path):
    """model.attention: "xla" swaps the GPU kernels for the reference einsums (a workaround when a fused
    kernel misbehaves); the loaded model carries it, and an unknown value fails at validation."""
    from rlvr_jax.weights import load_policy
    from tests.test_model_parity import _make_hf_model

    c = base_config()
    c.model.attention = "cudnn"
    with pytest.raises(ConfigError, match=r"model\.attention='cudnn' is not one of auto, xla"):
        validate(c)
    path = tmp_path / "qwen2"
    _make_hf_model("qwen2", path)
    for choice in ("auto", "xla"):
        model, _ = load_policy(path, dtype="float32", attention=choice)
        assert model.cfg.attention == choice
