"""The policy-gradient train step: jitted, sharded by logical-axis rules, with micro-batches and NaN guards.

Design choices, and why:
- Pure functions over pytrees. `TrainState` holds the parameter state exactly as `nnx.split(model)` gives it
  (so the same tree goes back to the `Sampler` after a step), the optax state and two counters. The step is
  `train_step(state, batch) -> (state, metrics)`, jitted by `make_train_step` with the state donated: the
  parameters and the optimizer moments are updated in place instead of being held twice.
- Sharding is declared, not coded: parameter shardings come from their logical axes (`rlvr_jax.sharding`
  rules), optimizer moments take the shardings of the parameters they mirror, batches are split by rows over
  ('data', 'fsdp'). XLA inserts the collectives, so one device, a (data, fsdp, tensor) mesh and several
  processes run the same code.
- Per-token arrays are aligned with the completion, [rows, N], exactly as `GenerateOutput` holds them:
  column j is completion token j, `tokens[:, P + j]`, predicted from position P + j - 1 (P = L - N prompt
  columns). Log-probs are never computed for prompt positions (long prompts would pay the vocabulary-wide
  softmax for nothing), sampler log-probs need no shifting, and Dr.GRPO's constant normaliser (`max_len`
  defaults to the per-token arrays' width) is the generation budget N, not the prompt-inclusive length.
  `batch_from_rollout` is the one place that builds this layout.
- The vocabulary-wide log-softmax is computed in sequence chunks under `lax.map`, each chunk rematerialised
  (`jax.checkpoint`): the [rows, N, vocab] float32 logits never exist at once, neither in the forward nor
  as residuals saved for the backward pass (a scan saves each iteration's residuals, so without the
  checkpoint the chunks would all be kept and the full logits would exist again).
- Gradient accumulation sums micro-batch gradients under `lax.scan`; every micro-batch loss is divided by
  the whole batch's normaliser (its token count, or its count of non-empty rows), so the sum is the
  full-batch loss and gradient, not a mean of micro-batch means.
- A non-finite loss or gradient skips the update (parameters and optimizer state unchanged, so the schedule
  does not advance either), counts it in `state.skipped` and reports `skipped` and `grad_norm`. `state.step`
  counts calls, skipped or not, so it stays in step with the data and the rollout counter; the number of
  applied updates is `step - skipped`.
- Master weights: `init_train_state` keeps the parameters in float32 by default whatever the checkpoint's
  storage dtype, and the model casts each weight to its compute dtype (`ModelConfig.dtype`, e.g. bf16) at
  use. Adam updates at RL learning rates (1e-6 relative to weights of 1e-2) are below bf16's resolution and
  would vanish in bf16 storage; `export_params` casts back for the sampler.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rlvr_jax import sharding
from rlvr_jax.generate.sampler import GenerateOutput
from rlvr_jax.models.config import resolve_dtype
from rlvr_jax.models.decoder import apply, logits_from_hidden
from rlvr_jax.rl.losses import LossConfig, policy_loss, token_entropy

logger = logging.getLogger(__name__)

Array = jax.Array
Batch = dict[str, Any]
SCHEDULES = ("cosine", "constant")
REQUIRED_KEYS = ("tokens", "attn_mask", "completion_mask", "advantages")
OPTIONAL_KEYS = ("old_logprobs", "sampler_logprobs", "ref_logprobs")

# ------------------------------------------------------------------------------------------- optimizer


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW with global-norm clipping and a warmup + cosine (or constant) learning-rate schedule.

    learning_rate: the peak rate, reached at the end of warmup.
    warmup_steps: linear warmup length; update k (0-based) uses learning_rate * (k + 1) / warmup_steps, so
      the first update already moves (a rate of 0 would waste a rollout batch).
    total_steps: the update at which the cosine reaches `end_lr_ratio * learning_rate` (and stays there).
    schedule: "cosine" or "constant" (warmup, then flat).
    weight_decay: decoupled (AdamW) decay, applied to weight matrices and embeddings only; norm scales and
      biases are not decayed (decaying a norm scale towards 0 shrinks the activations it feeds).
    max_grad_norm: clip the global gradient norm to this value; None disables clipping.
    micro_batches: gradient-accumulation steps per update (rows must divide by it); passed to
      `make_train_step`.
    """

    learning_rate: float = 1e-6
    warmup_steps: int = 0
    total_steps: int = 1000
    schedule: str = "constant"
    end_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    max_grad_norm: float | None = 1.0
    micro_batches: int = 1

    def __post_init__(self) -> None:
        problems = []
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            problems.append(f"learning_rate must be a positive number, got {self.learning_rate}")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.warmup_steps < 0:
            problems.append(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.total_steps < 1:
            problems.append(f"total_steps must be >= 1, got {self.total_steps}")
        if self.schedule == "cosine" and self.total_steps <= self.warmup_steps:
            problems.append(
                f"a cosine schedule needs total_steps > warmup_steps, got {self.total_steps} <= "
                f"{self.warmup_steps}"
            )
        if not 0.0 <= self.end_lr_ratio <= 1.0:
            problems.append(f"end_lr_ratio must be in [0, 1], got {self.end_lr_ratio}")
        if not self.weight_decay >= 0.0:
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not (0.0 <= self.b1 < 1.0 and 0.0 <= self.b2 < 1.0):
            problems.append(f"b1 and b2 must be in [0, 1), got {self.b1}, {self.b2}")
        if not self.eps > 0.0:
            problems.append(f"eps must be > 0, got {self.eps}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0.0:
            problems.append(f"max_grad_norm must be > 0 (or None for no clipping), got {self.max_grad_norm}")
        if self.micro_batches < 1:
            problems.append(f"micro_batches must be >= 1, got {self.micro_batches}")
        if problems:
            raise ValueError("invalid OptimConfig: " + "; ".join(problems))


def make_schedule(cfg: OptimConfig) -> optax.Schedule:
    """The learning rate as a function of the number of updates applied so far (optax's `count`)."""
    peak, warmup = cfg.learning_rate, cfg.warmup_steps
    end = cfg.end_lr_ratio * peak
    decay = max(cfg.total_steps - warmup, 1)

    def schedule(count: Array | int) -> Array:
        count = jnp.asarray(count, jnp.float32)
        warm = peak * jnp.minimum((count + 1.0) / max(warmup, 1), 1.0)
        if cfg.schedule == "constant":
            return warm
        progress = jnp.clip((count - warmup) / decay, 0.0, 1.0)
        cosine = end + (peak - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        return jnp.where(count < warmup, warm, cosine)

    return schedule


def _leaf_name(path: tuple[Any, ...]) -> str:
    """The parameter's own name (last dict key) from a path into an nnx State ('value' attr excluded)."""
    names = [str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey)]
    return names[-1] if names else ""


def decay_mask(params: Any) -> Any:
    """True for parameters that take weight decay: everything but norm scales and biases."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: not _leaf_name(path).endswith(("norm", "bias")), params
    )


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    """clip_by_global_norm -> AdamW under `make_schedule(cfg)`."""
    parts = []
    if cfg.max_grad_norm is not None:
        parts.append(optax.clip_by_global_norm(cfg.max_grad_norm))
    parts.append(
        optax.adamw(
            make_schedule(cfg),
            b1=cfg.b1,
            b2=cfg.b2,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            mask=decay_mask,
        )
    )
    return optax.chain(*parts)


# -------------------------------------------------------------------------------------------- the state


class TrainState(NamedTuple):
    """What one update reads and writes (a pytree; donated to the jitted step).

    params: the nnx parameter state (`nnx.split(model)[1]`), in the master dtype.
    opt_state: the optax state; its parameter-shaped parts are sharded like the parameters.
    step: int32, train-step calls so far (skipped ones included).
    skipped: int32, calls whose update was skipped for a non-finite loss or gradient.
    """

    params: Any
    opt_state: Any
    step: Array
    skipped: Array


def _cast_floats(tree: Any, dtype: Any) -> Any:
    def cast(x: Any) -> Any:
        return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

    return jax.tree.map(cast, tree)


def _follow_params(tree: Any, params: Any, param_shards: Any, replicated: NamedSharding) -> Any:
    """Shardings for an optimizer-state tree: each parameter-shaped subtree (Adam's mu, nu) gets the
    parameters' shardings; any other leaf (step counts) is replicated."""
    params_def = jax.tree.structure(params)

    def is_params(x: Any) -> bool:
        return jax.tree.structure(x) == params_def

    leaves, treedef = jax.tree_util.tree_flatten(tree, is_leaf=is_params)
    out = []
    for leaf in leaves:
        if is_params(leaf):
            out.append(param_shards)
            continue
        if np.ndim(leaf) > 0:
            logger.warning("optimizer-state leaf of shape %s is not parameter-shaped: replicated", leaf.shape)
        out.append(replicated)
    return jax.tree_util.tree_unflatten(treedef, out)


def train_state_shardings(
    params: Any,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    rules: sharding.Rules = sharding.DEFAULT_RULES,
) -> TrainState:
    """A TrainState of NamedShardings for `params` (a State or its `jax.eval_shape`) on `mesh`."""
    param_shards = sharding.param_shardings(params, mesh, rules)
    replicated = NamedSharding(mesh, PartitionSpec())
    abstract_opt = jax.eval_shape(optimizer.init, params)
    opt_shards = _follow_params(abstract_opt, params, param_shards, replicated)
    return TrainState(param_shards, opt_shards, replicated, replicated)


def init_train_state(
    model: nnx.Module | Any,
    optimizer: optax.GradientTransformation,
    mesh: Mesh | None = None,
    rules: sharding.Rules = sharding.DEFAULT_RULES,
    *,
    master_dtype: str | Any | None = "float32",
) -> TrainState:
    """The initial state, placed on `mesh` by the logical-axis rules (or on the default device).

    model: a Decoder or its parameter state. master_dtype: dtype the trainer keeps floating parameters in
    (None keeps the storage dtype); float64 parameters are never narrowed. On several processes every
    process passes the same values (same seed or checkpoint); each copies in only its own shards.
    """
    params = nnx.state(model) if isinstance(model, nnx.Module) else model
    if master_dtype is not None:
        target = resolve_dtype(master_dtype)

        def widen(x: Any) -> Any:
            if not jnp.issubdtype(x.dtype, jnp.floating):
                return x
            return x.astype(jnp.promote_types(x.dtype, target))

        params = jax.tree.map(widen, params)
    counters = (np.zeros((), np.int32), np.zeros((), np.int32))
    # The state owns fresh buffers: the step donates them, and the model passed in (often also the
    # sampler's or the frozen reference's parameters) must stay valid. A placement or a same-dtype cast can
    # return the very same arrays, hence the explicit copy.
    copy = lambda tree: jax.tree.map(jnp.copy, tree)
    if mesh is None:
        params = jax.jit(copy)(params)
        return TrainState(params, jax.jit(optimizer.init)(params), *map(jnp.asarray, counters))
    shards = train_state_shardings(params, optimizer, mesh, rules)
    params = jax.jit(copy, out_shardings=shards.params)(sharding.put_on_mesh(params, shards.params))
    opt_state = jax.jit(optimizer.init, out_shardings=shards.opt_state)(params)
    step, skipped = (sharding.put_on_mesh(c, shards.step) for c in counters)
    return TrainState(params, opt_state, step, skipped)


def export_params(params: Any, dtype: str | Any) -> Any:
    """Parameters cast to the sampler's storage dtype (e.g. `cfg.param_dtype`); shardings are kept.

    Where the dtype already matches, these are the state's own buffers, which the next train step donates:
    hand the sampler the new parameters after every step (as `Sampler.update_params` is meant to be used).
    """
    return _cast_floats(params, resolve_dtype(dtype))


# ------------------------------------------------------------------------------------------------ batch


def batch_from_rollout(
    prompt_ids: Array | np.ndarray,
    prompt_mask: Array | np.ndarray,
    out: GenerateOutput,
    advantages: Array | np.ndarray,
) -> Batch:
    """The trainer's batch from left-padded prompts [B, P] and the sampler's output for B * G rows.

    Returns tokens / attn_mask [rows, P + N] (prompt then completion; each prompt repeated for its G group
    members, rows i * G + g as the sampler orders them), completion_mask and sampler_logprobs [rows, N]
    (column j = completion token j, predicted from the position before it; see the module docstring),
    and advantages [rows] float32. The mask is the sampler's: generated tokens up to and including the stop
    token, False on padding and on rows that generated nothing.
    """
    B = prompt_ids.shape[0]
    rows = out.tokens.shape[0]
    if prompt_mask.shape != prompt_ids.shape:
        raise ValueError(f"prompt_mask {prompt_mask.shape} does not match prompt_ids {prompt_ids.shape}")
    if B == 0 or rows % B:
        raise ValueError(f"{rows} generated rows are not a whole number of groups of {B} prompts")
    if np.shape(advantages) != (rows,):
        raise ValueError(f"advantages must be [rows] = [{rows}], got shape {np.shape(advantages)}")
    G = rows // B
    ids = jnp.repeat(jnp.asarray(prompt_ids, jnp.int32), G, axis=0)
    pmask = jnp.repeat(jnp.asarray(prompt_mask, bool), G, axis=0)
    completion_mask = jnp.asarray(out.mask, bool)
    return {
        "tokens": jnp.concatenate([ids, jnp.asarray(out.tokens, jnp.int32)], axis=1),
        "attn_mask": jnp.concatenate([pmask, completion_mask], axis=1),
        "completion_mask": completion_mask,
        "advantages": jnp.asarray(advantages, jnp.float32),
        "sampler_logprobs": jnp.asarray(out.logprobs, jnp.float32),
    }


def _check_batch(batch: Mapping[str, Any]) -> tuple[int, int, int]:
    """(rows, L, N), or a clear error about the layout."""
    missing = [k for k in REQUIRED_KEYS if k not in batch]
    if missing:
        raise ValueError(f"batch is missing {missing}; build it with batch_from_rollout")
    unknown = sorted(set(batch) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        raise ValueError(f"batch has unknown keys {unknown}; known: {REQUIRED_KEYS + OPTIONAL_KEYS}")
    rows, L = batch["tokens"].shape
    N = batch["completion_mask"].shape[1]
    if batch["attn_mask"].shape != (rows, L):
        raise ValueError(f"attn_mask {batch['attn_mask'].shape} does not match tokens {(rows, L)}")
    if not 0 < N < L:
        raise ValueError(f"completion_mask has {N} columns; need 0 < N < L = {L} (at least one prompt token)")
    for key in ("completion_mask", *OPTIONAL_KEYS):
        if key in batch and batch[key].shape != (rows, N):
            raise ValueError(f"{key} must be [rows, N] = {(rows, N)}, got {batch[key].shape}")
    if batch["advantages"].shape != (rows,):
        raise ValueError(f"advantages must be [rows] = [{rows}], got {batch['advantages'].shape}")
    return rows, L, N


# ------------------------------------------------------------------------------------------- log-probs


def token_logprobs(
    graphdef: nnx.GraphDef,
    params: Any,
    tokens: Array,
    attn_mask: Array,
    temperature: float | Array = 1.0,
    *,
    completion_len: int | None = None,
    chunk: int = 128,
    with_entropy: bool = False,
    remat: str | None = None,
) -> tuple[Array, Array | None]:
    """Log-probs of the last `completion_len` tokens under softmax(logits / T), and optionally the entropy.

    tokens / attn_mask: [rows, L], left padded. Returns lp [rows, n] with lp[:, j] = log p(tokens[:, L-n+j]
    | tokens before it) (n = completion_len, default L - 1: every token that has a predecessor), and the
    entropy of the same next-token distributions [rows, n] (None unless with_entropy).

    temperature: the sampler's; T <= 0 (greedy) means T = 1, as the sampler reports greedy log-probs.
    chunk: sequence positions per vocabulary-wide block; memory is about rows * chunk * vocab * 4 bytes
      (times a few temporaries) instead of rows * n * vocab * 4.
    remat: override the model's `remat` policy ("none", "full", "dots") for this forward.
    """
    model = nnx.merge(graphdef, params)
    cfg = model.cfg if remat is None else model.cfg.replace(remat=remat)
    arrays = model.arrays()
    rows, L = tokens.shape
    n = L - 1 if completion_len is None else completion_len
    if not 0 < n < L:
        raise ValueError(f"completion_len must be in 1..{L - 1} for {L} tokens, got {n}")
    hidden, _ = apply(cfg, arrays, tokens, mask=attn_mask, return_hidden=True)
    hidden = hidden[:, L - n - 1 : L - 1]  # position t predicts token t + 1
    targets = tokens[:, L - n :]

    c = min(chunk, n)
    k = -(-n // c)
    pad = k * c - n
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
    hs = hidden.reshape(rows, k, c, -1).swapaxes(0, 1)  # [k, rows, c, D]
    ys = targets.reshape(rows, k, c).swapaxes(0, 1)
    if isinstance(temperature, int | float):
        t = jnp.float32(temperature if temperature > 0 else 1.0)
    else:
        t = jnp.where(temperature > 0, temperature, 1.0).astype(jnp.float32)

    @jax.checkpoint  # keep only the chunk's hidden states for the backward pass, recompute its logits
    def one(xs: tuple[Array, Array]) -> tuple[Array, Array]:
        h, y = xs
        logits = logits_from_hidden(cfg, arrays, h).astype(jnp.float32) / t  # [rows, c, V]
        lse = jax.nn.logsumexp(logits, axis=-1)
        # A select and a sum instead of a gather: partitions cleanly when the vocabulary is sharded.
        vocab = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
        picked = jnp.sum(jnp.where(vocab == y[..., None], logits, 0.0), axis=-1)
        ent = token_entropy(logits) if with_entropy else jnp.zeros_like(lse)
        return picked - lse, ent

    lp, ent = jax.lax.map(one, (hs, ys))
    lp = lp.swapaxes(0, 1).reshape(rows, k * c)[:, :n]
    ent = ent.swapaxes(0, 1).reshape(rows, k * c)[:, :n]
    return lp, (ent if with_entropy else None)


def completion_logprobs(
    params: Any,
    batch: Mapping[str, Any],
    *,
    graphdef: nnx.GraphDef,
    temperature: float,
    chunk: int = 128,
) -> Array:
    """[rows, N] log-probs of a batch's completion tokens (0 off the completion mask)."""
    _, _, N = _check_batch(batch)
    lp, _ = token_logprobs(
        graphdef, params, batch["tokens"], batch["attn_mask"], temperature, completion_len=N, chunk=chunk
    )
    return jnp.where(batch["completion_mask"], lp, 0.0)


def _jit_per_structure(build: Callable[[Any], Callable[..., Any]]) -> Callable[..., Any]:
    """`fn(tree, *rest)` that jits `build(tree)` once per tree structure of its first argument.

    The sharded functions need the parameters' shardings, which come from their logical-axis metadata;
    taking them from the first call's arguments spares callers from passing the parameters twice.
    """
    compiled: dict[Any, Callable[..., Any]] = {}

    def jitted(tree: Any) -> Callable[..., Any]:
        key = jax.tree.structure(tree)
        if key not in compiled:
            compiled[key] = build(tree)
        return compiled[key]

    def call(tree: Any, *rest: Any) -> Any:
        return jitted(tree)(tree, *rest)

    call.lower = lambda tree, *rest: jitted(tree).lower(tree, *rest)  # as jax.jit's, for cost analysis
    return call


def make_logprob_fn(
    graphdef: nnx.GraphDef,
    *,
    temperature: float,
    chunk: int = 128,
    mesh: Mesh | None = None,
    rules: sharding.Rules = sharding.DEFAULT_RULES,
) -> Callable[[Any, Batch], Array]:
    """Jitted `fn(params, batch) -> [rows, N]`: old log-probs (once per rollout batch, before the first of
    several updates) and reference log-probs (frozen reference parameters; only needed when beta > 0).

    With a mesh, the parameters keep their logical-axis shardings and the result is sharded by rows like
    the batch.
    """
    fn = functools.partial(completion_logprobs, graphdef=graphdef, temperature=temperature, chunk=chunk)
    if mesh is None:
        return jax.jit(fn)
    rows = sharding.batch_sharding(mesh, rules)

    def build(params: Any) -> Callable[..., Any]:
        return jax.jit(
            fn, in_shardings=(sharding.param_shardings(params, mesh, rules), rows), out_shardings=rows
        )

    return _jit_per_structure(build)


# ------------------------------------------------------------------------------------------ train step


def _split_rows(x: Array, m: int, constraint: NamedSharding | None) -> Array:
    """[rows, ...] -> [m, rows / m, ...], micro-batch k = rows k, k + m, k + 2m, ...

    Strided, not contiguous: rows are split over devices in contiguous blocks, so a contiguous split would
    put a whole micro-batch on a few devices; strided, every device holds rows of every micro-batch.
    """
    y = x.reshape(x.shape[0] // m, m, *x.shape[1:]).swapaxes(0, 1)
    return y if constraint is None else jax.lax.with_sharding_constraint(y, constraint)


def loss_normalizer(completion_mask: Array, config: LossConfig) -> Array:
    """The whole batch's denominator of `aggregate`: its token count (token-mean) or non-empty rows."""
    m = completion_mask.astype(jnp.float32)
    if config.aggregation == "token-mean":
        return jnp.sum(m)
    return jnp.sum(jnp.any(m > 0, axis=-1)).astype(jnp.float32)


def _combine(metrics: dict[str, Array], tokens: Array) -> dict[str, Array]:
    """Per-micro-batch metrics [M] -> one value each: losses add (they share the global normaliser),
    extremes take min / max, means are weighted by each micro-batch's token count."""
    total = jnp.sum(tokens)
    has = tokens > 0
    out = {}
    for name, v in metrics.items():
        if name in ("loss", "pg_loss"):
            out[name] = jnp.sum(v)
        elif name == "ratio_min":
            out[name] = jnp.where(total > 0, jnp.min(jnp.where(has, v, jnp.inf)), 1.0)
        elif name == "ratio_max":
            out[name] = jnp.where(total > 0, jnp.max(jnp.where(has, v, -jnp.inf)), 1.0)
        else:
            out[name] = jnp.sum(jnp.where(has, v, 0.0) * tokens) / jnp.maximum(total, 1.0)
    return out


def train_step(
    state: TrainState,
    batch: Batch,
    *,
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    loss_config: LossConfig,
    temperature: float,
    micro_batches: int = 1,
    chunk: int = 128,
    remat: str | None = None,
    log_entropy: bool = False,
    schedule: optax.Schedule | None = None,
    mesh: Mesh | None = None,
    rules: sharding.Rules = sharding.DEFAULT_RULES,
) -> tuple[TrainState, dict[str, Array]]:
    """One optimizer update on `batch` (see `batch_from_rollout` for its layout). Pure; jit it.

    The rows are split into `micro_batches` strided micro-batches whose gradients are summed under
    `lax.scan`; the clipped AdamW update is applied unless the loss or a gradient is non-finite.
    log_entropy: compute the exact per-token entropy (one more vocabulary pass per chunk) for the metric;
      it is always computed when `loss_config.entropy_coef` != 0. schedule: the optimizer's learning-rate
      schedule, for the `learning_rate` metric. mesh / rules: keep micro-batches split over the batch axes
      and the gradient sum sharded like the parameters.

    Metrics: policy_loss's (losses summed over micro-batches, means token-weighted), grad_norm (before
    clipping), skipped (1.0 when the update was skipped), tokens, learning_rate (with a schedule).
    """
    rows, _, N = _check_batch(batch)
    M = micro_batches
    if M < 1 or rows % M:
        raise ValueError(f"{rows} rows do not split into {M} micro-batches")
    with_entropy = log_entropy or loss_config.entropy_coef != 0.0
    normalizer = loss_normalizer(batch["completion_mask"], loss_config)

    row_split = None if mesh is None else NamedSharding(mesh, PartitionSpec(None, sharding.batch_axes(rules)))
    micro = {k: _split_rows(jnp.asarray(v), M, row_split) for k, v in batch.items()}

    def loss_fn(params: Any, mb: Batch) -> tuple[Array, dict[str, Array]]:
        lp, ent = token_logprobs(
            graphdef,
            params,
            mb["tokens"],
            mb["attn_mask"],
            temperature,
            completion_len=N,
            chunk=chunk,
            with_entropy=with_entropy,
            remat=remat,
        )
        return policy_loss(
            lp,
            mb.get("old_logprobs"),
            mb["advantages"],
            mb["completion_mask"],
            loss_config,
            ref_logprobs=mb.get("ref_logprobs"),
            sampler_logprobs=mb.get("sampler_logprobs"),
            entropy=ent,
            normalizer=normalizer,
        )

    grad_fn = jax.grad(loss_fn, has_aux=True)
    param_shards = None if mesh is None else sharding.param_shardings(state.params, mesh, rules)

    def accumulate(total: Any, mb: Batch) -> tuple[Any, tuple[dict[str, Array], Array]]:
        grads, metrics = grad_fn(state.params, mb)
        total = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), total, grads)
        if param_shards is not None:
            total = jax.lax.with_sharding_constraint(total, param_shards)
        return total, (metrics, jnp.sum(mb["completion_mask"].astype(jnp.float32)))

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
    grads, (per_micro, tokens) = jax.lax.scan(accumulate, zeros, micro)
    metrics = _combine(per_micro, tokens)

    grad_norm = optax.tree.norm(grads)
    ok = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
    new_state = TrainState(
        params=keep(params, state.params),
        opt_state=keep(opt_state, state.opt_state),
        step=state.step + 1,
        skipped=state.skipped + (~ok).astype(jnp.int32),
    )
    metrics |= {"grad_norm": grad_norm, "skipped": (~ok).astype(jnp.float32), "tokens": jnp.sum(tokens)}
    if schedule is not None:
        metrics["learning_rate"] = schedule(state.step - state.skipped)  # the rate this update used
    return new_state, metrics


def make_train_step(
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    loss_config: LossConfig,
    *,
    temperature: float = 1.0,
    micro_batches: int = 1,
    chunk: int = 128,
    remat: str | None = None,
    log_entropy: bool = False,
    schedule: optax.Schedule | None = None,
    mesh: Mesh | None = None,
    rules: sharding.Rules = sharding.DEFAULT_RULES,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, Array]]]:
    """`train_step` jitted with the state donated (its buffers are reused for the new state: do not use the
    state passed in afterwards).

    With a mesh, the state keeps its logical-axis shardings in and out (`train_state_shardings`, derived at
    the first call), batches are split by rows over the batch axes, metrics come back replicated. Each
    distinct batch shape (and set of optional batch keys) compiles once.
    """
    fn = functools.partial(
        train_step,
        graphdef=graphdef,
        optimizer=optimizer,
        loss_config=loss_config,
        temperature=temperature,
        micro_batches=micro_batches,
        chunk=chunk,
        remat=remat,
        log_entropy=log_entropy,
        schedule=schedule,
        mesh=mesh,
        rules=rules,
    )
    if mesh is None:
        return jax.jit(fn, donate_argnums=0)
    rows = sharding.batch_sharding(mesh, rules)
    replicated = NamedSharding(mesh, PartitionSpec())

    def build(state: TrainState) -> Callable[..., Any]:
        shards = train_state_shardings(state.params, optimizer, mesh, rules)
        return jax.jit(fn, in_shardings=(shards, rows), out_shardings=(shards, replicated), donate_argnums=0)

    return _jit_per_structure(build)


# -------------------------------------------------------------------------------- updates on one rollout


@functools.cache
def _row_picker(k: int, n: int, target: NamedSharding | None) -> Callable[[Batch], Batch]:
    """Jitted `batch -> rows k, k + n, ...` (cached: one compile per minibatch index and batch shape)."""
    return jax.jit(lambda b: jax.tree.map(lambda x: x[k::n], b), out_shardings=target)


def update_on_rollout(
    step_fn: Callable[[TrainState, Batch], tuple[TrainState, dict[str, Array]]],
    state: TrainState,
    batch: Batch,
    *,
    epochs: int = 1,
    minibatches: int = 1,
    logprob_fn: Callable[[Any, Batch], Array] | None = None,
    ref_params: Any = None,
    mesh: Mesh | None = None,
    rules: sharding.Rules = sharding.DEFAULT_RULES,
) -> tuple[TrainState, list[dict[str, Array]]]:
    """`epochs` (PPO's mu) passes over one rollout batch, `minibatches` optimizer updates per pass.

    Old log-probs are computed once, with the parameters that sampled the batch, before the first update:
    every later update measures its importance ratio against them (with a single update they are not
    needed: the loss uses the current log-probs, ratio 1). Reference log-probs are computed once when
    `ref_params` are given. Minibatch k takes rows k, k + minibatches, ... (strided, as micro-batches).
    Returns the new state and one metrics dict per update.
    """
    if epochs < 1 or minibatches < 1:
        raise ValueError(f"epochs and minibatches must be >= 1, got {epochs}, {minibatches}")
    batch = dict(batch)
    needs_old = epochs * minibatches > 1 and "old_logprobs" not in batch
    needs_ref = ref_params is not None and "ref_logprobs" not in batch
    if (needs_old or needs_ref) and logprob_fn is None:
        raise ValueError("old or reference log-probs are needed: pass logprob_fn (make_logprob_fn)")
    if needs_old:
        batch["old_logprobs"] = logprob_fn(state.params, batch)
    if needs_ref:
        batch["ref_logprobs"] = logprob_fn(ref_params, batch)
    target = None if mesh is None else sharding.batch_sharding(mesh, rules)
    parts = [batch]
    if minibatches > 1:
        parts = [_row_picker(k, minibatches, target)(batch) for k in range(minibatches)]
    history = []
    for _ in range(epochs):
        for part in parts:
            state, metrics = step_fn(state, part)
            history.append(metrics)
    return state, history
