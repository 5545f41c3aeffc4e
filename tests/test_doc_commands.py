"""Every shell command that the README, deploy/README.md, notebooks/README.md and docs/ show is exercised.

Each documented command (tests/doc_commands.py reads them) must match exactly one entry of COVERAGE, which
says how it is exercised:
- "ci": `.ci/run` runs it as written (or `make install` does, for the install lines).
- "test": the named tests run the same script with every one of its flags (on smaller sizes where the
  documented size takes minutes); checked below: the tests exist and their module names script and flags.
- "here": the named test takes it from the docs and runs it exactly as written (through bash, in a scratch
  copy of the layout with ../shared beside it), and checks what it printed.
- "smaller": the named test takes it from the docs and runs it with size overrides appended
  (`--config.train.steps=1` and the like), where the documented run takes many minutes on a CPU.
- "offline": it needs what no machine of ours has (a Docker engine, a cluster, a TPU, an NVIDIA GPU); the
  named tests check everything it uses without it (the Dockerfiles, the manifests, the compose file).
A new command in the docs fails `test_every_documented_command_is_exercised` until it has an entry, and an
entry that no longer matches a command fails `test_every_entry_still_matches_a_documented_command`.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import jax
import pytest

from tests.doc_commands import REPO, Command, documented_commands, normalize


@dataclass(frozen=True)
class Cover:
    pattern: str  # a regular expression that the command's normalized spelling must match entirely
    how: str  # ci | test | here | offline
    by: tuple[str, ...] = ()  # test node ids ("tests/test_x.py::test_y")
    why: str = ""  # for "offline": what is missing here


HERE = "tests/test_doc_commands.py"
SMOLLM = r"\.\./shared/models/SmolLM2-135M-Instruct\.Q4_1\.gguf"
DEPLOY_TESTS = "tests/test_deploy.py"
NO_ENGINE = "needs a Docker engine; this machine and CI have only the docker client"
NO_CLUSTER = "needs a Kubernetes cluster"

COVERAGE: list[Cover] = [
    # -- the two commands, and installing by hand
    Cover(r"make demo", "ci"),
    Cover(r"make test", "ci"),
    Cover(r"python3 -m venv \.venv", "ci"),
    Cover(r"\.venv/bin/python -m pip install -e '\.\[[a-z,]+\]'", "ci"),
    Cover(r"\.venv/bin/python -m pip install -e \.", "ci"),
    Cover(
        r"rlvr-train --config=quickstart --print_config",
        "here",
        (f"{HERE}::test_the_documented_console_command_runs",),
    ),
    Cover(r"pip install -e '\.\[[a-z,]+\]'", "ci"),
    Cover(
        r"\.venv/bin/python -m pip install -r requirements-gpu\.txt",
        "offline",
        (f"{HERE}::test_gpu_requirements_pin_the_jax_that_setup_accepts",),
        "needs an NVIDIA GPU host (gigabytes of CUDA wheels); the H100 benchmark runs install the same pins",
    ),
    Cover(
        r"\.venv/bin/python -m pip install 'jax\[tpu\]'",
        "offline",
        (f"{HERE}::test_gpu_requirements_pin_the_jax_that_setup_accepts",),
        "needs a TPU VM",
    ),
    # -- command-line tools
    Cover(
        rf"python scripts/generate\.py --model {SMOLLM} --chat .*",
        "test",
        ("tests/test_weights.py::test_generate_cli_answers_paris",),
    ),
    Cover(
        r"python scripts/generate\.py --model Qwen/.*",
        "here",
        (f"{HERE}::test_a_hub_id_loads_from_the_hub_cache",),
    ),
    Cover(
        r"python scripts/convert\.py .*",
        "test",
        (
            "tests/test_weights.py::test_gguf_to_hf_round_trip_through_convert_cli",
            "tests/test_weights.py::test_convert_cli_pushes_the_export_to_the_hub",
        ),
    ),
    Cover(
        r"python scripts/score\.py --task humaneval .*",
        "test",
        ("tests/test_score_cli.py::test_all_humaneval_canonical_solutions_pass_and_a_wrong_one_fails",),
    ),
    Cover(
        r"python scripts/score\.py --task gsm8k .*",
        "test",
        ("tests/test_score_cli.py::test_text_tasks_score_through_the_same_cli",),
    ),
    Cover(
        rf"python scripts/serve\.py --model {SMOLLM} --port 8000 --max_batch 8",
        "test",
        ("tests/test_serving.py::test_openai_client_chat_gets_paris",),
    ),
    Cover(  # the server loads any model source with load_model, an HF export included (tests/test_weights.py)
        r"python scripts/serve\.py --model runs/[\w.-]+/hf_export --port 8000",
        "test",
        ("tests/test_serving.py::test_openai_client_chat_gets_paris",),
    ),
    Cover(
        r"vllm serve runs/[\w.-]+/hf_export",
        "offline",
        ("tests/test_weights.py::test_gguf_to_hf_round_trip_through_convert_cli",),
        "needs vLLM on an NVIDIA GPU; the test loads an export with transformers, whose layout vLLM reads",
    ),
    Cover(
        r"python scripts/serve\.py --model runs/\S+ --checkpoint_step .*",
        "test",
        ("tests/test_serve_training_run.py::test_serve_loads_a_training_runs_checkpoint_by_step",),
    ),
    Cover(
        rf"python scripts/lm_eval_tasks\.py --model {SMOLLM} .*",
        "test",
        ("tests/test_lm_eval.py::test_lm_eval_gsm8k_matches_scripts_evaluate_item_by_item",),
    ),
    Cover(
        r"python scripts/export\.py .*",
        "test",
        ("tests/test_export.py::test_export_cli_writes_and_verifies_each_format",),
    ),
    Cover(
        r"python scripts/evaluate\.py --config=configs/gsm8k\.py .*",
        "test",
        ("tests/test_evaluation.py::test_evaluate_cli_on_the_real_model",),
    ),
    Cover(r"python scripts/compare\.py runs/quickstart/eval/before .*", "ci"),
    Cover(
        r"python scripts/drift\.py .* --live \.\./shared/data/gsm8k/test\.jsonl .*",
        "test",
        ("tests/test_drift.py::test_acceptance_gsm8k_train_vs_test_is_not_drift",),
    ),
    Cover(
        r"python scripts/drift\.py .* --live \.\./shared/data/mbpp/test\.jsonl .*",
        "test",
        ("tests/test_drift.py::test_acceptance_gsm8k_vs_mbpp_is_drift",),
    ),
    Cover(
        r"python scripts/drift\.py .* --save_profile .*",
        "here",
        (f"{HERE}::test_serve_and_curl_as_documented",),
    ),
    Cover(
        r"python scripts/serve\.py .* --drift_reference .*",
        "here",
        (f"{HERE}::test_serve_and_curl_as_documented",),
    ),
    Cover(r"curl localhost:8000/.*", "here", (f"{HERE}::test_serve_and_curl_as_documented",)),
    Cover(
        r"python scripts/train\.py --config=configs/gsm8k\.py:small --workdir=runs/gsm8k .*",
        "smaller",
        (f"{HERE}::test_the_gsm8k_tutorial_trains_on_the_local_copies",),
    ),
    Cover(r"sphinx-build -W -b html docs docs/_build/html", "here", ("tests/test_docs_build.py::site",)),
    # -- docs/deployment.md: launches on hardware we do not have
    Cover(
        r"gcloud compute tpus tpu-vm .*",
        "offline",
        (
            "tests/test_sharding.py::test_distributed_settings_from_the_launch_environment",
            "tests/test_sharding.py::test_two_processes_share_one_mesh",
        ),
        "needs a Cloud TPU pod slice",
    ),
    Cover(
        r"srun --ntasks-per-node=1 python scripts/train\.py .*",
        "offline",
        (
            "tests/test_sharding.py::test_distributed_settings_from_the_launch_environment",
            "tests/test_sharding.py::test_two_processes_share_one_mesh",
        ),
        "needs a SLURM cluster",
    ),
    # -- deploy/README.md
    Cover(
        r"docker build .*",
        "offline",
        (
            f"{DEPLOY_TESTS}::test_dockerfiles_pass_hadolint",
            f"{DEPLOY_TESTS}::test_every_copied_path_exists_and_passes_the_dockerignore",
        ),
        NO_ENGINE,
    ),
    Cover(
        r"docker run --rm (--gpus all )?-p 8000:8000 .*",
        "offline",
        (
            f"{DEPLOY_TESTS}::test_entrypoint_passes_its_settings_to_serve_py",
            f"{DEPLOY_TESTS}::test_healthcheck_passes_only_while_the_server_answers",
        ),
        NO_ENGINE,
    ),
    Cover(
        r"docker run --rm -p 8501:8501 .*tensorflow/serving.*",
        "offline",
        ("tests/test_export.py::test_saved_model_loaded_by_tensorflow_equals_the_sampler",),
        NO_ENGINE,
    ),
    Cover(
        r"export GRAFANA_ADMIN_PASSWORD=.*|docker compose .*",
        "offline",
        (
            f"{DEPLOY_TESTS}::test_compose_file_validates_against_the_compose_spec",
            "tests/test_monitoring_deploy.py::test_compose_mounts_the_rules_dashboards_and_provisioning",
        ),
        NO_ENGINE,
    ),
    Cover(
        r"kubectl apply -k deploy/k8s|cd deploy/k8s && kustomize .*",
        "offline",
        (
            f"{DEPLOY_TESTS}::test_k8s_manifest_validates_strictly",
            f"{DEPLOY_TESTS}::test_kustomization_lists_every_manifest",
        ),
        NO_CLUSTER,
    ),
    Cover(
        r"saved_model_cli show --dir exports/rlvr/1 .*",
        "here",
        ("tests/test_export.py::test_saved_model_cli_shows_the_documented_signature",),
    ),
]


def _covers(command: Command) -> list[Cover]:
    return [c for c in COVERAGE if re.fullmatch(c.pattern, command.normalized)]


COMMANDS = documented_commands()


def _ci_commands() -> set[str]:
    """What CI runs: the lines of .ci/run, and the recipes of `make demo`'s and `make install`'s install
    targets (the venv, the package alone, the package with the tests' extras) with their variables filled
    in."""
    lines = (REPO / ".ci" / "run").read_text().splitlines()
    makefile = (REPO / "Makefile").read_text()
    recipe = [
        line
        for target in (".created", ".installed-base", ".installed")
        for line in re.search(rf"^\$\(VENV\)/{re.escape(target)}:.*\n((?:\t.*\n)+)", makefile, re.M)
        .group(1)
        .splitlines()
    ]
    values = {"$(PYTHON)": "python3", "$(VENV)": ".venv", "$(PY)": ".venv/bin/python"}
    for line in recipe:
        for name, value in values.items():
            line = line.replace(name, value)
        lines.append(line.replace(" -q ", " "))
    found = set()
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            try:
                found.add(normalize(shlex.split(line, comments=True)))
            except ValueError:
                continue
    return found


def _installed_extras() -> set[str]:
    (line,) = [c for c in _ci_commands() if " pip install -e '.[" in c]
    return set(re.search(r"\.\[([a-z,]+)\]", line).group(1).split(","))


def test_the_docs_show_commands_and_they_are_read_correctly():
    assert len(COMMANDS) >= 20, [c.where() for c in COMMANDS]
    by_text = {c.normalized: c for c in COMMANDS}
    # A continued line is one command; a trailing comment is not part of it.
    assert "make demo" in by_text and "make test" in by_text
    drift = [c for c in COMMANDS if c.tokens[:2] == ("python", "scripts/drift.py")]
    assert drift and all("#" not in c.tokens and '"drift":' not in c.normalized for c in drift)
    assert any(c.tokens[-1] == "question" for c in drift), "a continued drift command lost its last line"


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.where())
def test_every_documented_command_is_exercised(command: Command):
    covers = _covers(command)
    assert covers, (
        f"{command.where()}: `{command.normalized}` is shown to users but nothing exercises it: add a test "
        "(or a CI step) that runs it, and an entry in COVERAGE (tests/test_doc_commands.py)"
    )
    assert len(covers) == 1, f"{command.where()} matches several entries: {[c.pattern for c in covers]}"
    (cover,) = covers
    if cover.how == "ci":
        extras_shown = re.search(r"\.\[([a-z,]+)\]", command.normalized)
        if extras_shown and (
            command.tokens[-3:-1] == ("install", "-e") or command.tokens[:3] == ("pip", "install", "-e")
        ):
            extras = set(extras_shown.group(1).split(","))
            assert extras <= _installed_extras(), f"{command.where()}: CI installs {_installed_extras()}"
        else:
            assert command.normalized in _ci_commands(), (
                f"{command.where()}: .ci/run does not run it as written"
            )
        return
    assert cover.by, f"{cover.pattern}: say which tests exercise it"
    for node in cover.by:
        path, name = node.split("::")
        source = (REPO / path).read_text()
        functions = {n.name: n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef)}
        assert name in functions, f"{node} (for {command.where()}) does not exist"
        if cover.how in ("here", "smaller"):  # it takes the command from the docs: what runs is what is shown
            body = ast.get_source_segment(source, functions[name])
            assert "documented" in body, f"{node} does not read the command from the docs"
        if cover.how == "test":
            program = next(t for t in command.tokens if t.endswith(".py") or t == "saved_model_cli")
            assert Path(program).name in source, f"{node} does not run {program}"
            flags = {t.split("=")[0] for t in command.tokens if t.startswith("--")}
            missing = sorted(f for f in flags if f not in source)
            assert not missing, f"{node} never passes {missing} (shown at {command.where()})"
    if cover.how == "offline":
        assert cover.why, f"{cover.pattern}: say what is missing here"


def test_every_entry_still_matches_a_documented_command():
    unused = [c.pattern for c in COVERAGE if not any(re.fullmatch(c.pattern, x.normalized) for x in COMMANDS)]
    assert not unused, f"COVERAGE entries that no documented command matches any more: {unused}"


def test_the_check_catches_an_uncovered_command_and_a_missing_test(tmp_path):
    doc = tmp_path / "page.md"
    doc.write_text(
        "```bash\npython scripts/train.py --config=configs/new.py \\\n    --workdir=x  # note\n```\n"
    )
    from tests.doc_commands import commands_in

    (command,) = commands_in(doc)
    assert command.tokens == ("python", "scripts/train.py", "--config=configs/new.py", "--workdir=x")
    assert command.text.endswith("# note")
    assert not _covers(command)
    # A "test" entry whose module never passes the documented flag fails the check.
    generate = Command(
        REPO / "README.md", 1, "", ("python", "scripts/generate.py", "--model", "m", "--no_such")
    )
    original = list(COVERAGE)
    try:
        COVERAGE[:] = [
            Cover(r"python scripts/generate\.py .*", "test", ("tests/test_weights.py::test_x",))
        ]
        with pytest.raises(AssertionError, match="does not exist"):
            test_every_documented_command_is_exercised(generate)
        COVERAGE[:] = [
            Cover(
                r"python scripts/generate\.py .*",
                "test",
                ("tests/test_weights.py::test_generate_cli_answers_paris",),
            )
        ]
        with pytest.raises(AssertionError, match="never passes"):
            test_every_documented_command_is_exercised(generate)
    finally:
        COVERAGE[:] = original


# ---------------------------------------------------------------------------------------------------------
# Commands run here as written.


def _documented(pattern: str) -> list[Command]:
    """The distinct commands (the same command shown on several pages counts once) matching `pattern`."""
    found = list({c.normalized: c for c in COMMANDS if re.fullmatch(pattern, c.normalized)}.values())
    assert found, f"no documented command matches {pattern}"
    return found


@pytest.fixture
def layout(tmp_path, shared_dir):
    """A scratch checkout: the repository's scripts and configs, ../shared beside it, writable runs/."""
    root = tmp_path / "main"
    root.mkdir()
    for name in ("scripts", "configs"):
        (root / name).symlink_to(REPO / name)
    (tmp_path / "shared").symlink_to(shared_dir)
    return root


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env["JAX_PLATFORMS"] = "cpu"
    # The tests' persistent compilation cache (docs/best-practices.md: JAX_COMPILATION_CACHE_DIR): the
    # commands run as written, and skip compiling the programs other tests already compiled.
    env["JAX_COMPILATION_CACHE_DIR"] = str(jax.config.jax_compilation_cache_dir)
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
    return {**env, **extra}


def _bash(
    command: Command, cwd: Path, env: dict[str, str], timeout: float = 300
) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", command.text], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory, smollm_gguf) -> Path:
    """A small random qwen2 model with SmolLM2's tokenizer and chat template, as an HF directory."""
    from rlvr_jax.models import ModelConfig
    from rlvr_jax.weights import export_hf
    from rlvr_jax.weights.loader import load_tokenizer
    from tests.tiny import numpy_model

    tokenizer = load_tokenizer(smollm_gguf)
    cfg = ModelConfig(
        family="qwen2", vocab_size=49152, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
        head_dim=8, intermediate_size=64, qkv_bias=True, tie_word_embeddings=True,
        eos_token_ids=tokenizer.stop_ids[:1],
    )  # fmt: skip
    return export_hf(numpy_model(cfg, 0.02), tmp_path_factory.mktemp("tiny_qwen"), tokenizer)


def test_a_hub_id_loads_from_the_hub_cache(layout, tmp_path, tiny_qwen):
    """`--model Qwen/...` goes through huggingface_hub (offline here): a cache laid out as the hub lays it
    out, holding the small random qwen2 model (SmolLM2's tokenizer and chat template) under that id."""
    (command,) = _documented(r"python scripts/generate\.py --model Qwen/.*")
    repo_id = command.tokens[command.tokens.index("--model") + 1]
    revision = "0" * 40
    cache = tmp_path / "hf" / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = cache / "snapshots" / revision
    snapshot.parent.mkdir(parents=True)
    shutil.copytree(tiny_qwen, snapshot)
    (cache / "refs").mkdir()
    (cache / "refs" / "main").write_text(revision)

    proc = _bash(command, layout, _env(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    samples = int(command.tokens[command.tokens.index("--num_samples") + 1])
    headers = [line for line in proc.stdout.splitlines() if line.startswith("--- sample ")]
    assert headers == [f"--- sample {i}/{samples} ---" for i in range(1, samples + 1)], proc.stdout[-2000:]
    # Without the cache the same command says what to do instead of a traceback.
    empty = _bash(command, layout, _env(HF_HOME=str(tmp_path / "empty"), HF_HUB_OFFLINE="1"), timeout=120)
    assert empty.returncode == 2 and "Traceback" not in empty.stderr and repo_id in empty.stderr


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_serve_and_curl_as_documented(layout):
    """README: save a drift profile, serve SmolLM2 with it on :8000; deploy/README.md: the three curls."""
    (profile,) = _documented(r"python scripts/drift\.py .* --save_profile .*")
    (serve,) = _documented(r"python scripts/serve\.py .* --drift_reference .*")
    curls = {c.tokens[1].split("/", 1)[1]: c for c in _documented(r"curl localhost:8000/.*")}
    assert set(curls) == {"health", "ready", "v1/chat/completions"}

    made = _bash(profile, layout, _env(), timeout=120)
    assert made.returncode == 0, made.stderr[-2000:]
    assert json.loads((layout / "runs" / "gsm8k_profile.json").read_text())

    log = (layout / "serve.log").open("w")
    server = subprocess.Popen(
        ["bash", "-c", f"exec {serve.text}"], cwd=layout, env=_env(), stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 420
        while True:
            assert server.poll() is None, (layout / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (
                "not ready in 7 minutes:\n" + (layout / "serve.log").read_text()[-3000:]
            )
            try:
                status, _ = _get("http://localhost:8000/ready")
            except OSError:
                status = 0
            if status == 200:
                break
            time.sleep(0.5)
        outputs = {}
        for route, curl in curls.items():
            proc = _bash(curl, layout, _env(), timeout=120)
            assert proc.returncode == 0, (route, proc.stderr)
            outputs[route] = proc.stdout
        assert json.loads(outputs["health"])["status"] == "ok"
        assert json.loads(outputs["ready"])["status"] == "ready"
        answer = json.loads(outputs["v1/chat/completions"])
        assert answer["object"] == "chat.completion" and answer["choices"][0]["message"]["content"].strip()
        _, metrics = _get("http://localhost:8000/metrics")
        assert "rlvr_drift_window_samples" in metrics and "rlvr_serve_requests_total" in metrics
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()


def test_gpu_requirements_pin_the_jax_that_setup_accepts():
    """The GPU install line: requirements-gpu.txt asks for the CUDA 12 build of a JAX that setup.py allows."""
    from packaging.requirements import Requirement

    setup_source = (REPO / "setup.py").read_text()
    (jax_floor,) = re.findall(r'"jax>=([\d.]+)"', setup_source)
    lines = [line.split("#")[0].strip() for line in (REPO / "requirements-gpu.txt").read_text().splitlines()]
    requirements = [Requirement(line) for line in lines if line and not line.startswith("-")]
    jax_req = next(r for r in requirements if r.name == "jax")
    assert "cuda12" in jax_req.extras
    from packaging.version import Version

    pinned = [Version(s.version) for s in jax_req.specifier]
    assert pinned and all(v >= Version(jax_floor) for v in pinned), (jax_req, jax_floor)


def test_the_gsm8k_tutorial_trains_on_the_local_copies(layout, tiny_qwen):
    """docs/tutorials.md's first command with one short step appended (without the warm-up compile of every
    prompt bucket GSM8K's prompts reach: the one step compiles its own), and the small random model in place
    of SmolLM2 (whose loading through the same flag tests/test_evaluation.py runs): the gsm8k config, the
    local GSM8K copy and its numeric reward train, evaluate before and after, and leave a checkpoint."""
    (command,) = _documented(r"python scripts/train\.py --config=configs/gsm8k\.py:small .*")
    smaller = (
        " --config.train.steps=1 --config.rl.prompts_per_step=2 --config.rl.group_size=2"
        " --config.sampling.max_new_tokens=8 --config.sampling.eval_max_new_tokens=8"
        " --config.data.eval_limit=2 --config.train.export_hf=False"
        f" --config.model.dtype=float32 --config.optim.micro_batches=1 --config.model.path={tiny_qwen}"
        " --config.train.warmup_compile=False"
    )
    proc = subprocess.run(
        ["bash", "-c", command.text + smaller], cwd=layout, env=_env(), capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    # What the command line shows: accuracy before / after, the cost, where everything is, and no
    # library INFO lines burying it.
    assert "held-out accuracy: before" in proc.stdout
    assert "cost:          $" in proc.stdout and "device-hours" in proc.stdout
    assert "CheckpointManager" not in proc.stderr, "library INFO logs bury the run's progress"
    workdir = layout / "runs" / "gsm8k"
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["eval_before"]["n"] == 2 and summary["eval_after"]["n"] == 2
    assert summary["cost"]["price_source"] == "price table: CPU"
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "reward/mean" in r] == [1]
    step = next(r for r in rows if r.get("step") == 1 and "cost/usd_total" in r)
    assert 0 < step["cost/usd_total"] < summary["cost"]["usd_total"]  # the final evaluation is billed too
    assert list((workdir / "tensorboard" / "gsm8k").glob("events.out.tfevents.*"))  # a run named gsm8k
    assert (workdir / "reward_curve.png").stat().st_size > 10_000
    samples = [
        json.loads(line) for line in (workdir / "eval" / "after" / "samples.jsonl").read_text().splitlines()
    ]
    assert all(r["id"].startswith("gsm8k/test/") for r in samples)
    assert (workdir / "checkpoints" / "1").is_dir()


def test_the_readme_python_example_runs_as_written(layout):
    """README "Using it from Python": load, sample, split / merge and export, stream; run as written."""
    from tests.doc_commands import code_blocks

    (_, code), *_ = [b for b in code_blocks(REPO / "README.md") if "load_model" in b[1]]
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=layout, env=_env(), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    # The answer's text, then its first three log-probs (a 135M model's arithmetic is not checked here).
    first = proc.stdout.split("\n1 tokens so far")[0]
    text, logprobs = first.rsplit(" [", 1)
    assert "7" in text and len(text) > 20, first
    assert [float(x) <= 0 for x in logprobs.rstrip("]").split(",")] == [True] * 3, first
    counts = [int(line.split()[0]) for line in lines if line.endswith("tokens so far")]
    assert counts and counts == sorted(counts) and counts[-1] <= 32, counts
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(layout / "runs" / "smollm2_hf").model_type == "llama"


def test_the_documented_console_command_runs():
    """README: `rlvr-train --config=quickstart --print_config`, the console command `pip install -e .` puts
    beside this Python, from a folder that is not the checkout (the config by name is the packaged one)."""
    (command,) = _documented(r"rlvr-train .*")
    binary = Path(sys.executable).parent / command.tokens[0]
    assert binary.is_file(), f"no {binary}: install the package again (pip install -e .)"
    proc = subprocess.run([str(binary), *command.tokens[1:]], cwd="/", capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith(f"# {REPO / 'configs' / 'quickstart.py'}\n")
    assert "model.hub_id = 'HuggingFaceTB/SmolLM2-135M-Instruct'" in proc.stdout
