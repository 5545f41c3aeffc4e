"""Text tasks and loaders: local counts and splits, file formats, schema errors, offline hub, arithmetic."""

from __future__ import annotations

import gzip
import json
import warnings
from pathlib import Path

import pytest

from rlvr_jax.data import get_task, registered_tasks
from rlvr_jax.data.base import Task, register_task
from rlvr_jax.data.loaders import DataError, HubUnavailableError, load_hub, read_records, require_fields
from rlvr_jax.rewards import get_reward
from rlvr_jax.rewards.base import RewardResult, register_reward

# task -> (local folder, test count, rows the train/validation carve starts from, instruction in the prompt)
LOCAL = {
    "gsm8k": ("gsm8k", 1319, 7473, "#### <number>"),
    "math": ("math500", 500, 500, "\\boxed{}"),
    "nq_open": ("nq_open", 3610, 3610, "Answer:"),
    "imdb": ("imdb", 200, 200, "positive or negative"),
    "sst2": ("sst2", 872, 872, "positive or negative"),
}


@pytest.fixture(scope="module")
def data_dir(shared_dir: Path) -> Path:
    return shared_dir / "data"


def load(task: str, split: str, path: Path, **options: object) -> list[dict]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "carved from the test data" for single-split copies
        return get_task(task).load(split, path, **options)


def test_text_tasks_are_registered() -> None:
    assert {"gsm8k", "math", "nq_open", "imdb", "sst2", "arithmetic"} <= set(registered_tasks())
    assert {get_task(t).reward for t in LOCAL} == {"numeric", "math", "qa_f1", "label"}


@pytest.mark.parametrize("task", sorted(LOCAL))
def test_local_splits(task: str, data_dir: Path) -> None:
    folder, n_test, n_train_source, instruction = LOCAL[task]
    test = load(task, "test", data_dir / folder)
    assert len(test) == n_test
    train, validation = load(task, "train", data_dir), load(task, "validation", data_dir)  # parent folder
    n_validation = round(0.1 * n_train_source)
    assert (len(train), len(validation)) == (n_train_source - n_validation, n_validation)
    ids = [s["id"] for s in train + validation]
    assert len(set(ids)) == len(ids), "train and validation overlap"
    assert len({s["id"] for s in test}) == n_test
    for sample in test[:3] + train[:3]:
        assert instruction in sample["prompt"] and isinstance(sample["id"], str)
    # the carve is seeded: same seed, same split; another seed, another split
    assert [s["id"] for s in load(task, "validation", data_dir)] == [s["id"] for s in validation]
    assert [s["id"] for s in load(task, "validation", data_dir, split_seed=1)] != [
        s["id"] for s in validation
    ]


def test_gsm8k_fields_and_templates(data_dir: Path) -> None:
    chat = get_task("gsm8k").load("test", data_dir / "gsm8k", limit=2)
    plain = get_task("gsm8k").load("test", data_dir / "gsm8k", chat=False, limit=2)
    assert chat[0]["id"] == "gsm8k/test/0" and chat[0]["answer"] == "18"
    assert chat[0]["solution"].endswith("#### 18")
    assert chat[0]["prompt"].startswith(chat[0]["question"]) and plain[0]["prompt"].endswith("Answer:")
    assert get_task("gsm8k").system_prompt


def test_gsm8k_train_and_validation_are_carved_from_train(data_dir: Path) -> None:
    train = get_task("gsm8k").load("train", data_dir / "gsm8k")
    validation = get_task("gsm8k").load("validation", data_dir / "gsm8k", validation_fraction=0.05)
    assert all(s["id"].startswith("gsm8k/train/") for s in train + validation)
    assert len(validation) == round(0.05 * 7473)
    assert "1,080" not in {s["answer"] for s in train}  # thousands separators removed from the gold


def test_single_split_sources_warn_that_train_overlaps_test(data_dir: Path) -> None:
    with pytest.warns(UserWarning, match="carved from the test data"):
        get_task("math").load("train", data_dir / "math500")


def test_math_and_nq_fields(data_dir: Path) -> None:
    math = get_task("math").load("test", data_dir / "math500", limit=1)[0]
    assert math["answer"] == "\\left( 3, \\frac{\\pi}{2} \\right)" and "level" in math
    nq = get_task("nq_open").load("test", data_dir / "nq_open", limit=1)[0]
    assert nq["answers"] == ["14 December 1972 UTC", "December 1972"]
    assert nq["prompt"].endswith("when was the last time anyone was on the moon?")


# ---------------------------------------------------------------------------------------------- formats


RECORDS = [
    {"question": "What is 2 + 2?", "answer": "2 + 2 = 4\n#### 4"},
    {"question": "1+1?", "answer": "#### 2"},
]


def write_all_formats(folder: Path) -> list[Path]:
    import datasets

    folder.mkdir()
    (folder / "a.jsonl").write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n\n")
    with gzip.open(folder / "b.jsonl.gz", "wt") as f:
        f.write("\n".join(json.dumps(r) for r in RECORDS))
    (folder / "c.json").write_text(json.dumps({"data": RECORDS}))
    dataset = datasets.Dataset.from_list(RECORDS)
    dataset.to_parquet(str(folder / "d.parquet"))
    dataset.save_to_disk(str(folder / "e_arrow"))
    return [folder / n for n in ("a.jsonl", "b.jsonl.gz", "c.json", "d.parquet", "e_arrow")]


def test_read_records_formats(tmp_path: Path) -> None:
    for path in write_all_formats(tmp_path / "formats"):
        assert read_records(path) == RECORDS, path


def test_local_folder_with_parquet_splits(tmp_path: Path) -> None:
    import datasets

    (tmp_path / "gsm").mkdir()
    datasets.Dataset.from_list(RECORDS * 10).to_parquet(str(tmp_path / "gsm" / "train.parquet"))
    datasets.Dataset.from_list(RECORDS).save_to_disk(str(tmp_path / "gsm" / "test"))
    assert [s["answer"] for s in get_task("gsm8k").load("test", tmp_path / "gsm")] == ["4", "2"]
    assert len(get_task("gsm8k").load("train", tmp_path / "gsm")) == 18


def test_a_local_train_file_is_used_when_the_hub_source_has_none(tmp_path: Path) -> None:
    folder = tmp_path / "math_full"
    folder.mkdir()
    rows = [{"problem": f"p{i}", "solution": f"so $\\boxed{{{i}}}$"} for i in range(30)]
    (folder / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:20]))
    (folder / "test.jsonl").write_text("\n".join(json.dumps(r) for r in rows[20:]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "carved from the test data" warning
        train = get_task("math").load("train", folder)
    assert len(train) == 18 and all(s["id"].startswith("math500/train/") for s in train)
    assert [s["answer"] for s in get_task("math").load("test", folder)] == [str(i) for i in range(20, 30)]


def test_wrong_schema_names_the_field_and_the_file(tmp_path: Path) -> None:
    (tmp_path / "gsm").mkdir()
    bad = tmp_path / "gsm" / "test.jsonl"
    bad.write_text(json.dumps({"question": "q", "solution": "#### 1"}) + "\n")
    with pytest.raises(DataError, match=r"no field 'answer'") as error:
        get_task("gsm8k").load("test", tmp_path / "gsm")
    assert str(bad) in str(error.value)
    with pytest.raises(DataError, match=r"x\.jsonl.*no field 'label'"):
        require_fields([{"text": "t"}], ["text", "label"], "x.jsonl")


def test_broken_files_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "broken.jsonl").write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(DataError, match=r"broken\.jsonl, line 2"):
        read_records(tmp_path / "broken.jsonl")
    (tmp_path / "list.jsonl").write_text("[1, 2]\n")
    with pytest.raises(DataError, match="not an object"):
        read_records(tmp_path / "list.jsonl")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        get_task("gsm8k").load("test", tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no gsm8k test data"):
        get_task("gsm8k").load("test", tmp_path / "empty")


@pytest.mark.parametrize("task", ["gsm8k", "math", "nq_open", "imdb", "sst2"])
def test_hub_is_tried_without_a_path_and_says_to_pass_data_path_offline(
    task: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datasets

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path)  # nothing cached to fall back on
    with pytest.raises(HubUnavailableError, match=r"data\.path") as error:
        get_task(task).load("test")
    assert "Hugging Face hub" in str(error.value)


HUB_ROWS = {
    "gsm8k": {"question": "q", "answer": "#### 3"},
    "math": {"problem": "p", "solution": "$\\boxed{3}$", "answer": "3"},
    "nq_open": {"question": "q", "answer": ["a"]},
    "imdb": {"text": "t", "label": 1},
    "sst2": {"sentence": "s", "label": 0, "idx": 0},
}
# task -> (hub id, config, hub split read for test, hub split read for train)
HUB_SPLITS = {
    "gsm8k": ("openai/gsm8k", "main", "test", "train"),
    "math": ("HuggingFaceH4/MATH-500", None, "test", "test"),
    "nq_open": ("google-research-datasets/nq_open", None, "validation", "train"),
    "imdb": ("stanfordnlp/imdb", None, "test", "train"),
    "sst2": ("stanfordnlp/sst2", None, "validation", "train"),
}


@pytest.mark.parametrize("task", sorted(HUB_SPLITS))
def test_hub_ids_configs_and_splits(task: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a path the loader asks `datasets.load_dataset` for the task's hub id, config and split."""
    import datasets

    calls = []

    def fake_load_dataset(hub_id: str, config: str | None, split: str) -> datasets.Dataset:
        calls.append((hub_id, config, split))
        return datasets.Dataset.from_list([HUB_ROWS[task]] * 10)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    hub_id, config, test_split, train_split = HUB_SPLITS[task]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert len(get_task(task).load("test")) == 10
        assert len(get_task(task).load("train")) == 9
    assert calls == [(hub_id, config, test_split), (hub_id, config, train_split)]


def test_load_hub_error_names_the_data_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path)
    with pytest.raises(HubUnavailableError, match="'some-org/no-such-set'"):
        load_hub("some-org/no-such-set", None, "train")


# ---------------------------------------------------------------------------------------------- arithmetic


def test_arithmetic_is_seeded_and_scored_by_numeric() -> None:
    task = get_task("arithmetic")
    train = task.load("train", size=50, seed=3)
    assert len(train) == 50 and task.reward == "numeric"
    assert [s["question"] for s in task.load("train", size=50, seed=3)] == [s["question"] for s in train]
    test = task.load("test", size=50, seed=3)
    assert {s["question"] for s in test} != {s["question"] for s in train}
    assert {s["question"] for s in task.load("train", size=50, seed=4)} != {s["question"] for s in train}
    completions = [f"Step by step...\n#### {s['answer']}" for s in train]
    assert get_reward("numeric")(completions, train).scores.min() == 1.0
    assert "#### <number>" in train[0]["prompt"]


def operands(question: str) -> list[str]:
    return [t.lstrip("-") for t in question.split() if t.lstrip("-").isdigit()]


@pytest.mark.parametrize(("digits", "terms"), [(1, 2), ((3, 4), (4, 5))])
def test_arithmetic_difficulty_knobs(digits: int | tuple[int, int], terms: int | tuple[int, int]) -> None:
    samples = get_task("arithmetic").load("test", size=20, generator="chain_sum", digits=digits, terms=terms)
    low_digits, high_digits = (digits, digits) if isinstance(digits, int) else digits
    low_terms, high_terms = (terms, terms) if isinstance(terms, int) else terms
    for sample in samples:
        numbers = operands(sample["question"])
        assert low_terms <= len(numbers) <= high_terms, sample["question"]
        assert all(low_digits <= len(n) <= high_digits for n in numbers), sample["question"]
    assert len({s["id"] for s in samples}) == 20


def test_redefining_a_reward_or_task_replaces_it_but_a_clash_is_an_error():
    def twice(completions, samples, **_):
        return RewardResult([1.0] * len(completions), ["first"] * len(completions))

    register_reward("redefined_test")(twice)
    first = twice

    def twice(completions, samples, **_):
        return RewardResult([2.0] * len(completions), ["second"] * len(completions))

    register_reward("redefined_test")(twice)
    assert get_reward("redefined_test") is twice and twice is not first

    def other(completions, samples, **_):
        return RewardResult([0.0] * len(completions), [""] * len(completions))

    with pytest.raises(ValueError, match="registered twice"):
        register_reward("redefined_test")(other)

    def load(split, path=None, **_):
        return []

    register_task(Task("redefined_task", load, reward="redefined_test"))
    again = Task("redefined_task", load, reward="redefined_test")
    assert register_task(again) is again and get_task("redefined_task") is again
    with pytest.raises(ValueError, match="registered twice"):
        register_task(Task("redefined_task", load, reward="numeric"))
