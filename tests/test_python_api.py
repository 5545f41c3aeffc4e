"""Rewards as plain Python functions and the Python API.

A reward defined in a script's `__main__` (a script without an `if __name__` guard) and one with TRL's
signature train through `GRPOTrainer` on a `datasets.Dataset`; a reward that raises in the worker
processes reports its own error in the main process; `data.task="hf"` trains and evaluates on a local
json file with named columns, and a wrong column is a config error that names the columns there are.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from rlvr_jax.config import ConfigError, base_config, validate
from rlvr_jax.monitoring.metrics import read_metrics
from rlvr_jax.rewards import RewardResult, set_reward, trl_reward
from rlvr_jax.rewards.base import REWARDS
from rlvr_jax.rewards.callables import NOT_APPLICABLE, TRLReward, reward_config
from rlvr_jax.trainer.grpo_trainer import GRPOTrainer, apply_overrides
from tests.conftest import REPO
from tests.test_trainer import tiny_model_dir  # noqa: F401  (fixture: a tiny llama with SmolLM2's tokenizer)

TINY_RUN = {
    "train.steps": 1,
    "rl": {"prompts_per_step": 2, "group_size": 2},
    "sampling.max_new_tokens": 8,
    "sampling.top_k": 20,
    "model.dtype": "float32",
    "data.eval_limit": 2,
    "logging.tensorboard": False,
    "train.export_hf": False,
}

# Run as `python script.py MODEL WORKDIR`: everything at the top level, as people write scripts.
SCRIPT = f"""
import json, sys
import numpy as np
import datasets
from tests.tiny import use_compilation_cache
from rlvr_jax import GRPOTrainer
from rlvr_jax.rewards import RewardResult

use_compilation_cache()
print("script top level ran", flush=True)
MODEL, WORKDIR = sys.argv[1], sys.argv[2]
VOWELS = "aeiou"

def vowels(completions, samples, **options):  # this package's signature
    scores = [sum(ch in VOWELS for ch in c) / max(len(c), 1) for c in completions]
    return RewardResult(np.asarray(scores, np.float32), ["vowel fraction"] * len(scores))

def longer(prompts, completions, answer, **kwargs):  # TRL's; None where it does not apply
    assert all(isinstance(p, str) for p in prompts) and len(answer) == len(completions)
    return [None if a == "skip" else len(c) / 100 for c, a in zip(completions, answer)]

def broken(prompts, completions, **kwargs):  # fails on the training prompts only
    if any(p.startswith("Train") for p in prompts):
        raise ZeroDivisionError("no answer to divide by")
    return [0.0] * len(completions)

rows = lambda kind, n: [
    {{"question": f"{{kind}} {{i}}: say something.", "answer": "skip" if i % 2 else str(i)}} for i in range(n)
]
train = datasets.Dataset.from_list(rows("Train", 8))
config = {TINY_RUN!r}
trainer = GRPOTrainer(
    MODEL, [vowels, (longer, 0.5), ("format", 0.1)], train, rows("Eval", 4), config, WORKDIR + "/mixed",
    prompt_column="question", answer_column="answer",
)
summary = trainer.train()
print("SUMMARY " + json.dumps({{"steps": summary.steps, "metrics": summary.metrics_file,
                               "reward": trainer.config.reward.name}}), flush=True)
try:
    GRPOTrainer(MODEL, broken, train, rows("Eval", 4), config, WORKDIR + "/broken",
                prompt_column="question").train()
except Exception as e:
    print("ERROR " + json.dumps({{"type": type(e).__name__, "message": str(e)}}), flush=True)
"""


@pytest.fixture(scope="module")
def script_run(tiny_model_dir, tmp_path_factory):  # noqa: F811
    """The script above, run once: (the finished process, its workdir)."""
    folder = tmp_path_factory.mktemp("script")
    (folder / "script.py").write_text(SCRIPT)
    env = {
        "PYTHONPATH": str(REPO),
        "PATH": "/usr/bin:/bin",
        "JAX_PLATFORMS": "cpu",
        "HF_DATASETS_OFFLINE": "1",
    }
    proc = subprocess.run(
        [sys.executable, "script.py", str(tiny_model_dir), str(folder / "runs")],
        cwd=folder, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    return proc, folder / "runs"


def _line(proc: subprocess.CompletedProcess, tag: str) -> dict:
    lines = [line for line in proc.stdout.splitlines() if line.startswith(tag + " ")]
    assert lines, f"no {tag} line; stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return json.loads(lines[0][len(tag) + 1 :])


def test_rewards_from_main_and_with_trls_signature_train_a_grpo_trainer_on_a_dataset(script_run):
    proc, runs = script_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = _line(proc, "SUMMARY")
    assert summary["steps"] == 1 and summary["reward"] == "weighted_sum"
    (row,) = [r for r in read_metrics(summary["metrics"]) if "reward/mean" in r]
    assert math.isfinite(row["reward/mean"]) and row["train/skipped"] == 0
    # The reward workers never ran the script: its top level ran once, in the main process.
    assert proc.stdout.count("script top level ran") == 1
    # The held-out rows were scored by all three parts; None scored 0 and said so.
    samples = [
        json.loads(line) for line in (runs / "mixed/eval/after/samples.jsonl").read_text().splitlines()
    ]
    assert [s["prompt"] for s in samples] == ["Eval 0: say something.", "Eval 1: say something."]
    for s in samples:
        parts = s["reason"].split(" | ")
        named = {p.split("=")[0]: p for p in parts}
        assert sorted(named) == ["format(x0.1)", "longer(x0.5)", "vowels(x1)"]
        longer = named["longer(x0.5)"]
        assert (NOT_APPLICABLE in longer) == (s["id"] == "test/1"), s  # row 1's answer is "skip"
    written = (runs / "mixed/data/train.jsonl").read_text().splitlines()
    assert json.loads(written[1]) == {"question": "Train 1: say something.", "answer": "skip"}


def test_a_reward_that_raises_in_the_workers_reports_its_own_error_in_the_main_process(script_run):
    proc, _ = script_run
    error = _line(proc, "ERROR")
    line = next(i for i, text in enumerate(SCRIPT.splitlines(), 1) if "raise ZeroDivisionError" in text)
    assert error["type"] == "RewardError"
    assert error["message"].startswith(
        f"reward 'broken' raised ZeroDivisionError: no answer to divide by (at script.py:{line} in broken) "
        "while scoring"
    ), error["message"]
    assert "BrokenProcessPool" not in proc.stderr and "Can't get attribute" not in proc.stderr


# ------------------------------------------------------------------------------------ the hf task


def matches_answer(prompts, completions, answer, **kwargs):
    """TRL-style: 1 where the completion contains the row's answer."""
    return [float(str(a) in c) for c, a in zip(completions, answer, strict=True)]


def completion_chars(completions, samples, **_):
    return RewardResult(np.asarray([len(c) for c in completions], np.float32), ["chars"] * len(completions))


@pytest.fixture
def problems_file(tmp_path):
    path = tmp_path / "problems.json"
    rows = [{"problem": f"Add 1 and {i}.", "solution": str(i + 1), "level": i % 3} for i in range(12)]
    path.write_text(json.dumps(rows))
    return path


def _hf_config(model_dir, data_file, **data):
    config = apply_overrides(base_config(), TINY_RUN)
    config.model.path = str(model_dir)
    config.data.task = "hf"
    config.data.dataset = str(data_file)
    for key, value in data.items():
        config.data[key] = value
    return config


def test_hf_task_trains_and_evaluates_on_a_local_json_file(tiny_model_dir, problems_file, tmp_path):  # noqa: F811
    from rlvr_jax.evaluation.evaluate import evaluate
    from rlvr_jax.trainer import train

    config = _hf_config(tiny_model_dir, problems_file, prompt_column="problem", answer_column="solution")
    config.data.options.validation_fraction = 0.25  # 3 of the 12 rows held out, 2 of them evaluated
    set_reward(config, matches_answer)
    summary = train(config, tmp_path / "run")
    assert summary.steps == 1 and summary.eval_after["n"] == 2
    samples = [
        json.loads(line) for line in (tmp_path / "run/eval/after/samples.jsonl").read_text().splitlines()
    ]
    assert all(s["prompt"].startswith("Add 1 and ") for s in samples)
    assert all(s["reason"].startswith("returned ") for s in samples)

    # The evaluation takes reward functions too, and scores the checkpoint with them.
    out, run = tmp_path / "eval", tmp_path / "run"
    result = evaluate(config, out, checkpoint=run, limit=2, quiet=True, reward_fns=completion_chars)
    assert result.metrics["reward"] == "completion_chars" and result.metrics["checkpoint_step"] == 1
    assert [r["reward"] for r in result.rows] == [float(len(r["completion"])) for r in result.rows]
    assert {r["id"] for r in result.rows} == {s["id"] for s in samples}  # the same held-out rows


def test_a_wrong_column_is_a_config_error_naming_the_columns(tiny_model_dir, problems_file):  # noqa: F811
    config = _hf_config(tiny_model_dir, problems_file, prompt_column="question", answer_column="solution")
    config.reward.name = "numeric"
    with pytest.raises(ConfigError, match=r"data.prompt_column='question': .*problems.json has no column "
                       r"'question'; its columns: problem, solution, level$"):  # fmt: skip
        validate(config)
    config.data.prompt_column, config.data.answer_column = "problem", "answers"
    with pytest.raises(ConfigError, match=r"data.answer_column='answers': .* its columns: problem, solution"):
        validate(config)
    config.data.answer_column = None
    config.reward.name = None
    with pytest.raises(ConfigError, match=r"data.task='hf' has no reward of its own: set reward.name"):
        validate(config)
    gsm8k = base_config()
    gsm8k.data.dataset = str(problems_file)
    with pytest.raises(ConfigError, match=r"data.dataset=.* is read by data.task='hf' only"):
        validate(gsm8k)

    rows = [{"question": "1+1?", "answer": "2"}]
    with pytest.raises(ConfigError, match=r"^prompt_column='prompt' is not a column of train_dataset; its "
                       r"columns: question, answer$"):  # fmt: skip
        GRPOTrainer(str(tiny_model_dir), "numeric", rows, workdir=str(problems_file.parent / "w"))
    with pytest.raises(ConfigError, match=r"answer_column='solution' is not a column of eval_dataset"):
        GRPOTrainer(str(tiny_model_dir), "numeric", [{"question": "1+1?", "solution": "2"}], rows,
                    prompt_column="question", answer_column="solution",
                    workdir=str(problems_file.parent / "w"))  # fmt: skip
    with pytest.raises(
        ConfigError, match=r"the config has no key train.step \(did you mean train.steps\?\)$"
    ):
        GRPOTrainer(str(tiny_model_dir), "numeric", rows, config={"train.step": 3}, prompt_column="question")


# --------------------------------------------------------------------------- adapters and reward specs


def test_trl_rewards_get_prompts_completions_and_columns_and_none_scores_zero():
    seen = {}

    def graded(prompts, completions, answer, **kwargs):
        seen.update(prompts=prompts, completions=completions, answer=answer, **kwargs)
        return [None, float("nan"), 0.5, np.float32(1)]

    samples = [{"id": str(i), "prompt": f"p{i}", "answer": i, "finished": True} for i in range(4)]
    result = TRLReward(graded)(["a", "b", "c", "d"], samples, bonus=2)
    assert result.scores.tolist() == [0, 0, 0.5, 1]
    assert result.reasons == [NOT_APPLICABLE, NOT_APPLICABLE, "returned 0.5", "returned 1"]
    assert seen == {"prompts": ["p0", "p1", "p2", "p3"], "completions": ["a", "b", "c", "d"],
                    "answer": [0, 1, 2, 3], "id": ["0", "1", "2", "3"], "finished": [True] * 4,
                    "bonus": 2}  # fmt: skip

    def strict(completions, answer):  # no **kwargs: gets only what it names
        return [float(c == str(a)) for c, a in zip(completions, answer, strict=True)]

    assert TRLReward(strict)(["0", "x"], samples[:2]).scores.tolist() == [1, 0]
    with pytest.raises(TypeError, match=r"reward 'strict' takes 'answer', but the samples have no such "
                       r"column; it can take: prompts, completions, id$"):  # fmt: skip
        TRLReward(strict)(["0"], [{"id": "0", "prompt": "p"}])
    with pytest.raises(TypeError, match=r"reward.options.bonus is not a parameter of reward 'strict'"):
        TRLReward(strict)(["0"], samples[:1], bonus=1)
    with pytest.raises(ValueError, match=r"reward 'graded' returned 4 scores for 2 completions"):
        TRLReward(graded)(["a", "b"], samples[:2])
    with pytest.raises(
        TypeError, match=r"returned 'x' \(a str\) for completion 0; a TRL-style reward returns"
    ):
        TRLReward(lambda completions, **_: ["x"])(["a"], samples[:1])
    chat = trl_reward(
        lambda completions, **_: [len(c[0]["content"]) for c in completions], conversational=True
    )
    assert chat(["abc"], samples[:1]).scores.tolist() == [3]


def test_reward_specs_register_functions_under_their_names_and_lists_become_weighted_sums():
    def shorter(prompts, completions, **kwargs):
        return [-len(c) for c in completions]

    name, components = reward_config([completion_chars, (shorter, 0.5), ("format", 0.1), completion_chars])
    assert name == "weighted_sum"
    assert components == {"completion_chars": 2.0, "shorter": 0.5, "format": 0.1}
    assert REWARDS.get("completion_chars") is completion_chars  # this package's signature: as it is
    assert isinstance(REWARDS.get("shorter"), TRLReward) and REWARDS.get("shorter").fn is shorter
    assert reward_config(shorter) == ("shorter", None)  # registered already: the same name

    def shorter(prompts, completions, **kwargs):  # a re-run notebook cell: replaces it
        return [0.0] * len(completions)

    assert reward_config(shorter) == ("shorter", None) and REWARDS.get("shorter").fn is shorter

    def format(prompts, completions, **kwargs):  # a built-in's name: it gets another
        return [1.0] * len(completions)

    first, second = (lambda completions, **_: [1.0]), (lambda completions, **_: [2.0])
    name, components = reward_config([format, first, second])
    assert list(components) == ["format_2", "lambda", "lambda_2"]
    assert (
        REWARDS.get("lambda_2").fn is second
        and REWARDS.get("format").__module__ == "rlvr_jax.rewards.shaping"
    )

    config = base_config()
    config.lock()
    assert set_reward(config, [("numeric", 1.0), (first, 0.2)]) == "weighted_sum"
    assert dict(config.reward.options.components) == {"numeric": 1.0, "lambda": 0.2}
    assert set_reward(config, "math") == "math" and "components" not in config.reward.options
    with pytest.raises(
        ConfigError, match=r"reward_fns: unknown reward 'numerik' \(did you mean 'numeric'\?\)"
    ):
        set_reward(config, ["numerik"])


def test_config_overrides_take_dotted_and_nested_keys():
    overrides = ml_collections.ConfigDict({"rl": {"group_size": 4}})
    config = apply_overrides(base_config(), overrides)
    config = apply_overrides(config, {"train.steps": 7, "optim": {"learning_rate": 1},
                                      "data.options.digits": 2,
                                      "reward": {"options": {"components": {"numeric": 1.0}}}})  # fmt: skip
    assert (config.rl.group_size, config.train.steps, config.optim.learning_rate) == (4, 7, 1.0)
    assert config.data.options.digits == 2 and config.reward.options.components.numeric == 1.0
    with pytest.raises(ConfigError, match=r"config train.steps='many': Could not override"):
        apply_overrides(config, {"train": {"steps": "many"}})
