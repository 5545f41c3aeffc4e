"""The task interface: a registry of named verifiable tasks (loader + prompt + reward).

A task turns a data source into a list of samples (dicts with at least `id` and `prompt`, plus whatever
fields its reward needs, such as `answer` or `test`), and names the reward that scores completions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
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
    system_prompt: optional system message used when the prompt goes through a chat template.
    splits: the splits the loader can serve.
    """

    name: str
    load: Callable[..., list[Sample]]
    reward: str
    system_prompt: str | None = None
    splits: Sequence[str] = ("train", "validation", "test")


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
