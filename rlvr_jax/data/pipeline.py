"""grain input pipelines over task samples: per-host shard, seeded shuffle, epochs, batches, resumable state.

Order of operations, and why:
  source -> (trim to a multiple of the host count) -> shard [index::count] -> shuffle(seed) -> repeat(epochs)
  -> to_iter_dataset -> batch
Sharding the source first gives every host a fixed, disjoint slice, so hosts never need to agree on a
global permutation. Shuffling before `repeat` makes grain draw a new permutation each epoch (it combines
the seed with the epoch); batching after `repeat` lets a batch straddle two epochs, so no samples are
dropped between epochs. Batches are lists of sample dicts, not stacked arrays: samples hold strings and
ragged lists that only the host-side sampler and rewards read.

The iterator's `get_state()` is a small JSON-able dict (the next index into the repeated, shuffled shard);
a checkpoint saves it, and `set_state()` on a freshly built iterator of the same pipeline (same samples,
seed and hosts) resumes with exactly the batches that would have come next.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grain

Sample = dict[str, Any]


def as_list(samples: Sequence[Sample]) -> list[Sample]:
    """Batch function: keeps a batch as a list of sample dicts (grain's default would stack arrays)."""
    return list(samples)


def host_shard(
    dataset: grain.MapDataset,
    process_index: int | None = None,
    process_count: int | None = None,
    equal_shards: bool = True,
) -> grain.MapDataset:
    """This host's slice `[index::count]` of `dataset`; the defaults are `jax.process_index()/count()`.

    equal_shards: first drop the last `len % count` samples so every host gets the same number of samples
    (and so the same number of batches: a host that runs out first would hang the others' collectives).
    """
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
    if equal_shards:
        dataset = dataset[: len(dataset) - len(dataset) % process_count]
    return dataset[process_index::process_count]


def make_pipeline(
    samples: Sequence[Sample],
    batch_size: int,
    *,
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: int | None = 1,
    drop_remainder: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
    equal_shards: bool = True,
) -> grain.IterDataset:
    """A grain pipeline yielding this host's batches (lists of `batch_size` samples) of `samples`.

    seed: shuffle seed (also makes each epoch's order reproducible); shuffle=False keeps source order.
    num_epochs: passes over the data; None repeats forever (training loops that count steps).
    drop_remainder: drop a last short batch, so every step sees `batch_size` samples (fixed shapes).
    process_index / process_count: which host this is and how many there are (default: from jax).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if not samples:
        raise ValueError("no samples to build a pipeline from")
    dataset = host_shard(grain.MapDataset.source(list(samples)), process_index, process_count, equal_shards)
    if len(dataset) == 0:
        raise ValueError(f"{len(samples)} samples leave nothing for host {process_index} of {process_count}")
    if shuffle:
        dataset = dataset.shuffle(seed=seed)
    dataset = dataset.repeat(num_epochs)
    return dataset.to_iter_dataset().batch(batch_size, drop_remainder=drop_remainder, batch_fn=as_list)


def batches(pipeline: grain.IterDataset, state: Mapping[str, Any] | None = None) -> grain.DatasetIterator:
    """An iterator over `pipeline`, resumed from a saved `get_state()` when `state` is given."""
    iterator = iter(pipeline)
    if state is not None:
        iterator.set_state(dict(state))
    return iterator


def take(iterator: Iterator[list[Sample]], n: int) -> list[list[Sample]]:
    """The next `n` batches (fewer if the iterator ends)."""
    out = []
    for _ in range(n):
        try:
            out.append(next(iterator))
        except StopIteration:
            break
    return out
