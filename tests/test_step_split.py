"""benchmarks/step_split.py: the step's split from grpo_step.py results, as a table and a figure."""

from __future__ import annotations

import json

import pytest

from benchmarks import step_split


def result(step: float, sample: float, update: float, **extra) -> dict:
    comps = {"sample": sample, "encode": 0.04, "detokenize": 0.08, "reward": 0.01, "batch": 0.005,
             "update": update, "handover": 0.002}  # fmt: skip
    return {"benchmark": "grpo_step", "shape": "qwen2.5-0.5b", "step_s": step, "components_s": comps,
            "overhead_fraction": (step - sample - update) / step, "first_steps_s": [14.1, 25.4],
            "update_mfu": 0.42, "device": "NVIDIA H200, 143771 MiB", **extra}  # fmt: skip


def test_split_sums_to_the_step_and_other_is_what_the_named_parts_leave():
    s = step_split.split(result(1.65, 0.54, 0.97))
    assert s["host"] == pytest.approx(0.135)
    assert s["other"] == pytest.approx(1.65 - 0.54 - 0.97 - 0.135)
    assert sum(s[p] for p in step_split.PARTS) == pytest.approx(s["step"])
    # Parts measured as overlapping (async rollouts) can exceed the step: `other` is then 0, not negative.
    assert step_split.split(result(1.0, 0.6, 0.9))["other"] == 0.0


def test_cli_writes_a_row_per_result_with_its_switches_and_a_figure(tmp_path):
    files = []
    for i, (sampler, step) in enumerate((("master", 1.86), ("compute", 1.65))):
        f = tmp_path / f"r{i}.json"
        f.write_text(
            json.dumps(result(step, 0.5, 0.9, sampler_params=sampler, remat="full", micro_batches=4))
        )
        files.append(str(f))
    step_split.main([*files, "--out", str(tmp_path / "split"), "--target", "1.2"])
    rows = (tmp_path / "split.md").read_text().splitlines()[2:]
    assert len(rows) == 2
    assert "f32 masters" in rows[0] and "| 1.860 |" in rows[0] and "0.900 (0.42)" in rows[0]
    assert "bf16 copy" in rows[1] and "| 1.650 |" in rows[1] and "14.1, 25.4" in rows[1]
    assert (tmp_path / "split.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_file_that_is_not_a_grpo_step_result_is_refused_by_name(tmp_path):
    f = tmp_path / "other.json"
    f.write_text(json.dumps({"benchmark": "rollout"}))
    with pytest.raises(SystemExit, match=r"other\.json is not a benchmarks/grpo_step\.py result"):
        step_split.main([str(f), "--out", str(tmp_path / "x")])
