"""One flag style across the scripts, configs by name, `--print_config`, evaluating a run by its folder,
and config mistakes caught before JAX is imported.

The subprocess tests run the real scripts; none of them loads a model, so each takes a second or two.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from rlvr_jax.cli import FlagParser, packaged_config, underscore_flags
from rlvr_jax.config import KEY_HELP, base_config, configs_dir
from rlvr_jax.config_help import describe_config, leaves, meanings
from tests.conftest import REPO

CONFIGS = sorted(p.stem for p in (REPO / "configs").glob("*.py"))


def run(*args: str, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def imported_modules(importtime_stderr: str) -> set[str]:
    """The modules a `python -X importtime` run imported, from its stderr."""
    return {
        line.rsplit("|", 1)[1].strip()
        for line in importtime_stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


def other_lines(importtime_stderr: str) -> list[str]:
    return [
        line
        for line in importtime_stderr.splitlines()
        if line.strip() and not line.startswith("import time:")
    ]


# ------------------------------------------------------------------------------ configs by name


def test_a_config_name_is_the_packaged_file(tmp_path, monkeypatch):
    assert configs_dir() == REPO / "configs"  # a checkout: the top-level folder (a wheel: rlvr_jax/configs)
    assert packaged_config("gsm8k") == str(REPO / "configs" / "gsm8k.py")
    assert packaged_config("gsm8k.py:small") == f"{REPO / 'configs' / 'gsm8k.py'}:small"
    monkeypatch.chdir(tmp_path)  # elsewhere, as after a pip install: configs/NAME.py is the packaged one
    assert packaged_config("configs/arithmetic.py:hard") == f"{REPO / 'configs' / 'arithmetic.py'}:hard"
    (tmp_path / "gsm8k.py").write_text("def get_config(arg=None): ...\n")
    assert packaged_config("gsm8k.py") == "gsm8k.py"  # a file that is there wins
    assert packaged_config("other/gsm8k.py") == "other/gsm8k.py"  # a path elsewhere is never swapped
    assert packaged_config("gsm8kk") == "gsm8kk"  # no such config: the loader names the closest


@pytest.mark.parametrize(
    ("script", "args", "says"),
    [
        ("train.py", ["--config=gsm8kk", "--workdir=/nonexistent/w"],
         "error: --config=gsm8kk: there is no config file gsm8kk (did you mean gsm8k?)"),
        ("train.py", ["--config", "quickstart:tiny", "--workdir=/nonexistent/w", "--config.train.stepz=3"],
         "error: --config.train.stepz: the config has no key train.stepz (did you mean train.steps?)"),
        ("evaluate.py", ["--config=quickstart", "--config.sampling.temprature=0.5"],
         "error: --config.sampling.temprature: the config has no key sampling.temprature (did you mean "
         "sampling.temperature?)"),
        ("evaluate.py", ["--config=quickstart", "--checkpoint-step=bestt"],
         "error: flag --checkpoint_step=bestt: must be a step number, latest or best"),
    ],
)  # fmt: skip
def test_config_mistakes_are_one_line_before_jax_is_imported(script, args, says):
    proc = run("-X", "importtime", f"scripts/{script}", *args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert other_lines(proc.stderr) == [other_lines(proc.stderr)[0]] and other_lines(proc.stderr)[
        0
    ].startswith(says)
    modules = imported_modules(proc.stderr)
    assert "rlvr_jax.config" in modules and "jax" not in modules


# ------------------------------------------------------------------------------ --print_config


def test_every_key_has_a_meaning_and_the_table_names_only_keys():
    explain = meanings()
    keys = leaves(base_config())
    assert not [key for key in keys if not explain.get(key)], "a key of base_config has no meaning"
    assert set(KEY_HELP) <= set(keys), "KEY_HELP names a key that base_config does not have"


def test_print_config_lists_every_key_with_its_value_default_and_meaning():
    proc = run("-X", "importtime", "scripts/train.py", "--config=gsm8k:small", "--print_config",
               "--config.seed=7")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "jax" not in imported_modules(proc.stderr)
    rows = {
        line.split(" = ", 1)[0]: line
        for line in proc.stdout.splitlines()
        if line and not line.startswith("#")
    }
    assert set(rows) == set(leaves(base_config()))
    assert proc.stdout.splitlines()[0] == f"# {REPO / 'configs' / 'gsm8k.py'}:small --config.seed=7"
    assert rows["seed"].startswith("seed = 7 ") and rows["seed"].endswith("[base: 0]")
    assert "sampling.max_new_tokens = 192" in rows["sampling.max_new_tokens"]  # the :small preset
    assert rows["rl.clip_high"].endswith("# DAPO clip-higher")  # the comment on its line in base_config
    assert "# peak AdamW learning rate" in rows["optim.learning_rate"]  # KEY_HELP, where the line has none
    assert "\n# optim: The optimizer (AdamW)" in proc.stdout  # sections under their own comment


def test_describe_config_marks_keys_a_config_file_adds():
    config = base_config()
    config.data.options.digits = 2
    text = describe_config(config, "mine.py")
    (line,) = [row for row in text.splitlines() if row.startswith("data.options.digits = 2")]
    assert "passed to the task loader" in line and "[not in base_config" in line


# ------------------------------------------------------------------------------ evaluate --checkpoint WORKDIR


def test_evaluate_a_run_by_its_folder_reads_the_config_it_saved(tmp_path):
    spec = importlib.util.spec_from_file_location("quickstart_config", REPO / "configs" / "quickstart.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    saved = module.get_config("tiny")
    saved.data.path = str(tmp_path / "gone")  # the run's own setting, not the quickstart's
    (tmp_path / "config.json").write_text(saved.to_json_best_effort(indent=2))  # as the trainer writes it

    listed = run(
        "scripts/evaluate.py", f"--checkpoint={tmp_path}", "--print_config", "--config.rl.group_size=3"
    )
    assert listed.returncode == 0, listed.stderr
    assert f"data.path = '{tmp_path / 'gone'}'" in listed.stdout
    assert "rl.group_size = 3 " in listed.stdout
    assert "data.options.validation_fraction = 0.2 " in listed.stdout

    (tmp_path / "checkpoints").mkdir()  # the run's checkpoints/ folder finds the config.json beside it
    proc = run("scripts/evaluate.py", "--checkpoint", str(tmp_path / "checkpoints"), "--limit=1")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: data.path='{tmp_path / 'gone'}' does not exist; pass the task's data file or folder, or "
        "leave data.path unset to read the Hugging Face hub"
    ]  # the saved config's data path, checked before any model loads

    empty = tmp_path / "not_a_run"
    empty.mkdir()
    proc = run("scripts/evaluate.py", f"--checkpoint={empty}")
    assert proc.returncode == 2 and proc.stderr.startswith(
        f"error: --checkpoint={empty} holds no config.json"
    )


# ------------------------------------------------------------------------------ one flag style


def test_dashed_spellings_are_aliases_of_the_underscore_flags():
    known = {"max_new_tokens", "top_p"}
    argv = ["--max-new-tokens=5", "--top-p", "0.5", "--not-a-flag", "--", "--top-p"]
    assert underscore_flags(argv, known) == [
        "--max_new_tokens=5",
        "--top_p",
        "0.5",
        "--not-a-flag",
        "--",
        "--top-p",
    ]


def test_flag_parser_takes_both_forms_refuses_abbreviations_and_fails_in_one_line(capsys):
    parser = FlagParser(description="x")
    parser.add_argument("--max_new_tokens", type=int, default=1)
    parser.add_argument("--top_p", type=float, default=1.0)
    args = parser.parse_args(["--max-new-tokens", "5", "--top_p=0.5"])
    assert (args.max_new_tokens, args.top_p) == (5, 0.5)
    for wrong in (["--max_new", "5"], ["--top_p=x"]):  # an abbreviation; a value of the wrong type
        with pytest.raises(SystemExit) as stop:
            parser.parse_args(wrong)
        assert stop.value.code == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith("error: ") and line.endswith("(--help lists the flags)")


def test_serve_takes_vllm_spellings(monkeypatch):
    monkeypatch.delenv("RLVR_API_KEY", raising=False)
    spec = importlib.util.spec_from_file_location("serve_script", REPO / "scripts" / "serve.py")
    serve = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serve)
    args = serve.build_parser().parse_args([
        "--model", "m.gguf", "--served-model-name", "smol", "--max-num-seqs", "4", "--api-key", "k",
        "--host", "0.0.0.0", "--port", "9000", "--uvicorn-log-level", "debug",
    ])  # fmt: skip
    assert (args.served_model_name, args.max_batch, args.api_key) == ("smol", 4, "k")
    assert (args.host, args.port, args.log_level) == ("0.0.0.0", 9000, "debug")
    args = serve.build_parser().parse_args(["--model", "m.gguf", "--max-model-len", "4096"])
    with pytest.raises(
        ValueError, match=r"--max_model_len: .* pass --max_prompt_tokens and --max_tokens_limit"
    ):
        serve.check_args(args)
