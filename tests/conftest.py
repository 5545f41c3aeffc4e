"""Shared test set-up: offline, CPU, a persistent compilation cache, and the path to ../shared."""

from __future__ import annotations

import http.server
import os
import re
import threading
from pathlib import Path
from typing import ClassVar

import pytest

REPO = Path(__file__).resolve().parent.parent

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One OpenMP thread for torch (the transformers references) and numpy's BLAS, here and in the subprocesses the
# tests start. `make test` runs two workers on two cores, and a second OpenMP thread spin-waits for the core
# the other worker is using: transformers' greedy 16 tokens of SmolLM2 took 12.9 s with 2 threads, 1.5 s with
# 1, while the other core was busy. JAX's own thread pool (XLA) is not OpenMP and is left as it is.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# XLA's CPU backend without LLVM's optimisation passes: the suite is mostly compiling small programs, and at
# level 0 a cold compile costs about half the CPU time (tests/test_sampler.py: 143 -> 77 s of user time on
# the 2-core machine). What runs is the same XLA program (same fusions, same library matmuls), only its
# elementwise loops unvectorised. Set before jax creates its CPU client; subprocesses get it through the
# environment (tests.multiprocess.subprocess_env keeps it beside its device count). Users' runs are untouched;
# XLA_FLAGS=--xla_backend_optimization_level=3 runs the suite at XLA's default level (3) instead.
_LEVEL = re.search(r"--xla_backend_optimization_level=\S+", os.environ.get("XLA_FLAGS", ""))
TEST_XLA_FLAGS = _LEVEL.group(0) if _LEVEL else "--xla_backend_optimization_level=0"
if not _LEVEL:
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()

import jax  # noqa: E402

jax.config.update("jax_compilation_cache_dir", os.environ.get("RLVR_JAX_CACHE", str(REPO / ".jax_cache")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def pytest_configure(config: pytest.Config) -> None:
    # Registered here because pyproject.toml's [tool.pytest.ini_options] has no markers list yet.
    config.addinivalue_line(
        "markers",
        "qwen_coder: needs the Qwen2.5-Coder GGUF ($RLVR_QWEN_CODER_GGUF; ../shared/tools/fetch-qwen-coder)",
    )
    # pytest-xdist (3.x) hands out --dist loadfile's files in order of their number of tests unless told
    # not to (--loadscope-reorder is its default), which undid SLOW_FILES' longest-first order: in the
    # junit reports the 3-test test_multiprocess_training (150-200 s) started among the last files. The
    # files are handed out in collection order instead, which pytest_collection_modifyitems sets.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


# The sandbox's security tests skip themselves when bubblewrap is missing; on a machine set up by hand
# that turned "the sandbox holds" into "not checked" without anyone noticing. Such a skip is a failure
# here unless the user opts out explicitly (`make test` installs bubblewrap when run as root).
ALLOW_MISSING_SANDBOX = "RLVR_ALLOW_MISSING_SANDBOX"
_SANDBOX_TOOL = re.compile(r"\bbwrap\b|bubblewrap", re.IGNORECASE)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or os.environ.get(ALLOW_MISSING_SANDBOX) == "1":
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if _SANDBOX_TOOL.search(reason):
        report.outcome = "failed"
        report.longrepr = (
            f"{reason.removeprefix('Skipped: ')}: the code sandbox's security tests cannot run. Install it "
            f"(sudo apt-get install -y bubblewrap; `make test` does it when run as root) or set "
            f"{ALLOW_MISSING_SANDBOX}=1 to skip them knowingly"
        )


# Seconds each of the slowest test files took, summed over its tests in the junit report of a full
# `-n 2 --dist loadfile` run on the 2-core machine with a cold compilation cache and the suite's XLA flags
# (2026-12-07 13:16 UTC: 17 min 56 s; the same run at XLA's default optimisation level took 21 min 36 s),
# rounded to 5 s. The files run longest first, so that `make test`'s two workers (each takes whole files)
# finish together instead of one waiting on a long file picked up last (pytest_configure below keeps xdist
# from reordering them). Only the order depends on these numbers.
SLOW_FILES = {
    "test_notebooks.py": 265,
    "test_trainer.py": 180,
    "test_doc_commands.py": 175,
    "test_export.py": 100,
    "test_docs_build.py": 80,
    "test_sampler.py": 80,
    "test_train_step.py": 80,
    "test_multiprocess_training.py": 80,
    "test_ablations.py": 80,
    "test_serving.py": 70,
    "test_gguf.py": 60,
    "test_weights.py": 60,
    "test_generate_real.py": 55,
    "test_code_hacking.py": 55,
    "test_model_parity.py": 50,
    "test_lora.py": 50,
    "test_python_api.py": 50,
    "test_lm_eval.py": 50,
    "test_evaluation.py": 50,
    "test_score_cli.py": 30,
    "test_config_cli.py": 30,
    "test_sharding.py": 25,
    "test_drift.py": 25,
    "test_run_outputs.py": 25,
    "test_serve_training_run.py": 25,
    "test_train_step_memory.py": 25,
    "test_attention_kernels.py": 25,
    "test_reward_pool.py": 20,
    "test_continuous_batching.py": 20,
    "test_serving_units.py": 20,
    "test_serving_logprobs.py": 20,
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: -SLOW_FILES.get(item.path.name, 0))  # stable: a file keeps its order


def shared_path() -> Path:
    """../shared (or $RLVR_SHARED): the read-only models and data sets tests use."""
    return Path(os.environ.get("RLVR_SHARED", REPO.parent / "shared")).resolve()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    path = shared_path()
    if not path.is_dir():
        raise FileNotFoundError(f"shared data folder {path} is missing; set RLVR_SHARED to its location")
    return path


@pytest.fixture(scope="session")
def smollm_gguf(shared_dir: Path) -> Path:
    return shared_dir / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


class _Gateway(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[str, str, str]]] = []

    def _store(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        self.received.append((self.command, self.path, body))
        self.send_response(200)
        self.end_headers()

    do_PUT = do_POST = _store

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def pushgateway():
    """A stand-in Pushgateway: (host:port, the list of (method, path, body) it received)."""
    _Gateway.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Gateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_port}", _Gateway.received
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def humaneval(shared_dir: Path) -> list[dict]:
    """The 164 HumanEval problems of the local copy (the code-reward tests' data)."""
    from rlvr_jax.data import get_task

    return get_task("humaneval").load("test", shared_dir / "data")


@pytest.fixture(scope="module")
def mbpp(shared_dir: Path) -> list[dict]:
    """The local MBPP test split."""
    from rlvr_jax.data import get_task

    return get_task("mbpp").load("test", shared_dir / "data" / "mbpp")
