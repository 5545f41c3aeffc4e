"""scripts/train.py's whole loop on two jax.distributed processes (one fake CPU device each) against one
process with both devices: the same metrics, one writer of the run's files, a process killed mid-run (the
other ends at once with a clear error, the checkpoints stay whole) and the relaunch that resumes from them.

Three launches, shared by the tests to keep CI short (tests/train_processes.py is their config): one
process, 3 steps; two processes whose process 1 is SIGKILLed entering its third update; two processes
again in the same workdir, which resume and finish. Steps 1-2 of the two-process run are logged before
the kill, the rest after the resume, and together they must equal the one-process run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import jax
import pytest

from rlvr_jax.checkpointing import check_manifest
from rlvr_jax.monitoring.metrics import read_metrics
from tests.conftest import REPO
from tests.multiprocess import free_port, subprocess_env
from tests.test_trainer import _deterministic, tiny_model_dir  # noqa: F401 (a fixture)

STEPS = 3
DIE_AT_UPDATE = 3
TIMEOUT_S = 240  # each launch; a cold compilation cache on the 2-core CI machine takes ~40 s


def launch(
    workdir: Path, model_dir: Path, processes: int, devices: int, **env: str
) -> list[subprocess.Popen]:
    """scripts/train.py as `processes` jax.distributed processes of `devices` CPU devices each.

    They use the suite's persistent compilation cache (`subprocess_env` drops inherited JAX_* variables), so
    the relaunch that resumes loads the programs the killed launch compiled instead of compiling them again.
    """
    cache = {
        "JAX_COMPILATION_CACHE_DIR": str(jax.config.jax_compilation_cache_dir),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5",
    }
    env = {**cache, **env}
    port = free_port()
    cluster = lambda i: (
        {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": str(processes),
         "JAX_PROCESS_ID": str(i)} if processes > 1 else {}
    )  # fmt: skip
    command = [
        sys.executable, str(REPO / "scripts" / "train.py"), f"--config={REPO / 'tests/train_processes.py'}",
        f"--workdir={workdir}", f"--config.model.path={model_dir}", f"--config.train.steps={STEPS}",
    ]  # fmt: skip
    return [
        subprocess.Popen(command, env=subprocess_env(devices, PYTHONPATH=str(REPO), **cluster(i), **env),
                         cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(processes)
    ]  # fmt: skip


def outputs(procs: list[subprocess.Popen]) -> list[tuple[int, str, str]]:
    """(exit status, stdout, stderr) of each process; stragglers are killed."""
    try:
        done = [p.communicate(timeout=TIMEOUT_S) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, (_, err) in enumerate(done):  # kept beside the run, for a failure's post-mortem
        Path(procs[i].args[3].removeprefix("--workdir=") + f".{i}.stderr").write_text(err)
    return [(p.returncode, out, err) for p, (out, err) in zip(procs, done, strict=True)]


def writes(stdout: str) -> list[str]:
    """The paths the process wrote to (tests/train_processes.py's audit hook prints each as it goes)."""
    return [line.removeprefix("WRITE ") for line in stdout.splitlines() if line.startswith("WRITE ")]


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("multiprocess")
    one = outputs(launch(root / "one", tiny_model_dir, processes=1, devices=2))
    assert one[0][0] == 0, one[0][2][-3000:]

    killed = launch(root / "two", tiny_model_dir, processes=2, devices=1, DIE_AT_UPDATE=str(DIE_AT_UPDATE))
    deadline = time.monotonic() + TIMEOUT_S
    while killed[1].poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    died_at = time.monotonic()
    killed_out = outputs(killed)
    survivor_s = time.monotonic() - died_at  # an upper bound on how long process 0 outlived process 1
    # Judged now, before the resume rewrites them: each step directory and what is wrong with it (None:
    # complete). A step orbax committed whose manifest the dead run never wrote is incomplete.
    checkpoints = {p: check_manifest(p) for p in sorted((root / "two" / "checkpoints").iterdir())}

    resumed = outputs(launch(root / "two", tiny_model_dir, processes=2, devices=1))
    for status, _, err in resumed:
        assert status == 0, err[-3000:]
    return {"root": root, "one": one, "killed": killed_out, "survivor_s": survivor_s,
            "checkpoints_after_kill": checkpoints, "resumed": resumed}  # fmt: skip


def test_two_processes_log_the_metrics_of_one_with_the_same_global_batch(runs):
    """Same seed, global batch (4 prompts x 2) and device count: every step's rewards, loss and update
    metrics, and the held-out evaluations before and after, equal one process's."""
    one = [_deterministic(r) for r in read_metrics(runs["root"] / "one" / "metrics.jsonl")]
    two = [_deterministic(r) for r in read_metrics(runs["root"] / "two" / "metrics.jsonl")]
    assert [r["step"] for r in two] == [r["step"] for r in one] == [0, 1, 2, 3, 3]  # each step once
    assert "train/loss" in one[1] and "reward/mean" in one[1] and "eval/accuracy" in one[0]
    for a, b in zip(one, two, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-6), (a["step"], k, a[k], b[k])
    summaries = [json.loads((runs["root"] / name / "summary.json").read_text()) for name in ("one", "two")]
    assert summaries[1]["eval_after"] == pytest.approx(summaries[0]["eval_after"])


def test_only_process_0_writes_the_run_files(runs):
    """Process 1 writes checkpoint shards only; metrics, evaluations, summary and config are process 0's."""
    workdir = runs["root"] / "two"
    inside = lambda out: [Path(p) for p in writes(out) if Path(p).is_relative_to(workdir)]
    # Every process makes sure the workdir exists (a mkdir of the workdir itself).
    by_process = [[p for p in inside(out) if p != workdir] for _, out, _ in runs["resumed"]]
    assert not [p for p in by_process[1] if not p.is_relative_to(workdir / "checkpoints")]
    primary = {p.relative_to(workdir).parts[0] for p in by_process[0]}
    assert {"metrics.jsonl", "summary.json", "reward_curve.png", "eval"} <= primary
    first_launch = {p.relative_to(workdir).parts[0] for p in inside(runs["killed"][0][1]) if p != workdir}
    assert "config.json" in first_launch


def test_a_killed_process_ends_the_other_with_a_clear_error_and_the_run_resumes(runs):
    """Process 1 SIGKILLed mid-step: process 0 exits 1 within seconds (no wait for the heartbeat timeout)
    saying what happened and how to resume; every step directory left is complete; the relaunch resumes
    from the newest one and ends like the uninterrupted run (the metrics test above)."""
    (status0, _, err0), (status1, _, err1) = runs["killed"]
    assert status1 == -9 and f"SIGKILL at update {DIE_AT_UPDATE}" in err1
    assert status0 == 1, err0[-3000:]  # not 2: a lost peer is no usage error
    assert runs["survivor_s"] < 30, runs["survivor_s"]
    assert "error: process 0 of 2 stopped" in err0
    assert "relaunch every process with the same --workdir" in err0
    left = {p: problem for p, problem in runs["checkpoints_after_kill"].items() if p.name.isdigit()}
    complete = [int(p.name) for p, problem in left.items() if problem is None]
    assert complete, left
    newest = max(complete)
    assert 1 <= newest < DIE_AT_UPDATE
    # At most the step being saved when the peer died is incomplete (orbax committed it, its manifest was
    # not written yet): the resume does not read it, it sets it aside under damaged/ and resumes before it.
    incomplete = [int(p.name) for p, problem in left.items() if problem is not None]
    assert all(step > newest for step in incomplete) and len(incomplete) <= 1, left
    stdout0, stderr0 = runs["resumed"][0][1], runs["resumed"][0][2]
    assert f"at step {newest}" in stdout0.split("resumed from")[1].splitlines()[0]
    for step in incomplete:
        assert f"checkpoint {step} is unusable" in stderr0 and f"damaged/{step}" in stderr0
