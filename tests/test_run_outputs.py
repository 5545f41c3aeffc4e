"""What a training run shows and leaves for other tools, from one short run of scripts/train.py with its
stdout piped (as in `make demo | tee log`): a progress line per step and for each held-out evaluation,
the learning rate in metrics.jsonl and TensorBoard every step, a TensorBoard run named after the run, the
reward statistics the reward curve's band needs, an HF export in bf16 that other users can read and
transformers loads, scripts/convert.py on the workdir's checkpoints, and one truncation number in the
report's figure and summary.json."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

from rlvr_jax.monitoring.metrics import read_metrics
from tests.conftest import REPO
from tests.test_metrics_logging import scalars
from tests.test_trainer import _tiny_config, tiny_model_dir  # noqa: F401 (a fixture)

STEPS = 3
EVAL_ITEMS = 16


@pytest.fixture(scope="module")
def piped_run(tiny_model_dir):  # noqa: F811 (the fixture imported above)
    """(workdir, stdout) of a 3-step run with an evaluation at step 2, TensorBoard on and a bf16 export.

    The workdir sits in a folder every user may enter, so that another uid can try to read the export.
    """
    shared = Path(tempfile.mkdtemp(prefix="rlvr-run-outputs-"))
    shared.chmod(0o755)
    config_file = shared / "config.py"
    overrides = {
        "train.steps": STEPS, "train.eval_every": 2, "train.checkpoint_every": 1,
        "data.eval_limit": EVAL_ITEMS, "logging.tensorboard": True, "train.export_hf": True,
        "train.export_dtype": "bfloat16",
    }  # fmt: skip
    config_file.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from pathlib import Path\n"
        "from tests.test_trainer import _tiny_config\n"
        "def get_config(arg=None):\n"
        f"    return _tiny_config(Path({str(tiny_model_dir)!r}), **{overrides!r})\n"
    )
    workdir = shared / "tiny-run"
    train = [sys.executable, str(REPO / "scripts" / "train.py"), f"--config={config_file}"]
    proc = subprocess.run(
        [*train, f"--workdir={workdir}"], capture_output=True, text=True, timeout=600, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    yield workdir, proc.stdout
    shutil.rmtree(shared)


def test_a_piped_run_prints_a_progress_line_for_every_step_and_evaluation(piped_run):
    _, stdout = piped_run
    steps = [line for line in stdout.splitlines() if line.startswith("train: ")]
    assert [line.split(" steps")[0] for line in steps] == [f"train: {s}/{STEPS}" for s in range(1, STEPS + 1)]
    assert all(re.search(r"reward -?[\d.]+.*s/step [\d.]+", line) for line in steps), steps
    assert "elapsed" in steps[0] and "left" in steps[0] and "left" not in steps[-1]
    # The held-out evaluations before, inside (step 2) and after training show their progress too.
    for name in ("before", "step_2", "after"):
        assert f"eval {name}: {EVAL_ITEMS}/{EVAL_ITEMS} items (100%)" in stdout, stdout
    assert "\r" not in stdout and "\x1b[" not in stdout  # a log, not a terminal: no control codes
    order = [line.split(":")[0] for line in stdout.splitlines() if re.match(r"(train|eval \w+): \d+/", line)]
    # Step 2's evaluation is part of step 2: its line comes before the step's own.
    assert order == ["eval before", "train", "eval step_2", "train", "train", "eval after"], order


def test_the_learning_rate_reaches_metrics_and_a_tensorboard_run_named_after_the_run(piped_run):
    workdir, stdout = piped_run
    rows = [r for r in read_metrics(workdir / "metrics.jsonl") if "reward/mean" in r]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert all(r["train/learning_rate"] == pytest.approx(3e-2) for r in rows)
    # `tensorboard --logdir WORKDIR/tensorboard` lists the run as "tiny-run" (its folder), not ".".
    assert f"tensorboard --logdir {workdir / 'tensorboard'}" in stdout
    assert [p.name for p in (workdir / "tensorboard").iterdir()] == ["tiny-run"]
    logged = scalars(workdir / "tensorboard" / "tiny-run")
    assert [step for step, _ in logged["train/learning_rate"]] == list(range(1, STEPS + 1))
    assert [lr for _, lr in logged["train/learning_rate"]] == pytest.approx([3e-2] * STEPS)


def _readable_by_nobody(files: list[Path]) -> bool:
    """Whether uid 65534 (nobody, no groups, no capabilities) can read every file."""
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]
    proc = subprocess.run([*nobody, "cat", *map(str, files)], capture_output=True, timeout=60)
    return proc.returncode == 0


def test_every_step_logs_what_the_reward_curve_band_needs(piped_run):
    workdir, _ = piped_run
    rows = [r for r in read_metrics(workdir / "metrics.jsonl") if "reward/mean" in r]
    for r in rows:  # 8 prompts: the standard error of the mean over their group means
        assert 0 < r["reward/stderr"] < r["reward/std"]
        assert r["reward/min"] <= r["reward/mean"] <= r["reward/max"]
    assert (workdir / "reward_curve.png").stat().st_size > 10_000


def test_the_export_is_bf16_for_everyone_and_equals_the_converted_last_checkpoint(piped_run, tmp_path):
    workdir, stdout = piped_run
    export = workdir / "hf_export"
    assert f"HF export:     {export}" in stdout
    files = sorted(export.iterdir())
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json"} <= {
        f.name for f in files
    }
    # Other users and tools (a server under another uid, a shared model store) can read it.
    assert stat.S_IMODE(export.stat().st_mode) == 0o755
    assert {f.name: oct(stat.S_IMODE(f.stat().st_mode)) for f in files} == {f.name: "0o644" for f in files}
    if os.geteuid() == 0:  # root can become another user: a real read as uid 65534
        assert _readable_by_nobody(files)
        export.chmod(0o700)  # and the check can fail: a private folder is not readable
        assert not _readable_by_nobody(files)
        export.chmod(0o755)

    # scripts/convert.py on the workdir: its last checkpoint in float32, rebuilt from the run's config.
    convert = [sys.executable, str(REPO / "scripts" / "convert.py"), "--input", str(workdir)]
    done = subprocess.run([*convert, "--step", "latest", "--output", str(tmp_path / "fp32")],
                          capture_output=True, text=True, timeout=300, cwd=REPO)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"float32) from {workdir / 'checkpoints'}/{STEPS}" in done.stdout
    fp32 = load_file(str(tmp_path / "fp32" / "model.safetensors"))
    bf16 = load_file(str(export / "model.safetensors"))
    assert fp32.keys() == bf16.keys()
    for name, weight in fp32.items():  # the export is the final parameters, rounded to bf16
        assert weight.dtype == np.float32 and str(bf16[name].dtype) == "bfloat16"
        np.testing.assert_array_equal(weight.astype(bf16[name].dtype), bf16[name], err_msg=name)

    # transformers loads the bf16 export as bf16, and its logits follow the float32 conversion's.
    half = transformers.AutoModelForCausalLM.from_pretrained(export)
    full = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "fp32", dtype=torch.float32)
    assert next(half.parameters()).dtype == torch.bfloat16
    ids = transformers.AutoTokenizer.from_pretrained(export)("Write some digits (3).", return_tensors="pt")
    with torch.no_grad():
        a, b = half(**ids).logits.float(), full(**ids).logits
    assert torch.allclose(a, b, atol=0.05 * float(b.abs().max()), rtol=0)

    from rlvr_jax.evaluation.evaluate import load_training_run

    with pytest.raises(FileNotFoundError, match=r"no checkpoint 9 in .*; have steps \[1, 2, 3\]"):
        load_training_run(workdir, 9)


def test_the_report_figure_and_summary_json_count_the_same_truncated_answers(
    piped_run, tmp_path, monkeypatch
):
    """The before / after report's length figure states each run's truncated share: the one summary.json
    (and metrics.json) holds, from the same definition (`rlvr_jax.evaluation.metrics.truncation_rate`)."""
    from rlvr_jax.evaluation import plots
    from rlvr_jax.evaluation.compare import compare_runs, write_report
    from rlvr_jax.evaluation.runs import load_run
    from rlvr_jax.figures import percent

    workdir, _ = piped_run
    summary = json.loads((workdir / "summary.json").read_text())
    drawn = []
    save = plots.save
    monkeypatch.setattr(
        plots, "save", lambda fig, out, **kw: drawn.append((Path(out).name, fig)) or save(fig, out, **kw)
    )
    before, after = load_run(workdir / "eval" / "before"), load_run(workdir / "eval" / "after")
    write_report(before, after, compare_runs(before, after), tmp_path)
    (figure,) = [fig for name, fig in drawn if name == "lengths.png"]
    legend = [t.get_text() for t in figure.legends[0].get_texts()]
    for text, key in zip(legend[:2], ("eval_before", "eval_after"), strict=True):
        assert text.endswith(f", {percent(summary[key]['truncation_rate'])} truncated"), (text, summary[key])
