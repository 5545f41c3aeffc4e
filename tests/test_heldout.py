"""Held-out means held out: evaluation items are unique and none asks a training question
(`rlvr_jax/data/heldout.py`), on constructed cases, on real arithmetic generation, and for every config."""

from __future__ import annotations

import ast
import json
import runpy
import subprocess
import sys
from pathlib import Path

import ml_collections
import pytest

from rlvr_jax.config import configs_dir
from rlvr_jax.data import get_task
from rlvr_jax.data.heldout import drop_seen, held_out_split, normalise_question, question_text
from rlvr_jax.data.loaders import DataError
from rlvr_jax.evaluation.contamination import callable_with, candidate_pairs, functional_duplicates
from rlvr_jax.evaluation.evaluate import _held_out_samples, read_exclude, without_items
from rlvr_jax.trainer.setup import Console, _load_data


def _samples(*prompts: str) -> list[dict]:
    return [{"id": str(i), "prompt": p} for i, p in enumerate(prompts)]


def test_normalisation_merges_only_what_is_the_same_question():
    assert normalise_question("  What  is\tTHE  capital?\n") == "what is the capital?"
    # Numbers and symbol spacing only for procedural tasks: in text "3 + 04" and "3+4" stay apart.
    assert normalise_question("Calculate 3 + 04.") != normalise_question("calculate 3+4.")
    assert normalise_question("Calculate 3 + 04.", True) == normalise_question("calculate 3+4.", True)
    assert normalise_question("Calculate -( -8 - -1 ).", True) == normalise_question(
        "Calculate -(-8--1).", True
    )
    assert normalise_question("2.50 * 007 + 0.0", True) == "2.5*7+0"
    # Different numbers never merge: 10 vs 1, 12 3 vs 123, 4.05 vs 4.5.
    assert normalise_question("1 + 10", True) != normalise_question("1 + 1", True)
    assert normalise_question("12 3", True) != normalise_question("123", True)
    assert normalise_question("4.05", True) != normalise_question("4.5", True)
    chat = {"prompt": [{"role": "user", "content": "Hi"}]}
    assert question_text(chat) == question_text({"prompt": [{"content": "Hi", "role": "user"}]})


def test_drop_seen_counts_on_a_constructed_case():
    train = _samples("Calculate 3 + 4.", "Calculate 9 - 2.")
    evals = _samples(
        "calculate 3+04.",  # seen in training (procedural normalisation)
        "Calculate 5 - 1.",  # kept
        "Calculate 5-1.",  # repeat of the previous one
        "Calculate  5 - 1.",  # another repeat
        "Calculate 9 - 2.",  # seen in training, exactly
        "Calculate 9-2.",  # seen (and a repeat of a seen one: counted as seen)
        "Calculate 6 * 2.",  # kept
    )
    kept, counts = drop_seen(train, evals, procedural=True)
    assert [s["id"] for s in kept] == ["1", "6"]
    assert counts == {"repeated": 2, "seen_in_training": 3}
    kept, counts = drop_seen(train, evals, procedural=False)  # text tasks: whitespace and case only
    assert [s["id"] for s in kept] == ["0", "1", "2", "5", "6"]
    assert counts == {"repeated": 1, "seen_in_training": 1}


def test_held_out_split_reports_limits_and_refuses_an_empty_split():
    train = _samples("a", "b")
    used, report = held_out_split(train, _samples("a", "c", "c", "d", "e"), split="test", limit=2)
    assert [s["prompt"] for s in used] == ["c", "d"]
    assert (report.loaded, report.repeated, report.seen_in_training, report.kept, report.evaluated) == (
        5, 1, 1, 3, 2,
    )  # fmt: skip
    assert report.line() == (
        "held-out test: removed 1 repeated and 1 seen-in-training items of 5; 3 remain, "
        "the first 2 evaluated (limit 2)"
    )
    _, few = held_out_split(train, _samples("a", "c"), split="test", limit=10)
    assert few.line().endswith("; 1 remain, fewer than the 10 asked for")
    _, removed = held_out_split(train, _samples("a", "b", "c"), split="test", limit=2)
    assert "fewer than the 2 asked for because of the removals" in removed.line()
    _, unchecked = held_out_split(None, _samples("a", "a"), split="train", skipped="it is the training split")
    assert unchecked.repeated == 1 and unchecked.train_pool is None
    assert "not checked: it is the training split" in unchecked.line()
    with pytest.raises(DataError, match=r"no held-out item is left.*data.eval_split"):
        held_out_split(train, _samples("A", " b "), split="test")


def _config(name: str, shared: Path):
    """configs/<name>.py's default config, reading ../shared's local copy where the task has one."""
    config = runpy.run_path(str(configs_dir() / f"{name}.py"))["get_config"]()
    local = {"mbpp": "mbpp", "humaneval": "humaneval", "gsm8k": "gsm8k", "nq_open": "nq_open", "imdb": "imdb"}
    if config.data.task in local:
        config.data.path = str(shared / "data" / local[config.data.task])
    return config


def test_arithmetic_repeats_and_training_questions_are_removed_and_said(shared_dir, capsys):
    config = _config("arithmetic", shared_dir)
    # The first quickstart's 1-digit, 2-term sums: a small problem space.
    sums = {"generator": "basic_arithmetic", "digits": 1, "terms": 2}
    config.data.options = ml_collections.ConfigDict(sums)
    config.data.eval_limit = 96
    _, train, held_out, report = _load_data(config, Console(json_logs=False))
    printed = capsys.readouterr().out
    assert report.line() in printed.splitlines()
    assert printed.count("held-out test:") == 1
    # The 10,000 training sums cover most of the test split's questions; all of those are gone, and the
    # counts agree with a count made here from the raw questions.
    test = get_task("arithmetic").load("test", digits=1, terms=2)
    seen = {normalise_question(s["prompt"], True) for s in train}
    raw = [normalise_question(s["prompt"], True) for s in test]
    unseen = [q for q in raw if q not in seen]
    assert report.train_pool == len(train) == 10_000 and report.loaded == len(test) == 1_000
    assert report.seen_in_training == len(raw) - len(unseen) > 500
    assert report.repeated == len(unseen) - len(set(unseen))
    assert report.kept == len(set(unseen)) and len(held_out) == min(report.kept, config.data.eval_limit)
    questions = [normalise_question(s["prompt"], True) for s in held_out]
    assert len(set(questions)) == len(questions) and not seen & set(questions)
    # Within one split the same sums come up again (64 of the 500 validation items): removed as repeats.
    validation = get_task("arithmetic").load("validation", digits=1, terms=2)
    kept, counts = drop_seen([], validation, True)
    distinct = {normalise_question(s["prompt"], True) for s in validation}
    assert counts == {"repeated": len(validation) - len(distinct), "seen_in_training": 0}
    assert counts["repeated"] > 0 and len(kept) == len(distinct)


CONFIGS = sorted(p.stem for p in configs_dir().glob("*.py"))


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_evaluates_on_items_training_cannot_see(name, shared_dir, capsys):
    """Each config's default eval split shares no item and no question with its training split, on the
    local data; for the data set tasks the split is disjoint by itself (nothing had to be removed)."""
    config = _config(name, shared_dir)
    task, train, held_out, report = _load_data(config, Console(json_logs=False))
    assert config.data.eval_split != config.data.train_split
    assert not {s["id"] for s in train} & {s["id"] for s in held_out}
    seen = {normalise_question(question_text(s), task.procedural) for s in train}
    questions = [normalise_question(question_text(s), task.procedural) for s in held_out]
    assert not seen & set(questions) and len(set(questions)) == len(questions)
    if not task.procedural:
        assert report.seen_in_training == 0, report.line()
    assert report.evaluated > 0
    assert report.line() in capsys.readouterr().out


def test_evaluation_checks_against_the_training_config(shared_dir):
    mbpp, humaneval = _config("mbpp", shared_dir), _config("humaneval", shared_dir)
    # HumanEval's own config trains on 131 of the 164 test problems: those are not held out from it.
    _, samples, report = _held_out_samples(humaneval, "test", None)
    assert report.seen_in_training == 131 and len(samples) == 33
    # Trained on MBPP instead (the checkpoint's config, or --train_config): all 164 remain.
    _, samples, report = _held_out_samples(humaneval, "test", None, train_config=mbpp)
    assert report.seen_in_training == 0 and len(samples) == 164 and report.train_pool == 450
    # Evaluating the training split itself: said, not silently emptied.
    _, samples, report = _held_out_samples(mbpp, "train", 5)
    assert report.skipped and len(samples) == 5
    # Training data that does not load leaves the check undone, and the line says why.
    mbpp.data.path = str(shared_dir / "no-such-folder")
    _, samples, report = _held_out_samples(humaneval, "validation", None, train_config=mbpp)
    assert report.train_pool is None and "did not load" in report.line() and len(samples) == 33


def test_exclude_list_reports_metrics_without_those_items(tmp_path):
    rows = [
        {"id": f"HumanEval/{i}", "reward": float(i % 2), "num_tokens": 5, "finished": True} for i in range(6)
    ]
    (tmp_path / "list.json").write_text(
        json.dumps({"exclude": ["HumanEval/1", "HumanEval/3", "HumanEval/99"]})
    )
    excluded = read_exclude(tmp_path / "list.json")
    out = without_items(rows, excluded, reward="code_humaneval", max_new_tokens=8, seed=0)
    assert out["excluded_ids"] == ["HumanEval/1", "HumanEval/3"]
    assert out["num_items"] == 4 and out["accuracy"]["value"] == pytest.approx(0.25)
    (tmp_path / "bad.json").write_text(json.dumps({"exclude": "HumanEval/1"}))
    with pytest.raises(ValueError, match="list of item ids"):
        read_exclude(tmp_path / "bad.json")


def test_near_duplicates_of_mbpp_training_items_in_humaneval_include_humaneval_59(humaneval, mbpp):
    """MBPP 32 (largest prime factor) solves HumanEval/59 and MBPP 498 (gcd) HumanEval/13; neighbours in
    words or arity that compute something else are not listed."""
    he = {s["id"]: s for s in humaneval}
    mb = {s["id"]: s for s in mbpp}
    train = [mb[i] for i in ("32", "498", "11", "126", "256")]  # 126: sum of common divisors; 256: primes
    evals = [he[f"HumanEval/{i}"] for i in (59, 13, 0, 96, 2)]
    scan = functional_duplicates(train, evals)
    pairs = scan.pairs
    assert not scan.undecided and scan.programs == len(candidate_pairs(train, evals))
    assert [(p["humaneval"], p["mbpp"]) for p in pairs] == [("HumanEval/59", "32"), ("HumanEval/13", "498")]
    assert "largest prime factor" in pairs[0]["humaneval_statement"] and pairs[0]["mbpp_function"]
    # Only pairs callable alike run: MBPP 11 (two arguments) never meets the one-argument HumanEval/59.
    assert ("HumanEval/59", "11") not in {(h["id"], m["id"]) for h, m, _ in candidate_pairs(train, evals)}
    f = ast.parse("def f(a, b=1, *rest): pass").body[0]
    assert callable_with(f, 1) and callable_with(f, 5) and not callable_with(f, 0)


def test_evaluate_cli_names_a_wrong_train_config():
    script = configs_dir().parent / "scripts" / "evaluate.py"
    run = lambda *flags: subprocess.run(
        [sys.executable, str(script), "--config=configs/humaneval.py", *flags],
        capture_output=True, text=True, timeout=300, cwd=script.parent.parent,
    )  # fmt: skip
    missing = run("--train_config=configs/nope.py")
    assert missing.returncode == 2 and "configs/nope.py: there is no config file" in missing.stderr
    typo = run("--train_config=mbpp", "--train_config.data.pth=x")
    assert typo.returncode == 2 and "did you mean data.path?" in typo.stderr
