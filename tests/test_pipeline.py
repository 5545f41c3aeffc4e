"""grain pipelines: batching, seeded per-epoch shuffles, host shards, and mid-epoch checkpoint restore."""

from __future__ import annotations

import itertools
import json

import pytest

from rlvr_jax.data.pipeline import batches, make_pipeline, take


def samples(n: int) -> list[dict]:
    # ragged fields on purpose: batches must stay lists of dicts, not stacked arrays
    return [{"id": f"s{i}", "prompt": f"question {i}", "answers": ["x"] * (i % 3)} for i in range(n)]


def ids(batch_list: list[list[dict]]) -> list[list[str]]:
    return [[s["id"] for s in batch] for batch in batch_list]


def flat(batch_ids: list[list[str]]) -> list[str]:
    return list(itertools.chain.from_iterable(batch_ids))


def single_host(n: int, batch_size: int, **options: object) -> list[list[str]]:
    return ids(list(make_pipeline(samples(n), batch_size, process_index=0, process_count=1, **options)))


def test_batches_are_lists_of_samples_and_epochs_reshuffle() -> None:
    out = single_host(20, 5, seed=0, num_epochs=2)
    assert len(out) == 8 and all(len(b) == 5 for b in out)
    first, second = flat(out[:4]), flat(out[4:])
    assert sorted(first) == sorted(second) == sorted(f"s{i}" for i in range(20))
    assert first != second, "each epoch should get its own permutation"
    assert first != [f"s{i}" for i in range(20)]


def test_shuffle_is_seeded_and_optional() -> None:
    assert single_host(20, 4, seed=7) == single_host(20, 4, seed=7)
    assert single_host(20, 4, seed=7) != single_host(20, 4, seed=8)
    assert flat(single_host(20, 4, shuffle=False)) == [f"s{i}" for i in range(20)]


def test_drop_remainder() -> None:
    assert [len(b) for b in single_host(10, 4)] == [4, 4]
    assert [len(b) for b in single_host(10, 4, drop_remainder=False)] == [4, 4, 2]


def test_infinite_repeat() -> None:
    iterator = iter(make_pipeline(samples(5), 2, num_epochs=None, process_index=0, process_count=1))
    assert len(take(iterator, 50)) == 50


@pytest.mark.parametrize(("n", "equal_shards"), [(40, True), (41, False)])
def test_two_hosts_get_disjoint_shards_covering_everything(n: int, equal_shards: bool) -> None:
    shards = [
        flat(
            ids(
                list(
                    make_pipeline(samples(n), 1, process_index=i, process_count=2, equal_shards=equal_shards)
                )
            )
        )
        for i in range(2)
    ]
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == sorted(f"s{i}" for i in range(n))
    assert all(len(set(shard)) == len(shard) for shard in shards)


def test_equal_shards_keep_hosts_in_step() -> None:
    steps = [len(list(make_pipeline(samples(41), 4, process_index=i, process_count=2))) for i in range(2)]
    assert steps == [5, 5]
    covered = {
        s["id"]
        for i in range(3)
        for b in make_pipeline(samples(41), 1, process_index=i, process_count=3)
        for s in b
    }
    assert len(covered) == 39  # 41 trimmed to a multiple of 3


def test_process_index_defaults_to_jax() -> None:
    import jax

    assert jax.process_count() == 1
    assert flat(ids(list(make_pipeline(samples(6), 3, shuffle=False)))) == [f"s{i}" for i in range(6)]
    with pytest.raises(ValueError, match="process_index"):
        make_pipeline(samples(6), 3, process_index=2, process_count=2)


@pytest.mark.parametrize("consumed", [0, 3, 7, 10])  # 30 samples a host and epoch: 7.5 batches
def test_restoring_state_mid_epoch_reproduces_the_following_batches(consumed: int) -> None:
    """A checkpoint stores `get_state()` (JSON); a new iterator set to it continues exactly where it was."""

    def pipeline() -> object:
        return make_pipeline(samples(61), 4, seed=5, num_epochs=3, process_index=1, process_count=2)

    iterator = batches(pipeline())
    take(iterator, consumed)
    saved = json.loads(json.dumps(iterator.get_state()))  # what a checkpoint would write and read back
    expected = ids(take(iterator, 100))
    assert expected, "nothing left to compare"
    resumed = batches(pipeline(), saved)
    assert ids(take(resumed, 100)) == expected


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        make_pipeline(samples(4), 0, process_index=0, process_count=1)
    with pytest.raises(ValueError, match="no samples"):
        make_pipeline([], 2, process_index=0, process_count=1)
    with pytest.raises(ValueError, match="nothing for host"):
        make_pipeline(samples(1), 1, process_index=0, process_count=2)
