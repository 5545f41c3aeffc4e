"""The experiment configuration: one ml_collections ConfigDict with every knob, and its validation.

Experiment files in `configs/` (big_vision style) start from `base_config()` and change what their
experiment needs; `get_config("preset")` picks a preset. The trainer calls `validate` before anything is
compiled, so a typo or a batch that does not divide the mesh fails in a second with one clear message.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import inspect
import json
import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import ml_collections

from rlvr_jax.registry import closest

REPO = Path(__file__).resolve().parent.parent


def configs_dir() -> Path:
    """The experiment configs (`configs/*.py`): inside the package when installed from a wheel
    (setup.py maps configs/ to rlvr_jax/configs), else the checkout's configs/ (editable or PYTHONPATH)."""
    installed = Path(__file__).resolve().parent / "configs"
    return installed if installed.is_dir() else REPO / "configs"


def shared_dir() -> Path:
    """The offline models / data folder: $RLVR_SHARED, default ../shared next to the repository."""
    return Path(os.environ.get("RLVR_SHARED", REPO.parent / "shared"))


def base_config() -> ml_collections.ConfigDict:
    """Every knob with its default and a comment. One long function on purpose: it is the reference a
    reader scans top to bottom, and the docs' configuration page is generated from it."""
    c = ml_collections.ConfigDict()
    c.seed = 0

    # What to train: a hub id, a local HF directory or a GGUF file.
    c.model = ml_collections.ConfigDict()
    c.model.path = "Qwen/Qwen2.5-0.5B-Instruct"
    # The same model's hub id, used when model.path is a local file or folder missing on this machine (a
    # config written for a machine with a local copy still runs wherever the hub is reachable); None = none.
    c.model.hub_id = ml_collections.FieldReference(None, field_type=str)
    c.model.dtype = "bfloat16"  # compute dtype
    c.model.param_dtype = "float32"  # master weights and Adam moments; "bfloat16" halves that memory
    c.model.remat = "none"  # none | full | dots
    c.model.attention = "auto"  # auto (cuDNN / Pallas kernels on GPU) | xla (plain einsums everywhere)
    # LoRA: train low-rank adapters on the projections instead of the whole model. rank 0 = off. With rank
    # r, each target W computes x @ W + (alpha / r) * (x @ A) @ B; only A and B train and have Adam moments,
    # the frozen base is held in model.dtype, checkpoints hold the adapters (the base reloads from
    # model.path), and the run exports merged weights (hf_export) and a PEFT adapter (peft_adapter).
    c.model.lora = ml_collections.ConfigDict()
    c.model.lora.rank = 0  # adapter rank r; 0 = off (full fine-tuning)
    c.model.lora.alpha = 16.0  # the adapters' product is scaled by alpha / rank (PEFT's lora_alpha)
    # Projections that get adapters, by logical name: q k v o (attention), gate up down (MLP).
    c.model.lora.targets = ("q", "k", "v", "o", "gate", "up", "down")

    # Which task, from where. data.path None = the Hugging Face hub.
    c.data = ml_collections.ConfigDict()
    c.data.task = "gsm8k"
    c.data.path = ml_collections.FieldReference(None, field_type=str)
    c.data.train_split = "train"
    c.data.eval_split = "validation"
    c.data.eval_limit = 256  # held-out items per periodic evaluation
    c.data.chat = True  # prompts through the model's chat template
    c.data.options = ml_collections.ConfigDict()  # passed to the task loader (e.g. arithmetic difficulty)
    # data.task="hf" (any data set with a prompt column; rlvr_jax/data/hf_task.py) reads these four.
    c.data.dataset = ml_collections.FieldReference(None, field_type=str)  # hub id, file, folder or glob
    c.data.split = "train"  # the data set's split that train / validation are carved from
    c.data.prompt_column = "prompt"  # a string or a list of chat messages per row
    c.data.answer_column = ml_collections.FieldReference(None, field_type=str)  # copied to samples' "answer"

    # Sampling during training; evaluation is greedy unless eval_temperature > 0.
    c.sampling = ml_collections.ConfigDict()
    c.sampling.temperature = 1.0
    c.sampling.top_p = 1.0
    c.sampling.top_k = 0
    c.sampling.max_new_tokens = 256
    c.sampling.eval_temperature = 0.0
    # Token budget of every held-out evaluation (trainer, scripts/evaluate.py); None = max_new_tokens. Set it
    # so the base model finishes >= 95% of held-out answers (metrics.json: tokens_for_95_finished): a cut-off
    # answer scores 0, and a short budget turns shorter answers into accuracy.
    c.sampling.eval_max_new_tokens = ml_collections.FieldReference(None, field_type=int)
    # Prompt widths the sampler pads a batch to (its longest prompt's bucket); the update is that width plus
    # max_new_tokens wide. () = DEFAULT_PROMPT_BUCKETS (powers of two). Finer buckets where the prompts
    # cluster just above a power of two cut padded work (the update's cost grows with its width) at the price
    # of one more compile of the sampler and the update per bucket the prompts reach.
    c.sampling.prompt_buckets = ()

    # The RL algorithm: advantages, loss, KL, dynamic sampling.
    c.rl = ml_collections.ConfigDict()
    c.rl.prompts_per_step = 8
    c.rl.group_size = 8
    c.rl.advantage = "grpo"  # grpo | dr_grpo | rloo | batch_norm
    c.rl.mu = 1  # inner epochs over one rollout batch
    c.rl.ratio_type = "token"  # token (PPO/GRPO/DAPO) | sequence (GSPO)
    c.rl.clip_low = 0.2
    c.rl.clip_high = 0.28  # DAPO clip-higher
    c.rl.clip_c = ml_collections.FieldReference(None, field_type=float)  # dual-clip bound for A < 0 (e.g. 3)
    c.rl.aggregation = "token-mean"
    c.rl.beta = 0.0  # KL coefficient; 0 holds no reference model
    c.rl.kl_estimator = "k3"
    c.rl.tis_cap = 2.0  # truncated importance sampling for the sampler/trainer gap; 0 disables
    c.rl.entropy_coef = 0.0
    c.rl.dynamic_sampling = False  # DAPO: drop zero-variance groups and refill
    c.rl.dynamic_sampling_rounds = 3
    # One-step off-policy: step n + 1's rollout is sampled (with step n's parameters, before its update)
    # and scored on the host while step n updates; old log-probs come from the sampling parameters, so the
    # importance ratio and its clip handle the lag. Hides slow rewards (the code sandbox) behind updates.
    c.rl.async_rollouts = False
    # Prompt widths the update's batch is trimmed (or left padded) to: its longest real prompt's bucket,
    # whatever width the sampler padded to. () = the sampler's own widths (no trimming). The sampler unrolls
    # its layers and compiles several times slower than the (scanned) update, so a run can keep one coarse
    # sampler width (sampling.prompt_buckets) and still train on fine ones: exact, since positions come
    # from the attention mask and the dropped columns are padding.
    c.rl.update_prompt_buckets = ()

    # The reward: None = the task's own; components for a weighted sum, e.g. {"numeric": 1, "format": 0.1}.
    c.reward = ml_collections.ConfigDict()
    c.reward.name = ml_collections.FieldReference(None, field_type=str)
    c.reward.options = ml_collections.ConfigDict()
    # What held-out accuracy is scored with. None = the training reward, except a weighted sum (shaping:
    # format bonus, overlong penalty), where it is the task's own correctness reward: a right answer must
    # pass whatever the shaping added. A name = that registered reward, with no options.
    c.reward.eval_name = ml_collections.FieldReference(None, field_type=str)
    # A reward that raises, hangs (timeout_s) or kills its worker process: "fail" stops the step with an
    # error naming the reward and the exception; "zero" scores those samples 0 and logs the reason.
    c.reward.on_error = "fail"
    c.reward.timeout_s = 120.0  # seconds one reward worker may spend on one chunk of samples

    # The optimizer (AdamW), its schedule and how an update splits into micro-batches.
    c.optim = ml_collections.ConfigDict()
    c.optim.learning_rate = 1e-6
    c.optim.schedule = "constant"  # constant | cosine
    c.optim.warmup_steps = 0
    c.optim.end_lr_ratio = 0.0  # cosine: the rate at the last step, as a fraction of the peak
    c.optim.weight_decay = 0.0
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.max_grad_norm = 1.0
    # Gradient-accumulation steps per update. 0 = "auto": the fewest that fit, from XLA's compile-time
    # memory estimate against optim.memory_budget_gb (default: the device's free memory; on a CPU, a share
    # of RAM), cached per model / shape / device (rlvr_jax/optim/memory.py). optim.micro_batch_tokens > 0
    # instead picks the fewest whose micro-batches hold at most that many tokens (no compile).
    c.optim.micro_batches = 1
    c.optim.memory_budget_gb = ml_collections.FieldReference(None, field_type=float)
    c.optim.micro_batch_tokens = 0

    # Device mesh: data * fsdp * tensor = number of devices (-1 = the rest).
    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1
    c.mesh.fsdp = 1
    c.mesh.tensor = 1

    # The run's length, evaluations, checkpoints and export.
    c.train = ml_collections.ConfigDict()
    c.train.steps = 100
    c.train.eval_every = 25  # 0 = only before and after
    c.train.checkpoint_every = 25
    c.train.keep_checkpoints = 3
    c.train.export_hf = True  # write the trained policy as an HF directory at the end
    c.train.export_dtype = "float32"  # float32 (logits exact) | bfloat16 (half the size) | float16
    # Before step 1, compile the sampler and the update for every prompt bucket the training prompts can
    # reach (a line per compile; time/compile_s at the first step), so no step stalls on a new bucket.
    c.train.warmup_compile = True
    # How many of those compiles run at once (sampler buckets and update widths, in a pool of threads: XLA
    # compiles outside Python's lock); with warmup_background, the background's threads. 1 = one by one:
    # on a 2-core CPU 4 gained nothing (the demo's warm-up 21.6 -> 22.8 s); on an H100 6 gained 8% (GSM8K's
    # shape, 50.8 -> 46.5 s: grpo_step_h200.sh warm6).
    c.train.warmup_threads = 1
    # Compile only step 1's prompt bucket before it, and every other reachable one in the background while
    # the run evaluates and steps (a step that reaches a bucket still compiling waits for it:
    # time/compile_wait_s). False: all of them before step 1.
    c.train.warmup_background = True
    # Stop with an error after this many updates in a row were skipped for a non-finite loss or gradient
    # (the parameters are unchanged by a skipped update, so a run that skips them all trains nothing);
    # 0 = never stop. The first skipped update is reported on the console either way.
    c.train.max_skipped_in_a_row = 10
    # Stop with an error after this many steps in a row in which at least 95% of the rollouts ran to
    # sampling.max_new_tokens, when fewer than half did at some earlier step of the process: a policy that
    # degenerated into text that never ends (trainer.step.DegeneratePolicy); 0 = never stop.
    c.train.max_truncated_in_a_row = 10

    # Where the step metrics go: TensorBoard, W&B, Prometheus, JSON log lines; and the cost table.
    c.logging = ml_collections.ConfigDict()
    c.logging.tensorboard = True
    c.logging.wandb_project = ml_collections.FieldReference(None, field_type=str)
    c.logging.wandb_name = ml_collections.FieldReference(None, field_type=str)  # run name; None = W&B's
    c.logging.wandb_group = ml_collections.FieldReference(None, field_type=str)  # runs shown together
    # W&B tags; on the command line one flag per tag: --config.logging.wandb_tags=grpo --config...=gsm8k
    c.logging.wandb_tags = ()
    # Held-out samples (prompt, completion, reward, reason) shown per evaluation as a table in TensorBoard's
    # text tab and in W&B; 0 = none. Every sample is in WORKDIR/eval/<name>/samples.jsonl either way.
    c.logging.log_samples = 8
    c.logging.prometheus_port = 0  # serve the training gauges on this port for Prometheus; 0 = off
    c.logging.pushgateway = ml_collections.FieldReference(None, field_type=str)  # host:port; None = off
    c.logging.json_logs = False  # log lines as JSON objects on stderr (log aggregation), no progress bar
    # US$ per device-hour for the cost metrics; None = the table in rlvr_jax/monitoring/cost.py.
    c.logging.price_per_hour = ml_collections.FieldReference(None, field_type=float)
    return c


# Meanings of the fields whose line in `base_config` has no comment (the comment wins where there is one):
# the one table `--print_config` and the docs' configuration reference read besides those comments.
# A test fails when a field has neither, or when an entry names a field that no longer exists.
KEY_HELP: dict[str, str] = {
    "seed": "the one PRNG seed of the run: data order, sampling keys, evaluation",
    "model.path": "a hub id, a local HF directory or a GGUF file",
    "data.task": "a registered task (`rlvr_jax.data.registered_tasks()`): loader, prompt template and reward",
    "data.path": "local copy of the task's data; None loads it from the Hugging Face hub",
    "data.train_split": "split the training prompts come from",
    "data.eval_split": "held-out split evaluated before, during (`train.eval_every`) and after training",
    "sampling.temperature": "rollout temperature; must be > 0 (greedy groups would be identical)",
    "sampling.top_p": "nucleus sampling for rollouts, in (0, 1]; 1 = off",
    "sampling.top_k": "top-k sampling for rollouts; 0 = off",
    "sampling.max_new_tokens": "generation budget per completion; also the Dr.GRPO normaliser `max_len`",
    "sampling.eval_temperature": "temperature of the held-out evaluation; 0 = greedy",
    "sampling.prompt_buckets": "increasing prompt widths the sampler pads to; () = 32, 64, ..., 2048",
    "rl.update_prompt_buckets": "prompt widths the update trims its batch to; () = the sampler's widths",
    "rl.prompts_per_step": "prompts per step; the batch has prompts_per_step * group_size rollouts",
    "rl.group_size": "G, completions sampled per prompt (>= 2: the group is the baseline)",
    "rl.clip_low": "eps_low: the ratio is clipped to [1 - clip_low, 1 + clip_high]",
    "rl.aggregation": "token-mean | seq-mean-token-mean | seq-mean-token-sum | seq-mean-token-sum-norm",
    "rl.kl_estimator": "k1 | k2 | k3 estimate of KL(pi || pi_ref), used when beta > 0",
    "rl.dynamic_sampling_rounds": "most generation rounds per step when dynamic sampling refills groups",
    "rl.entropy_coef": "weight of an entropy bonus subtracted from the loss; 0 = none",
    "reward.name": "a registered reward (`rlvr_jax.rewards.registered_rewards()`); None = the task's own",
    "reward.options": "keyword arguments passed to the reward function",
    "optim.learning_rate": "peak AdamW learning rate (reached at the end of warmup)",
    "optim.warmup_steps": "linear warmup: update k < warmup_steps uses learning_rate * (k + 1) / warmup",
    "optim.weight_decay": "decoupled AdamW decay, on weight matrices and embeddings (not norms, biases)",
    "optim.b1": "AdamW beta1",
    "optim.b2": "AdamW beta2",
    "optim.eps": "AdamW epsilon",
    "optim.max_grad_norm": "clip the global gradient norm to this value",
    "optim.memory_budget_gb": "memory budget for `micro_batches = 0`; None = the device's free memory",
    "optim.micro_batch_tokens": "> 0: the fewest micro-batches of at most this many tokens (no compile)",
    "mesh.data": "data-parallel axis size",
    "mesh.fsdp": "fully-sharded data-parallel axis size (parameters split, rows split)",
    "mesh.tensor": "tensor-parallel axis size (heads, MLP and vocabulary split)",
    "train.steps": "GRPO steps (one rollout batch and its updates each)",
    "train.checkpoint_every": "orbax checkpoint every N steps (and on SIGTERM)",
    "train.keep_checkpoints": "checkpoints kept (plus the best by held-out accuracy)",
    "train.max_skipped_in_a_row": "stop after this many updates in a row skipped for NaN / inf; 0 = never",
    "train.max_truncated_in_a_row": "stop after this many steps in a row with >= 95% of rollouts cut off by "
    "the token budget (when < 50% were earlier: a degenerated policy); 0 = never",
    "logging.tensorboard": "write TensorBoard event files under WORKDIR/tensorboard",
    "logging.wandb_project": "Weights & Biases project; None = off",
}


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the key and what to change."""


class RunStopped(RuntimeError):
    """A run that stopped itself for a reason its message explains, with what to change (the command
    line prints it as `error: ...`, no traceback): e.g. every update skipped for a non-finite gradient."""


def saved_config_path(workdir: str | os.PathLike) -> Path | None:
    """The config.json a training run saved in `workdir` (also given as its checkpoints/ folder)."""
    folder = Path(workdir).expanduser()
    folders = (folder, folder.parent) if folder.name == "checkpoints" else (folder,)
    return next((f / "config.json" for f in folders if (f / "config.json").is_file()), None)


def saved_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
    """The config a training run saved (WORKDIR/config.json), laid over `base_config()`: the keys and
    their types are the base's, the values the run's (a key the base lacks, such as data.options.digits,
    is added), so `--config.a.b=v` overrides and validation treat it like a config file's."""
    path = saved_config_path(workdir)
    if path is None:
        raise ConfigError(f"{workdir} holds no config.json; scripts/train.py saves one in its workdir")
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path} cannot be read as a saved config ({e})") from None
    config = base_config()
    _lay_over(config, saved, str(path))
    return config


def _lay_over(
    config: ml_collections.ConfigDict, values: Mapping[str, Any], where: str, prefix: str = ""
) -> None:
    for key, value in values.items():
        if isinstance(value, Mapping) and isinstance(config.get(key), ml_collections.ConfigDict):
            _lay_over(config[key], value, where, f"{prefix}{key}.")
            continue
        try:
            config[key] = value
        except TypeError as e:  # ml_collections' type check: the file is not a config this version wrote
            raise ConfigError(f"{where}: {prefix}{key}={value!r} does not fit base_config ({e})") from None


# Integer keys and their least value.
_INTEGERS = {
    "seed": 0,
    "data.eval_limit": 1,
    "sampling.top_k": 0,
    "sampling.max_new_tokens": 1,
    "model.lora.rank": 0,
    "rl.prompts_per_step": 1,
    "rl.group_size": 1,
    "rl.mu": 1,
    "rl.dynamic_sampling_rounds": 1,
    "train.warmup_threads": 1,
    "optim.warmup_steps": 0,
    "optim.micro_batches": 0,
    "optim.micro_batch_tokens": 0,
    "train.steps": 1,
    "train.eval_every": 0,
    "train.checkpoint_every": 1,
    "train.keep_checkpoints": 1,
    "train.max_skipped_in_a_row": 0,
    "train.max_truncated_in_a_row": 0,
    "logging.prometheus_port": 0,
    "logging.log_samples": 0,
}
_ZERO_MEANS = {
    "model.lora.rank": "off",
    "sampling.top_k": "off",
    "optim.micro_batches": "auto",
    "optim.micro_batch_tokens": "off",
    "train.eval_every": "only before and after training",
    "train.max_skipped_in_a_row": "never stop",
    "train.max_truncated_in_a_row": "never stop",
    "logging.prometheus_port": "off",
    "logging.log_samples": "none",
}

_CHOICES = {
    "model.dtype": ("float32", "bfloat16"),
    "model.param_dtype": ("float32", "bfloat16"),
    "model.remat": ("none", "full", "dots"),
    "model.attention": ("auto", "xla"),
    "rl.ratio_type": ("token", "sequence"),
    "optim.schedule": ("constant", "cosine"),
    "reward.on_error": ("fail", "zero"),
    "train.export_dtype": ("float32", "bfloat16", "float16"),
}


def _registries() -> dict[str, Any]:
    """The config keys that name something registered (`rlvr_jax.registry`): what a user registers is
    valid here at once."""
    from rlvr_jax.data.base import TASKS
    from rlvr_jax.rl.advantages import ADVANTAGES
    from rlvr_jax.rl.losses import AGGREGATIONS, KL_ESTIMATORS

    return {
        "rl.advantage": ADVANTAGES,
        "rl.aggregation": AGGREGATIONS,
        "rl.kl_estimator": KL_ESTIMATORS,
        "data.task": TASKS,
    }


def allowed_values() -> dict[str, list[str]]:
    """Every key with a closed set of values and those values: fixed choices, and for the keys that name
    something registered, the names registered now (in registration order)."""
    fixed = {key: list(choices) for key, choices in _CHOICES.items()}
    return fixed | {key: registry.in_order() for key, registry in _registries().items()}


def from_section(cls: type, section: ml_collections.ConfigDict, **derived: Any) -> Any:
    """A library dataclass from the config section holding its fields under the same names, plus the
    fields derived from elsewhere in the config (`derived`). One mapping instead of a field-by-field copy,
    so every switch of the dataclass that the section names is reachable from a config."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: section[k] for k in names if k in section}
    return cls(**(values | {k: v for k, v in derived.items() if k in names}))


def eval_reward(config: ml_collections.ConfigDict, task_reward: str | None) -> tuple[str, dict[str, Any]]:
    """(name, options) of the reward that scores held-out evaluations (see `reward.eval_name`): accuracy
    must mean "the answer is right", which a shaped training reward does not say."""
    name = config.reward.get("eval_name")
    if name:
        same = name == config.reward.name
        return name, dict(config.reward.options) if same else {}
    if config.reward.name == "weighted_sum" and task_reward:
        per_component = config.reward.options.get("component_options") or {}
        return task_reward, dict(per_component.get(task_reward) or {})
    return config.reward.name or task_reward, dict(config.reward.options)


def prompt_buckets(config: ml_collections.ConfigDict) -> tuple[int, ...]:
    """The sampler's prompt widths: `sampling.prompt_buckets`, or the sampler's default when empty."""
    from rlvr_jax.generate.sampler import DEFAULT_PROMPT_BUCKETS

    return tuple(int(b) for b in config.sampling.get("prompt_buckets") or ()) or DEFAULT_PROMPT_BUCKETS


def update_prompt_buckets(config: ml_collections.ConfigDict) -> tuple[int, ...] | None:
    """The widths the update trims its prompt columns to (`rl.update_prompt_buckets`); None when unset (the
    update then takes the sampler's width as it is)."""
    return tuple(int(b) for b in config.rl.get("update_prompt_buckets") or ()) or None


def eval_max_new_tokens(config: ml_collections.ConfigDict) -> int:
    """The held-out evaluation's token budget: `sampling.eval_max_new_tokens`, else the training budget."""
    budget = config.sampling.get("eval_max_new_tokens")
    return int(config.sampling.max_new_tokens if budget is None else budget)


def loss_config(config: ml_collections.ConfigDict) -> Any:
    """`rl.*` as the loss's `LossConfig`; the Dr.GRPO length constant is the generation budget."""
    from rlvr_jax.rl.losses import LossConfig

    return from_section(
        LossConfig, config.rl, max_len=config.sampling.max_new_tokens, tis_cap=config.rl.tis_cap or None
    )


def optim_config(config: ml_collections.ConfigDict, micro_batches: int | None = None) -> Any:
    """`optim.*` as `OptimConfig`; the schedule spans `train.steps`. micro_batches: the resolved count
    (`optim.micro_batches` = 0 means "auto", which the trainer resolves with the memory probe)."""
    from rlvr_jax.optim.optimizer import OptimConfig

    count = micro_batches if micro_batches is not None else max(config.optim.micro_batches, 1)
    return from_section(OptimConfig, config.optim, total_steps=config.train.steps, micro_batches=count)


def _get(config: ml_collections.ConfigDict, dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        value = value[part]
    return value


def flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """Every dotted key of `config`, sections included (`train`, `train.steps`, ...), in config order."""
    keys = []
    for name, value in config.items():
        key = f"{prefix}{name}"
        keys.append(key)
        if isinstance(value, ml_collections.ConfigDict):
            keys.extend(flat_keys(value, f"{key}."))
    return keys


def unknown_key(config: ml_collections.ConfigDict, key: str) -> str | None:
    """None when `key` (dotted) names a field or section of `config`, else why not: the closest valid key
    (difflib: a sibling of the wrong part, else a field anywhere named like the last part), or the keys
    where the path went wrong."""
    node: Any = config
    parts = key.split(".")
    for depth, part in enumerate(parts):
        where = ".".join(parts[:depth])
        if not isinstance(node, ml_collections.ConfigDict):
            return f"{where} is a value ({node!r}), not a section with keys"
        if part in node:
            node = node[part]
            continue
        match = difflib.get_close_matches(part, list(node), n=1, cutoff=0.6)  # a sibling: `train.stepz`
        if match:
            fixed = ".".join([*parts[:depth], match[0], *parts[depth + 1 :]])
            match = [fixed if unknown_key(config, fixed) is None else ".".join([*parts[:depth], match[0]])]
        else:  # the name is close but the section is missing or wrong: `--config.stepz`
            by_leaf = {k.rsplit(".", 1)[-1]: k for k in reversed(flat_keys(config))}
            leaf = difflib.get_close_matches(parts[-1], list(by_leaf), n=1, cutoff=0.75)
            match = [by_leaf[leaf[0]]] if leaf else []
        if match:
            return f"the config has no key {key} (did you mean {match[0]}?)"
        section = f"{where} has" if where else "the top level has"
        return (
            f"the config has no key {key} ({section}: {', '.join(node) or 'no keys'}); a key that the config "
            "file does not set cannot be added from the command line: set it in the file"
        )
    return None


def accepted_keywords(fn: Callable[..., Any], given: Iterable[str] = ()) -> set[str] | None:
    """The keyword arguments `fn` accepts besides those the caller passes itself (`given`); None when it
    takes **kwargs, which accepts any name."""
    parameters = inspect.signature(fn).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name for p in parameters if p.kind in named} - set(given)


def _at_least(config: ml_collections.ConfigDict, key: str, minimum: int) -> None:
    value = _get(config, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        zero = f" (0: {_ZERO_MEANS[key]})" if key in _ZERO_MEANS else ""
        raise ConfigError(f"{key} must be an integer >= {minimum}{zero}, got {value!r}")


def _check_finite(config: Any, prefix: str = "") -> None:
    """A NaN or infinity anywhere (learning rate, clip range, KL weight, reward weights in options) is an
    error naming the key: NaN passes every `<` / `>` range check, so each range check alone would miss it."""
    items = config.items() if isinstance(config, Mapping | ml_collections.ConfigDict) else enumerate(config)
    for name, value in items:
        key = f"{prefix}{name}" if isinstance(name, str) else f"{prefix.rstrip('.')}[{name}]"
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}={value} is not a finite number")
        if isinstance(value, Mapping | ml_collections.ConfigDict):
            _check_finite(value, f"{key}.")
        elif isinstance(value, list | tuple):
            _check_finite(value, key)


def config_file_for_task(task: str) -> str | None:
    """`configs/<file>.py` of this package written for `task` (it sets `c.data.task = "<task>"`)."""
    for path in sorted(configs_dir().glob("*.py")):
        if f'c.data.task = "{task}"' in path.read_text(encoding="utf-8"):
            return f"configs/{path.name}"
    return None


# Passed by the trainer and evaluation themselves, next to data.options.
_LOADER_ARGUMENTS = {"split": "data.train_split / data.eval_split", "path": "data.path", "chat": "data.chat"}
_REWARD_ARGUMENTS = ("completions", "samples")


def check_split(config: ml_collections.ConfigDict, split: str, key: str) -> None:
    """`split` (from the config `key` or a flag) is one the task's loader serves."""
    from rlvr_jax.data.base import get_task

    task = get_task(config.data.task)
    if split not in task.splits:
        hint = closest(str(split), list(task.splits))
        raise ConfigError(
            f"{key}={split!r}: task {task.name} has no such split{hint}; its splits: {', '.join(task.splits)}"
        )


def _check_task(config: ml_collections.ConfigDict) -> None:
    """The splits exist, every `data.options` key is one the task's loader takes, and the data keys of
    other tasks (`Task.config_keys`) are left alone."""
    from rlvr_jax.data.base import get_task

    task = get_task(config.data.task)
    check_split(config, config.data.train_split, "data.train_split")
    check_split(config, config.data.eval_split, "data.eval_split")
    _check_task_keys(config, task)
    own = {argument: f"data.{key}" for argument, key in task.config_keys.items()}
    accepted = accepted_keywords(task.load, {**_LOADER_ARGUMENTS, **own})
    for option in config.data.options:
        if option in _LOADER_ARGUMENTS or option in own:
            raise ConfigError(f"data.options.{option}: set {(_LOADER_ARGUMENTS | own)[option]} instead")
        if accepted is not None and option not in accepted:
            source = config_file_for_task(task.name)
            start = f"start from {source}, written for it" if source else "remove the option"
            takes = ", ".join(sorted(accepted)) or "no options"
            raise ConfigError(
                f"data.options.{option} does not apply to task {task.name}{closest(option, sorted(accepted))}"
                f": its loader takes {takes}. data.options comes from the config file (another task's "
                f"settings stay when only data.task changes): {start}"
            )


def _check_task_keys(config: ml_collections.ConfigDict, task: Any) -> None:
    """A data key another task reads (data.dataset, ...) set away from its default is a mistake here; the
    `hf` task needs data.dataset and column names, and not data.path."""
    from rlvr_jax.data.base import TASKS

    defaults, data = base_config().data, config.data
    for other in TASKS.in_order():
        for key in TASKS.get(other).config_keys.values():
            if key not in task.config_keys.values() and key in data and data[key] != defaults[key]:
                raise ConfigError(
                    f"data.{key}={data[key]!r} is read by data.task={other!r} only, not by "
                    f"data.task={task.name!r}; remove it, or set data.task={other!r}"
                )
    if task.name != "hf":
        return
    from rlvr_jax.data.hf_task import looks_local

    if not data.dataset:
        raise ConfigError(
            "data.task='hf' needs data.dataset: a hub id (e.g. openai/gsm8k), a local file or folder (jsonl, "
            "json, parquet, csv) or a glob of files"
        )
    if data.path is not None:
        raise ConfigError(
            f"data.path={data.path!r} is not read by data.task='hf': put the file, folder or hub id in "
            "data.dataset"
        )
    for key in ("split", "prompt_column", "answer_column"):
        value = data[key]
        optional = key == "answer_column" and value is None
        if not optional and (not isinstance(value, str) or not value.strip()):
            raise ConfigError(f"data.{key} must be a non-empty string, got {value!r}")
    glob = any(c in data.dataset for c in "*?[")
    if looks_local(data.dataset) and not glob and not Path(data.dataset).expanduser().exists():
        raise ConfigError(
            f"data.dataset={data.dataset!r} does not exist; pass a hub id, a local file or folder, or a glob"
        )
    if looks_local(data.dataset):  # local data is read here to check the columns (a hub data set: on load)
        from rlvr_jax.data.hf_task import check_columns, read_source
        from rlvr_jax.data.loaders import DataError

        try:
            records, where = read_source(data.dataset, data.split, data.options.get("config_name"))
            check_columns(records, where, data.prompt_column, data.answer_column)
        except (DataError, FileNotFoundError) as e:
            raise ConfigError(str(e)) from None


def _check_reward(config: ml_collections.ConfigDict) -> None:
    """The reward is registered and takes `reward.options` (where its signature says which it takes); a
    weighted sum names registered components with options only for those."""
    from rlvr_jax.data.base import get_task
    from rlvr_jax.rewards.base import REWARDS

    name = config.reward.name or get_task(config.data.task).reward
    if not name:
        raise ConfigError(
            f"data.task={config.data.task!r} has no reward of its own: set reward.name (registered: "
            f"{', '.join(REWARDS.names())}) or pass reward functions (rlvr_jax.rewards.set_reward, "
            "rlvr_jax.GRPOTrainer(reward_fns=...))"
        )
    if name not in REWARDS:
        key = "reward.name" if config.reward.name else f"data.task={config.data.task}'s reward"
        raise ConfigError(f"{key}: {REWARDS.unknown(name)}")
    accepted = accepted_keywords(REWARDS.get(name), _REWARD_ARGUMENTS)
    for option in config.reward.options:
        if accepted is not None and option not in accepted:
            takes = ", ".join(sorted(accepted)) or "no options"
            raise ConfigError(
                f"reward.options.{option} is not an option of reward {name}"
                f"{closest(option, sorted(accepted))}; it takes {takes}"
            )
    eval_name = config.reward.get("eval_name")
    if eval_name and eval_name not in REWARDS:
        raise ConfigError(f"reward.eval_name: {REWARDS.unknown(eval_name)}")
    if name != "weighted_sum":
        return
    components = config.reward.options.get("components") or {}
    if not components:
        raise ConfigError(
            'reward weighted_sum needs reward.options.components = {"reward_name": weight, ...}'
        )
    for component, weight in components.items():
        if component not in REWARDS:
            raise ConfigError(f"reward.options.components: {REWARDS.unknown(component)}")
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            raise ConfigError(
                f"reward.options.components.{component}: the weight must be a number, got {weight!r}"
            )
    for component in config.reward.options.get("component_options") or {}:
        if component not in components:
            raise ConfigError(
                f"reward.options.component_options.{component}: {component!r} is not one of the components "
                f"({', '.join(components)})"
            )


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
    """Checks everything that can be checked before loading a model; raises ConfigError.

    The trainer calls it first thing, and scripts/evaluate.py before it loads anything: names against the
    registries, numbers against their ranges (NaN / inf anywhere), the task's splits and options, the
    reward's options, the library dataclasses' own checks, and the paths."""
    _check_finite(config)
    for key, choices in _CHOICES.items():
        if _get(config, key) not in choices:
            raise ConfigError(f"{key}={_get(config, key)!r} is not one of {', '.join(choices)}")
    for key, registry in _registries().items():
        if _get(config, key) not in registry:
            raise ConfigError(f"{key}: {registry.unknown(_get(config, key))}")
    for key, minimum in _INTEGERS.items():
        _at_least(config, key, minimum)
    for key in ("mesh.data", "mesh.fsdp", "mesh.tensor"):
        value = _get(config, key)
        if value != -1 and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{key} must be an integer >= 1 or -1 (the devices left), got {value!r}")
    _check_ranges(config)
    _check_lora(config)
    _check_batch(config, num_devices)
    _check_task(config)
    _check_reward(config)
    for section, build in (("rl", loss_config), ("optim", optim_config)):  # the library's own checks
        try:
            build(config)
        except ValueError as e:
            raise ConfigError(f"{section}: {e}") from None
    _check_paths(config)


def _check_ranges(config: ml_collections.ConfigDict) -> None:
    """Sampling, learning-rate and logging values within their ranges."""
    if config.rl.group_size < 2:
        raise ConfigError("rl.group_size must be >= 2: group-relative advantages need several samples")
    if config.rl.async_rollouts and config.rl.dynamic_sampling:
        raise ConfigError(
            "rl.async_rollouts does not combine with rl.dynamic_sampling: refill rounds would run the "
            "sampler from the rollout thread while the update runs; turn one of them off"
        )
    if config.sampling.temperature <= 0:
        raise ConfigError(
            "sampling.temperature must be > 0 for training rollouts (greedy groups are identical)"
        )
    if config.sampling.eval_temperature < 0:
        raise ConfigError(
            f"sampling.eval_temperature must be >= 0 (0: greedy), got {config.sampling.eval_temperature}"
        )
    budget = config.sampling.eval_max_new_tokens
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
        raise ConfigError(
            f"sampling.eval_max_new_tokens must be a whole number of tokens >= 1, or None for "
            f"sampling.max_new_tokens; got {budget!r}"
        )
    for key, empty in (("sampling.prompt_buckets", "the default powers of two"),
                       ("rl.update_prompt_buckets", "the sampler's widths")):  # fmt: skip
        section, name = key.split(".")
        widths = config[section].get(name) or ()
        if (
            isinstance(widths, str | bytes)
            or not all(isinstance(b, int) and not isinstance(b, bool) for b in widths)
            or any(b < 1 for b in widths)
            or list(widths) != sorted(set(widths))
        ):
            raise ConfigError(
                f"{key} must be strictly increasing whole numbers of tokens >= 1 (e.g. (96, 112, 128)), "
                f"or () for {empty}; got {widths!r}"
            )
    if not 0 < config.sampling.top_p <= 1:
        raise ConfigError(f"sampling.top_p must be in (0, 1], got {config.sampling.top_p}")
    if not config.reward.timeout_s > 0:
        raise ConfigError(f"reward.timeout_s must be > 0 seconds, got {config.reward.timeout_s}")
    if config.optim.learning_rate <= 0:
        raise ConfigError(f"optim.learning_rate must be > 0, got {config.optim.learning_rate}")
    if config.logging.prometheus_port > 65535:
        raise ConfigError(
            f"logging.prometheus_port must be a port (1-65535) or 0, got {config.logging.prometheus_port}"
        )
    tags = config.logging.wandb_tags
    if not all(isinstance(tag, str) and tag for tag in tags):
        raise ConfigError(f"logging.wandb_tags must be non-empty strings, got {tags!r}")
    if config.logging.price_per_hour is not None and config.logging.price_per_hour < 0:
        raise ConfigError(f"logging.price_per_hour must be >= 0, got {config.logging.price_per_hour}")


def lora_options(config: ml_collections.ConfigDict) -> dict[str, Any] | None:
    """`model.lora` as `lora.with_adapters`' keyword arguments; None when LoRA is off."""
    section = config.model.get("lora")
    if section is None or not section.rank:
        return None
    return {"rank": int(section.rank), "alpha": float(section.alpha), "targets": tuple(section.targets)}


def _check_lora(config: ml_collections.ConfigDict) -> None:
    """`model.lora.*`: rank >= 0, alpha > 0, targets among the projection names."""
    from rlvr_jax.models.config import check_lora

    section = config.model.lora
    try:
        check_lora(section.rank, section.alpha, section.targets)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model.lora: {e}") from None


def _check_batch(config: ml_collections.ConfigDict, num_devices: int | None) -> None:
    """The step's rows split into micro-batches and over the mesh's batch shards."""
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


def _check_paths(config: ml_collections.ConfigDict) -> None:
    """The data and model paths that look local exist (a missing model path with model.hub_id set is
    fine: `with_hub_fallback` swaps in the hub id where the model loads)."""
    if config.data.path is not None and not Path(config.data.path).expanduser().exists():
        raise ConfigError(
            f"data.path={config.data.path!r} does not exist; pass the task's data file or folder, or leave "
            "data.path unset to read the Hugging Face hub"
        )
    model = str(config.model.path)
    if _missing_locally(model) and not config.model.get("hub_id"):
        raise ConfigError(
            f"model.path={model!r} does not exist; pass a hub id, an HF directory or a .gguf file (or set "
            "model.hub_id to the same model's hub id, used when the path is missing)"
        )


def _missing_locally(source: str) -> bool:
    """A model source that reads as a local path (the rule of `rlvr_jax.weights.loader.source_kind`: it
    starts with / . ~, ends in .gguf or has more than one slash) and does not exist here."""
    looks_local = source.startswith(("/", ".", "~")) or source.endswith(".gguf") or source.count("/") > 1
    return looks_local and not Path(source).expanduser().exists()


def with_hub_fallback(
    config: ml_collections.ConfigDict, say: Callable[[str], None] | None = None
) -> ml_collections.ConfigDict:
    """The config whose model the run loads: `config` itself, or, when model.path is a local path missing
    on this machine and model.hub_id is set, a copy with model.path = model.hub_id, said in one line
    (`say`, default stderr). The trainer and evaluation call it where the model is about to load, so the
    run's saved config.json names the model that was really used."""
    path, hub_id = str(config.model.path), config.model.get("hub_id")
    if not hub_id or not _missing_locally(path):
        return config
    (say or _to_stderr)(f"model.path {path} not found; using hub id {hub_id}")
    resolved = copy.deepcopy(config)
    resolved.model.path = hub_id
    return resolved


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
