"""The notebooks in notebooks/ run top to bottom on a CPU with their small settings, and do what they say.

Each notebook is executed by nbclient in a kernel started from this interpreter (a kernel spec written to a
temporary JUPYTER_PATH), from notebooks/ as its working directory, with RLVR_NOTEBOOK_SMALL=1 (the small
settings) and RLVR_NOTEBOOK_OUT pointing at a temporary folder for everything the notebooks write. The
executed copies go to that folder too; the committed notebooks stay without outputs.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import jax
import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from tests.conftest import REPO, shared_path

NOTEBOOKS = REPO / "notebooks"
NAMES = ("quickstart", "custom_reward", "evaluate_and_compare", "serve_and_query")
CELL_TIMEOUT_S = 600  # one cell; a cold compilation cache on a 2-core CI machine is slow
KERNEL = "rlvr-notebook-test"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A JUPYTER_PATH with one kernel spec: this interpreter, offline, on the CPU, small settings."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    env = {
        "RLVR_NOTEBOOK_SMALL": "1",
        "RLVR_SHARED": str(shared_path()),
        "JAX_PLATFORMS": "cpu",
        "JAX_COMPILATION_CACHE_DIR": str(jax.config.jax_compilation_cache_dir),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "MPLBACKEND": "Agg",
    }
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "rlvr-jax notebook test",
        "language": "python",
        "env": env,
    }))  # fmt: skip
    return root


def run_notebook(
    name: str, out: Path, kernel_dir: Path, monkeypatch: pytest.MonkeyPatch, source: Path | None = None
) -> tuple:
    """Executes notebooks/NAME.ipynb (or `source`) with outputs under `out`; (executed notebook, its text)."""
    source = source or NOTEBOOKS / f"{name}.ipynb"
    nb = nbformat.read(source, as_version=4)
    nbformat.validate(nb)
    monkeypatch.setenv("JUPYTER_PATH", str(kernel_dir))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(kernel_dir / "runtime"))  # connection files, not in $HOME
    monkeypatch.setenv("RLVR_NOTEBOOK_OUT", str(out))  # the kernel inherits this (its spec adds the rest)
    client = NotebookClient(
        nb,
        kernel_name=KERNEL,
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
        startup_timeout=120,
    )
    t0 = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError as e:
        raise AssertionError(f"{name}.ipynb failed:\n{str(e)[-4000:]}") from None
    finally:
        out.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, out / f"{name}.executed.ipynb")
    print(f"{name}.ipynb ran in {time.perf_counter() - t0:.1f} s")
    return nb, notebook_text(nb)


def notebook_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                parts.append(output["text"])
            elif "data" in output and "text/plain" in output["data"]:
                parts.append(output["data"]["text/plain"])
    return "\n".join(parts)


def images(nb) -> list[bytes]:
    return [
        base64.b64decode(output["data"]["image/png"])
        for cell in nb.cells
        for output in cell.get("outputs", [])
        if "image/png" in output.get("data", {})
    ]


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebooks_are_valid_and_have_no_outputs(name):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    assert sum(c.cell_type == "markdown" for c in nb.cells) >= 5  # explained, not just code
    assert "RLVR_NOTEBOOK_SMALL" in code[0].source  # the first code cell picks the sizes


def test_a_failing_cell_fails_the_run(tmp_path, kernel_dir, monkeypatch):
    """The harness itself: the small settings reach the kernel, and an exception in a cell is a failure."""
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook(cells=[
        new_code_cell("import os, sys\nprint(os.environ['RLVR_NOTEBOOK_SMALL'], sys.executable)"),
        new_code_cell("raise RuntimeError('this cell fails')"),
    ])  # fmt: skip
    source = tmp_path / "failing.ipynb"
    nbformat.write(nb, source)
    with pytest.raises(AssertionError, match="this cell fails"):
        run_notebook("failing", tmp_path, kernel_dir, monkeypatch, source=source)
    executed = nbformat.read(tmp_path / "failing.executed.ipynb", as_version=4)
    assert notebook_text(executed).split() == ["1", sys.executable]


def test_quickstart_trains_and_evaluates_before_and_after(tmp_path, kernel_dir, monkeypatch):
    nb, text = run_notebook("quickstart", tmp_path, kernel_dir, monkeypatch)
    assert "backend: cpu" in text
    assert "held-out accuracy: before" in text and "-> after" in text
    assert "held-out accuracy before:" in text and "95% CI" in text
    run = tmp_path / "quickstart"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "reward/mean" in r] == [1, 2]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["eval_before"]["n"] == summary["eval_after"]["n"] == 8
    assert (run / "checkpoints" / "2").is_dir()
    assert (run / "eval" / "compare" / "report.md").exists()
    pngs = images(nb)
    assert len(pngs) >= 2 and all(p.startswith(PNG_MAGIC) for p in pngs)  # reward curve, accuracy, ...


def test_custom_reward_scores_known_cases_and_trains_with_it(tmp_path, kernel_dir, monkeypatch):
    """The reward is a function defined in a cell (TRL's signature) and GRPOTrainer trains with it."""
    _, text = run_notebook("custom_reward", tmp_path, kernel_dir, monkeypatch)
    out = tmp_path / "custom_reward"
    checks = json.loads((out / "checks.json").read_text())
    expected = {
        "correct": 1.0,
        "correct, extra words": 1.0,
        "wrong answer": 0.1,
        "no answer line": 0.0,
        "answer line not last": 0.0,
        "number spam": 0.0,
        "empty": 0.0,
    }
    assert {k: v["score"] for k, v in checks.items()} == pytest.approx(expected)
    assert checks["number spam"]["naive_score"] == 1.0  # the naive reward is hacked, ours is not
    assert "held-out accuracy" in text and "-> " in text
    run = out / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "reward/mean" in r] == [1, 2]
    lines = (run / "eval" / "after" / "samples.jsonl").read_text().splitlines()
    samples = [json.loads(line) for line in lines]
    assert len(samples) == 8  # the notebook's held-out set, small settings
    # Scored by the notebook's function: only its three values occur.
    assert all(any(r["reward"] == pytest.approx(v) for v in (0.0, 0.1, 1.0)) for r in samples)
    reasons = json.loads((out / "reasons.json").read_text())
    assert sum(reasons["after"].values()) == len(samples)


def _colab_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("notebooks_colab", NOTEBOOKS / "colab.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_notebook_opens_on_colab_with_a_tpu_and_installs_from_one_repository_url():
    colab = _colab_module()
    assert colab.notebook_names() == sorted(NAMES)
    assert colab.main(["--check"]) == 0  # every notebook carries what colab.py stamps from its one constant
    for name in NAMES:
        nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        link = (
            f"https://colab.research.google.com/github/{colab.GITHUB_REPO}/blob/main/notebooks/{name}.ipynb"
        )
        assert nb.cells[0].cell_type == "markdown" and link in nb.cells[0].source
        assert nb.metadata["accelerator"] == "TPU" and nb.metadata["colab"]["gpuType"] == "V5E1"
        code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
        assert f'REPO_URL = "https://github.com/{colab.GITHUB_REPO}"' in code
        assert '"git", "clone", "--depth=1", REPO_URL' in code


def test_stamping_adds_the_badge_runtime_and_url_and_keeps_the_rest():
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    colab = _colab_module()
    nb = new_notebook(
        cells=[
            new_markdown_cell("# Title"),
            new_code_cell('x = 1\nREPO_URL = ""  # set me\nprint(REPO_URL)'),
        ],
        metadata={"colab": {"name": "demo"}, "kernelspec": {"name": "python3", "display_name": "Python 3"}},
    )
    once = colab.stamp(nb, "demo")
    assert [c.source for c in once.cells[1:]] == [
        "# Title",
        f"x = 1\n{colab.repo_url_line()}\nprint(REPO_URL)",
    ]
    assert once.cells[0].source == colab.badge("demo") and "notebooks/demo.ipynb" in once.cells[0].source
    assert once.metadata["colab"] == {"name": "demo", "gpuType": "V5E1", "provenance": []}
    assert once.metadata["kernelspec"]["name"] == "python3" and once.metadata["accelerator"] == "TPU"
    assert colab.stamp(once, "demo") == once and nb.cells[0].source == "# Title"  # idempotent, input kept


def test_evaluate_and_compare_gives_a_paired_test_and_plots(tmp_path, kernel_dir, monkeypatch):
    nb, text = run_notebook("evaluate_and_compare", tmp_path, kernel_dir, monkeypatch)
    out = tmp_path / "evaluate_and_compare"
    for run in ("chat", "plain"):
        metrics = json.loads((out / run / "metrics.json").read_text())
        assert metrics["task"] == "gsm8k" and metrics["num_items"] == 8
        assert metrics["max_new_tokens"] == 32  # the notebook's small budget, not the gsm8k config's 512
    comparison = json.loads((out / "compare" / "comparison.json").read_text())
    assert comparison["test"] == "mcnemar_exact" and 0.0 <= comparison["mcnemar"]["p_value"] <= 1.0
    assert comparison["paired_items"] == 8
    diff = comparison["accuracy_difference"]
    assert diff["ci_low"] <= diff["value"] <= diff["ci_high"]
    assert "McNemar p-value" in text
    for png in ("accuracy.png", "lengths.png"):
        assert (out / "compare" / png).read_bytes().startswith(PNG_MAGIC)
    assert len(images(nb)) >= 2


def test_serve_and_query_answers_over_http_and_shuts_down(tmp_path, kernel_dir, monkeypatch):
    pid_file = tmp_path / "serve_and_query" / "server.pid"
    try:
        _, text = run_notebook("serve_and_query", tmp_path, kernel_dir, monkeypatch)
    finally:  # the server is the notebook's child process; never leave it running
        if pid_file.exists():
            pid = int(pid_file.read_text())
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    replies = json.loads((tmp_path / "serve_and_query" / "replies.json").read_text())
    assert "Paris" in replies["chat"]
    assert replies["stream_chunks"] > 1 and replies["stream_text"].strip()
    assert replies["health"] == 200
    assert "rlvr_serve_requests" in replies["metrics"]
    assert "server stopped" in text
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):  # the final cell shut it down
        os.kill(pid, 0)
