"""Shared test set-up: offline, CPU, a persistent compilation cache, and the path to ../shared."""

from __future__ import annotations

import http.server
import os
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

import jax  # noqa: E402

jax.config.update("jax_compilation_cache_dir", os.environ.get("RLVR_JAX_CACHE", str(REPO / ".jax_cache")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def pytest_configure(config: pytest.Config) -> None:
    # Registered here because pyproject.toml's [tool.pytest.ini_options] has no markers list yet.
    config.addinivalue_line(
        "markers",
        "qwen_coder: needs the Qwen2.5-Coder GGUF ($RLVR_QWEN_CODER_GGUF; ../shared/tools/fetch-qwen-coder)",
    )


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
