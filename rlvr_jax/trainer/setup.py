"""Setting up a run: the model and its sampler on the mesh, the data, and the update's compiled functions.

`setup_run` builds a `Run`, the one object that holds what the loop reads for the whole run; `resume`
puts the newest checkpoint's state into it. Nothing here steps the policy.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from rlvr_jax import sharding
from rlvr_jax.checkpointing import Checkpointer
from rlvr_jax.compiled import abstract, accepts
from rlvr_jax.config import lora_options, loss_config, optim_config, prompt_buckets
from rlvr_jax.data import get_task
from rlvr_jax.data.base import Sample, Task, load_samples
from rlvr_jax.data.heldout import HeldOutReport, held_out_split
from rlvr_jax.data.pipeline import make_pipeline
from rlvr_jax.evaluation.generate_and_score import encode_prompts
from rlvr_jax.generate import Sampler, SamplingParams
from rlvr_jax.monitoring.exporters import JsonLogSink
from rlvr_jax.monitoring.metrics import step_flops
from rlvr_jax.optim import TrainState, init_train_state, make_optimizer, make_schedule, sampler_params
from rlvr_jax.optim.state import checkpoint_view, from_checkpoint
from rlvr_jax.rl import LossConfig, get_advantage_fn
from rlvr_jax.rl.update import make_logprob_fn, make_train_step
from rlvr_jax.weights import load_policy


class Console:
    """The run's messages: plain lines on process 0, or JSON events (`logging.json_logs`) once the run id
    is known; messages said before that are held and sent when `attach` gives the event sink."""

    def __init__(self, json_logs: bool):
        self.json_logs = json_logs
        self.events: JsonLogSink | None = None
        self._early: list[tuple[str, dict[str, Any]]] = []

    def say(self, message: str, event: str = "message", **fields: Any) -> None:
        if jax.process_index() != 0:
            return
        if not self.json_logs:
            print(message, flush=True)
        elif self.events is None:
            self._early.append((message, {"event": event, **fields}))
        else:
            self.events.event(fields.pop("event", event), fields.pop("step", None), message=message, **fields)

    def attach(self, events: JsonLogSink) -> None:
        self.events = events
        for message, fields in self._early:
            self.say(message, **fields)
        self._early = []


class CompiledUpdate:
    """The jitted train step, compiled ahead of time once per batch shape, so that XLA's cost analysis
    of the very executable that runs gives the FLOPs for MFU without compiling anything twice.

    Compiled for the state's and the batch's shapes and placements (`rlvr_jax.compiled.abstract`), never
    their buffers: `compile_job` hands the warm-up a compile that another thread can run while steps
    donate and replace the state."""

    def __init__(self, step_fn: Any):
        self.step_fn = step_fn
        self.compiled: dict[Any, Any] = {}
        self._flops: dict[Any, float | None] = {}
        self._adopted: list[Any] = []
        self._lock = threading.Lock()  # the warm-up's background thread adds executables

    @staticmethod
    def _key(batch: dict) -> tuple:
        return tuple(sorted((k, np.shape(v)) for k, v in batch.items()))

    def adopt(self, compiled: Any) -> None:
        """An executable of this very step compiled elsewhere (the memory probe compiles the run's update
        at the worst-case batch shape): the first batch it exactly fits (argument structure, shapes,
        dtypes, shardings) uses it instead of compiling the same program again."""
        self._adopted.append(compiled)

    def compile(self, state: Any, batch: dict) -> Any:
        """The executable for this batch shape, compiled now if it is new (nothing runs, nothing is
        donated)."""
        key = self._key(batch)
        found = self.compiled.get(key)
        return found if found is not None else self._build(key, abstract((state, batch)))

    def compile_job(self, state: Any, batch: dict) -> Callable[[], float]:
        """The compile for this batch shape as a function that returns its seconds; the shapes are read
        now, so it may run later in any thread (nothing of the state is kept but its shapes)."""
        key, args = self._key(batch), abstract((state, batch))

        def job() -> float:
            t0 = time.perf_counter()
            self._build(key, args)
            return time.perf_counter() - t0

        return job

    def _build(self, key: tuple, args: tuple) -> Any:
        with self._lock:
            if key in self.compiled:
                return self.compiled[key]
            fits = [c for c in self._adopted if accepts(c, args)]
            if fits:
                self._adopted.remove(fits[0])
        compiled = fits[0] if fits else self.step_fn.lower(*args).compile()
        flops = step_flops(compiled)
        with self._lock:
            self._flops.setdefault(key, flops)
            return self.compiled.setdefault(key, compiled)

    def __call__(self, state: Any, batch: dict) -> Any:
        return self.compile(state, batch)(state, batch)

    def flops(self, batch: dict) -> float | None:
        """FLOPs per device of one update on a batch of this shape (None before it ran, or unknown)."""
        return self._flops.get(self._key(batch))


@dataclasses.dataclass
class Run:
    """Everything the loop reads, from set-up to the end of the run.

    The policy: model (graph and the initial weights), tokenizer, mesh, the sampler that generates with
    the newest parameters. The data: task, training / held-out samples, the prompt pipeline. The update:
    optimizer and its schedule, loss switches, the train state (replaced by every update), the frozen
    reference (beta > 0 only), the compiled step and log-prob functions, the advantage estimator.
    """

    config: ml_collections.ConfigDict
    workdir: Path
    console: Console
    model: Any
    tokenizer: Any
    mesh: Any
    sampler: Sampler
    task: Task
    train_samples: list[Sample]
    eval_samples: list[Sample]
    pipeline: Any
    reward_name: str
    optimizer: optax.GradientTransformation
    schedule: optax.Schedule
    loss_config: LossConfig
    sampling: SamplingParams
    state: TrainState | None = None
    ref_params: Any = None
    micro_batches: int = 1
    train_step: CompiledUpdate | None = None
    # The warm-up's compiles left to a background thread (`warmup.BackgroundCompiles`); None when none is.
    compiles: Any = None
    logprob_fn: Any = None
    advantage_fn: Any = None
    checkpointer: Checkpointer | None = None
    held_out: HeldOutReport | None = None  # what the held-out check removed (rlvr_jax.data.heldout)
    # The step whose update made the sampler's parameters (0: the initial ones; after a resume, the
    # checkpoint's step): a rollout records it, so the update knows how far behind its samples are.
    params_step: int = 0

    @property
    def graphdef(self) -> nnx.GraphDef:
        return nnx.graphdef(self.model)

    def hand_params_to_sampler(self, step: int) -> None:
        """The sampler generates with the newest parameters (those `step`'s update made), in the dtypes
        the model reads them in (a bf16 copy of float32 masters: half the bytes each decode step reads).
        Every step, since the next update donates the state's buffers.

        With `rl.async_rollouts` the next step's rollout is generated while the next update runs, and the
        update after it computes old log-probs with the same parameters, so they must outlive that
        donation: leaves that would be the state's own buffers (no narrowing cast: float32 compute, or
        bf16 masters) are copied. With bf16 compute over float32 masters nothing is copied (the cast is
        the copy); either way one extra compute-dtype copy of the weights is alive while a rollout is in
        flight, since the sampler's newer copy arrives before the update consumes the older one."""
        params = sampler_params(self.state.params, self.model.cfg)
        if self.config.rl.async_rollouts:
            params = jax.tree.map(lambda p, s: jnp.copy(p) if p is s else p, params, self.state.params)
        self.sampler.update_params(params)
        self.params_step = step


def setup_run(config: ml_collections.ConfigDict, workdir: str | Path) -> Run:
    """The run's workdir (with a config snapshot), policy, data, and update functions; no step yet."""
    console = Console(config.logging.json_logs)
    workdir = Path(workdir).expanduser().resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:  # one writer per file in a multi-process run's (shared) workdir
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    task, train_samples, eval_samples, held_out = _load_data(config, console)  # data first: no model needed
    model, tokenizer, mesh, sampler = _load_policy(config, console)
    optim = optim_config(config)
    run = Run(
        config=config, workdir=workdir, console=console, model=model, tokenizer=tokenizer, mesh=mesh,
        sampler=sampler, task=task, train_samples=train_samples, eval_samples=eval_samples,
        # The global batch, the same on every host: RolloutSource gives each host its part.
        pipeline=make_pipeline(
            train_samples, config.rl.prompts_per_step, seed=config.seed, num_epochs=None, process_index=0,
            process_count=1,
        ),
        reward_name=config.reward.name or task.reward, optimizer=make_optimizer(optim),
        schedule=make_schedule(optim), loss_config=loss_config(config),
        sampling=SamplingParams(
            temperature=config.sampling.temperature, top_p=config.sampling.top_p,
            top_k=config.sampling.top_k, max_new_tokens=config.sampling.max_new_tokens,
        ),
        held_out=held_out,
    )  # fmt: skip
    _build_update(run)
    return run


def _load_policy(config: ml_collections.ConfigDict, console: Console) -> tuple[Any, Any, Any, Sampler]:
    t_load = time.perf_counter()
    model, tokenizer = load_policy(
        config.model.path, dtype=config.model.dtype, param_dtype=config.model.param_dtype,
        remat=config.model.remat, attention=config.model.get("attention", "auto"),
        lora_options=lora_options(config), seed=config.seed,
    )  # fmt: skip
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    console.say(
        f"loaded {config.model.path} ({model.cfg.family}, {model.cfg.num_params() / 1e6:.0f}M params) in "
        f"{time.perf_counter() - t_load:.1f}s; mesh {dict(mesh.shape)} on {jax.device_count()} "
        f"{jax.devices()[0].platform} device(s)"
    )
    return model, tokenizer, mesh, Sampler(model, tokenizer, mesh=mesh, prompt_buckets=prompt_buckets(config))


def _load_data(config: ml_collections.ConfigDict, console: Console) -> tuple[Task, list, list, HeldOutReport]:
    """The task, its training prompts, and the held-out items: the eval split without repeats and without
    questions the training list asks (the very list the prompt pipeline samples from), then the first
    data.eval_limit; the report of what went is said in one line."""
    task = get_task(config.data.task)
    train = load_samples(task, config, config.data.train_split)
    same = config.data.eval_split == config.data.train_split
    held_out, report = held_out_split(
        None if same else train, load_samples(task, config, config.data.eval_split),
        split=config.data.eval_split, procedural=task.procedural, limit=config.data.eval_limit,
        skipped="data.eval_split is the training split" if same else None,
    )  # fmt: skip
    console.say(report.line(), held_out=report.to_json())
    console.say(
        f"task {task.name}: {len(train)} training prompts, {len(held_out)} held-out; "
        f"reward {config.reward.name or task.reward}"
    )
    return task, train, held_out, report


def _build_update(run: Run) -> None:
    """The train state, the frozen reference, the micro-batch count and the compiled update functions."""
    config = run.config
    run.state = init_train_state(
        run.model, run.optimizer, mesh=run.mesh, master_dtype=config.model.param_dtype
    )
    # The frozen reference: a copy of the initial policy, held only when the KL term is on. Made before
    # the memory probe, which must count it as resident.
    run.ref_params = jax.tree.map(jnp.copy, run.state.params) if config.rl.beta > 0 else None
    probed: dict[int, Any] = {}  # the update executables the memory probe compiled, by micro-batch count
    run.micro_batches = resolve_micro_batches(run, probed)
    run.train_step = CompiledUpdate(make_train_step(
        run.graphdef, run.optimizer, run.loss_config, temperature=config.sampling.temperature,
        micro_batches=run.micro_batches, schedule=run.schedule, mesh=run.mesh,
    ))  # fmt: skip
    if run.micro_batches in probed:  # the probe compiled this very update: not compiled a second time
        run.train_step.adopt(probed[run.micro_batches])
    # Old log-probs (mu > 1) and reference log-probs (beta > 0) at the sampling temperature.
    run.logprob_fn = make_logprob_fn(run.graphdef, temperature=config.sampling.temperature, mesh=run.mesh)
    run.advantage_fn = get_advantage_fn(config.rl.advantage)


def resolve_micro_batches(run: Run, compiled: dict[int, Any] | None = None) -> int:
    """`optim.micro_batches`, or the count the memory probe / token budget picks for the worst-case batch.

    Worst case: every row at the longest training prompt's bucket plus the whole generation budget. The
    choice and every estimate behind it go to WORKDIR/memory_probe.json. The probe compiles the run's own
    update (same options, schedule included); `compiled` receives those executables by count.
    """
    from rlvr_jax.optim.memory import micro_batches_for_tokens, probe_train_step_micro_batches

    config, o = run.config, run.config.optim
    if o.micro_batches and not o.micro_batch_tokens:
        return int(o.micro_batches)
    rows = config.rl.prompts_per_step * config.rl.group_size
    shards = 1 if run.mesh is None else run.mesh.shape["data"] * run.mesh.shape["fsdp"]
    prompt_len = encode_prompts(run.sampler, run.task, run.train_samples, config.data.chat)[0].shape[1]
    completion_len = config.sampling.max_new_tokens
    if o.micro_batch_tokens:
        count = micro_batches_for_tokens(rows, prompt_len + completion_len, o.micro_batch_tokens, shards)
        run.console.say(
            f"micro-batches: {count} (at most {o.micro_batch_tokens} tokens each: {rows} rows x "
            f"{prompt_len + completion_len} tokens)",
            micro_batches=count,
        )
        return count
    choice = probe_train_step_micro_batches(
        run.graphdef, run.optimizer, run.loss_config, state=run.state, rows=rows, prompt_len=prompt_len,
        completion_len=completion_len, temperature=config.sampling.temperature, mesh=run.mesh,
        old_logprobs=config.rl.mu > 1,
        budget_bytes=int(o.memory_budget_gb * 1e9) if o.memory_budget_gb else None,
        schedule=run.schedule, compiled=compiled,
    )  # fmt: skip
    run.console.say(f"memory probe: {choice.summary()}", micro_batches=choice.micro_batches)
    if jax.process_index() == 0:
        (run.workdir / "memory_probe.json").write_text(json.dumps(choice.to_json(), indent=2))
    return choice.micro_batches


def resume(run: Run) -> tuple[int, dict[str, Any]]:
    """(the step to continue after, the checkpoint's meta): the newest checkpoint's train state goes into
    `run.state`; (0, {}) for a new run. The sampler gets the state's parameters either way."""
    config = run.config
    run.checkpointer = Checkpointer(
        run.workdir / "checkpoints", keep=config.train.keep_checkpoints, best_metric="eval_accuracy"
    )
    start, meta = 0, {}
    latest = run.checkpointer.latest_step()
    if latest is not None:
        # The newest intact step: a damaged newer one is named in a warning and skipped.
        # With LoRA a checkpoint holds the adapters; the frozen base is the one just loaded from model.path.
        restored, meta = run.checkpointer.restore(None, checkpoint_view(run.state))
        run.state = from_checkpoint(run.state, restored)
        start = int(meta["step"])
        run.console.say(f"resumed from {run.workdir / 'checkpoints'} at step {start}")
    run.hand_params_to_sampler(start)
    return start, meta
