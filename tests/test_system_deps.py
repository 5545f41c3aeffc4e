"""`make test` on a fresh machine: `make system-deps` installs bubblewrap and Prometheus as root (apt-get)
or stops with the command to run, and a security test whose tool is missing fails instead of skipping
unless RLVR_ALLOW_MISSING_SANDBOX=1.

The Makefile recipe runs with PATH set to a folder of stand-ins (`id`, `apt-get`, the tools), so every
branch is taken for real without touching the machine's packages.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def fake_bin(folder: Path, *, uid: int, tools: tuple[str, ...], apt: bool = True) -> Path:
    folder.mkdir()
    scripts = {"id": f"echo {uid}"} | {tool: "exit 0" for tool in tools}
    if apt:  # records its arguments instead of installing anything
        scripts["apt-get"] = f'echo "$@" >> "{folder}/apt.log"'
    for name, body in scripts.items():
        (folder / name).write_text(f"#!/bin/sh\n{body}\n")
        (folder / name).chmod(0o755)
    return folder


def system_deps(folder: Path, **env: str) -> subprocess.CompletedProcess:
    make = shutil.which("make")
    assert make, "make is needed to run the Makefile"
    clean = {k: v for k, v in os.environ.items() if k != "RLVR_ALLOW_MISSING_SANDBOX"}
    return subprocess.run(
        [make, "-s", "-C", str(REPO), "system-deps"],
        env={**clean, "PATH": str(folder), **env}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def apt_calls(folder: Path) -> list[str]:
    log = folder / "apt.log"
    return log.read_text().splitlines() if log.exists() else []


def test_root_installs_what_is_missing_with_apt(tmp_path: Path) -> None:
    folder = fake_bin(tmp_path / "bin", uid=0, tools=("promtool", "prometheus"))
    proc = system_deps(folder)
    assert proc.returncode == 0, proc.stderr
    assert apt_calls(folder) == ["update -qq", "install -y -qq bubblewrap"]
    folder = fake_bin(tmp_path / "none", uid=0, tools=())
    assert system_deps(folder).returncode == 0
    assert apt_calls(folder)[-1] == "install -y -qq bubblewrap prometheus"  # once, though two tools


def test_nothing_to_do_when_everything_is_there(tmp_path: Path) -> None:
    folder = fake_bin(tmp_path / "bin", uid=0, tools=("bwrap", "promtool", "prometheus"))
    proc = system_deps(folder)
    assert proc.returncode == 0 and proc.stdout == "" and apt_calls(folder) == []


@pytest.mark.parametrize("apt", [True, False], ids=["not_root", "root_without_apt"])
def test_otherwise_it_stops_with_the_command_to_run(tmp_path: Path, apt: bool) -> None:
    folder = fake_bin(tmp_path / "bin", uid=0 if not apt else 1000, tools=("prometheus",), apt=apt)
    proc = system_deps(folder)
    assert proc.returncode != 0 and apt_calls(folder) == []
    assert "error: the tests need bubblewrap prometheus; install with: " in proc.stderr
    assert "sudo apt-get install -y bubblewrap prometheus" in proc.stderr


def test_opting_out_goes_on_without_bubblewrap_only(tmp_path: Path) -> None:
    folder = fake_bin(tmp_path / "bin", uid=1000, tools=("promtool", "prometheus"))
    proc = system_deps(folder, RLVR_ALLOW_MISSING_SANDBOX="1")
    assert proc.returncode == 0, proc.stderr
    assert "no bubblewrap: its tests will be skipped" in proc.stdout
    folder = fake_bin(tmp_path / "none", uid=1000, tools=())
    proc = system_deps(folder, RLVR_ALLOW_MISSING_SANDBOX="1")
    assert proc.returncode != 0 and "sudo apt-get install -y prometheus" in proc.stderr


def test_the_test_target_runs_system_deps_first() -> None:
    makefile = (REPO / "Makefile").read_text()
    (rule,) = [line for line in makefile.splitlines() if line.startswith("test:")]
    assert rule.split(":", 1)[1].split()[0] == "system-deps"


SKIPPING = """
import pytest

def test_needs_bwrap_in_its_body():
    pytest.skip("bubblewrap (bwrap) is not installed")

@pytest.mark.skipif(True, reason="bubblewrap (bwrap) is not installed")
def test_marked_as_needing_bwrap():
    pass

def test_skips_for_another_reason():
    pytest.skip("only root drops privileges")
"""


def run_skipping_tests(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_skipping.py").write_text(SKIPPING)
    clean = {k: v for k, v in os.environ.items() if k != "RLVR_ALLOW_MISSING_SANDBOX"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider", "-q", "-rA",
         "--rootdir", str(tmp_path), str(tmp_path / "test_skipping.py")],
        cwd=REPO, env={**clean, "PYTHONPATH": str(REPO), **env}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_a_missing_sandbox_tool_fails_the_suite_instead_of_skipping(tmp_path: Path) -> None:
    proc = run_skipping_tests(tmp_path)
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "FAILED" in proc.stdout and "test_needs_bwrap_in_its_body" in proc.stdout
    assert "ERROR" in proc.stdout and "test_marked_as_needing_bwrap" in proc.stdout  # a setup failure
    assert "RLVR_ALLOW_MISSING_SANDBOX=1 to skip them knowingly" in proc.stdout
    assert "SKIPPED" in proc.stdout and "only root drops privileges" in proc.stdout  # other skips stay
    allowed = run_skipping_tests(tmp_path, RLVR_ALLOW_MISSING_SANDBOX="1")
    assert allowed.returncode == 0, allowed.stdout[-3000:]
    assert "3 skipped" in allowed.stdout
