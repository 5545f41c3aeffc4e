"""Config and command-line mistakes: one line on stderr, exit status 2, no traceback, and nothing loaded.

The command-line tests run the real scripts as subprocesses. Every one of them fails before a model is
loaded (flag mistakes before JAX is even imported), so each takes well under ten seconds; a test that
reached a model would time out instead of passing quietly.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from rlvr_jax.config import ConfigError, base_config, unknown_key, validate
from rlvr_jax.data.base import TASKS, Task, get_task, register_task
from rlvr_jax.data.loaders import DataError, read_records
from rlvr_jax.rewards.base import REWARDS, RewardResult, register_reward
from tests.conftest import REPO

TRAIN = [sys.executable, "scripts/train.py"]
EVALUATE = [sys.executable, "scripts/evaluate.py"]
QUICKSTART = "--config=configs/quickstart.py:tiny"


def run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The single `error: ...` line of a failed run; asserts exit 2, no traceback, nothing on stdout."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""  # the trainer's first output is the "loaded <model>" line
    return lines[0]


@pytest.fixture(autouse=True)
def _registries_restored(monkeypatch):
    """Tasks and rewards a test registers are gone after it."""
    for registry in (TASKS, REWARDS):
        monkeypatch.setattr(registry, "_items", dict(registry._items))


def _config():
    c = base_config()
    c.model.path = "Qwen/Qwen2.5-0.5B-Instruct"  # a hub id: validation does not load it
    return c


# ------------------------------------------------------------------------------ --config. overrides


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("--config.train.stepz=3", "--config.train.stepz: the config has no key train.stepz (did you mean "
                                   "train.steps?)"),
        ("--config.rl.clip_hgih=0.3", "no key rl.clip_hgih (did you mean rl.clip_high?)"),
        ("--config.stepz=3", "no key stepz (did you mean train.steps?)"),
        ("--config.xyz=1", "no key xyz (the top level has: data, logging, mesh, model, optim, reward, rl,"),
        ("--config.data.options.size=5", "data.options has: validation_fraction); a key that the config "
                                         "file does not set cannot be added from the command line"),
    ],
)  # fmt: skip
def test_an_unknown_config_key_names_itself_and_the_closest_key(override, named):
    assert named in one_line_error(run([*TRAIN, QUICKSTART, "--workdir=/nonexistent/w", override]))


def test_evaluate_checks_its_overrides_the_same_way():
    line = one_line_error(run([*EVALUATE, QUICKSTART, "--config.sampling.temprature=0.5"]))
    assert "no key sampling.temprature (did you mean sampling.temperature?)" in line


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--config=configs/quickstat.py"], "there is no config file configs/quickstat.py (did you mean "
                                            "configs/quickstart.py?)"),
        (["--config=nowhere/x.py"], "there is no config file nowhere/x.py"),
        (["--config=configs/quickstart.py:huge"], "unknown preset 'huge' for quickstart; presets: tiny"),
        ([QUICKSTART, "--config.train.steps=abc"], "flag --config.train.steps=abc: invalid literal for int"),
        ([QUICKSTART, "--workdirr=/tmp/w"], "Unknown command line flag 'workdirr'. Did you mean: workdir ?"),
        ([QUICKSTART], "flag --workdir is required: the run's folder"),
        (["--workdir=/tmp/w", "--config.train.steps=2"], "--config.train.steps overrides a config: pass the "
                                                         "file too"),
        ([QUICKSTART, "--workdir=/tmp/w", "stray"], "unexpected arguments: stray"),
    ],
)  # fmt: skip
def test_flag_mistakes_are_one_line(args, named):
    assert named in one_line_error(run([*TRAIN, *args]))


def test_unknown_key_suggests_a_sibling_or_a_field_of_that_name():
    c = base_config()
    assert unknown_key(c, "train.steps") is None and unknown_key(c, "optim") is None
    assert "did you mean train.steps?" in unknown_key(c, "trian.steps")
    assert "did you mean optim.learning_rate?" in unknown_key(c, "learning_rate")
    assert unknown_key(c, "seed.x") == "seed is a value (0), not a section with keys"
    assert "did you mean" not in unknown_key(c, "data.options.foo")  # not its own section, reward.options


# ------------------------------------------------------------------------------ options of the task / reward


def test_options_of_another_task_fail_before_the_model_loads():
    """The arithmetic config's difficulty stays in data.options when only data.task changes."""
    args = ["--config=configs/arithmetic.py:easy", "--workdir=/nonexistent/w", "--config.data.task=gsm8k"]
    line = one_line_error(run([*TRAIN, *args]))
    assert "data.options.digits does not apply to task gsm8k" in line
    assert "its loader takes hub_config, hub_id, limit, split_seed, validation_fraction" in line
    assert "start from configs/gsm8k.py" in line


def test_data_options_are_checked_against_the_loader_signature():
    c = _config()
    c.data.task, c.data.options.digits, c.data.options.terms = "arithmetic", 2, (2, 3)
    validate(c)  # the arithmetic loader takes both
    c.data.options.digitz = 3
    with pytest.raises(ConfigError, match=r"data\.options\.digitz does not apply to task arithmetic \(did"):
        validate(c)
    c = _config()
    c.data.options.chat = False
    with pytest.raises(ConfigError, match=r"data\.options\.chat: set data\.chat instead"):
        validate(c)

    def anything(split, path=None, *, chat=True, **options):
        return [{"id": "0", "prompt": "p"}]

    register_task(Task("anything_test", anything, reward="numeric"))
    c = _config()
    c.data.task, c.data.options.whatever = "anything_test", 1
    validate(c)  # a loader with **kwargs takes any option


def test_splits_are_checked_against_the_task():
    load = lambda split, path=None, *, chat=True: []
    register_task(Task("two_splits_test", load, "numeric", splits=("train", "test")))
    c = _config()
    c.data.task = "two_splits_test"
    with pytest.raises(ConfigError, match=r"data\.eval_split='validation': task two_splits_test has no such"):
        validate(c)
    c.data.eval_split, c.data.train_split = "test", "trian"
    with pytest.raises(ConfigError, match=r"train_split='trian'.*did you mean 'train'.*splits: train, test"):
        validate(c)


def test_reward_options_are_checked_where_the_signature_allows():
    @register_reward("strict_test")
    def strict(completions, samples, max_words: int = 60):
        return RewardResult([1.0] * len(completions), ["ok"] * len(completions))

    c = _config()
    c.reward.name = "strict_test"
    c.reward.options.max_words = 40
    validate(c)
    c.reward.options.max_wrods = 40
    wanted = (
        r"reward\.options\.max_wrods is not an option of reward strict_test \(did you mean 'max_words'\?\)"
    )
    with pytest.raises(ConfigError, match=wanted + "; it takes max_words$"):
        validate(c)
    c = _config()
    c.reward.name = "numerc"
    with pytest.raises(ConfigError, match=r"reward\.name: unknown reward 'numerc' \(did you mean 'numeric'"):
        validate(c)


def test_a_weighted_sum_names_registered_components():
    c = _config()
    c.reward.name = "weighted_sum"
    with pytest.raises(ConfigError, match=r"weighted_sum needs reward\.options\.components"):
        validate(c)
    c.reward.options.components = {"numeric": 1.0, "fromat": 0.1}
    with pytest.raises(ConfigError, match=r"components: unknown reward 'fromat' \(did you mean 'format'"):
        validate(c)
    c.reward.options.components = {"numeric": 1.0, "format": 0.1}
    c.reward.options.component_options = {"overlong": {"max_len": 3}}
    with pytest.raises(ConfigError, match=r"component_options\.overlong: 'overlong' is not one of the"):
        validate(c)
    c.reward.options.component_options = {"format": {"fullmatch": True}}
    validate(c)


# ------------------------------------------------------------------------------ numbers


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("optim.learning_rate", float("nan"), "optim.learning_rate=nan is not a finite number"),
        ("optim.learning_rate", float("inf"), "optim.learning_rate=inf is not a finite number"),
        ("rl.clip_high", float("inf"), "rl.clip_high=inf is not a finite number"),
        ("rl.clip_c", float("nan"), "rl.clip_c=nan is not a finite number"),
        ("rl.beta", float("nan"), "rl.beta=nan is not a finite number"),
        ("rl.entropy_coef", float("-inf"), "rl.entropy_coef=-inf is not a finite number"),
        ("sampling.temperature", 0.0, "sampling.temperature must be > 0"),
        ("sampling.eval_temperature", -0.5, "sampling.eval_temperature must be >= 0"),
        ("sampling.top_p", 0.0, r"sampling.top_p must be in \(0, 1\]"),
        ("sampling.top_p", 1.5, r"sampling.top_p must be in \(0, 1\]"),
        ("sampling.top_k", -1, r"sampling.top_k must be an integer >= 0 \(0: off\)"),
        ("sampling.max_new_tokens", 0, "sampling.max_new_tokens must be an integer >= 1"),
        ("rl.prompts_per_step", 0, "rl.prompts_per_step must be an integer >= 1"),
        ("rl.mu", 0, "rl.mu must be an integer >= 1"),
        ("train.steps", 0, "train.steps must be an integer >= 1"),
        ("train.checkpoint_every", 0, "train.checkpoint_every must be an integer >= 1"),
        ("train.eval_every", -1, "train.eval_every must be an integer >= 0"),
        ("data.eval_limit", 0, "data.eval_limit must be an integer >= 1"),
        ("mesh.fsdp", 0, "mesh.fsdp must be an integer >= 1 or -1"),
        ("optim.micro_batches", -1, r"optim.micro_batches must be an integer >= 0 \(0: auto\)"),
        ("logging.prometheus_port", 70000, "logging.prometheus_port must be a port"),
        ("logging.log_samples", -1, r"logging.log_samples must be an integer >= 0 \(0: none\)"),
        ("logging.wandb_tags", ("grpo", ""), r"logging.wandb_tags must be non-empty strings, got \('grpo',"),
    ],
)  # fmt: skip
def test_numbers_out_of_range_name_the_key(key, value, message):
    c = _config()
    section, name = key.split(".")
    c[section][name] = value
    with pytest.raises(ConfigError, match=message):
        validate(c)


def test_a_non_finite_reward_weight_names_its_key():
    c = _config()
    c.reward.name = "weighted_sum"
    c.reward.options.components = {"numeric": 1.0, "format": float("nan")}
    with pytest.raises(ConfigError, match=r"reward\.options\.components\.format=nan is not a finite"):
        validate(c)


def test_a_nan_learning_rate_from_the_command_line_stops_before_the_model():
    args = [QUICKSTART, "--workdir=/nonexistent/w", "--config.optim.learning_rate=nan"]
    line = one_line_error(run([*TRAIN, *args]))
    assert line == "error: optim.learning_rate=nan is not a finite number"


def test_wandb_run_name_group_and_tags_come_from_the_command_line():
    """One flag per tag (ml_collections' way for a tuple); validation sees them, then stops at a key
    that is wrong on purpose, before any model loads."""
    args = [QUICKSTART, "--workdir=/nonexistent/w", "--config.logging.wandb_name=lr-1e-6",
            "--config.logging.wandb_group=sweep", "--config.logging.wandb_tags=grpo",
            "--config.logging.wandb_tags=", "--config.logging.log_samples=4"]  # fmt: skip
    line = one_line_error(run([*TRAIN, *args]))
    assert line == "error: logging.wandb_tags must be non-empty strings, got ('grpo', '')"


# ------------------------------------------------------------------------------ evaluate's own flags


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--split=val"], "--split='val': task sst2 has no such split; its splits: train, validation, test"),
        (["--limit=0"], "flag --limit=0: 0 is not a positive integer"),
        (["--temperature=nan"], "flag --temperature=nan: must be a finite number"),
        (["--checkpoint_step=bestt"], "flag --checkpoint_step=bestt: must be a step number, latest or best"),
        (["--checkpoint=/nonexistent/run"], "flag --checkpoint=/nonexistent/run: no such folder"),
        (["--config.data.path=/nonexistent/data"], "data.path='/nonexistent/data' does not exist"),
    ],
)  # fmt: skip
def test_evaluate_flag_and_config_mistakes_stop_before_loading(args, named):
    assert named in one_line_error(run([*EVALUATE, QUICKSTART, *args]))


# ------------------------------------------------------------------------------ data files


def _gsm8k_folder(tmp_path: Path, train: str) -> Path:
    folder = tmp_path / "gsm8k"
    folder.mkdir()
    (folder / "train.jsonl").write_text(train)
    (folder / "test.jsonl").write_text(json.dumps({"question": "1+1?", "answer": "#### 2"}) + "\n")
    return folder


def test_an_empty_data_file_names_the_file_and_what_to_do(tmp_path):
    folder = _gsm8k_folder(tmp_path, "\n")
    with pytest.raises(DataError, match=r"train\.jsonl holds no records; put the gsm8k train data there"):
        get_task("gsm8k").load("train", folder)
    # Through the command line: evaluation reads its data before it loads the model.
    args = ["--config=configs/gsm8k.py", f"--config.data.path={folder}", "--split=validation"]
    line = one_line_error(run([*EVALUATE, *args]))
    assert f"{folder / 'train.jsonl'} holds no records" in line and "point data.path elsewhere" in line


def test_a_split_carved_to_nothing_names_the_file(tmp_path):
    folder = _gsm8k_folder(tmp_path, json.dumps({"question": "q", "answer": "#### 1"}) + "\n")
    with pytest.raises(DataError, match=r"train.jsonl: its 1 record\(s\) leave no validation rows"):
        get_task("gsm8k").load("validation", folder)


@pytest.mark.parametrize(
    ("name", "content"),
    [("bad.jsonl.gz", b"not gzip"), ("bad.jsonl", b"\xff\xfe\x00binary"), ("bad.parquet", b"PAR1 junk")],
)
def test_an_unreadable_data_file_names_the_file(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=f"{name}: cannot be read .*check that it is readable"):
        read_records(tmp_path / name)
    good = tmp_path / "good.jsonl.gz"
    good.write_bytes(gzip.compress(b'{"a": 1}\n'))
    assert read_records(good) == [{"a": 1}]


def test_a_config_file_runs_once_although_its_overrides_are_checked_first(tmp_path):
    """The override check loads the file, and absl then takes that config instead of running it again: a
    config file that does work or patches something when it runs does it once."""
    runs = tmp_path / "runs.txt"
    config_file = tmp_path / "counting.py"
    config_file.write_text(
        f"import sys\nsys.path.insert(0, {str(REPO)!r})\n"
        "from configs.quickstart import get_config as quickstart\n"
        "def get_config(arg=None):\n"
        f"    with open({str(runs)!r}, 'a') as f:\n"
        "        f.write('ran\\n')\n"
        "    return quickstart('tiny')\n"
    )
    proc = run([*TRAIN, f"--config={config_file}", f"--workdir={tmp_path / 'w'}",
                "--config.train.steps=2", "--config.data.path=/nonexistent"])  # fmt: skip
    assert "data.path='/nonexistent' does not exist" in one_line_error(proc)
    assert runs.read_text().splitlines() == ["ran"]
