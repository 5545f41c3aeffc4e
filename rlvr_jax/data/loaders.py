"""Reading task data: local files (jsonl / jsonl.gz / json / parquet / arrow) or the Hugging Face hub.

Every task loader goes through here so that all of them accept the same local formats, fail with the same
clear messages (a missing field names the field and the file; an unreachable hub says to pass
`data.path`), and carve their train / validation / test splits the same way (`SourceSpec`, `split_records`).
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import warnings
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

Record = dict[str, Any]

# Suffixes tried, in order, for a split's file stem inside a local data folder ("" = an arrow folder).
LOCAL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet", ".arrow", "")
SPLITS = ("train", "validation", "test")


class DataError(ValueError):
    """A data source that cannot be read, or whose records lack the fields a task needs."""


class HubUnavailableError(DataError):
    """The Hugging Face hub could not serve a data set (offline, no access, unknown id)."""


# ---------------------------------------------------------------------------------------------- reading


def _read_jsonl(lines: Iterable[str], source: str) -> list[Record]:
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise DataError(f"{source}, line {number}: not valid JSON ({e.msg})") from e
    return records


def _read_json(text: str, source: str) -> list[Record]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{source}: not valid JSON ({e.msg} at line {e.lineno})") from e
    if isinstance(data, dict):  # {"data": [...]} and similar single-list wrappers
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(
                f"{source}: a JSON file must hold a list of records (or one key with such a list)"
            )
        data = lists[0]
    if not isinstance(data, list):
        raise DataError(f"{source}: a JSON file must hold a list of records, found {type(data).__name__}")
    return data


def _read_arrow(path: Path) -> list[Record]:
    import datasets

    if path.is_dir():
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            raise DataError(
                f"{path} holds several splits ({', '.join(loaded)}); "
                "pass its parent folder or one split folder"
            )
        return loaded.to_list()
    return datasets.Dataset.from_file(str(path)).to_list()


FORMATS = "jsonl, jsonl.gz, json, json.gz, parquet or an arrow folder"


def read_records(path: str | os.PathLike) -> list[Record]:
    """All records of one local file or arrow folder, as a list of dicts.

    Formats: `.jsonl`, `.jsonl.gz`, `.json` (a list, or one key holding a list), `.json.gz`, `.parquet`,
    `.arrow` (a datasets cache file) and a `datasets.save_to_disk` folder. A file that cannot be read (no
    permission, not text, a corrupt archive) is a DataError naming it.
    """
    path = Path(path)
    source = str(path)
    if not path.exists():
        raise FileNotFoundError(f"data file {source} does not exist")
    try:
        records = _read_by_suffix(path, source)
    except DataError:
        raise
    except (OSError, EOFError, UnicodeDecodeError, ValueError, zlib.error) as e:
        # pyarrow's and datasets' errors derive from OSError / ValueError and rarely name the file.
        raise DataError(
            f"{source}: cannot be read ({type(e).__name__}: {e}); check that it is readable and holds what "
            f"its name says ({FORMATS})"
        ) from e
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise DataError(f"{source}: record {i} is a {type(record).__name__}, not an object with fields")
    return records


def _read_by_suffix(path: Path, source: str) -> list[Record]:
    name = path.name.lower()
    if path.is_dir() or name.endswith(".arrow"):
        return _read_arrow(path)
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if name.endswith((".jsonl.gz", ".json.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return _read_jsonl(f, source) if ".jsonl" in name else _read_json(f.read(), source)
    if name.endswith(".jsonl"):
        with path.open(encoding="utf-8") as f:
            return _read_jsonl(f, source)
    if name.endswith(".json"):
        return _read_json(path.read_text(encoding="utf-8"), source)
    raise DataError(f"{source}: unknown data format (use {FORMATS})")


def require_fields(records: Sequence[Mapping[str, Any]], fields: Sequence[str], source: str) -> None:
    """Raises `DataError` naming the first missing field and the file when a record lacks one of `fields`."""
    for i, record in enumerate(records):
        missing = [f for f in fields if f not in record]
        if missing:
            raise DataError(
                f"{source}: record {i} has no field {missing[0]!r} (it has {sorted(record)}); "
                f"this task needs the fields {list(fields)}"
            )


def load_hub(hub_id: str, config: str | None = None, split: str = "train", **kwargs: Any) -> list[Record]:
    """One split of a Hugging Face hub data set as a list of dicts, through `datasets.load_dataset`."""
    import datasets

    try:
        dataset = datasets.load_dataset(hub_id, config, split=split, **kwargs)
    except Exception as e:
        raise HubUnavailableError(
            f"could not load {hub_id!r} (config {config!r}, split {split!r}) from the Hugging Face hub: "
            f"{type(e).__name__}: {e}. Without hub access, download it elsewhere and pass the local copy as "
            "data.path (a folder with one jsonl / parquet file or arrow folder per split, or a single file)"
        ) from e
    return dataset.to_list()


# ---------------------------------------------------------------------------------------------- splits


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """Where a task's records come from and how its three splits are made from the source's splits.

    name: short name used in sample ids and messages (also the sub-folder looked for in a shared data dir).
    hub_id, hub_config: the Hugging Face data set read when no local path is given.
    test: the source split served as `test`.
    train: the source split that `train` and `validation` are carved from (seeded), or None when the hub
      data set has none (a local folder is still searched for a `train` file). Without a training split
      they are carved from the `test` split and overlap it (a warning says so): fine for smoke runs, not
      for honest evaluation.
    local_stems: per source split, the file stems to look for in a local folder (first found wins).
    fields: the fields every record must have.
    """

    name: str
    hub_id: str
    hub_config: str | None
    test: str
    train: str | None
    local_stems: Mapping[str, Sequence[str]]
    fields: Sequence[str]


def find_split_file(folder: Path, stems: Sequence[str]) -> Path | None:
    """The first `<stem><suffix>` (see `LOCAL_SUFFIXES`) that exists in `folder`, or None."""
    for stem in stems:
        for suffix in LOCAL_SUFFIXES:
            candidate = folder / f"{stem}{suffix}"
            if candidate.exists():
                return candidate
    return None


def local_train_split(spec: SourceSpec) -> str:
    """The source split name a local folder's training file stands for (`train` when the hub has none)."""
    return spec.train or "train"


def _local_files(spec: SourceSpec, path: Path) -> dict[str, Path]:
    """Source split -> file for a local path: a single file / arrow folder is the whole (test) source."""
    if not path.exists():
        raise FileNotFoundError(f"data.path {path} does not exist")
    is_arrow_dir = path.is_dir() and (path / "state.json").exists()
    if path.is_file() or is_arrow_dir:
        return {spec.test: path}
    folder = path / spec.name if (path / spec.name).is_dir() else path
    files = {}
    for split in (spec.test, local_train_split(spec)):
        found = find_split_file(folder, spec.local_stems.get(split, (split,)))
        if found is not None:
            files[split] = found
    if spec.test not in files:
        wanted = ", ".join(f"{s}.jsonl" for s in spec.local_stems.get(spec.test, (spec.test,)))
        raise DataError(f"{folder}: no {spec.name} {spec.test} data found (looked for {wanted} and friends)")
    return files


def carve(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, carved) sorted index arrays: a seeded `fraction` of range(n) carved out (at least one row)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {fraction}")
    n_carved = 0 if fraction == 0 or n < 2 else max(1, round(n * fraction))
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_carved:]), np.sort(order[:n_carved])


def split_records(
    spec: SourceSpec,
    split: str,
    path: str | os.PathLike | None = None,
    validation_fraction: float = 0.1,
    split_seed: int = 0,
    hub_id: str | None = None,
    hub_config: str | None = None,
) -> list[tuple[str, Record]]:
    """`(id, record)` pairs of one split; ids are `<name>/<source split>/<row>`, stable under re-carving.

    `path=None` reads `hub_id` (default `spec.hub_id`) from the hub; a path reads a local file or folder.
    `test` is the source's test split; `train` / `validation` partition the source's train split with a
    seeded `validation_fraction` (see `SourceSpec.train` for sources without one).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
    if path is not None:
        files = _local_files(spec, Path(path))
        read = lambda s: read_records(files[s])
        available = set(files)
        train_source = local_train_split(spec)
        describe = lambda s: str(files[s])
    else:
        hub = hub_id or spec.hub_id
        config = hub_config if hub_id else spec.hub_config
        read = lambda s: load_hub(hub, config, s)
        available = {spec.test} | ({spec.train} if spec.train else set())
        train_source = spec.train
        describe = lambda s: f"{hub} ({s} split)"

    source = spec.test if split == "test" or train_source not in available else train_source
    if split != "test" and source == spec.test:
        warnings.warn(
            f"{spec.name}: no training split in {describe(spec.test)}; {split} is carved from the test data "
            "and overlaps it",
            stacklevel=3,
        )
    records = read(source)
    if not records:
        raise DataError(
            f"{describe(source)} holds no records; put the {spec.name} {source} data there (fields "
            f"{', '.join(spec.fields)}; one JSON object per line for .jsonl) or point data.path elsewhere"
        )
    require_fields(records, spec.fields, describe(source))
    if split == "test":
        rows = np.arange(len(records))
    else:
        train_rows, validation_rows = carve(len(records), validation_fraction, split_seed)
        rows = train_rows if split == "train" else validation_rows
    if not len(rows):
        raise DataError(
            f"{describe(source)}: its {len(records)} record(s) leave no {split} rows "
            f"(validation_fraction={validation_fraction}); add records or change data.options"
        )
    return [(f"{spec.name}/{source}/{i}", records[i]) for i in rows.tolist()]
