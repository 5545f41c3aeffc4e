"""Reward throughput on host CPUs: sandboxed HumanEval programs per second, and math scoring rates.

    python benchmarks/rewards.py [--data ../shared/data] [--rounds 3] [--workers N] [--out FILE]

Code: the 164 HumanEval canonical solutions (program = prompt + solution + tests + check call) run through
`CodeExecutor` `--rounds` times; we report programs/s per round and the median. Then the same solutions
through the `code_humaneval` reward itself, as training scores them: the tests in a trusted checker
process, the program in another, both sandboxed (`humaneval_reward_per_s_*`). For context it also times
what one program costs at minimum: a bare `python -I -S -c pass`, the same inside bwrap, and a trivial
program through the executor, plus the whole HumanEval batch without the sandbox (`isolation="none"`), so
the cost of isolation itself is visible. Math: GSM8K test (`numeric`, the reference solutions as
completions) and MATH-500 (`math`, math-verify), when those rewards are registered.

The machine is shared, so the load average before and after is recorded with the numbers. Results go to
benchmarks/results/rewards_cpu.json with the CPU model, core count, library versions, command and date.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rlvr_jax.data import get_task  # noqa: E402
from rlvr_jax.rewards import get_reward, registered_rewards  # noqa: E402
from rlvr_jax.rewards.code import humaneval_program  # noqa: E402
from rlvr_jax.rewards.sandbox import CodeExecutor, Limits, bwrap_argv  # noqa: E402


def cpu_model() -> str:
    """The `model name` line of /proc/cpuinfo (platform.processor() is empty on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions() -> dict[str, str]:
    """Versions of what the numbers depend on: Python, bubblewrap, the kernel and the reward libraries."""
    found = {"python": platform.python_version(), "kernel": platform.release()}
    bwrap = shutil.which("bwrap")
    if bwrap:
        found["bubblewrap"] = subprocess.run(
            [bwrap, "--version"], capture_output=True, text=True
        ).stdout.strip()
    for package in ("numpy", "math-verify", "sympy", "jax"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[package] = importlib.metadata.version(package)
    return found


def rate(count: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    """(items per second, fn's result)."""
    start = time.perf_counter()
    result = fn()
    return count / (time.perf_counter() - start), result


def busy_cores() -> tuple[float, float]:
    """(non-idle CPU seconds of the whole machine, wall seconds) so far: the machine is shared, so each
    measurement records how many cores were busy during it (ours plus everyone else's)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK"), time.perf_counter()


def measured(count: int, fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(items per second, cores busy machine-wide meanwhile, fn's result)."""
    cpu0, t0 = busy_cores()
    per_s, result = rate(count, fn)
    cpu1, t1 = busy_cores()
    return per_s, (cpu1 - cpu0) / (t1 - t0), result


def startup_rates(python: str, n: int = 40) -> dict[str, float]:
    """Serial launches per second: the floor of what one program costs, without and with bwrap."""
    out = {
        "bare_python_serial_per_s": rate(
            n, lambda: [subprocess.run([python, "-I", "-S", "-c", "pass"]) for _ in range(n)]
        )[0]
    }
    bwrap = shutil.which("bwrap")
    if bwrap:
        argv = [*bwrap_argv(bwrap, python, Limits(), as_root=os.geteuid() == 0)[:-2], "-c", "pass"]
        out["bwrap_python_serial_per_s"] = rate(n, lambda: [subprocess.run(argv) for _ in range(n)])[0]
    return out


def bench_code(data: Path | None, rounds: int, workers: int | None) -> dict[str, Any]:
    samples = get_task("humaneval").load("test", data)
    programs = [humaneval_program(s, s["canonical_solution"], fenced=False) for s in samples]
    executor = CodeExecutor(workers=workers)
    per_round, busy = [], []
    for _ in range(rounds):
        per_s, cores, results = measured(len(programs), lambda: executor.run(programs))
        failed = [s["id"] for s, r in zip(samples, results, strict=True) if not r.passed]
        if failed:
            raise SystemExit(f"canonical solutions failed in the benchmark: {failed}")
        per_round.append(per_s)
        busy.append(cores)
    # What training and evaluation pay: the `code_humaneval` reward, whose tests run in a trusted checker
    # process talking to the program's process (two sandboxes per program).
    reward, completions = get_reward("code_humaneval"), [s["canonical_solution"] for s in samples]
    checked, checked_busy = [], []
    for _ in range(rounds):
        per_s, cores, scored = measured(len(samples), lambda: reward(completions, samples))
        if float(scored.scores.min()) < 1.0:
            raise SystemExit("canonical solutions failed the code_humaneval reward in the benchmark")
        checked.append(per_s)
        checked_busy.append(cores)
    trivial_programs = ["pass\n"] * (20 * executor.workers)
    trivial = rate(len(trivial_programs), lambda: executor.run(trivial_programs))[0]
    timings = sorted(((r.elapsed_s, s["id"]) for s, r in zip(samples, results, strict=True)), reverse=True)
    try:  # as root the fallback needs an interpreter an unprivileged uid can run; say so if there is none
        unsandboxed = CodeExecutor(workers=workers, isolation="none")
        plain: float | str = round(rate(len(programs), lambda: unsandboxed.run(programs))[0], 1)
    except RuntimeError as e:
        plain = f"not measured: {e}"
    return {
        "sandbox_mode": executor.mode,
        "workers": executor.workers,
        "programs_per_round": len(programs),
        "humaneval_programs_per_s_rounds": [round(x, 1) for x in per_round],
        "humaneval_programs_per_s_median": round(statistics.median(per_round), 1),
        "humaneval_reward_per_s_rounds": [round(x, 1) for x in checked],
        "humaneval_reward_per_s_median": round(statistics.median(checked), 1),
        "machine_busy_cores_per_reward_round": [round(x, 2) for x in checked_busy],
        "machine_busy_cores_per_round": [round(x, 2) for x in busy],
        "trivial_programs_per_s": round(trivial, 1),
        "humaneval_programs_per_s_without_sandbox": plain,
        "slowest_programs_s": [[name, round(t, 3)] for t, name in timings[:5]],
        **{k: round(v, 1) for k, v in startup_rates(executor.python).items()},
    }


def bench_math(data: Path | None) -> dict[str, Any]:
    """GSM8K `numeric` and MATH-500 `math` on their reference solutions (all should score 1)."""
    out: dict[str, Any] = {}
    for task_name, reward_name in (("gsm8k", "numeric"), ("math", "math")):
        if reward_name not in registered_rewards():
            out[task_name] = f"reward {reward_name!r} not registered"
            continue
        samples = get_task(task_name).load("test", data)
        completions = [s["solution"] for s in samples]
        per_s, result = rate(len(samples), lambda: get_reward(reward_name)(completions, samples))  # noqa: B023
        out[task_name] = {
            "reward": reward_name,
            "samples": len(samples),
            "samples_per_s": round(per_s, 1),
            "mean_score": round(float(result.scores.mean()), 4),
        }
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    default_data = Path(os.environ.get("RLVR_SHARED", REPO.parent / "shared")) / "data"
    parser.add_argument(
        "--data", type=Path, default=default_data, help="local data folder (default ../shared/data)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None, help="sandbox workers (default: CPU count)")
    parser.add_argument("--no-math", action="store_true", help="skip the math rewards")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "rewards_cpu.json")
    args = parser.parse_args(argv)

    load_before = os.getloadavg()
    started = dt.datetime.now(dt.UTC)
    report: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": started.isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "versions": versions(),
        "code": bench_code(args.data, args.rounds, args.workers),
    }
    if not args.no_math:
        report["math"] = bench_math(args.data)
    report["load_average_before"] = [round(x, 2) for x in load_before]
    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    report["seconds"] = round((dt.datetime.now(dt.UTC) - started).total_seconds(), 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
