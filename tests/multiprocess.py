"""Running check scripts in fresh JAX processes: fake CPU devices, and several processes on one mesh.

XLA_FLAGS and the JAX_* variables must be set before jax initialises, and the test session has already
imported jax, so multi-device and multi-process checks run as subprocesses that print one `RESULT {json}`
line for the test to read.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.conftest import TEST_XLA_FLAGS


def xla_flags(devices: int) -> str:
    """XLA_FLAGS for a subprocess of `devices` fake CPU devices, with the suite's own flags (conftest)."""
    return f"{TEST_XLA_FLAGS} --xla_force_host_platform_device_count={devices}"


def subprocess_env(devices: int, **extra: str) -> dict[str, str]:
    """This environment with `devices` fake CPU devices and no inherited cluster variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "SLURM_", "OMPI_", "TPU_"))}
    env.update(XLA_FLAGS=xla_flags(devices), JAX_PLATFORMS="cpu", **extra)
    return env


def result(stdout: str) -> dict:
    """The JSON a check script printed on its `RESULT ` line."""
    line = next(line for line in stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processes(script: Path, args: list[str], n: int, devices: int, timeout: float = 300) -> list[dict]:
    """Runs `script args` as `n` jax.distributed processes of `devices` CPU devices each; their results.

    Every process must exit 0 (its stderr tail is shown otherwise); stragglers are killed.
    """
    port = free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), *args],
            env=subprocess_env(
                devices,
                JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                JAX_NUM_PROCESSES=str(n),
                JAX_PROCESS_ID=str(i),
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    ]
    try:
        outputs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    return [result(out) for out, _ in outputs]
