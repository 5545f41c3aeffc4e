"""Verifiable tasks (loaders, prompts, rewards), registered by name (`hf`: any data set with a prompt
column), and grain input pipelines."""

from rlvr_jax.data import code_tasks, hf_task, text_tasks  # noqa: F401  (registration)
from rlvr_jax.data.base import Sample, Task, get_task, register_task, registered_tasks

__all__ = ["Sample", "Task", "get_task", "register_task", "registered_tasks"]
