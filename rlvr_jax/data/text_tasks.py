"""Text tasks: gsm8k, math (MATH-500), nq_open, imdb, sst2 and procedural arithmetic (reasoning-gym).

Every loader has the signature `load(split, path=None, *, chat=True, validation_fraction=0.1, split_seed=0,
limit=None, hub_id=None, hub_config=None)` (arithmetic: see `load_arithmetic`). `path=None` reads the hub
id of the task; a path reads a local file or folder (see `loaders.split_records`; the folder may also be
the parent of per-task folders, such as ../shared/data). `chat` picks the prompt template: an instruction
for chat models (the sampler applies the chat template and the task's system prompt) or a completion-style
prefix for base models. The templates are the module constants below, so that what a model is asked is
visible in one place.

Splits (`validation` is always a seeded `validation_fraction` of the source's training data):
  gsm8k    train/validation <- train (7,473), test <- test (1,319)
  math     MATH-500 has only a test split: test <- all 500; train/validation are carved from those same
           500 (they overlap test; a warning says so). To train on the full MATH set, pass a folder with
           train.jsonl and test.jsonl (fields problem, solution) as the path.
  nq_open  train/validation <- train (87,925 on the hub), test <- validation (3,610; NQ-open's test set)
  imdb     train/validation <- train (25,000), test <- test (25,000); locally `sample.jsonl` is the test
           split and train/validation are carved from it
  sst2     train/validation <- train (67,349), test <- validation (872; GLUE's test labels are hidden)
  Where a local folder has only the test-side file (nq_open, sst2, imdb, math500 in ../shared/data),
  train/validation are carved from it, overlapping test, with a warning.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from rlvr_jax.data.base import Sample, Task, register_task
from rlvr_jax.data.loaders import DataError, Record, SourceSpec, split_records
from rlvr_jax.rewards.math_answers import gold_number, last_boxed

# ------------------------------------------------------------------------------------------ templates

MATH_SYSTEM_PROMPT = "You are a careful mathematician. Reason step by step, then state the final answer."

GSM8K_CHAT_TEMPLATE = (
    "{question}\n\n"
    "Solve the problem step by step. "
    'End your response with the final answer on its own line as "#### <number>".'
)
GSM8K_PLAIN_TEMPLATE = (
    'Solve the math problem. End with the final answer on its own line as "#### <number>".\n\n'
    "Question: {question}\nAnswer:"
)
MATH_CHAT_TEMPLATE = (
    "{problem}\n\nSolve the problem step by step and put your final answer within \\boxed{{}}."
)
MATH_PLAIN_TEMPLATE = "Problem: {problem}\nSolution (with the final answer in \\boxed{{}}):"
NQ_CHAT_TEMPLATE = (
    "Answer the question with a short phrase of a few words. "
    'Write it on a single line starting with "Answer:".\n\nQuestion: {question}'
)
NQ_PLAIN_TEMPLATE = "Question: {question}\nAnswer:"
SENTIMENT_CHAT_TEMPLATE = (
    "Is the sentiment of this movie review positive or negative? "
    'Reply with one word: "positive" or "negative".\n\nReview: {text}'
)
SENTIMENT_PLAIN_TEMPLATE = "Review: {text}\nSentiment (positive or negative):"
ARITHMETIC_CHAT_TEMPLATE = (
    '{question}\n\nEnd your response with the final answer on its own line as "#### <number>".'
)
ARITHMETIC_PLAIN_TEMPLATE = "Question: {question}\nAnswer:"


def render(chat_template: str, plain_template: str, chat: bool, **fields: str) -> str:
    return (chat_template if chat else plain_template).format(**fields)


def _question(text: str) -> str:
    """NQ-open questions are lowercase and unpunctuated; a question mark makes them read as questions."""
    text = text.strip()
    return text if text.endswith("?") else text + "?"


# ------------------------------------------------------------------------------------------ samples


def gsm8k_sample(sample_id: str, record: Record, chat: bool) -> Sample:
    """`answer` is the number after `####` (separators removed); `solution` keeps the reference text."""
    solution = record["answer"]
    if "####" not in solution:
        raise DataError(f"{sample_id}: the GSM8K answer has no '#### <number>' line")
    answer = solution.rsplit("####", 1)[1].strip().replace(",", "")
    prompt = render(GSM8K_CHAT_TEMPLATE, GSM8K_PLAIN_TEMPLATE, chat, question=record["question"])
    return {
        "id": sample_id,
        "prompt": prompt,
        "question": record["question"],
        "answer": answer,
        "solution": solution,
    }


def math_sample(sample_id: str, record: Record, chat: bool) -> Sample:
    """`answer` is the hub's `answer` field when present, else the last `\\boxed{}` of the solution."""
    answer = record.get("answer") or last_boxed(record["solution"])
    if not answer:
        raise DataError(f"{sample_id}: the solution has no \\boxed{{}} answer and the record no 'answer'")
    prompt = render(MATH_CHAT_TEMPLATE, MATH_PLAIN_TEMPLATE, chat, problem=record["problem"])
    sample = {
        "id": sample_id,
        "prompt": prompt,
        "problem": record["problem"],
        "answer": answer,
        "solution": record["solution"],
    }
    sample.update({k: record[k] for k in ("level", "subject", "unique_id") if k in record})
    return sample


def nq_sample(sample_id: str, record: Record, chat: bool) -> Sample:
    answers = record["answer"]
    answers = [answers] if isinstance(answers, str) else list(answers)
    prompt = render(NQ_CHAT_TEMPLATE, NQ_PLAIN_TEMPLATE, chat, question=_question(record["question"]))
    return {"id": sample_id, "prompt": prompt, "question": record["question"], "answers": answers}


def _label(sample_id: str, value: Any) -> int:
    """0/1 from an int or a "0"/"1" string (the IMDb copy stores labels as strings)."""
    if isinstance(value, str) and value.strip() in ("0", "1"):
        return int(value)
    if isinstance(value, int | float) and value in (0, 1):
        return int(value)
    raise DataError(f"{sample_id}: label {value!r} is not 0/1 (an unlabelled split, such as GLUE's test?)")


def imdb_sample(sample_id: str, record: Record, chat: bool) -> Sample:
    prompt = render(SENTIMENT_CHAT_TEMPLATE, SENTIMENT_PLAIN_TEMPLATE, chat, text=record["text"].strip())
    return {
        "id": sample_id,
        "prompt": prompt,
        "text": record["text"],
        "label": _label(sample_id, record["label"]),
    }


def sst2_sample(sample_id: str, record: Record, chat: bool) -> Sample:
    text = record["sentence"].strip()
    prompt = render(SENTIMENT_CHAT_TEMPLATE, SENTIMENT_PLAIN_TEMPLATE, chat, text=text)
    return {"id": sample_id, "prompt": prompt, "text": text, "label": _label(sample_id, record["label"])}


# ------------------------------------------------------------------------------------------ loaders

SampleFn = Callable[[str, Record, bool], Sample]


def make_loader(spec: SourceSpec, to_sample: SampleFn) -> Callable[..., list[Sample]]:
    """A `Task.load` for a file / hub source: read the split, check fields, render prompts."""

    def load(
        split: str,
        path: str | os.PathLike | None = None,
        *,
        chat: bool = True,
        validation_fraction: float = 0.1,
        split_seed: int = 0,
        limit: int | None = None,
        hub_id: str | None = None,
        hub_config: str | None = None,
    ) -> list[Sample]:
        pairs = split_records(spec, split, path, validation_fraction, split_seed, hub_id, hub_config)
        return [to_sample(sample_id, record, chat) for sample_id, record in pairs[:limit]]

    load.__doc__ = f"Samples of {spec.name} (hub {spec.hub_id}); see the text_tasks module docstring."
    return load


GSM8K = SourceSpec(
    name="gsm8k",
    hub_id="openai/gsm8k",
    hub_config="main",
    test="test",
    train="train",
    local_stems={"train": ("train",), "test": ("test",)},
    fields=("question", "answer"),
)
MATH500 = SourceSpec(
    name="math500",
    hub_id="HuggingFaceH4/MATH-500",
    hub_config=None,
    test="test",
    train=None,
    local_stems={"test": ("test",)},
    fields=("problem", "solution"),
)
NQ_OPEN = SourceSpec(
    name="nq_open",
    hub_id="google-research-datasets/nq_open",
    hub_config=None,
    test="validation",
    train="train",
    local_stems={"train": ("train",), "validation": ("validation", "dev")},
    fields=("question", "answer"),
)
IMDB = SourceSpec(
    name="imdb",
    hub_id="stanfordnlp/imdb",
    hub_config=None,
    test="test",
    train="train",
    local_stems={"train": ("train",), "test": ("test", "sample")},
    fields=("text", "label"),
)
SST2 = SourceSpec(
    name="sst2",
    hub_id="stanfordnlp/sst2",
    hub_config=None,
    test="validation",
    train="train",
    local_stems={"train": ("train",), "validation": ("validation", "dev")},
    fields=("sentence", "label"),
)

register_task(
    Task("gsm8k", make_loader(GSM8K, gsm8k_sample), reward="numeric", system_prompt=MATH_SYSTEM_PROMPT)
)
register_task(
    Task("math", make_loader(MATH500, math_sample), reward="math", system_prompt=MATH_SYSTEM_PROMPT)
)
register_task(Task("nq_open", make_loader(NQ_OPEN, nq_sample), reward="qa_f1"))
register_task(Task("imdb", make_loader(IMDB, imdb_sample), reward="label"))
register_task(Task("sst2", make_loader(SST2, sst2_sample), reward="label"))


# ------------------------------------------------------------------------------------------ arithmetic

ARITHMETIC_SIZES: Mapping[str, int] = {"train": 10_000, "validation": 500, "test": 1_000}
_SPLIT_OFFSET = {"train": 0, "validation": 1, "test": 2}
# reasoning-gym seeds item i with `seed + i`, so nearby seeds share items; each (seed, split) gets its own
# block of SEED_STRIDE consecutive seeds instead.
SEED_STRIDE = 2**20


def _span(value: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """A difficulty knob given as one value (fixed) or a (min, max) pair."""
    if isinstance(value, int):
        return value, value
    low, high = value
    return int(low), int(high)


def load_arithmetic(
    split: str,
    path: str | os.PathLike | None = None,
    *,
    chat: bool = True,
    size: int | None = None,
    seed: int = 0,
    generator: str = "basic_arithmetic",
    digits: int | tuple[int, int] | None = None,
    terms: int | tuple[int, int] | None = None,
    generator_options: Mapping[str, Any] | None = None,
    limit: int | None = None,
) -> list[Sample]:
    """Seeded procedural problems from a reasoning-gym generator (`path` is unused: nothing is read).

    generator: a reasoning-gym data set with integer answers (`basic_arithmetic`, `chain_sum`, ...).
    digits / terms: difficulty knobs, one value or a (min, max) pair, mapped to the generator's
      min_/max_digits and min_/max_terms; `generator_options` passes any other config field through.
    size: number of problems (default `ARITHMETIC_SIZES[split]`).
    Each (seed, split) draws items from its own block of generator seeds (see `SEED_STRIDE`), so splits
    and seeds never share a generator seed; with small difficulty settings the problem space itself is
    small and the same question text can still come up in several splits and within one (1 digit, 2
    terms: 871 of the 1,000 test questions are among the 10,000 training ones). The trainer and the
    evaluation remove such items from the held-out split (`rlvr_jax.data.heldout`).
    """
    del path
    if split not in _SPLIT_OFFSET:
        raise ValueError(f"unknown split {split!r}; use one of {tuple(_SPLIT_OFFSET)}")
    import reasoning_gym  # slow to import (~2 s), so only when the task is used

    options: dict[str, Any] = dict(generator_options or {})
    if digits is not None:
        options["min_digits"], options["max_digits"] = _span(digits)
    if terms is not None:
        options["min_terms"], options["max_terms"] = _span(terms)
    count = size if size is not None else ARITHMETIC_SIZES[split]
    count = count if limit is None else min(count, limit)
    if not 0 < count <= SEED_STRIDE or seed < 0:
        raise ValueError(f"arithmetic needs 0 < size <= {SEED_STRIDE} and seed >= 0, got {size=}, {seed=}")
    split_seed = (len(_SPLIT_OFFSET) * seed + _SPLIT_OFFSET[split]) * SEED_STRIDE
    dataset = reasoning_gym.create_dataset(generator, size=count, seed=split_seed, **options)
    samples = []
    for i in range(count):
        item = dataset[i]
        answer = str(item["answer"]).strip()
        if gold_number(answer) is None:
            raise DataError(
                f"reasoning-gym {generator!r} gave a non-numeric answer {answer!r}; use a numeric one"
            )
        prompt = render(ARITHMETIC_CHAT_TEMPLATE, ARITHMETIC_PLAIN_TEMPLATE, chat, question=item["question"])
        samples.append(
            {
                "id": f"arithmetic/{generator}/{seed}/{split}/{i}",
                "prompt": prompt,
                "question": item["question"],
                "answer": answer,
            }
        )
    return samples


register_task(
    Task("arithmetic", load_arithmetic, reward="numeric", system_prompt=MATH_SYSTEM_PROMPT, procedural=True)
)
