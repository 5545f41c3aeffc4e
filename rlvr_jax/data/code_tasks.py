"""Code tasks: humaneval and mbpp, scored by running unit tests in the sandbox (`rewards/code.py`).

Both loaders share the text tasks' signature, `load(split, path=None, *, chat=True, validation_fraction,
split_seed=0, limit=None, hub_id=None, hub_config=None)`, and read through `loaders.split_records`, so a
local path may be the file itself, its folder, or the parent of a `humaneval/` / `mbpp/` folder (such as
../shared/data). Sample ids are the data set's own task ids as strings ("HumanEval/0", "11"), so that
pre-generated completions in the human-eval format join on them.

Splits:
  humaneval  164 problems, all in `test`. train / validation are a seeded 80/20 partition of those same
             problems (a warning says they overlap test): for tiny demos and smoke runs only.
  mbpp       test <- test (500, task ids 11-510). On the hub train / validation are carved from MBPP's
             train split (374); a local folder with only test.jsonl carves them from test (with a warning).

Prompts: HumanEval's prompt is the function signature + docstring the completion continues (the reward
needs it verbatim, so chat models get their instruction from the system prompt instead). MBPP's prompt is
the problem statement plus one of its asserts as an example, asking for a Python function.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from rlvr_jax.data.base import Sample, Task, register_task
from rlvr_jax.data.loaders import Record, SourceSpec, split_records

HUMANEVAL_SYSTEM_PROMPT = (
    "You are an expert Python programmer. Complete the given function. "
    "Reply with the complete function in a ```python code block."
)
MBPP_CHAT_TEMPLATE = (
    "{text}\n\nYour function must pass tests such as:\n\n{example}\n\n"
    "Reply with the complete Python function in a ```python code block."
)
MBPP_PLAIN_TEMPLATE = '"""\n{text}\nExample: {example}\n"""\n'

HUMANEVAL = SourceSpec(
    name="humaneval",
    hub_id="openai/openai_humaneval",
    hub_config=None,
    test="test",
    train=None,
    local_stems={"test": ("HumanEval", "test", "human-eval-v2-20210705")},
    fields=("task_id", "prompt", "test", "entry_point"),
)
MBPP = SourceSpec(
    name="mbpp",
    hub_id="google-research-datasets/mbpp",
    hub_config="full",
    test="test",
    train="train",
    local_stems={"train": ("train",), "test": ("test",)},
    fields=("task_id", "text", "test_list"),
)


def humaneval_sample(record: Record, chat: bool) -> Sample:
    """The fields `code_humaneval` needs, plus the reference solution for checks of the pipeline."""
    return {
        "id": str(record["task_id"]),
        "prompt": record["prompt"],
        "test": record["test"],
        "entry_point": record["entry_point"],
        "canonical_solution": record.get("canonical_solution", ""),
    }


def mbpp_sample(record: Record, chat: bool) -> Sample:
    """Problem text + first assert as the prompt; all asserts (and their setup) for `code_mbpp`."""
    tests = list(record["test_list"])
    template = MBPP_CHAT_TEMPLATE if chat else MBPP_PLAIN_TEMPLATE
    return {
        "id": str(record["task_id"]),
        "prompt": template.format(text=record["text"].strip(), example=tests[0].strip() if tests else ""),
        "text": record["text"],
        "test_list": tests,
        "test_setup_code": record.get("test_setup_code") or "",
        "challenge_test_list": list(record.get("challenge_test_list") or []),
        "code": record.get("code", ""),
    }


def make_code_loader(
    spec: SourceSpec, to_sample: Callable[[Record, bool], Sample], validation_fraction: float
) -> Callable[..., list[Sample]]:
    """A `Task.load` reading one split through the shared loaders and keeping the source's task ids."""

    def load(
        split: str,
        path: str | os.PathLike | None = None,
        *,
        chat: bool = True,
        validation_fraction: float = validation_fraction,
        split_seed: int = 0,
        limit: int | None = None,
        hub_id: str | None = None,
        hub_config: str | None = None,
        **_: Any,
    ) -> list[Sample]:
        pairs = split_records(spec, split, path, validation_fraction, split_seed, hub_id, hub_config)
        return [to_sample(record, chat) for _, record in pairs[:limit]]

    load.__doc__ = f"Samples of {spec.name} (hub {spec.hub_id}); see the code_tasks module docstring."
    return load


register_task(
    Task(
        "humaneval",
        make_code_loader(HUMANEVAL, humaneval_sample, validation_fraction=0.2),
        reward="code_humaneval",
        system_prompt=HUMANEVAL_SYSTEM_PROMPT,
    )
)
register_task(Task("mbpp", make_code_loader(MBPP, mbpp_sample, validation_fraction=0.1), reward="code_mbpp"))
