"""`data.task="hf"`: any data set with a prompt column, from the Hugging Face hub or local files.

    python scripts/train.py --config=configs/quickstart.py --workdir=runs/mine --config.data.task=hf \
        --config.data.dataset=my_data.jsonl --config.data.prompt_column=question \
        --config.data.answer_column=answer --config.reward.name=numeric --config.data.eval_split=validation

The config keys (they have keys of their own in the data section, `Task.config_keys`):
  data.dataset        a hub id ("openai/gsm8k"; a hub config such as "main" in data.options.config_name),
                      a local file (.jsonl, .json, .parquet, .csv, .arrow, .jsonl.gz / .json.gz), a local
                      folder (one file per split named after it, such as train.jsonl and test.parquet; a
                      `save_to_disk` folder; or any folder `datasets.load_dataset` reads), or a glob of
                      files ("data/*.jsonl"). Local data needs no network.
  data.split          the source split training reads ("train"); a single file or glob is one split,
                      whatever its name.
  data.prompt_column  each row's prompt: a string (through the chat template when data.chat) or a list of
                      chat messages ({"role": ..., "content": ...}, data.chat must be on).
  data.answer_column  copied to each sample's `answer`, the field the numeric, math and qa rewards read
                      (None: the rows' own `answer` column, if any).
Every column stays in the sample, so a reward can read any of them (`sample["solution"]`, or the
`solution=` argument of a TRL-style reward). The task has no reward of its own: set reward.name, or pass
reward functions (`rlvr_jax.rewards.set_reward`, `rlvr_jax.GRPOTrainer`).

Splits, as every task here: `train` and `validation` partition data.split with a seeded
data.options.validation_fraction (0.1; 0 keeps every row for training), `test` is the source split
data.options.test_split ("test"). Sample ids are the rows' own `id` column when it holds unique values,
else "<source split>/<row>".
"""

from __future__ import annotations

import glob
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rlvr_jax.data.base import Sample, Task, register_task
from rlvr_jax.data.loaders import (
    LOCAL_SUFFIXES,
    SPLITS,
    DataError,
    HubUnavailableError,
    Record,
    carve,
    find_split_file,
    read_records,
)

CONFIG_KEYS = {
    "dataset": "dataset",
    "source_split": "split",
    "prompt_column": "prompt_column",
    "answer_column": "answer_column",
}
_DATASETS_BUILDERS = {".csv": "csv", ".tsv": "csv", ".txt": "text"}  # local formats read_records lacks
_GLOB = ("*", "?", "[")


def looks_local(dataset: str) -> bool:
    """Whether `data.dataset` names local data (a path or a glob) rather than a hub id."""
    text = str(dataset)
    suffixes = (*[s for s in LOCAL_SUFFIXES if s], *_DATASETS_BUILDERS)
    return (
        text.startswith(("/", ".", "~"))
        or text.count("/") > 1
        or text.lower().endswith(suffixes)
        or any(c in text for c in _GLOB)
        or Path(text).expanduser().exists()
    )


# ------------------------------------------------------------------------------------------- reading


def _read_with_datasets(builder: str, files: str | list[str], where: str) -> list[Record]:
    import datasets

    try:
        return datasets.load_dataset(builder, data_files=files, split="train").to_list()
    except Exception as e:
        raise DataError(f"{where}: cannot be read ({type(e).__name__}: {e})") from e


def _read_file(path: Path) -> list[Record]:
    builder = _DATASETS_BUILDERS.get(path.suffix.lower())
    return _read_with_datasets(builder, str(path), str(path)) if builder else read_records(path)


def _read_glob(pattern: str) -> list[Record]:
    files = sorted(glob.glob(os.path.expanduser(pattern)))
    if not files:
        raise FileNotFoundError(f"data.dataset={pattern!r} matches no file")
    records: list[Record] = []
    for file in files:
        records.extend(_read_file(Path(file)))
    return records


def _read_folder(folder: Path, split: str) -> list[Record]:
    """One split of a local folder: `<split>.<format>`, a `save_to_disk` folder, or what
    `datasets.load_dataset(folder)` finds (e.g. data/train-00000-of-00001.parquet)."""
    found = find_split_file(folder, (split,))
    if found is not None:
        return _read_file(found) if found.is_file() else read_records(found)
    import datasets

    if (folder / "dataset_dict.json").exists():
        saved = datasets.load_from_disk(str(folder))
        if split not in saved:
            raise DataError(f"{folder} has no split {split!r}; its splits: {', '.join(saved)}")
        return saved[split].to_list()
    try:
        return datasets.load_dataset(str(folder), split=split).to_list()
    except Exception as e:
        files = sorted(p.name for p in folder.iterdir())[:20]
        raise DataError(
            f"{folder}: no {split} data ({type(e).__name__}: {e}); a local folder holds one file per split "
            f"named after it ({split}.jsonl, {split}.parquet, ...); it has: {', '.join(files) or 'nothing'}"
        ) from e


def _read_hub(hub_id: str, split: str, config_name: str | None) -> list[Record]:
    import datasets

    try:
        return datasets.load_dataset(hub_id, config_name, split=split).to_list()
    except Exception as e:
        raise HubUnavailableError(
            f"could not load {hub_id!r} (config {config_name!r}, split {split!r}) from the Hugging Face hub: "
            f"{type(e).__name__}: {e}. Without hub access, save it elsewhere (one jsonl or parquet file per "
            "split) and pass the file or folder as data.dataset"
        ) from e


def read_source(dataset: str, split: str, config_name: str | None = None) -> tuple[list[Record], str]:
    """(the records of source split `split` of `dataset`, a description for messages)."""
    path = Path(dataset).expanduser()
    if path.is_file():
        return _read_file(path), str(path)
    if path.is_dir() and (path / "state.json").exists():  # one split saved by `Dataset.save_to_disk`
        return read_records(path), str(path)
    if path.is_dir():
        return _read_folder(path, split), f"{path} ({split} split)"
    if any(c in dataset for c in _GLOB):
        return _read_glob(dataset), dataset
    if looks_local(dataset):
        raise FileNotFoundError(
            f"data.dataset={dataset!r} does not exist; pass a hub id, a local file or folder, or a glob"
        )
    return _read_hub(dataset, split, config_name), f"{dataset} ({split} split)"


def _single_split(dataset: str) -> bool:
    """A single file or glob: one split, whatever it is called."""
    path = Path(dataset).expanduser()
    saved_split = path.is_dir() and (path / "state.json").exists()
    return path.is_file() or saved_split or any(c in dataset for c in _GLOB)


# ------------------------------------------------------------------------------------------- samples


def check_columns(
    records: Sequence[Mapping[str, Any]], where: str, prompt_column: str, answer_column: str | None
) -> None:
    """Raises `DataError` naming the config key, the missing column and the columns there are."""
    columns = list(records[0]) if records else []
    for key, column in (("data.prompt_column", prompt_column), ("data.answer_column", answer_column)):
        if column is None:
            continue
        for i, record in enumerate(records):
            if column not in record:
                row = f" (row {i})" if column in columns else ""
                raise DataError(
                    f"{key}={column!r}: {where}{row} has no column {column!r}; its columns: "
                    f"{', '.join(record) or 'none'}"
                )


def _prompt(value: Any, where: str, chat: bool) -> str | list[dict[str, Any]]:
    """A row's prompt, checked: a non-empty string, or a list of chat messages (with data.chat on)."""
    if isinstance(value, str) and value.strip():
        return value
    messages_ok = (
        isinstance(value, list)
        and value
        and all(isinstance(m, Mapping) and isinstance(m.get("role"), str) and "content" in m for m in value)
    )
    if not messages_ok:
        shown = repr(value)[:80]
        raise DataError(
            f"{where}: the prompt {shown} is not a non-empty string or a list of chat messages "
            '({"role": ..., "content": ...})'
        )
    if not chat:
        raise DataError(f"{where}: the prompt is a list of chat messages, which needs data.chat=True")
    return [dict(m) for m in value]


def _ids(records: Sequence[Mapping[str, Any]], source: str) -> list[str]:
    """The rows' own `id` column when every row has one and they are unique, else "<source>/<row>"."""
    own = [r.get("id") for r in records]
    if all(isinstance(i, str | int) and not isinstance(i, bool) for i in own) and len(set(own)) == len(own):
        return [str(i) for i in own]
    return [f"{source}/{i}" for i in range(len(records))]


def load_hf(
    split: str,
    path: str | os.PathLike | None = None,
    *,
    chat: bool = True,
    dataset: str | None = None,
    source_split: str = "train",
    prompt_column: str = "prompt",
    answer_column: str | None = None,
    config_name: str | None = None,
    test_split: str = "test",
    validation_fraction: float = 0.1,
    split_seed: int = 0,
    limit: int | None = None,
) -> list[Sample]:
    """Samples of one split of `dataset` (module docstring): every column, plus `id`, `prompt` (from
    `prompt_column`) and `answer` (from `answer_column`, when given)."""
    if path is not None:
        raise DataError(
            "data.path is not read by data.task='hf': name the file, folder or hub id in data.dataset"
        )
    if not dataset:
        raise DataError(
            "data.task='hf' needs data.dataset: a hub id, a local file or folder (jsonl, json, parquet, "
            "csv), or a glob of files"
        )
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
    source = test_split if split == "test" else source_split
    if split == "test" and _single_split(dataset):
        raise DataError(
            f"data.dataset={dataset!r} is a single file, one split: it has no test split; evaluate on "
            "data.eval_split='validation' (carved from it), or use a folder with a file per split"
        )
    records, where = read_source(dataset, source, config_name)
    if not records:
        raise DataError(f"{where} holds no rows")
    check_columns(records, where, prompt_column, answer_column)
    ids = _ids(records, source)
    if split == "test":
        rows = list(range(len(records)))
    else:
        train_rows, validation_rows = carve(len(records), validation_fraction, split_seed)
        rows = (train_rows if split == "train" else validation_rows).tolist()
    if not rows:
        raise DataError(
            f"{where}: its {len(records)} row(s) leave no {split} rows (validation_fraction="
            f"{validation_fraction}); add rows, or change data.options.validation_fraction / data.eval_split"
        )
    samples = []
    for i in rows[:limit]:
        record = records[i]
        sample: Sample = dict(record)
        sample["id"] = ids[i]
        sample["prompt"] = _prompt(record[prompt_column], f"{where}, row {i} ({prompt_column!r})", chat)
        if answer_column is not None:
            sample["answer"] = record[answer_column]
        samples.append(sample)
    return samples


register_task(Task("hf", load_hf, reward="", config_keys=CONFIG_KEYS))
