"""One layout for a rollout batch, from the sampler to the loss.

A generation round becomes row-aligned numpy arrays (`rollout_rows`): rows = prompts * G, the G
completions of a prompt adjacent (row i * G + g, as the sampler orders them), every field with a leading
row axis. Dynamic sampling filters and concatenates these rows (`rlvr_jax.rl.dynamic_sampling`); the
update reads them through `batch_from_rows`, which only concatenates prompt and completion columns.

Per-token arrays are aligned with the completion, [rows, N], exactly as `GenerateOutput` holds them:
column j is completion token j, `tokens[:, P + j]`, predicted from position P + j - 1 (P = L - N prompt
columns). Sampler log-probs need no shifting, and Dr.GRPO's constant normaliser (`max_len` defaults to the
per-token arrays' width) is the generation budget N, not the prompt-inclusive length.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from rlvr_jax.generate.sampler import GenerateOutput, bucket

Batch = dict[str, Any]
Rollout = dict[str, np.ndarray]
REQUIRED_KEYS = ("tokens", "attn_mask", "completion_mask", "advantages")
OPTIONAL_KEYS = ("old_logprobs", "sampler_logprobs", "ref_logprobs")


def rollout_rows(
    prompt_ids: Any, prompt_mask: Any, out: GenerateOutput, rewards: Any, group_size: int
) -> Rollout:
    """One generation round as row-aligned arrays.

    prompt_ids / prompt_mask: the left-padded prompts [B, P]; out: the sampler's output for B * G rows.
    Returns prompt_ids / prompt_mask [rows, P] (each prompt repeated for its G rows), tokens / logprobs /
    mask [rows, N], lengths / finished / rewards [rows]. The mask is the sampler's: generated tokens up to
    and including the stop token, False on padding and on rows that generated nothing.
    """
    prompt_ids, prompt_mask = np.asarray(prompt_ids), np.asarray(prompt_mask)
    B, rows = prompt_ids.shape[0], np.shape(out.tokens)[0]
    if prompt_mask.shape != prompt_ids.shape:
        raise ValueError(f"prompt_mask {prompt_mask.shape} does not match prompt_ids {prompt_ids.shape}")
    if B == 0 or rows != B * group_size:
        raise ValueError(f"{rows} generated rows are not {B} prompts x groups of {group_size}")
    return {
        "prompt_ids": np.repeat(prompt_ids.astype(np.int32), group_size, axis=0),
        "prompt_mask": np.repeat(prompt_mask.astype(bool), group_size, axis=0),
        "tokens": np.asarray(out.tokens, np.int32),
        "logprobs": np.asarray(out.logprobs, np.float32),
        "mask": np.asarray(out.mask, bool),
        "lengths": np.asarray(out.lengths),
        "finished": np.asarray(out.finished),
        "rewards": np.zeros(rows, np.float32) if rewards is None else np.asarray(rewards, np.float32),
    }


def fit_prompt_width(rows: Rollout, buckets: Sequence[int]) -> Rollout:
    """The rows with their prompt columns trimmed or left padded to the bucket of the longest real prompt
    (`rl.update_prompt_buckets`): the sampler may pad to a coarser width than the update needs.

    Exact for the update: rows are left padded and positions come from the mask, so the columns dropped
    are padding (checked) and the columns added are masked out; the completion columns are untouched.
    """
    mask = np.asarray(rows["prompt_mask"], bool)
    P = mask.shape[1]
    width = bucket(int(mask.sum(axis=1).max(initial=0)), buckets)
    if width == P:
        return dict(rows)
    if width < P:
        if mask[:, : P - width].any():  # a prompt not right-aligned: trimming would cut real tokens
            raise ValueError(f"prompt columns 0..{P - width - 1} hold real tokens; rows must be left padded")
        ids, mask = np.asarray(rows["prompt_ids"])[:, P - width :], mask[:, P - width :]
    else:
        pad = ((0, 0), (width - P, 0))
        ids, mask = np.pad(np.asarray(rows["prompt_ids"]), pad), np.pad(mask, pad)
    return {**rows, "prompt_ids": ids, "prompt_mask": mask}


def batch_from_rows(rows: Mapping[str, Any], advantages: Any) -> Batch:
    """The update's batch from rollout rows: tokens / attn_mask [rows, P + N] (prompt then completion),
    completion_mask and sampler_logprobs [rows, N], advantages [rows] float32."""
    n = rows["tokens"].shape[0]
    if np.shape(advantages) != (n,):
        raise ValueError(f"advantages must be [rows] = [{n}], got shape {np.shape(advantages)}")
    completion_mask = jnp.asarray(rows["mask"], bool)
    return {
        "tokens": jnp.concatenate(
            [jnp.asarray(rows["prompt_ids"], jnp.int32), jnp.asarray(rows["tokens"], jnp.int32)], axis=1
        ),
        "attn_mask": jnp.concatenate([jnp.asarray(rows["prompt_mask"], bool), completion_mask], axis=1),
        "completion_mask": completion_mask,
        "advantages": jnp.asarray(advantages, jnp.float32),
        "sampler_logprobs": jnp.asarray(rows["logprobs"], jnp.float32),
    }


def batch_from_rollout(prompt_ids: Any, prompt_mask: Any, out: GenerateOutput, advantages: Any) -> Batch:
    """`batch_from_rows(rollout_rows(...))` for one round of B prompts and the sampler's B * G rows."""
    B, rows = np.shape(prompt_ids)[0], np.shape(out.tokens)[0]
    if B == 0 or rows % B:
        raise ValueError(f"{rows} generated rows are not a whole number of groups of {B} prompts")
    return batch_from_rows(rollout_rows(prompt_ids, prompt_mask, out, None, rows // B), advantages)


def check_batch(batch: Mapping[str, Any]) -> tuple[int, int, int]:
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
