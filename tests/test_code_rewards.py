"""Code rewards and code tasks: fence extraction, unusable completions, HumanEval / MBPP loading and scoring.

The full reference runs (164 HumanEval, 500 MBPP) go through scripts/score.py in test_score_cli.py.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from rlvr_jax.data import get_task, registered_tasks
from rlvr_jax.data.loaders import DataError
from rlvr_jax.evaluation.evaluate import describe
from rlvr_jax.evaluation.generate_and_score import generate_and_score
from rlvr_jax.evaluation.metrics import eval_metrics, flat_summary
from rlvr_jax.generate.sampler import SamplingParams
from rlvr_jax.rewards import get_reward, registered_rewards
from rlvr_jax.rewards.code import extract_code, usable_code
from rlvr_jax.rewards.sandbox import CodeExecutor

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed")


def test_code_tasks_and_rewards_are_registered() -> None:
    assert {"humaneval", "mbpp"} <= set(registered_tasks())
    assert {"code_humaneval", "code_mbpp"} <= set(registered_rewards())
    assert get_task("humaneval").reward == "code_humaneval"
    assert get_task("mbpp").reward == "code_mbpp"


# ------------------------------------------------------------------------------------------------ tasks


def test_humaneval_loads_from_the_file_or_its_folder(humaneval: list[dict], shared_dir: Path) -> None:
    assert len(humaneval) == 164
    assert humaneval[0]["id"] == "HumanEval/0"
    assert {"prompt", "test", "entry_point"} <= humaneval[0].keys()
    from_file = get_task("humaneval").load("test", shared_dir / "data" / "humaneval" / "HumanEval.jsonl.gz")
    assert [s["id"] for s in from_file] == [s["id"] for s in humaneval]


def test_humaneval_train_validation_are_a_seeded_80_20_split(shared_dir: Path) -> None:
    task = get_task("humaneval")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "carved from the test data"
        train = {s["id"] for s in task.load("train", shared_dir / "data")}
        validation = {s["id"] for s in task.load("validation", shared_dir / "data")}
        again = {s["id"] for s in task.load("validation", shared_dir / "data")}
        other_seed = {s["id"] for s in task.load("validation", shared_dir / "data", split_seed=1)}
    assert len(train) + len(validation) == 164 and not train & validation
    assert abs(len(validation) - 33) <= 1
    assert validation == again and validation != other_seed


def test_mbpp_samples(mbpp: list[dict]) -> None:
    assert len(mbpp) == 500
    ids = [int(s["id"]) for s in mbpp]
    assert ids == list(range(11, 511)) and all(isinstance(s["id"], str) for s in mbpp)
    first = mbpp[0]
    assert first["text"] in first["prompt"] and first["test_list"][0] in first["prompt"]
    assert "python" in first["prompt"].lower()
    assert len(first["test_list"]) == 3


@pytest.mark.parametrize(
    ("task", "record", "missing"),
    [
        ("humaneval", {"task_id": "HumanEval/0", "prompt": "def f():\n", "entry_point": "f"}, "test"),
        ("mbpp", {"task_id": 1, "text": "Write f.", "code": "def f(): pass"}, "test_list"),
    ],
)
def test_wrong_schema_names_the_field_and_the_file(
    tmp_path: Path, task: str, record: dict, missing: str
) -> None:
    path = tmp_path / "test.jsonl"
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(DataError, match=missing) as info:
        get_task(task).load("test", path)
    assert str(path) in str(info.value)


# ------------------------------------------------------------------------------------------ extraction


def test_extract_code_without_and_with_fences() -> None:
    assert extract_code("    return 1\n") == ("    return 1\n", "")
    answer = "Here you go:\n```python\ndef f():\n    return 1\n```\nThis returns 1."
    assert extract_code(answer) == ("def f():\n    return 1\n", "")
    two = "```python\nprint(f())\n```\nand\n```py\ndef f():\n    return 2\n```\n"
    assert extract_code(two, "f") == ("def f():\n    return 2\n", "")
    assert extract_code(two) == ("print(f())\n", "")


@pytest.mark.parametrize(
    ("completion", "reason"),
    [
        ("```python\ndef f():\n    return 1\n", "unterminated"),
        ("```bash\nls\n```\n", "no python code block"),
        ("", "empty"),
        ("   \n\t", "empty"),
        ("```python\n```\n", "empty"),
        (None, "None"),
        (b"\xff\xfe\x00garbage", "binary"),
        ("def f():\n    return '\x00'", "NUL"),
        ("\x01\x02\x03binary\x04", "binary"),
        ("x" * 100_001, "too l"),
        ("def f():\n    return '\ud800'\n", "surrogate"),
        (12345, "int"),
    ],
)
def test_unusable_completions_are_rejected_with_a_reason(completion: object, reason: str) -> None:
    code, why = usable_code(completion, "f")
    assert code is None
    assert reason in why


# ------------------------------------------------------------------------------------------ scoring


@needs_bwrap
def test_humaneval_reward_plain_fenced_wrong_and_unusable_in_one_batch(humaneval: list[dict]) -> None:
    sample = humaneval[0]  # has_close_elements
    fenced = (
        "Sure! Here is the function:\n\n```python\n"
        "from typing import List\n\n"
        "def has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
        "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1 :])\n"
        "```\n"
    )
    completions = [
        sample["canonical_solution"],
        fenced,
        "    return False\n",
        "```python\ndef has_close_elements(numbers, threshold):\n",  # unterminated
        "",
        b"\xff\xfe",
        "x" * 200_000,
        "    import sys\n    sys.exit(0)\n",
    ]
    result = get_reward("code_humaneval")(completions, [sample] * len(completions), timeout_s=5.0)
    assert result.scores.tolist() == [1, 1, 0, 0, 0, 0, 0, 0], result.reasons
    assert result.reasons[0] == result.reasons[1] == "passed: 7/7 checks"
    assert result.reasons[2] == "failed: check 1 (line 10): AssertionError"
    assert "unterminated" in result.reasons[3]
    assert result.reasons[7] == (
        "failed: check 1 (line 10): the program ended before answering call 1 to has_close_elements "
        "(exit status 0)"
    )


@needs_bwrap
def test_mbpp_reward_uses_setup_code_and_fenced_answers(mbpp: list[dict]) -> None:
    by_id = {s["id"]: s for s in mbpp}
    tree = by_id["367"]  # the one task with test_setup_code: its asserts use trees the setup builds
    remove_occ = by_id["11"]
    fenced = f"```python\n{remove_occ['code']}\n```"
    completions = [tree["code"], fenced, "def remove_Occ(s, ch):\n    return s\n"]
    result = get_reward("code_mbpp")(completions, [tree, remove_occ, remove_occ])
    assert result.scores.tolist() == [1, 1, 0], result.reasons
    assert result.reasons[:2] == ["passed: 3/3 checks"] * 2
    assert result.reasons[2].startswith("failed: check 1 (line 1): AssertionError")
    # Task 367's reference is reported broken upstream; it fails only if test_setup_code is skipped.
    no_setup = {**tree, "test_setup_code": ""}
    skipped = get_reward("code_mbpp")([tree["code"]], [no_setup])
    assert skipped.scores.tolist() == [0] and "NameError" in skipped.reasons[0], skipped.reasons


def test_rewards_check_lengths_and_sample_fields(humaneval: list[dict]) -> None:
    with pytest.raises(ValueError, match="completions"):
        get_reward("code_humaneval")(["a", "b"], humaneval[:1])
    with pytest.raises(KeyError, match="entry_point"):
        get_reward("code_humaneval")(["    return 1\n"], [{"id": "x", "prompt": "", "test": ""}])


# ------------------------------------------------------------------------------- extracted and strict

RIGHT = "def has_close_elements(numbers, threshold):\n    return any(abs(a - b) < threshold for i, a in "
RIGHT += "enumerate(numbers) for b in numbers[i + 1 :])\n"
WRONG = "def has_close_elements(numbers, threshold):\n    return False\n"


@needs_bwrap
def test_the_extracted_solution_is_scored_and_the_strict_verdict_reported(humaneval: list[dict]) -> None:
    """A right function followed by a wrong self-written assert, a demo print, a budget-cut demo call: the
    extracted program passes, the whole block fails; a wrong function fails both ways."""
    sample = humaneval[0]
    completions = [
        f"Here it is:\n```python\n{RIGHT}\nassert has_close_elements([1.0, 2.0], 0.5) is True\n```\nDone.",
        f"```python\n{RIGHT}\nprint(has_close_elements([1.0, 2.0], 0.5))\nhas_close_elements([1.0,",
        f"```python\n{WRONG}\nassert has_close_elements([1.0], 0.5) is False\n```",
        f"```python\n{RIGHT}```",
    ]
    result = get_reward("code_humaneval")(completions, [sample] * 4, report_strict=True)
    strict = result.variants["strict"]
    assert result.scores.tolist() == [1, 1, 0, 1], result.reasons
    assert strict.scores.tolist() == [0, 0, 0, 1], strict.reasons
    assert result.reasons[0] == "passed: 7/7 checks [extracted: line 4: assert]"
    assert result.reasons[1].startswith("passed: 7/7 checks [extracted: closed the code fence; line ")
    assert "AssertionError" in strict.reasons[0] and "unterminated" in strict.reasons[1]
    assert result.reasons[3] == strict.reasons[3] == "passed: 7/7 checks"  # nothing to extract
    alone = get_reward("code_humaneval")(completions, [sample] * 4, program="strict")
    assert alone.scores.tolist() == strict.scores.tolist() and alone.variants == {}
    with pytest.raises(ValueError, match=r"program='whole'.*extracted, strict"):
        get_reward("code_humaneval")(completions[:1], [sample], program="whole")


@needs_bwrap
def test_mbpp_extraction_keeps_what_the_setup_code_needs(mbpp: list[dict]) -> None:
    """Task 367's setup code builds trees of the completion's `Node` class: extraction keeps the class
    (and the asserts' function) and drops the model's own demo tree and asserts."""
    tree = next(s for s in mbpp if s["id"] == "367")
    demo = "\nroot = Node(1)\nprint(is_tree_balanced(root))\nassert is_tree_balanced(root) is False\n"
    completion = f"```python\n{tree['code']}\n{demo}```"
    result = get_reward("code_mbpp")([completion], [tree], report_strict=True)
    assert result.scores.tolist() == [1.0], result.reasons
    assert result.variants["strict"].scores.tolist() == [0.0], result.variants["strict"].reasons
    assert "print(...)" in result.reasons[0] and "assert" in result.reasons[0]


class CountingExecutor(CodeExecutor):
    """The real executor, counting the programs it is given."""

    runs = 0

    def run_tests(self, jobs, **options):
        CountingExecutor.runs += len(jobs)
        return super().run_tests(jobs, **options)


@needs_bwrap
def test_a_program_extraction_leaves_as_it_is_runs_once_for_both_verdicts(humaneval: list[dict]) -> None:
    sample = humaneval[0]
    completions = [sample["canonical_solution"], f"```python\n{RIGHT}```", f"```python\n{RIGHT}print(1)\n```"]
    with CountingExecutor(isolation="bwrap") as executor:
        result = get_reward("code_humaneval")(
            completions, [sample] * 3, report_strict=True, executor=executor
        )
    assert result.scores.tolist() == result.variants["strict"].scores.tolist() == [1, 1, 1]
    assert CountingExecutor.runs == 4  # the third completion's two programs differ


class ReplaySampler:
    """Stands in for the model in `generate_and_score`: each prompt's completion is given in advance (one
    token per completion), so the test is about what the evaluation does with them."""

    prompt_buckets = (8,)

    def __init__(self, completions: dict[str, str]) -> None:
        self.texts = list(completions.values())
        self.index = {prompt: i for i, prompt in enumerate(completions)}
        self.tokenizer = self

    def format(self, prompt: str, chat: bool, system: str | None = None) -> str:
        return prompt

    def encode(self, text: str, chat_formatted: bool = False) -> list[int]:
        return [self.index[text]]

    def encode_batch(
        self, texts: list[str], chat_formatted: bool, length: int
    ) -> tuple[np.ndarray, np.ndarray]:
        ids = np.array([[self.index[t]] + [0] * (length - 1) for t in texts])
        return ids, np.ones_like(ids)

    def generate_ids(self, ids, mask, params, seed: int, group_size: int) -> SimpleNamespace:
        tokens = np.repeat(ids[:, :1], group_size, axis=0)
        return SimpleNamespace(
            tokens=tokens, lengths=np.ones(len(tokens), int), finished=np.ones(len(tokens), bool)
        )

    def truncate_at_stop(self, ids: np.ndarray) -> np.ndarray:
        return ids

    def decode(self, ids: np.ndarray) -> str:
        return self.texts[int(ids[0])]


@needs_bwrap
def test_evaluation_reports_the_extracted_and_the_strict_accuracy(humaneval: list[dict]) -> None:
    """generate_and_score on three HumanEval problems: rows keep both verdicts, metrics both accuracies."""
    samples = humaneval[:3]
    good = [f"```python\n{s['prompt']}{s['canonical_solution']}```" for s in samples]
    completions = {  # right with a wrong self-test, right, wrong
        samples[0]["prompt"]: good[0][: -len("```")] + "\nassert False, 'my own test'\n```",
        samples[1]["prompt"]: good[1],
        samples[2]["prompt"]: "```python\ndef truncate_number(number):\n    return 0.0\n```",
    }
    task = get_task("humaneval")
    scored = generate_and_score(ReplaySampler(completions), task, samples, SamplingParams(max_new_tokens=4))
    rows = [s.to_row() for s in scored]
    assert [r["passed"] for r in rows] == [True, True, False]
    assert [r["passed_strict"] for r in rows] == [False, True, False]
    assert rows[0]["reason"] == "passed: 7/7 checks [extracted: line 21: assert]"
    assert "my own test" in rows[0]["reason_strict"]
    assert rows[1]["reason"] == rows[1]["reason_strict"] == "passed: 4/4 checks"
    metrics = eval_metrics(rows)
    assert metrics["accuracy"]["value"] == pytest.approx(2 / 3)
    assert metrics["accuracy_strict"]["value"] == pytest.approx(1 / 3)
    assert flat_summary(metrics)["accuracy_strict"] == pytest.approx(1 / 3)
    shown = describe({"task": "humaneval", "split": "test", "temperature": 0.0, **metrics})
    assert "accuracy   66.7%" in shown and "strict     33.3%" in shown
    strict = generate_and_score(
        ReplaySampler(completions), task, samples, SamplingParams(max_new_tokens=4),
        reward_options={"program": "strict"},
    )  # fmt: skip
    assert [s.reward for s in strict] == [0.0, 1.0, 0.0]
