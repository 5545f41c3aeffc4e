"""Memory of the train step under each memory option, from XLA's compile-time analysis.

    python benchmarks/memory_options.py --shape smollm2-135m qwen2.5-0.5b --rows 128 --prompt_len 128 \
        --completion_len 512 --out benchmarks/results/memory_options_cpu.json

For each model shape, the train step (log-probs + GRPO loss + backward + AdamW, exactly as the trainer
builds it on a one-device mesh) is lowered from abstract arguments and compiled, and
`compiled.memory_analysis()` gives bytes per device: arguments (train state + batch), outputs (new state +
metrics), temporaries (activations, residuals for the backward pass, gradients) and the aliased bytes that
donation lets the new state share with the old (total = arguments + outputs + temps - aliased). Options:

- remat none / dots / full (the model's `remat`) x micro_batches 1 / 2 / 4 / 8 x master dtype;
- master dtype float32 (the trainer's default, `model.param_dtype=float32`) or bfloat16
  (`model.param_dtype=bfloat16`: the trainer keeps the bf16 parameters, `init_train_state(master_dtype=
  "bfloat16")`, as `master_dtype=None` does on a bf16 checkpoint). optax's Adam moments follow the
  parameters' dtype, so they are bf16 too (make_optimizer has no separate moment dtype);
- the frozen reference model (beta > 0): the trainer holds a copy of the master parameters (float32 by
  default) on the device for the whole run. Its bytes are reported (float32 and bf16); the reference
  log-prob pass is compiled with the copy on the device and in "pinned_host" memory (moved in inside the
  pass), so the device-side difference is XLA's own accounting where the backend separates memory kinds
  (GPU); on CPU both kinds are the same RAM, the reported saving is then the analytical size of the copy;
- the probe: the micro-batch count `pick_micro_batches` would choose for each remat / dtype setting under
  --budget_gib (default 0.9 x 80 GiB, an H100), from the estimates above (no further compile);
- with --run (GPU): the trainer's path for real, first, for each shape x --master_dtype x --remat in its
  own process (the peak is a high-water mark): the probe with the device's own budget (0.9 x the
  allocator's bytes_limit, which is 0.75 of the card unless XLA_PYTHON_CLIENT_MEM_FRACTION says
  otherwise), the step compiled with its choice from a real (random) train state and run, the device's
  measured peak beside the estimate, the median time of --repeats further steps, and the host-to-device
  time of bringing an offloaded reference back. --no_sweep skips the compile-only sweep after it.

These are compile-time estimates. On a GPU they are what XLA allocates for the executable; on CPU the same
buffer assignment is made for the CPU program, which differs from the GPU one where the backends choose
different kernels: above all attention, which on CPU is plain XLA (the [rows, heads, L, L] probabilities
are materialised and, without remat, saved for the backward pass) while a GPU in bf16 runs cuDNN flash
attention that keeps none of them. CPU numbers therefore overstate the GPU's remat="none" temporaries;
at 128 rows x 640 tokens they overstate every remat setting (the H100's estimates are 1.4-3.1x lower),
and the H100's measured peaks are within 0.1% of its own estimates with a preallocated pool
(memory_options_h100.json).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.rollout import SHAPES, _device_name, _versions

GiB = 1024**3
ALLOCATOR_ENV = (
    "XLA_PYTHON_CLIENT_PREALLOCATE",
    "XLA_PYTHON_CLIENT_MEM_FRACTION",
    "XLA_PYTHON_CLIENT_ALLOCATOR",
)


def _gib(n: int) -> float:
    return round(n / GiB, 3)


def _record(estimate, compile_s: float) -> dict:
    e = estimate.to_json()
    return e | {"total_gib": _gib(e["total_bytes"]), "compile_s": round(compile_s, 1)}


def step_memory(cfg, rows: int, prompt_len: int, completion_len: int, micro_batches: int, master) -> dict:
    """Compile-time memory of the trainer's train step for one setting (abstract state: nothing allocated)."""
    import jax
    from flax import nnx

    from rlvr_jax import sharding
    from rlvr_jax.models import abstract_model
    from rlvr_jax.optim import OptimConfig, make_optimizer
    from rlvr_jax.optim.memory import abstract_train_state, estimate_memory, train_batch_spec
    from rlvr_jax.rl import LossConfig
    from rlvr_jax.rl.update import make_train_step

    optimizer = make_optimizer(OptimConfig(learning_rate=1e-6, total_steps=1000))
    state = abstract_train_state(cfg, optimizer, master_dtype=master)
    batch = train_batch_spec(rows, prompt_len, completion_len)
    step = make_train_step(
        nnx.graphdef(abstract_model(cfg)),
        optimizer,
        LossConfig(clip_high=0.28, max_len=completion_len),
        temperature=1.0,
        micro_batches=micro_batches,
        mesh=sharding.make_mesh(),
    )
    t0 = time.perf_counter()
    estimate = estimate_memory(step.lower(state, batch).compile())
    seconds = time.perf_counter() - t0
    jax.clear_caches()
    return _record(estimate, seconds)


def reference_memory(cfg, rows: int, prompt_len: int, completion_len: int) -> dict:
    """The frozen reference's bytes (f32 as the trainer holds it, bf16 as it could be) and its log-prob
    pass compiled with the copy on the device vs in pinned host memory."""
    import jax
    from flax import nnx
    from jax.sharding import SingleDeviceSharding

    from rlvr_jax.models import abstract_model
    from rlvr_jax.optim.memory import abstract_like, estimate_memory, train_batch_spec
    from rlvr_jax.rl.update import completion_logprobs

    graphdef, params = nnx.split(abstract_model(cfg.replace(param_dtype="float32")))
    params = abstract_like(params)
    count = sum(int(x.size) for x in jax.tree.leaves(params))
    batch = train_batch_spec(rows, prompt_len, completion_len, sampler_logprobs=False)
    fn = functools.partial(completion_logprobs, graphdef=graphdef, temperature=1.0)
    device = jax.devices()[0]
    on_device = SingleDeviceSharding(device)
    out = {
        "params": count,
        "copy_bytes": {"float32": 4 * count, "bfloat16": 2 * count},
        "copy_gib": {"float32": _gib(4 * count), "bfloat16": _gib(2 * count)},
        "logprob_pass": {},
    }
    kinds = {m.kind for m in device.addressable_memories()}
    for placement in ("device", "pinned_host"):
        if placement != "device" and placement not in kinds:
            out["logprob_pass"][placement] = {"error": f"memory kind {placement} not available"}
            continue
        where = on_device if placement == "device" else SingleDeviceSharding(device, memory_kind=placement)

        def moved_in(p, b):
            return fn(jax.device_put(p, jax.tree.map(lambda _: on_device, p)), b)

        param_shards = jax.tree.map(lambda _, w=where: w, params)
        jitted = jax.jit(
            fn if placement == "device" else moved_in,
            in_shardings=(param_shards, jax.tree.map(lambda _: on_device, batch)),
        )
        t0 = time.perf_counter()
        compiled = jitted.lower(params, batch).compile()
        estimate = estimate_memory(compiled)
        stats = compiled.memory_analysis()
        out["logprob_pass"][placement] = _record(estimate, time.perf_counter() - t0) | {
            "host_argument_bytes": int(stats.host_argument_size_in_bytes),
            "host_temp_bytes": int(stats.host_temp_size_in_bytes),
        }
        jax.clear_caches()
    dev, host = (out["logprob_pass"].get(k, {}) for k in ("device", "pinned_host"))
    separated = bool(host.get("host_argument_bytes"))
    out["offload_saving_bytes"] = 4 * count  # resident between passes: the whole f32 copy leaves the device
    out["offload_saving_source"] = (
        "measured: XLA places the copy in host memory (device argument bytes "
        f"{dev.get('argument_bytes')} -> {host.get('argument_bytes')})"
        if separated
        else "analytical: this backend does not separate memory kinds in its analysis (CPU), so the "
        "saving is the size of the float32 copy the trainer keeps resident"
    )
    return out


def probe_and_run(
    shape: str,
    rows: int,
    prompt_len: int,
    completion_len: int,
    remat: str,
    master: str = "float32",
    repeats: int = 3,
) -> dict:
    """The trainer's path on this device: probe with the default budget (device statistics), compile the
    step with the chosen count from the real state, run it, and compare the device's measured peak with
    the estimate; then time `repeats` more steps. Meaningful on a GPU (memory statistics, and a step at
    this size runs in seconds). One setting per process: the peak is a high-water mark (`run_isolated`)."""
    import tempfile

    import jax
    import numpy as np
    from flax import nnx

    from rlvr_jax import sharding
    from rlvr_jax.models import ModelConfig, init_model
    from rlvr_jax.optim import OptimConfig, init_train_state, make_optimizer
    from rlvr_jax.optim.memory import (
        EstimateCache,
        estimate_memory,
        per_device_bytes,
        random_train_batch,
        to_memory_kind,
    )
    from rlvr_jax.optim.memory import probe_train_step_micro_batches as probe
    from rlvr_jax.rl import LossConfig
    from rlvr_jax.rl.update import make_train_step

    # As the trainer: model.param_dtype=float32 widens to float32 master weights, bfloat16 keeps the bf16
    # parameters (and so bf16 Adam moments) as they are.
    cfg = ModelConfig.from_hf_config(SHAPES[shape], dtype="bfloat16", param_dtype=master, remat=remat)
    optimizer = make_optimizer(OptimConfig(learning_rate=1e-6, total_steps=1000))
    mesh = sharding.make_mesh()
    model = init_model(cfg, seed=0)
    graphdef = nnx.graphdef(model)
    state = init_train_state(model, optimizer, mesh=mesh, master_dtype=master)
    del model  # only the train state stays resident, so the peak below is the step's
    loss = LossConfig(clip_high=0.28, max_len=completion_len)
    out = {
        "shape": shape,
        "remat": remat,
        "master_dtype": master,
        "rows": rows,
        "seq": prompt_len + completion_len,
        # How JAX's GPU allocator was set up: the budget is a fraction of bytes_limit (MEM_FRACTION, 0.75 by
        # default), and without preallocation the pool grows region by region (fragmentation across them).
        "allocator_env": {k: os.environ.get(k) for k in ALLOCATOR_ENV},
    }
    device = jax.local_devices()[0]

    def peak() -> dict:
        stats = device.memory_stats() or {}
        if "peak_bytes_in_use" not in stats:
            return {}
        return {
            "measured_peak_gib": _gib(stats["peak_bytes_in_use"]),
            "bytes_limit_gib": _gib(stats["bytes_limit"]),
        }

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        try:
            choice = probe(
                graphdef,
                optimizer,
                loss,
                state=state,
                rows=rows,
                prompt_len=prompt_len,
                completion_len=completion_len,
                mesh=mesh,
                cache=EstimateCache(Path(folder) / "micro_batches.json"),
            )
        except Exception as e:  # MemoryBudgetError: nothing fits; a result too
            return out | {"error": f"probe: {type(e).__name__}: {str(e)[:600]}"} | peak()
    out["probe_s"] = round(time.perf_counter() - t0, 1)
    out |= {
        "budget_gib": _gib(choice.budget_bytes),
        "budget_source": choice.budget_source,
        "micro_batches": choice.micro_batches,
        "candidates_gib": {m: _gib(e.total_bytes) for m, e in choice.estimates.items()},
    }
    step = make_train_step(graphdef, optimizer, loss, micro_batches=choice.micro_batches, mesh=mesh)
    batch = random_train_batch(rows, prompt_len, completion_len, cfg.vocab_size)
    batch = sharding.shard_batch(batch, mesh)
    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()  # as the trainer's _CompiledSteps does
    out["compile_s"] = round(time.perf_counter() - t0, 1)
    estimate = estimate_memory(compiled)
    out |= {
        "same_program_as_probe": estimate == choice.estimates[choice.micro_batches],
        "estimate_gib": _gib(estimate.total_bytes),
        "estimate": estimate.to_json(),
        "state_gib": _gib(per_device_bytes(state, device)),
    }
    try:
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        out["first_step_s"] = round(time.perf_counter() - t0, 3)
        out["loss_finite"] = bool(np.isfinite(float(metrics["loss"])))
        out |= peak()
        if "measured_peak_gib" in out:
            out["measured_over_estimate"] = round(out["measured_peak_gib"] / out["estimate_gib"], 3)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            state, metrics = compiled(state, batch)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - t0)
        if times:
            out["step_s"] = round(float(np.median(times)), 4)
            out["step_s_all"] = [round(t, 4) for t in times]
            if "measured_peak_gib" in out:
                out["measured_peak_after_repeats_gib"] = peak()["measured_peak_gib"]
    except Exception as e:  # out of memory at run time: a result too
        return out | {"error": f"run: {type(e).__name__}: {str(e)[:600]}"} | peak()
    # An offloaded reference (a copy of the master parameters in pinned host memory) and what bringing it
    # back for the reference log-prob pass costs per step.
    if "pinned_host" in {m.kind for m in device.addressable_memories()}:
        reference = jax.block_until_ready(to_memory_kind(state.params, "pinned_host"))
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            jax.block_until_ready(to_memory_kind(reference, "device"))
            times.append(time.perf_counter() - t0)
        out["reference_offload"] = {
            "device_bytes_resident": per_device_bytes(reference, device),
            "bytes_moved_per_step": sum(x.nbytes for x in jax.tree.leaves(reference)),
            "host_to_device_s": round(min(times), 4),
        }
    jax.clear_caches()
    return out


def run_isolated(args: list[str], timeout: float) -> dict:
    """`probe_and_run` in a fresh process (the device's peak is a high-water mark of the whole process):
    the child prints its result as the last line of its output. A crash or time-out is a result too."""
    import subprocess

    t0 = time.perf_counter()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--run_one", *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:g} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1]) | {"process_s": round(time.perf_counter() - t0, 1)}
    return {"error": f"exit {proc.returncode}: {proc.stderr[-1500:]}"}


def choose(results: list[dict], budget: int) -> list[dict]:
    """`pick_micro_batches`' answer for each (remat, master) from the estimates already measured."""
    from rlvr_jax.optim.memory import MemoryBudgetError, MemoryEstimate, pick_micro_batches

    by_setting: dict[tuple, dict[int, dict]] = {}
    for r in results:
        by_setting.setdefault((r["shape"], r["remat"], r["master_dtype"]), {})[r["micro_batches"]] = r
    out = []
    for (shape, remat, master), found in by_setting.items():
        measured = sorted(found)
        rows = found[measured[0]]["rows"]

        def compile_for(m: int, found=found):
            if m not in found:
                raise LookupError(m)
            e = MemoryEstimate.from_json(found[m])
            return type("Known", (), {"memory_analysis": lambda self: _stats(e)})()

        entry = {"shape": shape, "remat": remat, "master_dtype": master, "budget_gib": _gib(budget)}
        try:
            entry["micro_batches"] = pick_micro_batches(compile_for, rows, 1, budget).micro_batches
        except MemoryBudgetError:
            entry["micro_batches"] = None
            entry["note"] = "nothing fits"
        except LookupError as e:
            entry["micro_batches"] = None
            entry["note"] = f"needs more than {max(measured)} micro-batches (first unmeasured count: {e})"
        out.append(entry)
    return out


def _stats(e):
    import types

    return types.SimpleNamespace(
        argument_size_in_bytes=e.argument_bytes,
        output_size_in_bytes=e.output_bytes,
        temp_size_in_bytes=e.temp_bytes,
        alias_size_in_bytes=e.alias_bytes,
    )


def _write(record: dict, out: str | None) -> None:
    """Rewrites the record after every result, so a sweep cut short by a time limit keeps what it measured."""
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(record, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", nargs="+", default=["smollm2-135m", "qwen2.5-0.5b"], choices=sorted(SHAPES))
    p.add_argument("--rows", type=int, default=128)
    p.add_argument("--prompt_len", type=int, default=128)
    p.add_argument("--completion_len", type=int, default=512)
    p.add_argument("--remat", nargs="+", default=["none", "dots", "full"], choices=["none", "dots", "full"])
    p.add_argument("--micro_batches", nargs="+", type=int, default=[1, 2, 4, 8])
    p.add_argument(
        "--master_dtype",
        nargs="+",
        default=["float32", "bfloat16"],
        choices=["float32", "bfloat16"],
        help="dtype of the train state's parameters (and so of Adam's moments)",
    )
    p.add_argument("--budget_gib", type=float, default=0.9 * 80, help="per-device budget for the probe table")
    p.add_argument(
        "--run",
        action="store_true",
        help="first, for each shape x --master_dtype x --remat, probe with the device's own budget and run "
        "the chosen step, comparing the measured peak with the estimate, and time it (GPU; each setting in "
        "its own process: the peak is a high-water mark)",
    )
    p.add_argument("--repeats", type=int, default=3, help="--run: timed steps after the first")
    p.add_argument("--run_timeout", type=float, default=300, help="--run: seconds per setting")
    p.add_argument(
        "--no_sweep",
        action="store_true",
        help="skip the compile-only sweep (remat x micro_batches x master dtype) and its probe table",
    )
    p.add_argument("--run_one", nargs=5, help=argparse.SUPPRESS)  # shape rows prompt completion remat
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)

    if args.run_one:  # the child of run_isolated: one setting, its result as the last line
        shape, rows, prompt_len, completion_len, remat = args.run_one
        master = args.master_dtype[0]
        run = probe_and_run(
            shape, int(rows), int(prompt_len), int(completion_len), remat, master, args.repeats
        )
        print(json.dumps(run), flush=True)
        return 0

    import jax

    from rlvr_jax.models import ModelConfig

    record = {
        "benchmark": "train-step memory by option: XLA compile-time estimates (memory_analysis)",
        "device": _device_name(),
        "platform": jax.devices()[0].platform,
        "date": datetime.date.today().isoformat(),
        "versions": _versions(),
        "command": "python benchmarks/memory_options.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "note": (
            "bytes per device from compiled.memory_analysis(): total = argument + output + temp - alias. "
            "Compile-time estimates, not measured allocations (probe_and_run, where present, also measures "
            "the device's peak). On CPU they track the GPU program except where kernels differ: CPU "
            "attention is plain XLA and, without remat, saves [rows, heads, L, L] probabilities per layer "
            "that cuDNN flash attention on a GPU does not, so CPU remat=none temporaries overstate a GPU's."
        ),
        "batch": {
            "rows": args.rows,
            "prompt_len": args.prompt_len,
            "completion_len": args.completion_len,
            "tokens": args.rows * (args.prompt_len + args.completion_len),
        },
        "results": [],
        "reference_model": [],
    }
    if args.run:  # each setting in a fresh process, so the device's peak is that step's
        record["probe_and_run"] = []
        for shape in args.shape:
            for master in args.master_dtype:
                for remat in args.remat:
                    sizes = [str(x) for x in (args.rows, args.prompt_len, args.completion_len)]
                    child = [shape, *sizes, remat, "--master_dtype", master, "--repeats", str(args.repeats)]
                    run = {"shape": shape, "remat": remat, "master_dtype": master}
                    run |= run_isolated(child, args.run_timeout)
                    record["probe_and_run"].append(run)
                    print(json.dumps(run), flush=True)
                    _write(record, args.out)
    for shape in args.shape:
        for master in [] if args.no_sweep else args.master_dtype:
            for remat in args.remat:
                for m in args.micro_batches:
                    # bf16 master = a bf16 checkpoint kept in its storage dtype (master_dtype=None).
                    cfg = ModelConfig.from_hf_config(
                        SHAPES[shape], dtype="bfloat16", param_dtype=master, remat=remat
                    )
                    r = {"shape": shape, "params_m": round(cfg.num_params() / 1e6, 1), "remat": remat}
                    r |= {"master_dtype": master, "micro_batches": m, "rows": args.rows}
                    r |= {"seq": args.prompt_len + args.completion_len}
                    master_arg = "float32" if master == "float32" else None
                    r |= step_memory(cfg, args.rows, args.prompt_len, args.completion_len, m, master_arg)
                    record["results"].append(r)
                    print(json.dumps(r), flush=True)
                    _write(record, args.out)
        cfg = ModelConfig.from_hf_config(SHAPES[shape], dtype="bfloat16")
        ref = {"shape": shape} | reference_memory(cfg, args.rows, args.prompt_len, args.completion_len)
        record["reference_model"].append(ref)
        print(json.dumps(ref), flush=True)
        _write(record, args.out)
    if not args.no_sweep:
        record["probe"] = choose(record["results"], int(args.budget_gib * GiB))
    for row in record.get("probe", []):
        print(json.dumps(row), flush=True)
    _write(record, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
