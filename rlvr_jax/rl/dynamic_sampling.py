"""Dynamic sampling (DAPO, Yu et al. 2025): train only on groups whose rewards differ, refilling the batch.

A group whose G completions all got the same reward has zero advantage under every group baseline, so
it adds no policy gradient, only dilutes the batch (and, with token-mean aggregation, shrinks every other
token's weight). DAPO drops such groups and samples new prompts until the batch is full again. This is
host-side bookkeeping between the sampler and the trainer, so it works on numpy arrays: a rollout batch
is a dict of arrays whose leading axis is rows = groups * G, group members adjacent (row i * G + g).

`fill_batch` is bounded: after `max_rounds` generation rounds it returns whatever it has. So that the
train step keeps its static batch shape (no recompilation), a shortfall is by default padded with
dropped (zero-variance) groups, flagged False in `FilledBatch.kept`: their advantages are 0 already, and
the trainer can also zero their loss mask so that they take no share of a token-mean denominator or of
the KL term.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np

Rollouts = dict[str, np.ndarray]
# generate_round(n_groups_wanted) -> rollouts of some number of whole groups (any number: the caller may
# round up to a compiled batch size, or return fewer when the data runs out).
GenerateRound = Callable[[int], Mapping[str, np.ndarray]]


def group_keep_mask(rewards: np.ndarray, group_size: int, tol: float = 0.0) -> np.ndarray:
    """bool [groups]: True for groups worth training on, whose reward std exceeds `tol`.

    A group whose rewards are all equal is dropped whatever `tol` (with tol = 0 the std of equal floats
    can still come out as ~1e-17, since their computed mean need not equal them). Non-finite rewards are
    a bug upstream (rewards score failures 0) and raise rather than being filtered away silently.
    """
    rewards = np.asarray(rewards, np.float64)
    if rewards.ndim != 1 or group_size < 1 or rewards.shape[0] % group_size:
        raise ValueError(f"rewards of shape {rewards.shape} are not whole groups of {group_size}")
    if not np.all(np.isfinite(rewards)):
        raise ValueError("non-finite rewards")
    groups = rewards.reshape(-1, group_size)
    spread = groups.max(axis=1) - groups.min(axis=1)
    return (spread > 0) & (groups.std(axis=1) > tol)


def take_groups(rollouts: Mapping[str, np.ndarray], groups: np.ndarray, group_size: int) -> Rollouts:
    """The rows of the chosen groups (bool [groups] or group indices), in order, for every array."""
    groups = np.asarray(groups)
    index = np.flatnonzero(groups) if groups.dtype == bool else groups.astype(np.int64)
    rows = (index[:, None] * group_size + np.arange(group_size)).reshape(-1)
    return {k: v[rows] for k, v in rollouts.items()}


def concat_rollouts(parts: list[Rollouts]) -> Rollouts:
    """Concatenates rollout dicts along rows (all must have the same keys).

    Rounds may pad their prompts to different buckets: a 2-D field whose widths differ is left-padded with
    zeros (False for masks) to the widest, which keeps every row's last prompt token next to its first
    completion token and leaves the padding masked out.
    """
    keys = set(parts[0])
    for p in parts[1:]:
        if set(p) != keys:
            raise ValueError(f"rounds returned different fields: {sorted(keys)} vs {sorted(p)}")
    return {k: np.concatenate(_left_padded([p[k] for p in parts]), axis=0) for k in parts[0]}


def _left_padded(arrays: list[np.ndarray]) -> list[np.ndarray]:
    width = max(a.shape[1] if a.ndim == 2 else 0 for a in arrays)
    return [np.pad(a, ((0, 0), (width - a.shape[1], 0))) if a.ndim == 2 else a for a in arrays]


@dataclasses.dataclass
class FilledBatch:
    """The rollouts of `target_groups` groups (fewer only if generation ran dry), which of their rows are
    real kept groups (False: zero-variance padding), and statistics to log."""

    rollouts: Rollouts
    kept: np.ndarray
    stats: dict[str, float]


def _checked(out: Mapping[str, np.ndarray], group_size: int, reward_key: str) -> Rollouts:
    if reward_key not in out:
        raise KeyError(f"generate_round returned no {reward_key!r} field (has {sorted(out)})")
    arrays = {k: np.asarray(v) for k, v in out.items()}
    rows = arrays[reward_key].shape[0]
    for k, v in arrays.items():
        if v.ndim == 0 or v.shape[0] != rows:
            raise ValueError(
                f"field {k!r} has shape {v.shape}; every field needs a leading axis of {rows} rows"
            )
    if rows % group_size:
        raise ValueError(f"generate_round returned {rows} rows, not whole groups of {group_size}")
    return arrays


def fill_batch(
    generate_round: GenerateRound,
    target_groups: int,
    group_size: int,
    *,
    max_rounds: int,
    tol: float = 0.0,
    reward_key: str = "rewards",
    pad: bool = True,
) -> FilledBatch:
    """Generates rounds until `target_groups` non-degenerate groups are collected or `max_rounds` ran.

    Each round asks `generate_round` for the groups still missing; the non-degenerate groups it returns
    (`group_keep_mask`) are kept in order, and any beyond `target_groups` are discarded (they would be
    one step stale next time). If the rounds run out first, the batch is padded with the earliest dropped
    groups (`pad=True`, rows flagged in `kept`) or returned short (`pad=False`).

    stats: rounds, groups_generated, groups_dropped, dropped_fraction (of all generated groups),
    groups_kept, groups_padded, groups_surplus.
    """
    if target_groups < 1 or max_rounds < 1 or group_size < 1:
        raise ValueError(
            f"need target_groups, group_size, max_rounds >= 1; got {target_groups}, "
            f"{group_size}, {max_rounds}"
        )
    kept_parts: list[Rollouts] = []
    dropped_parts: list[Rollouts] = []
    n_kept = n_generated = n_dropped = n_spare = rounds = 0
    while n_kept < target_groups and rounds < max_rounds:
        rounds += 1
        out = _checked(generate_round(target_groups - n_kept), group_size, reward_key)
        keep = group_keep_mask(out[reward_key], group_size, tol)
        n_generated += keep.size
        n_dropped += int((~keep).sum())
        n_kept += int(keep.sum())
        kept_parts.append(take_groups(out, keep, group_size))
        if pad and n_spare < target_groups:
            spare = np.flatnonzero(~keep)[: target_groups - n_spare]
            dropped_parts.append(take_groups(out, spare, group_size))
            n_spare += spare.size

    n_real = min(n_kept, target_groups)
    batch = {k: v[: n_real * group_size] for k, v in concat_rollouts(kept_parts).items()}
    n_pad = 0
    if pad and n_real < target_groups and n_spare:
        n_pad = min(target_groups - n_real, n_spare)
        filler = {k: v[: n_pad * group_size] for k, v in concat_rollouts(dropped_parts).items()}
        batch = concat_rollouts([batch, filler])
    kept = np.repeat(np.arange(n_real + n_pad) < n_real, group_size)
    stats = {
        "rounds": float(rounds),
        "groups_generated": float(n_generated),
        "groups_dropped": float(n_dropped),
        "dropped_fraction": n_dropped / n_generated if n_generated else 0.0,
        "groups_kept": float(n_real),
        "groups_padded": float(n_pad),
        "groups_surplus": float(max(n_kept - target_groups, 0)),
    }
    return FilledBatch(batch, kept, stats)
