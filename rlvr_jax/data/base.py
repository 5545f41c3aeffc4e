"""The task interface: a registry of named verifiable tasks (loader + prompt + reward).

A task turns a data source into a list of samples (dicts with at least `id` and `prompt`, plus whatever
fields its reward needs, such as `answer` or `test`), and names the reward that scores completions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rlvr_jax.registry import Registry, same_definition

Sample = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Task:
    """A verifiable task.

    name: registry key used by configs (`data.task`).
    load: `load(split, path=None, **options) -> list[Sample]`; `path=None` reads the Hugging Face hub,
      a path reads a local jsonl / json / parquet file or arrow directory.
    reward: name of the registered reward function that scores this task's completions.
      "" for a task without one (such as `hf`): the config's reward.name must say.
    system_prompt: optional system message used when the prompt goes through a chat template.
    splits: the splits the loader can serve.
    config_keys: loader keyword -> `data.<key>` for the loader arguments that have keys of their own in the
      config's data section (`hf`: data.dataset, data.split, data.prompt_column, data.answer_column),
      passed by `load_samples` next to data.options.
    procedural: the questions are generated (numbers and operators), so the held-out check compares them
      with numbers by value and spacing ignored (`rlvr_jax.data.heldout.normalise_question`).
    """

    name: str
    load: Callable[..., list[Sample]]
    reward: str
    system_prompt: str | None = None
    splits: Sequence[str] = ("train", "validation", "test")
    config_keys: Mapping[str, str] = dataclasses.field(default_factory=dict)
    procedural: bool = False


def _same_task(old: Task, new: Task) -> bool:
    return old.reward == new.reward and same_definition(old.load, new.load)


TASKS: Registry[Task] = Registry("task", same=_same_task)


def register_task(task: Task) -> Task:
    """Makes a task available to configs by name. Registering an equal task again (a re-run notebook cell)
    replaces it; a different task under a taken name is an error."""
    return TASKS.register(task.name, task)


def get_task(name: str) -> Task:
    return TASKS.get(name)


def registered_tasks() -> list[str]:
    return TASKS.names()


def load_samples(task: Task, config: Any, split: str) -> list[Sample]:
    """One split of `task` as the config describes it: the loader called with data.path, data.chat,
    data.options and the data keys the task reads (`Task.config_keys`). The trainer and the evaluation
    load through here, so both read the same data."""
    data = config.data
    own = {argument: data[key] for argument, key in task.config_keys.items()}
    return task.load(split, data.path, chat=data.chat, **dict(data.options), **own)
