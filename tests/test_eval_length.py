"""Evaluation that length cannot fool: accuracy among finished answers, the comparison on items finished
in both runs and its verdict in words (a brevity-only gain against a real one, through the same code as
scripts/compare.py and the trainer's closing lines), and the held-out evaluation's own token budget."""

from __future__ import annotations

import json
import math

import pytest
from statsmodels.stats.contingency_tables import mcnemar

from rlvr_jax.config import ConfigError, base_config, eval_max_new_tokens, validate
from rlvr_jax.evaluation.compare import compare_runs, length_effect, write_report
from rlvr_jax.evaluation.evaluate import describe
from rlvr_jax.evaluation.metrics import eval_metrics, finished_accuracy, flat_summary, tokens_to_finish
from rlvr_jax.evaluation.runs import load_run, write_run
from scripts import compare as compare_cli

BUDGET = 24


def _row(i: int, passed: bool, finished: bool, tokens: int | None = None) -> dict:
    """One greedy answer: a cut-off one used the whole budget and states no answer (reward 0)."""
    assert finished or not passed, "a cut-off answer scores 0 under a stated-answer reward"
    return {
        "id": f"q{i}", "sample_index": 0, "prompt": f"question {i}", "completion": f"answer {i}",
        "reward": float(passed), "passed": passed, "reason": "ok" if passed else "wrong",
        "num_tokens": BUDGET if not finished else (tokens or 6 + i % 5), "finished": finished,
    }  # fmt: skip


def _run(path, outcomes) -> object:
    """A run on disk from (passed, finished) per item, read back as `compare` reads it."""
    rows = [_row(i, p, f) for i, (p, f) in enumerate(outcomes)]
    write_run(path, rows, {"task": "arithmetic", "split": "test", "max_new_tokens": BUDGET})
    return load_run(path)


def _brevity_only():
    """Before: 40 of 60 answers cut off, 10 of the 20 finished right. After: all finish; on those 20 the
    same 10 right (two swap places), and 20 of the 40 that now fit are right: 16.7% -> 50.0% overall."""
    before = [(i < 10, True) for i in range(20)] + [(False, False)] * 40
    after = [((i < 9) or i == 12, True) for i in range(20)] + [(i % 2 == 0, True) for i in range(40)]
    return before, after


def _real_gain():
    """Both runs finish every answer: 10 -> 30 of 60 right, on the same finished items."""
    before = [(i < 10, True) for i in range(60)]
    after = [(i < 30, True) for i in range(60)]
    return before, after


def _real_gain_while_truncation_fell():
    """Truncation falls (20 -> 0 of 60 cut off) but the 40 answers finished in both go 10 -> 30 right."""
    before = [(i < 10, True) for i in range(40)] + [(False, False)] * 20
    after = [(i < 30, True) for i in range(40)] + [(False, True)] * 20
    return before, after


def _compare(tmp_path, before, after, name=""):
    a, b = _run(tmp_path / f"before{name}", before), _run(tmp_path / f"after{name}", after)
    return a, b, compare_runs(a, b)


def test_brevity_only_gain_is_reported_as_answers_that_now_fit(tmp_path, capsys):
    before, after = _brevity_only()
    a, b, result = _compare(tmp_path, before, after)
    assert result["accuracy_a"] == pytest.approx(10 / 60) and result["accuracy_b"] == pytest.approx(30 / 60)
    assert result["significant"]  # 21 items pass only after, 1 only before
    assert result["mcnemar"]["p_value"] == pytest.approx(mcnemar([[9, 1], [21, 29]], exact=True).pvalue)
    assert result["truncation"] == {"a": pytest.approx(40 / 60), "b": 0.0}
    fin = result["finished_in_both"]
    assert fin["n"] == 20 and fin["accuracy_a"] == fin["accuracy_b"] == 0.5
    assert (fin["only_a_passes"], fin["only_b_passes"], fin["p_value"]) == (1, 1, 1.0)
    assert result["length_effect"] == "length"
    sentence = (
        "Most of the gain is answers that now fit the token budget (truncated 66.7% -> 0.0%): among "
        "answers finished in both runs, 50.0% -> 50.0% on 20 items (p = 1)."
    )
    assert result["verdict"].startswith("B is better than A: accuracy B - A = +33.3 points")
    assert result["verdict"].endswith(sentence)

    report = write_report(a, b, result, tmp_path / "report").read_text()
    assert sentence in report
    assert "| A: before | 60 | 16.7% |" in report and "| 66.7% | 50.0% (n=20) |" in report
    assert "| 0.0% | 50.0% (n=60) |" in report
    assert "- truncated answers: 66.7% (A) -> 0.0% (B)" in report
    assert "- among the 20 items finished in both runs: accuracy 50.0% -> 50.0%, +0.0 points" in report
    assert "exact McNemar p = 1 (1 pass only in B, 1 only in A)" in report

    # scripts/compare.py prints the same verdict and writes the numbers into comparison.json.
    assert compare_cli.main([str(a.path), str(b.path), "--out", str(tmp_path / "cli")]) == 0
    assert sentence in capsys.readouterr().out
    saved = json.loads((tmp_path / "cli" / "comparison.json").read_text())
    assert saved["length_effect"] == "length" and saved["finished_in_both"]["n"] == 20
    assert saved["b"]["accuracy_finished"]["n"] == 60 and saved["a"]["accuracy_finished"]["n"] == 20


@pytest.mark.parametrize("case", [_real_gain, _real_gain_while_truncation_fell])
def test_real_gain_is_reported_as_holding_among_finished_answers(tmp_path, case):
    before, after = case()
    a, b, result = _compare(tmp_path, before, after)
    fin = result["finished_in_both"]
    n = sum(f for _, f in before)  # every answer finishes after: the items finished in both
    assert result["significant"] and fin["n"] == n
    assert (fin["accuracy_a"], fin["accuracy_b"]) == (pytest.approx(10 / n), pytest.approx(30 / n))
    assert fin["p_value"] == pytest.approx(mcnemar([[10, 0], [20, n - 30]], exact=True).pvalue)
    assert fin["p_value"] < 1e-5
    assert result["length_effect"] == "holds"
    truncated = f"{100 * (60 - n) / 60:.1f}% -> 0.0%"
    sentence = (
        f"The gain holds among answers finished in both runs: {100 * 10 / n:.1f}% -> {100 * 30 / n:.1f}% "
        f"on {n} items (p = {fin['p_value']:.3g}); truncated {truncated}."
    )
    assert result["verdict"].endswith(sentence)
    report = write_report(a, b, result, tmp_path / "report").read_text()
    assert sentence in report and "now fit" not in report


def test_a_loss_from_answers_that_no_longer_fit_and_no_sentence_without_a_significant_change(tmp_path):
    before, after = _brevity_only()
    *_, result = _compare(tmp_path, after, before, "_reversed")  # B cuts off what A finished
    assert result["length_effect"] == "length"
    loss = "Most of the loss is answers that no longer fit the token budget (truncated 0.0% -> 66.7%)"
    assert loss in result["verdict"]
    same = [(i % 3 == 0, i % 3 == 0 or i % 4 != 0) for i in range(30)]
    *_, result = _compare(tmp_path, same, same, "_same")
    assert not result["significant"] and result["length_effect"] is None
    assert result["verdict"].startswith("No significant difference") and "finished" not in result["verdict"]


def test_length_effect_rule_at_its_edges():
    """The rule of `length_effect` on hand-made results: half the overall change is the line."""

    def result(change, fin_change, fin_p, trunc_a, trunc_b, n=50, significant=True):
        return {
            "significant": significant,
            "accuracy_difference": {"value": change},
            "finished_in_both": {"n": n, "p_value": fin_p, "accuracy_difference": {"value": fin_change}},
            "truncation": {"a": trunc_a, "b": trunc_b},
        }

    assert length_effect(result(0.2, 0.10, 0.01, 0.5, 0.1)) == "holds"  # exactly half, significant
    assert length_effect(result(0.2, 0.09, 0.01, 0.5, 0.1)) == "length"  # under half
    assert length_effect(result(0.2, 0.15, 0.2, 0.5, 0.1)) == "length"  # not significant among finished
    assert length_effect(result(0.2, 0.15, 0.2, 0.1, 0.1)) == "unclear"  # ... and truncation did not fall
    assert length_effect(result(0.2, 0.0, 1.0, 0.5, 0.0, n=0)) == "length"  # nothing finished in both
    assert length_effect(result(-0.2, -0.2, 0.001, 0.1, 0.1)) == "holds"  # a real loss
    assert length_effect(result(-0.2, 0.0, 1.0, 0.0, 0.3)) == "length"  # answers that no longer fit
    assert length_effect(result(0.2, 0.2, 0.001, 0.5, 0.1, significant=False)) is None


def test_metrics_report_accuracy_among_finished_and_the_budget_that_finishes_95_percent():
    # 20 answers: 15 finished (lengths 1..15, the first 9 right), 5 cut off at the budget.
    rows = [_row(i, i < 9, True, tokens=i + 1) for i in range(15)]
    rows += [_row(15 + i, False, False) for i in range(5)]
    m = eval_metrics(rows, max_new_tokens=BUDGET)
    assert m["accuracy"]["value"] == pytest.approx(9 / 20) and m["truncation_rate"] == pytest.approx(0.25)
    assert m["accuracy_finished"]["value"] == pytest.approx(9 / 15) and m["accuracy_finished"]["n"] == 15
    assert m["tokens_for_95_finished"] is None  # 75% finished: no budget up to 24 reaches 95%
    assert tokens_to_finish(rows, 0.75) == 15 and tokens_to_finish(rows, 0.5) == 10
    flat = flat_summary(m)
    assert (flat["accuracy_finished"], flat["n_finished"]) == (pytest.approx(0.6), 15)
    assert flat["truncation_rate"] == pytest.approx(0.25)

    everything = [_row(i, True, True, tokens=i + 1) for i in range(60)]
    assert tokens_to_finish(everything, 0.95) == 57  # 0.95 * 60 is 57 (not 58 from rounding)
    assert math.isnan(finished_accuracy(rows[15:])["value"]) and finished_accuracy(rows[15:])["n"] == 0
    with pytest.raises(ValueError, match="share must be in"):
        tokens_to_finish(rows, 0.0)

    # The terminal lines: every answer cut off says so in words, not "nan (n=0 items)".
    cut_off = eval_metrics(rows[15:], max_new_tokens=BUDGET)
    shown = describe({"task": "arithmetic", "split": "test", "temperature": 0.0, **cut_off})
    assert "none finished within the budget" in shown and "nan" not in shown.split("finished answers")[-1]


def test_the_trainer_closing_lines_say_truncation_and_the_length_verdict(tmp_path, capsys):
    """What `make demo` prints at the end: truncated shares and accuracy among finished answers before and
    after, and the comparison's verdict with its sentence on length."""
    from rlvr_jax.trainer.reporting import RunSummary, describe_evaluation, print_summary

    before, after = _brevity_only()
    a, b, result = _compare(tmp_path, before, after)
    eval_before, eval_after = flat_summary(eval_metrics(a.rows)), flat_summary(eval_metrics(b.rows))
    summary = RunSummary(
        workdir=str(tmp_path), steps=14, eval_before=eval_before, eval_after=eval_after,
        checkpoint_dir="ckpt", tensorboard_dir=None, metrics_file="metrics.jsonl", reward_plot=None,
        export_dir=None, eval_verdict=result["verdict"],
    )  # fmt: skip
    print_summary(summary)
    out = capsys.readouterr().out
    assert "held-out accuracy: before 0.167 -> after 0.500 (n=60;" in out
    assert (
        "truncated:         before 67% -> after 0%; accuracy among finished answers: before 0.500 (n=20) "
        "-> after 0.500 (n=60)"
    ) in out
    assert "after vs before: B is better than A" in out and "answers that now fit the token budget" in out
    assert describe_evaluation(eval_before) == (
        "0.167 (reward 0.167; truncated 67%, accuracy among finished answers 0.500 (n=20))"
    )
    old = {"accuracy": 0.2, "reward": 0.3}  # a resumed run's evaluation from before these metrics existed
    assert describe_evaluation(old) == "0.200 (reward 0.300)"


def test_eval_max_new_tokens_defaults_to_the_training_budget_and_is_validated():
    config = base_config()
    assert config.sampling.eval_max_new_tokens is None and eval_max_new_tokens(config) == 256
    config.sampling.eval_max_new_tokens = 512
    assert eval_max_new_tokens(config) == 512
    config.data.path = None
    config.model.path = "Qwen/Qwen2.5-0.5B-Instruct"
    config.sampling.eval_max_new_tokens = 0
    with pytest.raises(ConfigError, match=r"sampling\.eval_max_new_tokens must be a whole number of tokens"):
        validate(config)
    with pytest.raises(TypeError):
        config.sampling.eval_max_new_tokens = 1.5


def test_held_out_evaluation_generates_with_its_own_budget(smollm_gguf):
    """`score_held_out` (the trainer's before / after evaluations and scripts/evaluate.py) decodes up to
    `sampling.eval_max_new_tokens`, and metrics.json records that budget; unset, the training budget."""
    from rlvr_jax.data.base import Task
    from rlvr_jax.evaluation.evaluate import describe, score_held_out
    from rlvr_jax.generate import Sampler
    from rlvr_jax.weights.loader import load_tokenizer
    from tests.tiny import TINY, numpy_model, use_compilation_cache

    use_compilation_cache()
    tokenizer = load_tokenizer(smollm_gguf)
    model = numpy_model(TINY.replace(vocab_size=49152, eos_token_ids=tokenizer.stop_ids[:1]), 0.02)
    sampler = Sampler(model, tokenizer)
    task = Task("budget_test", lambda *a, **k: [], reward="numeric")
    samples = [{"id": f"t{i}", "prompt": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(4)]
    config = base_config()
    config.sampling.max_new_tokens = 3
    for budget, expected in ((None, 3), (7, 7)):
        config.sampling.eval_max_new_tokens = budget
        rows, metrics, params = score_held_out(sampler, task, samples, config, quiet=True)
        assert params.max_new_tokens == expected and metrics["max_new_tokens"] == expected
        assert max(r["num_tokens"] for r in rows) == expected  # a random model rarely stops early
        assert metrics["truncation_rate"] == pytest.approx(1 - sum(r["finished"] for r in rows) / 4)
    text = describe({"task": "budget_test", "split": "test", "temperature": 0.0, **metrics})
    assert "by the budget of 7 tokens" in text and "accuracy among finished answers" in text


def test_held_out_accuracy_is_scored_by_the_correctness_reward_under_shaping():
    """A shaped training reward (weighted sum with a format bonus or DAPO's overlong penalty) would make
    "accuracy" mean "passed the shaping too"; evaluation uses the task's own reward unless told."""
    from rlvr_jax.config import eval_reward

    config = base_config()
    config.data.task = "gsm8k"
    assert eval_reward(config, "numeric") == ("numeric", {})
    config.reward.name = "weighted_sum"
    config.reward.options.components = {"numeric": 1.0, "overlong": 1.0}
    config.reward.options.component_options = {"numeric": {"strict": True}, "overlong": {"buffer": 8}}
    assert eval_reward(config, "numeric") == ("numeric", {"strict": True})
    config.reward.eval_name = "math"
    assert eval_reward(config, "numeric") == ("math", {})
    config.reward.eval_name = "numerc"
    with pytest.raises(ConfigError, match=r"reward\.eval_name"):
        validate(config)
