"""The experiment configuration: one ml_collections ConfigDict with every knob, and its validation.

Experiment files in `configs/` (big_vision style) start from `base_config()` and change what their
experiment needs; `get_config("preset")` picks a preset. The trainer calls `validate` before anything is
compiled, so a typo or a batch that does not divide the mesh fails in a second with one clear message.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import ml_collections

REPO = Path(__file__).resolve().parent.parent


def shared_dir() -> Path:
    """The offline models / data folder: $RLVR_SHARED, default ../shared next to the repository."""
    return Path(os.environ.get("RLVR_SHARED", REPO.parent / "shared"))


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0

    # What to train: a hub id, a local HF directory or a GGUF file.
    c.model = ml_collections.ConfigDict()
    c.model.path = "Qwen/Qwen2.5-0.5B-Instruct"
    c.model.dtype = "bfloat16"  # compute dtype
    c.model.param_dtype = "float32"  # master weights and Adam moments; "bfloat16" halves that memory
    c.model.remat = "none"  # none | full | dots

    # Which task, from where. data.path None = the Hugging Face hub.
    c.data = ml_collections.ConfigDict()
    c.data.task = "gsm8k"
    c.data.path = ml_collections.FieldReference(None, field_type=str)
    c.data.train_split = "train"
    c.data.eval_split = "validation"
    c.data.eval_limit = 256  # held-out items per periodic evaluation
    c.data.chat = True  # prompts through the model's chat template
    c.data.options = ml_collections.ConfigDict()  # passed to the task loader (e.g. arithmetic difficulty)

    # Sampling during training; evaluation is greedy unless eval_temperature > 0.
    c.sampling = ml_collections.ConfigDict()
    c.sampling.temperature = 1.0
    c.sampling.top_p = 1.0
    c.sampling.top_k = 0
    c.sampling.max_new_tokens = 256
    c.sampling.eval_temperature = 0.0

    # The RL algorithm: advantages, loss, KL, dynamic sampling.
    c.rl = ml_collections.ConfigDict()
    c.rl.prompts_per_step = 8
    c.rl.group_size = 8
    c.rl.advantage = "grpo"  # grpo | dr_grpo | rloo | batch_norm
    c.rl.mu = 1  # inner epochs over one rollout batch
    c.rl.ratio_type = "token"  # token (PPO/GRPO/DAPO) | sequence (GSPO)
    c.rl.clip_low = 0.2
    c.rl.clip_high = 0.28  # DAPO clip-higher
    c.rl.aggregation = "token-mean"
    c.rl.beta = 0.0  # KL coefficient; 0 holds no reference model
    c.rl.kl_estimator = "k3"
    c.rl.tis_cap = 2.0  # truncated importance sampling for the sampler/trainer gap; 0 disables
    c.rl.entropy_coef = 0.0
    c.rl.dynamic_sampling = False  # DAPO: drop zero-variance groups and refill
    c.rl.dynamic_sampling_rounds = 3

    # The reward: None = the task's own; components for a weighted sum, e.g. {"numeric": 1, "format": 0.1}.
    c.reward = ml_collections.ConfigDict()
    c.reward.name = ml_collections.FieldReference(None, field_type=str)
    c.reward.options = ml_collections.ConfigDict()
    # A reward that raises, hangs (timeout_s) or kills its worker process: "fail" stops the step with an
    # error naming the reward and the exception; "zero" scores those samples 0 and logs the reason.
    c.reward.on_error = "fail"
    c.reward.timeout_s = 120.0  # seconds one reward worker may spend on one chunk of samples

    c.optim = ml_collections.ConfigDict()
    c.optim.learning_rate = 1e-6
    c.optim.schedule = "constant"  # constant | cosine
    c.optim.warmup_steps = 0
    c.optim.weight_decay = 0.0
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.max_grad_norm = 1.0
    # Gradient-accumulation steps per update. 0 = "auto": the fewest that fit, from XLA's compile-time
    # memory estimate against optim.memory_budget_gb (default: the device's free memory; on a CPU, a share
    # of RAM), cached per model / shape / device (rlvr_jax/rl/memory.py). optim.micro_batch_tokens > 0
    # instead picks the fewest whose micro-batches hold at most that many tokens (no compile).
    c.optim.micro_batches = 1
    c.optim.memory_budget_gb = ml_collections.FieldReference(None, field_type=float)
    c.optim.micro_batch_tokens = 0

    # Device mesh: data * fsdp * tensor = number of devices (-1 = the rest).
    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1
    c.mesh.fsdp = 1
    c.mesh.tensor = 1

    c.train = ml_collections.ConfigDict()
    c.train.steps = 100
    c.train.eval_every = 25  # 0 = only before and after
    c.train.checkpoint_every = 25
    c.train.keep_checkpoints = 3
    c.train.export_hf = True  # write the trained policy as an HF directory at the end

    c.logging = ml_collections.ConfigDict()
    c.logging.tensorboard = True
    c.logging.wandb_project = ml_collections.FieldReference(None, field_type=str)
    c.logging.prometheus_port = 0  # serve the training gauges on this port for Prometheus; 0 = off
    c.logging.pushgateway = ml_collections.FieldReference(None, field_type=str)  # host:port; None = off
    c.logging.json_logs = False  # log lines as JSON objects on stderr (log aggregation), no progress bar
    # US$ per device-hour for the cost metrics; None = the table in rlvr_jax/monitoring/cost.py.
    c.logging.price_per_hour = ml_collections.FieldReference(None, field_type=float)
    return c


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the key and what to change."""


_CHOICES = {
    "model.dtype": ("float32", "bfloat16"),
    "model.param_dtype": ("float32", "bfloat16"),
    "model.remat": ("none", "full", "dots"),
    "rl.advantage": ("grpo", "dr_grpo", "rloo", "batch_norm"),
    "rl.ratio_type": ("token", "sequence"),
    "rl.aggregation": ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"),
    "rl.kl_estimator": ("k1", "k2", "k3"),
    "optim.schedule": ("constant", "cosine"),
    "reward.on_error": ("fail", "zero"),
}


def _get(config: ml_collections.ConfigDict, dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        value = value[part]
    return value


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
    """Checks everything that can be checked before loading a model; raises ConfigError."""
    for key, choices in _CHOICES.items():
        if _get(config, key) not in choices:
            raise ConfigError(f"{key}={_get(config, key)!r} is not one of {', '.join(choices)}")
    positive = (
        "rl.prompts_per_step",
        "rl.group_size",
        "rl.mu",
        "sampling.max_new_tokens",
        "train.steps",
    )
    for key in positive:
        if int(_get(config, key)) < 1:
            raise ConfigError(f"{key} must be >= 1, got {_get(config, key)}")
    if config.rl.group_size < 2:
        raise ConfigError("rl.group_size must be >= 2: group-relative advantages need several samples")
    if config.sampling.temperature <= 0:
        raise ConfigError(
            "sampling.temperature must be > 0 for training rollouts (greedy groups are identical)"
        )
    if not 0 < config.sampling.top_p <= 1:
        raise ConfigError(f"sampling.top_p must be in (0, 1], got {config.sampling.top_p}")
    if not config.reward.timeout_s > 0:
        raise ConfigError(f"reward.timeout_s must be > 0 seconds, got {config.reward.timeout_s}")
    if config.optim.learning_rate <= 0:
        raise ConfigError(f"optim.learning_rate must be > 0, got {config.optim.learning_rate}")

    if config.optim.micro_batches < 0:
        raise ConfigError(f"optim.micro_batches must be >= 1 (or 0: auto), got {config.optim.micro_batches}")
    if config.optim.micro_batch_tokens < 0:
        raise ConfigError(f"optim.micro_batch_tokens must be >= 0, got {config.optim.micro_batch_tokens}")
    if config.optim.memory_budget_gb is not None and config.optim.memory_budget_gb <= 0:
        raise ConfigError(f"optim.memory_budget_gb must be > 0, got {config.optim.memory_budget_gb}")
    auto = config.optim.micro_batches == 0 or config.optim.micro_batch_tokens > 0
    rows = config.rl.prompts_per_step * config.rl.group_size
    if not auto and rows % config.optim.micro_batches:
        raise ConfigError(
            f"optim.micro_batches={config.optim.micro_batches} does not divide the {rows} rollouts per step "
            f"(rl.prompts_per_step * rl.group_size)"
        )
    if num_devices is not None:
        from rlvr_jax.sharding import mesh_shape

        try:
            data, fsdp, _ = mesh_shape(config.mesh.data, config.mesh.fsdp, config.mesh.tensor, num_devices)
        except ValueError as e:
            raise ConfigError(f"mesh: {e}") from None
        shards = data * fsdp
        if config.rl.prompts_per_step % shards:
            raise ConfigError(
                f"rl.prompts_per_step={config.rl.prompts_per_step} does not divide over the mesh's "
                f"data*fsdp={shards} batch shards; use a multiple of {shards}"
            )
        if not auto and (rows // config.optim.micro_batches) % shards:
            raise ConfigError(
                f"a micro-batch of {rows // config.optim.micro_batches} rows does not divide over "
                f"data*fsdp={shards}; lower optim.micro_batches or raise the batch"
            )

    from rlvr_jax.data import registered_tasks

    if config.data.task not in registered_tasks():
        raise ConfigError(
            f"data.task={config.data.task!r} is unknown; registered: {', '.join(registered_tasks())}"
        )
    if config.data.path is not None and not Path(config.data.path).expanduser().exists():
        raise ConfigError(f"data.path={config.data.path!r} does not exist")
    model = str(config.model.path)
    looks_local = model.startswith(("/", ".", "~")) or model.endswith(".gguf") or model.count("/") > 1
    if looks_local and not Path(model).expanduser().exists():
        raise ConfigError(
            f"model.path={model!r} does not exist; pass a hub id, an HF directory or a .gguf file"
        )
