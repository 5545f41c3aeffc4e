"""`GRPOTrainer`: GRPO from Python, for those who start from a model, a data set and reward functions
rather than a config file (the shape of TRL's and Tunix's trainers).

    from datasets import load_dataset
    from rlvr_jax import GRPOTrainer

    def correct(prompts, completions, answer, **kwargs):       # TRL's signature
        return [1.0 if a in c else 0.0 for c, a in zip(completions, answer)]

    trainer = GRPOTrainer(
        model="HuggingFaceTB/SmolLM2-135M-Instruct",
        reward_fns=[correct, ("format", 0.1)],
        train_dataset=load_dataset("openai/gsm8k", "main", split="train"),
        config={"train.steps": 50, "rl.group_size": 8},
        prompt_column="question",
        answer_column="answer",
    )
    summary = trainer.train()

It is a front door, not a second trainer: it writes the data set to WORKDIR/data as json lines, builds a
config for the `hf` task (`rlvr_jax/data/hf_task.py`) with the reward functions registered
(`rlvr_jax.rewards.set_reward`), validates it, and `.train()` runs `rlvr_jax.trainer.train` on it, the
function behind scripts/train.py. So everything a config run does, this does too: held-out evaluation
before and after, metrics.jsonl / TensorBoard / W&B, checkpoints and resumption, the HF export.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import ml_collections

from rlvr_jax.config import ConfigError, base_config, unknown_key, validate
from rlvr_jax.rewards.callables import RewardSpec, set_reward
from rlvr_jax.trainer.loop import train
from rlvr_jax.trainer.reporting import RunSummary, print_summary

# Config sections whose keys are the user's (a loader's or a reward's options): overrides may add keys.
OPEN_SECTIONS = ("data.options", "reward.options")


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: Mapping[str, Any] | ml_collections.ConfigDict | None
) -> ml_collections.ConfigDict:
    """Sets `overrides` on `config` in place and returns it: keys dotted ("train.steps") or nested
    ({"train": {"steps": 50}}), mixed freely. A key the config lacks is a ConfigError naming the closest
    valid one, except inside data.options and reward.options, whose keys belong to the task and reward."""
    if overrides is None:
        return config
    if not isinstance(overrides, Mapping | ml_collections.ConfigDict):
        raise TypeError(f"config must be a ConfigDict, a dict or None, got {type(overrides).__name__}")
    for key, value in _flatten(overrides):
        _set(config, key, value)
    return config


def _flatten(overrides: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    """(dotted key, value) pairs; a nested mapping under an open section stays one value."""
    for key, value in overrides.items():
        dotted = f"{prefix}{key}"
        nested = isinstance(value, Mapping | ml_collections.ConfigDict)
        if nested and not _in_open_section(dotted + ".x"):
            yield from _flatten(value, f"{dotted}.")
        else:
            yield dotted, value


def _in_open_section(key: str) -> bool:
    return any(key.startswith(f"{section}.") for section in OPEN_SECTIONS)


def _set(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    if not _in_open_section(key):
        problem = unknown_key(config, key)
        if problem is not None:
            raise ConfigError(problem.split("; a key that the config file")[0])
    node = config
    with config.unlocked():
        for part in parents:
            if part not in node:
                node[part] = ml_collections.ConfigDict()
            node = node[part]
        try:
            node[leaf] = ml_collections.ConfigDict(value) if isinstance(value, Mapping) else value
        except (TypeError, ValueError) as e:
            raise ConfigError(f"config {key}={value!r}: {e}") from None


# ------------------------------------------------------------------------------------------------ data


def _rows(dataset: Any, argument: str) -> list[dict[str, Any]]:
    """A `datasets.Dataset` or an iterable of dicts as a list of dicts."""
    if isinstance(dataset, Mapping):  # a DatasetDict, or one row
        splits = ", ".join(map(str, dataset))
        raise TypeError(f"{argument} is a mapping ({splits}); pass one split, e.g. {argument}['train']")
    if hasattr(dataset, "to_list"):  # datasets.Dataset
        rows = dataset.to_list()
    else:
        try:
            rows = list(dataset)
        except TypeError:
            raise TypeError(
                f"{argument} must be a datasets.Dataset or a list of dicts, got {type(dataset).__name__}"
            ) from None
    if not rows:
        raise ValueError(f"{argument} has no rows")
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise TypeError(
                f"{argument} row {i} is a {type(row).__name__}, not a dict (a pandas DataFrame: pass "
                "datasets.Dataset.from_pandas(df))"
            )
    return [dict(row) for row in rows]


def _check_columns(rows: list[dict[str, Any]], argument: str, columns: Mapping[str, str | None]) -> None:
    for name, column in columns.items():
        if column is None:
            continue
        for i, row in enumerate(rows):
            if column not in row:
                where = f" (row {i})" if i else ""
                raise ConfigError(
                    f"{name}={column!r} is not a column of {argument}{where}; its columns: "
                    f"{', '.join(row) or 'none'}"
                )


def _plain(value: Any) -> Any:
    """json.dumps' fallback: numpy scalars and arrays as Python numbers and lists."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"a {type(value).__name__} cannot be written as JSON")


def _write_jsonl(rows: list[dict[str, Any]], path: Path, argument: str) -> None:
    lines = []
    for i, row in enumerate(rows):
        try:
            lines.append(json.dumps(row, default=_plain, ensure_ascii=False))
        except (TypeError, ValueError) as e:
            bad = next((k for k, v in row.items() if not _dumps_ok(v)), "?")
            raise TypeError(f"{argument} row {i}, column {bad!r}: {e}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _dumps_ok(value: Any) -> bool:
    try:
        json.dumps(value, default=_plain)
    except (TypeError, ValueError):
        return False
    return True


def default_workdir() -> Path:
    """runs/grpo-YYYYmmdd-HHMMSS under the current directory."""
    return Path("runs") / time.strftime("grpo-%Y%m%d-%H%M%S")


# ---------------------------------------------------------------------------------------------- trainer


class GRPOTrainer:
    """GRPO on a data set with reward functions, from Python (module docstring).

    Args:
      model: what to train: a hub id, a local HF directory or a GGUF file (`model.path`).
      reward_fns: a function, a registered reward's name, or a list mixing them, each optionally as a
        (reward, weight) pair: `[correct, ("format", 0.1)]` is `correct + 0.1 * format`. A function may
        have TRL's / Tunix's signature `fn(prompts, completions, **columns) -> list[float | None]` (the
        columns are the data set's other fields, one list each, e.g. `answer=[...]`; None: the reward
        does not apply to that sample and adds nothing), or this package's `fn(completions, samples,
        **options) -> RewardResult`. Functions defined in a notebook or a script's `__main__` work: they
        reach the reward worker processes by value (`rlvr_jax.rewards.callables`).
      train_dataset: a `datasets.Dataset`, a list of dicts, or a string for `data.dataset` (a hub id,
        a local file, folder or glob) read as the config's `hf` task reads it.
      eval_dataset: the held-out rows evaluated before and after training (and every
        `train.eval_every` steps), a Dataset or list of dicts; None: a seeded
        `data.options.validation_fraction` (10%) of train_dataset is held out instead. Rows that repeat,
        or whose prompt is also a training prompt, are left out and counted (`rlvr_jax.data.heldout`).
        With a string train_dataset it must be None (the config's data.eval_split /
        data.options.test_split choose).
      config: overrides on top of `rlvr_jax.config.base_config()`: a dict or ConfigDict with dotted keys
        ({"train.steps": 50}) or nested ones ({"rl": {"group_size": 8}}); a key the config lacks is an
        error naming the closest one. The data keys (data.task, dataset, split, prompt_column,
        answer_column, path, and eval_split with an eval_dataset) and model.path are set from the
        other arguments.
      workdir: the run's folder (checkpoints, metrics.jsonl, TensorBoard, evaluations, the HF export,
        the data as json lines); default runs/grpo-<date>-<time>. A folder that holds a run resumes it.
      prompt_column: the column with the prompts: strings (through the model's chat template when
        data.chat, the default) or lists of chat messages ({"role": ..., "content": ...}).
      answer_column: a column copied to each sample's `answer`, the field the registered rewards
        (numeric, math, qa_f1) read; None: the rows' own `answer` column, if any.

    Attributes: `config` (the validated ConfigDict `.train()` runs; config.json in the workdir),
    `workdir` (a Path).
    """

    def __init__(
        self,
        model: str,
        reward_fns: RewardSpec,
        train_dataset: Any,
        eval_dataset: Any = None,
        config: ml_collections.ConfigDict | Mapping[str, Any] | None = None,
        workdir: str | os.PathLike | None = None,
        prompt_column: str = "prompt",
        answer_column: str | None = None,
    ):
        if not isinstance(model, str | os.PathLike):
            raise TypeError(f"model must be a hub id or a path (a string), got {type(model).__name__}")
        cfg = apply_overrides(base_config(), config)
        self.workdir = Path(workdir) if workdir is not None else default_workdir()
        self.reward_fns = reward_fns
        with cfg.unlocked():
            cfg.model.path = str(model)
            cfg.data.task = "hf"
            cfg.data.path = None
            cfg.data.prompt_column = prompt_column
            cfg.data.answer_column = answer_column
            self._set_data(cfg, train_dataset, eval_dataset, prompt_column, answer_column)
        set_reward(cfg, reward_fns)
        validate(cfg)
        self.config = cfg

    def _set_data(
        self,
        cfg: ml_collections.ConfigDict,
        train_dataset: Any,
        eval_dataset: Any,
        prompt_column: str,
        answer_column: str | None,
    ) -> None:
        """data.dataset: the string given, or WORKDIR/data with train.jsonl (and test.jsonl)."""
        if isinstance(train_dataset, str | os.PathLike):
            if eval_dataset is not None:
                raise TypeError(
                    "eval_dataset needs an in-memory train_dataset; with a hub id or path, choose the "
                    "held-out split in the config (data.eval_split, data.options.test_split)"
                )
            cfg.data.dataset = str(train_dataset)
            return
        columns = {"prompt_column": prompt_column, "answer_column": answer_column}
        folder = self.workdir / "data"
        train_rows = _rows(train_dataset, "train_dataset")
        _check_columns(train_rows, "train_dataset", columns)
        eval_rows = None if eval_dataset is None else _rows(eval_dataset, "eval_dataset")
        if eval_rows is not None:
            _check_columns(eval_rows, "eval_dataset", columns)
        _write_jsonl(train_rows, folder / "train.jsonl", "train_dataset")
        (folder / "test.jsonl").unlink(missing_ok=True)
        if eval_rows is not None:
            _write_jsonl(eval_rows, folder / "test.jsonl", "eval_dataset")
            cfg.data.eval_split = "test"
            cfg.data.options["test_split"] = "test"
            if "validation_fraction" not in cfg.data.options:
                cfg.data.options["validation_fraction"] = 0.0  # every training row trains
        elif cfg.data.eval_split == "test":
            cfg.data.eval_split = "validation"
        cfg.data.dataset = str(folder)
        cfg.data.split = "train"

    def train(self) -> RunSummary:
        """Trains (or resumes the run in `workdir`) with `rlvr_jax.trainer.train`, prints the closing
        summary (held-out accuracy before and after, where the files are) and returns the
        `rlvr_jax.trainer.RunSummary`."""
        set_reward(self.config, self.reward_fns)  # this trainer's functions, whatever was registered since
        summary = train(self.config, self.workdir)
        if not self.config.logging.json_logs:  # JSON logs carry the same in their "end" event
            print_summary(summary)
        return summary

    def __repr__(self) -> str:
        model, reward = self.config.model.path, self.config.reward.name
        return f"GRPOTrainer(model={model!r}, reward={reward!r}, workdir={str(self.workdir)!r})"
