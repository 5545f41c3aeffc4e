"""Ablations of the RL algorithm on one base setting, resumable across device calls: one JSON, one figure.

    python benchmarks/ablations.py --runs /root/runs/ablations --budget_s 500 --seeds 0 1 2 \\
        --out $OUT/ablations_h200.json --archive $OUT/ablation_runs.tgz \\
        --base configs/gsm8k.py:small --base_flags --config.model.path=/root/models/qwen.gguf ...
    python benchmarks/ablations.py --summarise --runs DIR --out benchmarks/results/ablations_h200.json

Every arm is a set of `--config.KEY=VALUE` flags laid on the base setting (`--base` config file and
preset, then `--base_flags`, which must come last); each one sets every RL knob it relies on, so the
arms differ from `grpo` in what they are named for and in nothing else:
  grpo     the baseline: GRPO advantages, clip 0.2 / 0.2 (the base config's 0.28 is DAPO's clip-higher),
           seq-mean-token-mean (DeepSeekMath's GRPO), no KL term, no dynamic sampling
  dr_grpo  Dr.GRPO: advantages without the std division, seq-mean-token-sum-norm
  rloo     RLOO advantages (leave-one-out mean)
  dapo     DAPO: clip-higher 0.28, dynamic sampling, token-mean, and DAPO's soft overlong penalty added to
           the task's reward (`weighted_sum` with `overlong`, buffer a fifth of sampling.max_new_tokens)
  gspo     GSPO: sequence-level ratio with GSPO's clip range 3e-4 / 4e-4 (`rl.ratio_type=sequence`)
  kl       GRPO with a KL term to the initial model: beta 0.04, k3
  group4, group16  GRPO with groups of 4 / 16, prompts per step scaled so that the step has as many
           rollouts as the base (prompts_per_step x group_size, 16 x 8 = 128 in configs/gsm8k.py)
The clip ranges act only where an update's policy differs from the one that sampled the batch: with
`rl.mu = 1` (one update per rollout batch) the ratio is 1, so DAPO's clip-higher changes nothing and
GSPO's gradient is GRPO's but for how the sampler-mismatch weights spread over a sequence. The runner
says so when the base has mu = 1; `--base_flags --config.rl.mu=2` gives the clips something to do.

Each (arm, seed) is one `scripts/train.py` run in RUNS/ARM/seedN, done in rounds over the seeds (seed 0
of every arm, then seed 1, ...) so that a partial budget covers every arm once first. A call stops at
`--budget_s` seconds: the run in progress gets SIGTERM (train.py saves a checkpoint and exits; SIGKILL
after `--grace_s`) and the same command in the next call resumes it from its checkpoint. A run whose
final evaluation (eval/after/metrics.json) exists is skipped, one that failed is reported and skipped
(`--retry_failed` runs it again). An arm whose reward is not the base's (dapo) is evaluated once more
after training with the base's reward (`scripts/evaluate.py`, into eval/after_base_reward), so that
every arm's accuracy means the same thing: the trainer scores its held-out evaluation with the training
reward, under which a right answer in the overlong zone does not pass.

The summary (`--summarise`, also written at the end of every call) reads the finished runs: per arm the
held-out accuracy and the accuracy among finished answers, the mean over seeds with a 95% t interval
(the seeds are the units), the paired comparison with grpo on the same items (the exact McNemar test of
`rlvr_jax.evaluation.compare` over (seed, item) pairs, with its change among answers finished in both),
the seed-level sign-flip test (exact; with 3 seeds it cannot go below 0.25), the median seconds per
training step after the first two (they compile), seeds finished, the card, versions, commands, date.
An arm with fewer seeds than asked is marked incomplete, never dropped.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import ml_collections  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from benchmarks.learning_summary import step_split  # noqa: E402
from rlvr_jax.cli import FlagParser, fail_cleanly, packaged_config  # noqa: E402
from rlvr_jax.config import ConfigError, unknown_key, validate  # noqa: E402

BASELINE = "grpo"
ARMS = ("grpo", "dr_grpo", "rloo", "dapo", "gspo", "kl", "group4", "group16")
DESCRIPTIONS = {
    "grpo": "GRPO: group-normalised advantages, clip 0.2 / 0.2, seq-mean-token-mean, no KL",
    "dr_grpo": "Dr.GRPO: no std division, seq-mean-token-sum-norm",
    "rloo": "RLOO: leave-one-out baseline",
    "dapo": "DAPO: clip-higher 0.28, dynamic sampling, token-mean, overlong penalty",
    "gspo": "GSPO: sequence-level ratio, clip 3e-4 / 4e-4",
    "kl": "GRPO + KL to the initial model (beta 0.04, k3)",
    "group4": "GRPO, groups of 4 (same rollouts per step)",
    "group16": "GRPO, groups of 16 (same rollouts per step)",
}
RESCORED = "after_base_reward"  # eval/<this>: an arm's final checkpoint scored with the base's reward
PLAN, CALLS, SEGMENTS = "plan.json", "calls.jsonl", "segments.jsonl"


# ------------------------------------------------------------------------------------------------ arms


def arm_settings(base: ml_collections.ConfigDict, arms: Sequence[str] = ARMS) -> dict[str, dict[str, Any]]:
    """The config keys and values of each arm in `arms` on top of `base`: the GRPO baseline's RL knobs
    with the arm's changes laid over them. Sizes that depend on the base (the overlong buffer, prompts
    per step at another group size) are computed from it; where they cannot be, a ConfigError says why."""
    grpo = {
        "rl.advantage": "grpo", "rl.ratio_type": "token", "rl.clip_low": 0.2, "rl.clip_high": 0.2,
        "rl.aggregation": "seq-mean-token-mean", "rl.beta": 0.0, "rl.kl_estimator": "k3",
        "rl.dynamic_sampling": False, "rl.group_size": base.rl.group_size,
        "rl.prompts_per_step": base.rl.prompts_per_step,
    }  # fmt: skip
    return {arm: grpo | arm_changes(base, arm) for arm in arms}


def arm_changes(base: ml_collections.ConfigDict, arm: str) -> dict[str, Any]:
    """What `arm` changes of the GRPO baseline (see the module docstring for why each)."""
    if arm in ("group4", "group16"):
        group, rows = int(arm.removeprefix("group")), base.rl.prompts_per_step * base.rl.group_size
        if rows % group:
            raise ConfigError(
                f"{arm}: the base's {rows} rollouts per step (rl.prompts_per_step x rl.group_size) do not "
                f"split into groups of {group}; give the base a multiple of 16 rollouts per step"
            )
        return {"rl.group_size": group, "rl.prompts_per_step": rows // group}
    if arm == "dapo":
        reward = overlong_reward(base)
        return {"rl.clip_high": 0.28, "rl.dynamic_sampling": True, "rl.aggregation": "token-mean", **reward}
    changes = {
        "grpo": {},
        "dr_grpo": {"rl.advantage": "dr_grpo", "rl.aggregation": "seq-mean-token-sum-norm"},
        "rloo": {"rl.advantage": "rloo"},
        "gspo": {"rl.ratio_type": "sequence", "rl.clip_low": 3e-4, "rl.clip_high": 4e-4},
        "kl": {"rl.beta": 0.04, "rl.kl_estimator": "k3"},
    }
    if arm not in changes:
        raise ConfigError(f"no arm {arm!r}; the arms: {', '.join(ARMS)}")
    return changes[arm]


def base_reward(base: ml_collections.ConfigDict) -> tuple[str, dict[str, Any]]:
    """(reward name, options) the base trains and evaluates with: reward.name, else the task's own."""
    from rlvr_jax.data.base import get_task

    return base.reward.name or get_task(base.data.task).reward, base.reward.options.to_dict()


def overlong_reward(base: ml_collections.ConfigDict) -> dict[str, Any]:
    """reward.name / reward.options for the base's reward plus DAPO's overlong penalty (weight 1, up to
    -1 at sampling.max_new_tokens, over a buffer of a fifth of it: DAPO's 4k of 20k)."""
    name, options = base_reward(base)
    if name == "weighted_sum":
        components = dict(options.pop("components", {}))
        per_component = dict(options.pop("component_options", {}))
    else:
        components, per_component = {name: 1.0}, ({name: options} if options else {})
        options = {}
    if "overlong" in components:
        raise ConfigError("the base reward has an overlong component already; dapo adds one: remove it")
    budget = int(base.sampling.max_new_tokens)
    components["overlong"] = 1.0
    per_component["overlong"] = {"max_len": budget, "buffer": max(1, budget // 5)}
    new = {"components": components, "component_options": per_component, **options}
    return {"reward.name": "weighted_sum", "reward.options": new}


def config_flag(key: str, value: Any) -> str:
    """One `--config.KEY=VALUE` flag that ml_collections parses back into `value` (dicts as literals)."""
    text = repr(value) if isinstance(value, Mapping | float) else str(value)
    return f"--config.{key}={text}"


def build_config(spec: str, overrides: Sequence[str]) -> ml_collections.ConfigDict:
    """The config train.py builds from `--config=spec` and `overrides`, by the same flag parser, and
    validated as train.py validates it: a key the config lacks, a value of the wrong type or out of range
    is a ConfigError naming it, before any run starts."""
    path = spec.partition(":")[0]
    if not Path(path).is_file():
        raise ConfigError(f"--base {spec}: there is no config file {path}")
    file_only = _parse_config(spec, [])
    for flag in overrides:
        key = re.match(r"^--config\.([^=]+)=", flag)
        if key is None:
            raise ConfigError(f"{flag!r} is not a --config.KEY=VALUE flag (--base_flags takes only those)")
        problem = unknown_key(file_only, key.group(1))
        if problem is not None:
            raise ConfigError(f"{flag}: {problem}")
    config = _parse_config(spec, overrides)
    validate(config)
    return config


def _parse_config(spec: str, overrides: Sequence[str]) -> ml_collections.ConfigDict:
    argv = ["ablations", f"--config={spec}", *overrides]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True, sys_argv=argv)
    try:
        values(argv)
    except (flags.Error, ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"--config={spec} {' '.join(overrides)}: {e}") from None
    return values.config


# ------------------------------------------------------------------------------------------------ plan


def make_plan(
    spec: str, base_flags: Sequence[str], arms: Sequence[str], seeds: Sequence[int], runs: Path
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(the runs in the order they are done: seed 0 of every arm, then seed 1, ...; the plan's record).

    Each run has its train.py command and, for an arm whose reward is not the base's, the evaluation of
    its final checkpoint with the base's reward. Every arm's config is built and validated here (the seed
    changes nothing else). The record: base, arms, seeds, each arm's flags, the re-evaluated arms, notes."""
    base = build_config(spec, base_flags)
    settings, reward = arm_settings(base, arms), base_reward(base)
    arm_flags, rescored, planned = {}, [], []
    for arm in arms:
        arm_flags[arm] = [config_flag(k, v) for k, v in settings[arm].items()]
        try:
            arm_config = build_config(spec, [*base_flags, *arm_flags[arm]])
        except ConfigError as e:
            raise ConfigError(f"arm {arm}: {e}") from None
        if base_reward(arm_config) != reward:
            rescored.append(arm)
        for seed in seeds:
            workdir = runs / arm / f"seed{seed}"
            train = [
                sys.executable, str(REPO / "scripts" / "train.py"), f"--config={spec}", *base_flags,
                *arm_flags[arm], f"--config.seed={seed}", f"--workdir={workdir}",
            ]  # fmt: skip
            evaluate = None
            if arm in rescored:
                evaluate = [
                    sys.executable, str(REPO / "scripts" / "evaluate.py"), f"--checkpoint={workdir}",
                    config_flag("reward.name", reward[0]), config_flag("reward.options", reward[1]),
                    f"--limit={base.data.eval_limit}", f"--out={workdir / 'eval' / RESCORED}",
                ]  # fmt: skip
            planned.append(
                {"arm": arm, "seed": seed, "workdir": workdir, "train": train, "evaluate": evaluate}
            )
    planned.sort(key=lambda r: (seeds.index(r["seed"]), arms.index(r["arm"])))
    record = {
        "base": spec, "base_flags": list(base_flags), "arms": list(arms), "seeds": list(seeds),
        "arm_flags": arm_flags, "rescored": rescored, "notes": clip_notes(base, arms),
    }  # fmt: skip
    return planned, record


def clip_notes(base: ml_collections.ConfigDict, arms: Sequence[str]) -> list[str]:
    """What a reader must know about the base for the arms asked: no clip range acts at rl.mu = 1."""
    if base.rl.mu > 1 or not {"dapo", "gspo"} & set(arms):
        return []
    return [
        "rl.mu = 1: each rollout batch gets one update, whose importance ratio is 1, so no clip range acts: "
        "dapo's clip-higher changes nothing and gspo's gradient is grpo's but for how the sampler-mismatch "
        "weights spread over a sequence (--base_flags --config.rl.mu=2 makes the clips act)"
    ]


def record_plan(runs: Path, record: Mapping[str, Any], planned: Sequence[Mapping[str, Any]]) -> None:
    """RUNS/plan.json: this call's plan joined to the earlier calls' (arms and seeds asked in any call:
    the summary marks an arm with fewer seeds finished incomplete), and RUNS/ARM/seedN/ablation.json.
    A folder that holds another base's runs, or a run started with another command, is an error."""
    path, plan = runs / PLAN, dict(record)
    if path.is_file():
        old = json.loads(path.read_text())
        if (old["base"], old["base_flags"]) != (plan["base"], plan["base_flags"]):
            raise ConfigError(
                f"{runs} holds the runs of another base ({old['base']} {' '.join(old['base_flags'])}); pass "
                "the same --base and --base_flags, or another --runs folder"
            )
        plan["arms"] = old["arms"] + [a for a in plan["arms"] if a not in old["arms"]]
        plan["seeds"] = old["seeds"] + [s for s in plan["seeds"] if s not in old["seeds"]]
        plan["arm_flags"] = old["arm_flags"] | plan["arm_flags"]
        plan["rescored"] = sorted(set(old["rescored"]) | set(plan["rescored"]))
    for run in planned:
        meta = run["workdir"] / "ablation.json"
        if meta.is_file() and json.loads(meta.read_text())["train"][2:] != run["train"][2:]:  # flags only
            raise ConfigError(f"{run['workdir']} was started with another command; use another --runs folder")
    runs.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(plan, indent=1) + "\n")
    for run in planned:
        run["workdir"].mkdir(parents=True, exist_ok=True)
        given = {k: run[k] for k in ("arm", "seed", "train", "evaluate")}
        (run["workdir"] / "ablation.json").write_text(json.dumps(given, indent=1) + "\n")


def shown(argv: Sequence[str]) -> str:
    """A command as a reader would type it: `python scripts/...` from the repository root."""
    return shlex.join(["python", f"scripts/{Path(argv[1]).name}", *argv[2:]])


# ------------------------------------------------------------------------------------------------- run


def stage_done(run: Mapping[str, Any], stage: str) -> bool:
    """train: the final evaluation is written; evaluate: the evaluation with the base's reward is."""
    folder = Path(run["workdir"]) / "eval" / ("after" if stage == "train" else RESCORED)
    return run[stage] is None or (folder / "metrics.json").is_file()


def latest_checkpoint(workdir: Path) -> int | None:
    return max((int(p.name) for p in (workdir / "checkpoints").glob("*") if p.name.isdigit()), default=None)


def start_over(workdir: Path) -> None:
    """Removes what an earlier attempt of a run without a checkpoint left (killed before its first one, or
    unpacked from an archive, which holds none): it starts over, and its metrics must not mix two runs."""
    (workdir / "metrics.jsonl").unlink(missing_ok=True)
    shutil.rmtree(workdir / "eval", ignore_errors=True)


def run_until(
    argv: Sequence[str], log: Path, deadline: float, grace_s: float, env: Mapping[str, str] | None = None
) -> tuple[int, bool]:
    """Runs `argv` (its output appended to `log`) in a process group of its own until it exits or the
    monotonic clock reaches `deadline`; then the group gets SIGTERM (train.py saves a checkpoint and
    exits; its reward workers ignore the signal and end with it) and SIGKILL `grace_s` later.
    Returns (exit status, whether the deadline stopped it)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as out:
        out.write(f"\n=== {datetime.datetime.now().isoformat(timespec='seconds')} {shlex.join(argv)}\n")
        out.flush()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        try:
            try:
                return proc.wait(timeout=max(deadline - time.monotonic(), 0.0)), False
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                return proc.wait(timeout=grace_s), True
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                return proc.wait(), True
        finally:
            if proc.poll() is None:  # the runner itself was interrupted: leave no run behind
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def tail(log: Path, lines: int = 15) -> str:
    text = log.read_text(encoding="utf-8", errors="replace").splitlines() if log.is_file() else []
    return "\n".join(text[-lines:])


def run_plan(
    planned: list[dict[str, Any]], runs: Path, budget_s: float, grace_s: float, min_start_s: float,
    retry_failed: bool, card: str, parallel: int = 1,
) -> None:  # fmt: skip
    """Does the planned runs' unfinished stages within `budget_s` seconds, a line per start and end;
    every stage's outcome goes to RUNS/segments.jsonl, a failure also to the run's failed.json.

    `parallel` > 1 keeps that many runs going at once on the one accelerator (in plan order, each run's
    stages one after the other): a small model leaves most of a large GPU idle, and its runs' host work
    (tokenising, scoring, compiling) overlaps another's device work. Each run's process is told to take
    at most its share of the device memory (XLA_PYTHON_CLIENT_MEM_FRACTION, no preallocation), so that
    one run cannot starve the others. At the budget every run in flight is stopped at once."""
    start = time.monotonic()
    deadline = start + budget_s
    lock = threading.Lock()
    env = None
    if parallel > 1:
        env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false",
                   XLA_PYTHON_CLIENT_MEM_FRACTION=f"{0.9 / parallel:.3f}")  # fmt: skip

    def say(text: str) -> None:
        with lock:
            print(f"[{time.monotonic() - start:6.0f} s] {text}", flush=True)

    def failed(run: Mapping[str, Any]) -> bool:
        return (run["workdir"] / "failed.json").is_file()

    unfinished = [r for r in planned if not (stage_done(r, "train") and stage_done(r, "evaluate"))]
    todo = [r for r in unfinished if retry_failed or not failed(r)]
    say(f"{len(planned)} runs planned in {runs}: {len(planned) - len(unfinished)} finished, "
        f"{len(unfinished) - len(todo)} failed before (--retry_failed runs them again), {len(todo)} to do; "
        f"budget {budget_s:.0f} s" + (f", {parallel} at a time" if parallel > 1 else ""))  # fmt: skip
    queue = list(todo)
    state = {"stop": False}

    def next_run() -> dict[str, Any] | None:
        with lock:
            if state["stop"] or not queue:
                return None
            return queue.pop(0)

    def one(run: dict[str, Any]) -> bool:
        """Does `run`'s stages; False where the call must stop (budget reached)."""
        name, workdir = f"{run['arm']} seed {run['seed']}", run["workdir"]
        (workdir / "failed.json").unlink(missing_ok=True)
        if stage_done(run, "train") and latest_checkpoint(workdir) is None:  # unpacked: nothing to evaluate
            say(f"{name} has no checkpoint to evaluate with the base's reward: it trains again")
            start_over(workdir)
        for stage in ("train", "evaluate"):
            if stage_done(run, stage):
                continue
            left = deadline - time.monotonic()
            if left < min_start_s:
                say(f"{left:.0f} s left, under --min_start_s: {name} ({stage}) not started; run again")
                return False
            step = latest_checkpoint(workdir)
            if stage == "train" and step is None:
                start_over(workdir)
            what = "new" if not step else f"resumes after step {step}"
            what = "evaluation with the base's reward" if stage == "evaluate" else what
            say(f"start {name} ({what}); {len(queue)} runs waiting, {left:.0f} s left")
            t0 = time.monotonic()
            code, stopped = run_until(run[stage], workdir / "train.log", deadline, grace_s, env)
            seconds = time.monotonic() - t0
            outcome = "finished" if stage_done(run, stage) else "stopped" if stopped else "failed"
            segment = {
                "arm": run["arm"], "seed": run["seed"], "stage": stage, "seconds": round(seconds, 1),
                "outcome": outcome, "exit": code, "checkpoint": latest_checkpoint(workdir), "card": card,
                "parallel": parallel,
            }  # fmt: skip
            with lock, open(runs / SEGMENTS, "a", encoding="utf-8") as f:
                f.write(json.dumps(segment) + "\n")
            if outcome == "stopped":
                say(f"stopped {name} at the budget after {seconds:.0f} s (latest checkpoint: step "
                    f"{segment['checkpoint']}); run again to resume")  # fmt: skip
                return False
            if outcome == "failed":  # not retried in later calls unless --retry_failed: it may fail again
                log = workdir / "train.log"
                (workdir / "failed.json").write_text(json.dumps({**segment, "log_tail": tail(log)}))
                say(f"FAILED {name} ({stage}, exit {code}) after {seconds:.0f} s; {log} ends:\n{tail(log)}")
                return True
            say(f"finished {name} ({stage}) in {seconds:.0f} s; {deadline - time.monotonic():.0f} s left")
        return True

    def worker() -> None:
        while (run := next_run()) is not None:
            if not one(run):
                with lock:
                    state["stop"] = True

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(max(1, min(parallel, len(todo))))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if state["stop"]:
        left = sum(not (stage_done(r, "train") and stage_done(r, "evaluate")) and not failed(r) for r in todo)
        say(f"{left} runs left; run the same command again to go on")
        return
    failures = sum(failed(r) for r in planned)
    say(
        f"every planned run is finished but {failures} that failed"
        if failures
        else "every planned run is finished"
    )


# ----------------------------------------------------------------------------------------- environment


def card() -> str:
    """The GPU's name from nvidia-smi, else the CPU's. Not from JAX: the runner must leave the device
    to the runs it starts."""
    from benchmarks.rewards import cpu_model

    query = ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"]
    try:
        listed = subprocess.run(query, capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        listed = ""
    cards = [line.strip() for line in listed.splitlines() if line.strip()]
    if not cards:
        return f"{cpu_model()} ({os.cpu_count()} cores)"
    return cards[0] if len(cards) == 1 else f"{len(cards)} x {cards[0]}"


def record_call(runs: Path, argv: Sequence[str], budget_s: float, this_card: str) -> None:
    """RUNS/calls.jsonl: one line per call (date, command, card, versions), for the summary."""
    from benchmarks.rollout import _versions

    line = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": shlex.join(["python", "benchmarks/ablations.py", *argv]),
        "card": this_card,
        "versions": _versions(),
        "budget_s": budget_s,
    }
    with open(runs / CALLS, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


# ------------------------------------------------------------------------------------------- summary


def json_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


def read_run(workdir: Path, rescored: bool) -> dict[str, Any] | None:
    """A finished run as the summary needs it: its final evaluation (with the base's reward), the one
    before training (None where it was scored with another reward), its step times and command; None
    while the run is not finished."""
    from rlvr_jax.evaluation.runs import load_run

    after, before = workdir / "eval" / (RESCORED if rescored else "after"), workdir / "eval" / "before"
    if not (after / "metrics.json").is_file():
        return None
    try:
        steps = step_split(workdir / "metrics.jsonl")
    except ValueError:  # two steps or fewer: every one of them compiles, none is a step time
        steps = {
            "steps": len({r["step"] for r in json_lines(workdir / "metrics.jsonl") if "time/step_s" in r})
        }
    meta = workdir / "ablation.json"
    return {
        "after": load_run(after),
        "before": load_run(before) if not rescored and (before / "metrics.json").is_file() else None,
        "steps": steps,
        "command": shown(json.loads(meta.read_text())["train"]) if meta.is_file() else None,
    }


def collect(runs: Path) -> dict[str, Any]:
    """What RUNS holds, read once: plan.json, calls.jsonl, segments.jsonl, the finished runs by arm and
    seed, the failed ones."""
    if not (runs / PLAN).is_file():
        raise FileNotFoundError(
            f"{runs} holds no {PLAN}: run the ablations into it first (without --summarise)"
        )
    plan = json.loads((runs / PLAN).read_text())
    found: dict[str, dict[int, dict[str, Any]]] = {}
    failed: dict[str, list[int]] = {}
    for arm in plan["arms"]:
        for seed in plan["seeds"]:
            workdir = runs / arm / f"seed{seed}"
            run = read_run(workdir, arm in plan["rescored"])
            if run is not None:
                found.setdefault(arm, {})[seed] = run
            elif (workdir / "failed.json").is_file():
                failed.setdefault(arm, []).append(seed)
    return {"plan": plan, "calls": json_lines(runs / CALLS), "segments": json_lines(runs / SEGMENTS),
            "found": found, "failed": failed}  # fmt: skip


def over_seeds(values: Sequence[float | None]) -> dict[str, Any]:
    """The mean over seeds with its 95% t interval (the seeds are the units); a None or NaN value (a run
    without a finished answer) is left out, and n_seeds counts what is in."""
    from rlvr_jax.evaluation.stats import t_interval

    kept = [float(v) for v in values if v is not None and math.isfinite(v)]
    interval = t_interval(kept)
    return {"value": interval.value, "low": interval.low, "high": interval.high, "n_seeds": len(kept),
            "method": interval.method}  # fmt: skip


def pooled(runs: Mapping[int, Any], seeds: Sequence[int]) -> Any:
    """The seeds' evaluations as one EvalRun whose items are the (seed, item) pairs, for `compare_runs`."""
    from rlvr_jax.evaluation.runs import EvalRun

    first = runs[seeds[0]]
    rows = [{**row, "id": f"seed{s}/{row['id']}"} for s in seeds for row in runs[s].rows]
    settings = ("task", "split", "reward", "temperature", "max_new_tokens")
    return EvalRun(first.path, {k: first.metrics[k] for k in settings if k in first.metrics}, rows)


def versus(baseline: Mapping[int, Any], arm: Mapping[int, Any]) -> dict[str, Any] | None:
    """An arm's evaluations against the baseline's on the seeds both finished: the paired comparison
    over (seed, item) pairs (`compare_runs`: exact McNemar, paired bootstrap interval, the same among
    answers finished in both, whether truncation explains a change), and with the seed as the unit the
    per-seed differences, their mean with its t interval and their exact sign-flip test. None when no
    seed is finished in both.

    The two tests answer different questions. McNemar over (seed, item) pairs asks whether these runs
    differ on these items; it treats the seeds' evaluations as independent items, so one seed that
    collapses can make it significant. The seed-level interval asks whether the arm differs from the
    baseline across training runs, which is the ablation's question; with 3 seeds it is wide and the
    sign-flip p cannot go below 0.25."""
    from rlvr_jax.evaluation.compare import compare_runs
    from rlvr_jax.evaluation.stats import paired_permutation_test

    seeds = sorted(set(baseline) & set(arm))
    if not seeds:
        return None
    c = compare_runs(pooled(baseline, seeds), pooled(arm, seeds))
    a = [baseline[s].metrics["accuracy"]["value"] for s in seeds]
    b = [arm[s].metrics["accuracy"]["value"] for s in seeds]
    finished_ = c.get("finished_in_both") or {}
    keep = ("n", "accuracy_a", "accuracy_b", "accuracy_difference", "p_value")
    return {
        "seeds": seeds,
        "paired_items": c["paired_items"],
        "difference": c["accuracy_difference"],
        "test": c["test"],
        "p_value": c["p_value"],
        "discordant": {k: c["mcnemar"][k] for k in ("only_a_passes", "only_b_passes")}
        if "mcnemar" in c
        else None,
        "finished_in_both": {k: finished_[k] for k in keep if k in finished_} or None,
        "truncation": c.get("truncation"),
        "length_effect": c["length_effect"],
        "verdict": f"A = {BASELINE}, B = this arm: {c['verdict']}",
        "warnings": c["warnings"],
        "per_seed_difference": {str(s): y - x for s, x, y in zip(seeds, a, b, strict=True)},
        "seed_difference": over_seeds([y - x for x, y in zip(a, b, strict=True)]),
        "seed_sign_flip_p": paired_permutation_test(a, b),
    }


COLLAPSED_SHARE = 0.95  # a run that gives one answer to 95% of the items has stopped reading them


def modal_answer(rows: Sequence[Mapping[str, Any]]) -> tuple[float | None, str | None]:
    """The share of held-out items that got the most common completion (stripped, lower case, quotes
    dropped), and that completion. A policy that collapsed to one answer (e.g. always "positive" on a
    two-label task) scores the majority label's share however it was trained; this is how a reader tells
    such a run from one that learned less. Once every sample of a group gets the same reward the group's
    advantages are zero and GRPO-style updates stop moving it, so a collapse does not recover."""
    answers = [str(r["completion"]).strip().strip("\"'").lower() for r in rows if "completion" in r]
    if not answers:
        return None, None
    answer, count = Counter(answers).most_common(1)[0]
    return count / len(answers), answer[:80]


def run_row(seed: int, run: Mapping[str, Any], folder: str, cards: Sequence[str]) -> dict[str, Any]:
    """One finished run's line: accuracy (Wilson interval over items), accuracy among finished answers,
    truncated share, step times, the cards it ran on, its command."""
    m, s = run["after"].metrics, run["steps"]
    finished_ = m.get("accuracy_finished") or {}
    share, answer = modal_answer(run["after"].rows)
    return {
        "seed": seed,
        "folder": folder,
        "evaluation": f"eval/{run['after'].path.name}",
        "n": m["num_items"],
        "accuracy": m["accuracy"]["value"],
        "accuracy_ci": [m["accuracy"]["ci_low"], m["accuracy"]["ci_high"]],
        "accuracy_finished": finished_.get("value"),
        "n_finished": finished_.get("n"),
        "truncation_rate": m.get("truncation_rate"),
        "modal_answer_share": share,
        "modal_answer": answer,
        "collapsed": share is not None and share >= COLLAPSED_SHARE,
        **{k: s.get(k) for k in ("steps", "step_s", "rollout_s", "update_s", "train_wall_s")},
        "cards": list(cards),
        "command": run.get("command"),
    }


def arm_summary(
    name: str, flags_: Sequence[str], seeds_asked: Sequence[int], found: Mapping[int, Mapping[str, Any]],
    baseline: Mapping[int, Any] | None, segments: Sequence[Mapping[str, Any]] = (),
    failed: Sequence[int] = (),
) -> dict[str, Any]:  # fmt: skip
    """One arm's entry: its runs, the means over its seeds, its comparison with the baseline (None for
    the baseline itself and without one), and whether every seed asked has finished."""
    rows = []
    for seed in sorted(found):
        cards = sorted(
            {g["card"] for g in segments if (g["arm"], g["seed"]) == (name, seed) and g.get("card")}
        )
        rows.append(run_row(seed, found[seed], f"{name}/seed{seed}", cards))
    step_times = sorted(r["step_s"] for r in rows if r["step_s"] is not None)
    return {
        "name": name,
        "description": DESCRIPTIONS.get(name, name),
        "flags": list(flags_),
        "seeds_asked": sorted(seeds_asked),
        "seeds_finished": sorted(found),
        "seeds_failed": list(failed),
        "complete": set(seeds_asked) <= set(found),
        "collapsed_seeds": [r["seed"] for r in rows if r["collapsed"]],
        "accuracy": over_seeds([r["accuracy"] for r in rows]),
        "accuracy_finished": over_seeds([r["accuracy_finished"] for r in rows]),
        "truncation_rate": over_seeds([r["truncation_rate"] for r in rows]),
        "step_s": {
            "median_over_seeds": float(np.median(step_times)) if step_times else None,
            "per_seed": step_times,
        },
        "versus_grpo": None
        if baseline is None or name == BASELINE
        else versus(baseline, {s: r["after"] for s, r in found.items()}),
        "runs": rows,
    }


def summarise(collected: Mapping[str, Any]) -> dict[str, Any]:
    """The ablation record from `collect`'s reading of RUNS (pure: the tests build its input by hand)."""
    plan, calls, segments = collected["plan"], collected["calls"], collected["segments"]
    found, failed = collected["found"], collected["failed"]
    baseline = {s: r["after"] for s, r in found.get(BASELINE, {}).items()} or None
    arms = [
        arm_summary(arm, plan["arm_flags"].get(arm, []), plan["seeds"], found.get(arm, {}), baseline,
                    segments, failed.get(arm, []))
        for arm in plan["arms"]
    ]  # fmt: skip
    before: dict[int, Any] = {}  # the base model, from the baseline's runs first (every arm starts from it)
    spread: dict[int, set[float]] = {}  # ... so every arm's evaluation before training should agree
    for arm in sorted(found, key=lambda a: a != BASELINE):
        for seed, run in found[arm].items():
            if run["before"] is not None:
                before.setdefault(seed, run["before"])
                spread.setdefault(seed, set()).add(run["before"].metrics["accuracy"]["value"])
    accuracy = {s: r.metrics["accuracy"]["value"] for s, r in sorted(before.items())}
    cards = sorted({c["card"] for c in calls} | {g["card"] for g in segments if g.get("card")})
    return {
        "benchmark": "RL algorithm ablations: held-out accuracy after training per arm, over seeds",
        "date": datetime.date.today().isoformat(),
        "card": cards[0] if len(cards) == 1 else cards,
        "cards_note": "the runs ran on different cards: compare step times within one"
        if len(cards) > 1
        else None,
        "versions": calls[-1]["versions"] if calls else None,
        "command": calls[-1]["command"] if calls else None,
        "calls": [{k: c.get(k) for k in ("date", "command", "card", "budget_s")} for c in calls],
        "base": {"config": plan["base"], "flags": plan["base_flags"]},
        "notes": plan.get("notes", []),
        "seeds": sorted(plan["seeds"]),
        "baseline": BASELINE,
        "before_training": {
            "per_seed": {str(s): v for s, v in accuracy.items()},
            "accuracy": over_seeds(list(accuracy.values())),
            "accuracy_finished": over_seeds(
                [(r.metrics.get("accuracy_finished") or {}).get("value") for r in before.values()]
            ),
            "largest_difference_between_arms": max((max(v) - min(v) for v in spread.values()), default=None),
        },
        "arms": arms,
        "incomplete": [a["name"] for a in arms if not a["complete"]],
    }


def strict_json(record: Mapping[str, Any]) -> str:
    """The record as strict JSON text: NaN (an interval of one seed has no bounds) written as null."""
    plain = json.loads(json.dumps(record), parse_constant=lambda _: None)
    return json.dumps(plain, indent=1, allow_nan=False) + "\n"


# -------------------------------------------------------------------------------------------- figure


def plot_ablations(record: Mapping[str, Any], out_png: Path) -> Path:
    """Three panels stacked over one row of arms: held-out accuracy and accuracy among finished answers
    (the mean over seeds with its 95% t interval cut to 0-100%, each seed a dot, a seed whose policy
    collapsed to one answer a cross, the base model a dashed line), and seconds per step. Under each arm:
    its mean, the seed-level difference from grpo with its interval, and the p of the paired test against
    grpo over (seed, item) pairs (in the second panel: over the items finished in both). An incomplete
    arm is hollow and counts its seeds."""
    from rlvr_jax import figures as fg

    arms = record["arms"]
    if not any(a["seeds_finished"] for a in arms):
        raise ValueError("no finished run to plot")
    fig, axes = fg.panels(max(7.0, 1.2 * len(arms) + 2.5), 12.0, 3, 1, sharex=True)
    titles = {"accuracy": "held-out accuracy", "accuracy_finished": "accuracy among finished answers"}
    for ax, (key, title) in zip(axes[:2], titles.items(), strict=True):
        for i, arm in enumerate(arms):
            color, mean = fg.color_for(i + 1), arm[key]
            for r in arm["runs"]:
                if fg.finite(r[key]) is not None:
                    ax.scatter(i + 0.15, r[key], s=40 if r.get("collapsed") else 16, color=color,
                               marker="x" if r.get("collapsed") else "o", alpha=0.7, zorder=3)  # fmt: skip
            if fg.finite(mean["value"]) is None:
                continue
            low, high = fg.finite(mean["low"]), fg.finite(mean["high"])
            yerr = None
            if low is not None and high is not None:
                yerr = [[mean["value"] - max(low, 0.0)], [min(high, 1.0) - mean["value"]]]
            ax.errorbar(i, mean["value"], yerr=yerr, fmt="o", markersize=8, capsize=6, color=color,
                        markerfacecolor=color if arm["complete"] else "white", zorder=4)  # fmt: skip
            versus = arm.get("versus_grpo") or {}
            lines = [fg.percent(mean["value"])]
            seed_diff = versus.get("seed_difference") or {}
            if key == "accuracy" and fg.finite(seed_diff.get("value")) is not None:
                lo, hi = fg.finite(seed_diff.get("low")), fg.finite(seed_diff.get("high"))
                span = "" if lo is None else f"\n[{100 * lo:+.0f}, {100 * hi:+.0f}]"
                lines.append(f"{100 * seed_diff['value']:+.1f} pts{span}")
            if key == "accuracy_finished":  # the paired test among the answers finished in both
                versus = versus.get("finished_in_both") or {}
            p = fg.finite(versus.get("p_value"))
            if p is not None:
                lines.append(f"p = {fg.format_p(p)}")
            ax.text(i, 0.02, "\n".join(lines), ha="center", va="bottom", fontsize=fg.NOTE_SIZE,
                    transform=ax.get_xaxis_transform(), zorder=5,
                    bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "none", "pad": 1})  # fmt: skip
        base = fg.finite(record["before_training"][key]["value"])
        if base is not None:
            ax.axhline(base, color=fg.color_for(0), linestyle="--", linewidth=1.2, label="before training")
            ax.legend(fontsize=fg.NOTE_SIZE, frameon=False, loc="upper right")
        ax.set_ylim(0, 1.08)
        fg.percent_axis(ax.yaxis)
        ax.set_title(title, fontsize=fg.LABEL_SIZE)
    ax = axes[2]
    for i, arm in enumerate(arms):
        per_seed = arm["step_s"]["per_seed"]
        if per_seed:
            ax.bar(i, arm["step_s"]["median_over_seeds"], width=0.5, color=fg.color_for(i + 1), alpha=0.8,
                   zorder=2)  # fmt: skip
            ax.scatter([i + 0.15] * len(per_seed), per_seed, s=16, color="black", zorder=3)
    ax.set_title("seconds per training step (median after the first two)", fontsize=fg.LABEL_SIZE)
    ticks = [
        a["name"] + ("" if a["complete"] else f"\n({len(a['seeds_finished'])}/{len(a['seeds_asked'])} seeds)")
        for a in arms
    ]
    ax.set_xticks(range(len(arms)), ticks)
    ax.set_xlim(-0.7, len(arms) - 0.3)
    for ax in axes:
        fg.style(ax)
    card = record["card"] if isinstance(record["card"], str) else " / ".join(record["card"])
    seeds = len(record["seeds"])
    fg.suptitle(fig, f"Ablations against grpo ({card})\nmean of {seeds} seeds with 95% t interval; "
                     "x: a seed collapsed to one answer\nunder each arm: mean, difference from grpo over "
                     "seeds [95% t], McNemar p over (seed, item)")  # fmt: skip
    return fg.save(fig, out_png)


def write_summary(runs: Path, out: Path) -> dict[str, Any]:
    """Writes the record (strict JSON) to `out` and, once a run has finished, the figure beside it;
    prints a line per arm."""
    record = summarise(collect(runs))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(strict_json(record))
    written = [str(out)]
    if any(a["seeds_finished"] for a in record["arms"]):
        written.append(str(plot_ablations(record, out.with_suffix(".png"))))
    for arm in record["arms"]:
        line = f"{arm['name']:8s} {len(arm['seeds_finished'])}/{len(arm['seeds_asked'])} seeds"
        if arm["seeds_finished"]:
            line += f"  accuracy {arm['accuracy']['value']:.3f}"
        v = arm["versus_grpo"]
        if v:
            d, p, n = v["difference"]["value"], v["p_value"], v["paired_items"]
            line += f"  vs {BASELINE} {d:+.3f} (p = {p:.2g}, {n} pairs)"
        print(line)
    print(f"wrote {' and '.join(written)}")
    return record


def archive(runs: Path, out: Path) -> Path:
    """RUNS as one .tgz without checkpoints, TensorBoard files, exports and figures: what the summary and
    a reader need (configs, metrics, logs, every evaluated sample), small enough to come back from a call."""
    skip = {"checkpoints", "tensorboard", "hf_export"}

    def keep(member: tarfile.TarInfo) -> tarfile.TarInfo | None:  # the figures are redrawn from the rest
        return None if skip & set(Path(member.name).parts) or member.name.endswith(".png") else member

    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w:gz") as tar:
        tar.add(runs, arcname=runs.name, filter=keep)
    return out


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = FlagParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", required=True, help="the runs' folder (RUNS/ARM/seedN), kept between calls")
    p.add_argument(
        "--out", help="the summary JSON (its figure: the same name, .png); default RUNS/ablations.json"
    )
    p.add_argument("--summarise", action="store_true", help="only write the summary of what RUNS holds")
    p.add_argument("--base", help="the base config file and preset, e.g. configs/gsm8k.py:small")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS, help="default: all")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--budget_s", type=float, default=500.0, help="seconds this call may spend on runs")
    p.add_argument("--grace_s", type=float, default=45.0, help="seconds from SIGTERM to SIGKILL")
    p.add_argument("--min_start_s", type=float, default=60.0, help="start nothing with less budget left")
    p.add_argument("--parallel", type=int, default=1,
                   help="runs at once on one accelerator (each gets its share of its memory)")  # fmt: skip
    p.add_argument("--retry_failed", action="store_true", help="run the runs that failed before again")
    p.add_argument("--dry_run", action="store_true", help="check the arms' configs, print the commands, stop")
    p.add_argument("--archive", help="also write RUNS without its checkpoints as this .tgz")
    p.add_argument("--base_flags", nargs=argparse.REMAINDER, default=[],
                   help="--config.KEY=VALUE flags of the base setting; must come last")  # fmt: skip
    args = p.parse_args(argv)
    runs = Path(args.runs)
    out = Path(args.out) if args.out else runs / "ablations.json"

    def run() -> int:
        if not args.summarise:
            if not args.base:
                raise ConfigError(
                    "--base is required (the base config file and preset), except with --summarise"
                )
            arms, seeds = [a for a in ARMS if a in args.arms], list(dict.fromkeys(args.seeds))
            planned, record = make_plan(packaged_config(args.base), args.base_flags, arms, seeds, runs)
            for note in record["notes"]:
                print(f"note: {note}", flush=True)
            if args.dry_run:
                for r in planned:
                    print(shown(r["train"]) + (f"\n    then {shown(r['evaluate'])}" if r["evaluate"] else ""))
                return 0
            record_plan(runs, record, planned)
            this_card = card()
            record_call(runs, argv, args.budget_s, this_card)
            run_plan(
                planned,
                runs,
                args.budget_s,
                args.grace_s,
                args.min_start_s,
                args.retry_failed,
                this_card,
                max(1, args.parallel),
            )
        write_summary(runs, out)
        if args.archive:
            print(f"wrote {archive(runs, Path(args.archive))}")
        return 0

    return fail_cleanly(run)


if __name__ == "__main__":
    sys.exit(main())
