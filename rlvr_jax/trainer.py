"""The GRPO training loop: the one place with side effects, read top to bottom.

    data (grain, per-host shard) -> prompts -> sampler (jit, on the mesh) -> rewards (host processes)
    -> advantages -> train step (jit, donated, on the mesh) -> metrics -> checkpoint

Everything on the device is a pure function of (params, inputs, key); the key of step t is
fold_in(seed, t), so a run resumed from a checkpoint at step k redoes steps k+1.. exactly as an
uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from rlvr_jax import sharding
from rlvr_jax.checkpointing import Checkpointer, PreemptionHandler
from rlvr_jax.checkpoints import export_hf, load_model
from rlvr_jax.config import validate
from rlvr_jax.data import get_task
from rlvr_jax.data.pipeline import batches, make_pipeline
from rlvr_jax.evaluation.compare import compare_runs, write_report
from rlvr_jax.evaluation.generate_and_score import encode_prompts, generate_and_score
from rlvr_jax.evaluation.metrics import EXTRA_REWARDS, PASS_THRESHOLD, eval_metrics, flat_summary
from rlvr_jax.evaluation.runs import load_run, write_run
from rlvr_jax.generate import Sampler, SamplingParams
from rlvr_jax.models.decoder import abstract_model
from rlvr_jax.monitoring.cost import CostTracker, device_price
from rlvr_jax.monitoring.exporters import JsonLogSink, PrometheusSink
from rlvr_jax.monitoring.metrics import (
    MetricsWriter,
    Progress,
    mfu,
    new_run_id,
    peak_flops,
    plot_rewards,
    step_flops,
)
from rlvr_jax.rewards.pool import RewardPool
from rlvr_jax.rl import LossConfig, get_advantage_fn
from rlvr_jax.rl.dynamic_sampling import fill_batch
from rlvr_jax.rl.train_step import (
    OptimConfig,
    batch_from_rollout,
    export_params,
    init_train_state,
    make_logprob_fn,
    make_optimizer,
    make_train_step,
    update_on_rollout,
)


@dataclasses.dataclass
class RunSummary:
    workdir: str
    steps: int
    eval_before: dict[str, float]
    eval_after: dict[str, float]
    checkpoint_dir: str
    tensorboard_dir: str | None  # None when logging.tensorboard is off
    metrics_file: str
    reward_plot: str | None
    export_dir: str | None
    preempted: bool = False
    eval_report: str | None = None  # before vs after: paired test, plots (WORKDIR/eval/compare/report.md)
    eval_verdict: str | None = None
    cost: dict[str, Any] | None = None  # accelerator hours x price (rlvr_jax/monitoring/cost.py)


def _log(message: str) -> None:
    if jax.process_index() == 0:
        print(message, flush=True)


def load_policy(config: ml_collections.ConfigDict):
    loaded = load_model(config.model.path, dtype=config.model.dtype, param_dtype=config.model.param_dtype)
    cfg = loaded.config.replace(remat=config.model.remat)
    graphdef, _ = nnx.split(abstract_model(cfg))
    model = nnx.merge(graphdef, nnx.state(loaded.model))
    return model, loaded.tokenizer


def _loss_config(config: ml_collections.ConfigDict) -> LossConfig:
    rl = config.rl
    return LossConfig(
        ratio_type=rl.ratio_type,
        clip_low=rl.clip_low,
        clip_high=rl.clip_high,
        aggregation=rl.aggregation,
        max_len=config.sampling.max_new_tokens,
        beta=rl.beta,
        kl_estimator=rl.kl_estimator,
        tis_cap=rl.tis_cap or None,
        entropy_coef=rl.entropy_coef,
    )


def optim_config(config: ml_collections.ConfigDict) -> OptimConfig:
    o = config.optim
    return OptimConfig(
        learning_rate=o.learning_rate,
        warmup_steps=o.warmup_steps,
        total_steps=config.train.steps,
        schedule=o.schedule,
        weight_decay=o.weight_decay,
        b1=o.b1,
        b2=o.b2,
        eps=o.eps,
        max_grad_norm=o.max_grad_norm,
        micro_batches=max(o.micro_batches, 1),  # 0 = auto: the trainer resolves it (`_micro_batches`)
    )


def _evaluate(sampler, task, samples, config, seed: int, out: Path | None = None) -> dict[str, float]:
    """The held-out evaluation (the same as scripts/evaluate.py); the scalars to log, the run to `out`."""
    params = SamplingParams(
        temperature=config.sampling.eval_temperature, max_new_tokens=config.sampling.max_new_tokens
    )
    reward = config.reward.name or task.reward
    scored = generate_and_score(
        sampler,
        task,
        samples,
        params,
        chat=config.data.chat,
        seed=seed,
        reward=reward,
        reward_options=dict(config.reward.options),
        extra_rewards=EXTRA_REWARDS.get(reward, ()),
    )
    rows = [s.to_row() for s in scored]
    metrics = eval_metrics(rows, reward=reward, max_new_tokens=config.sampling.max_new_tokens, seed=seed)
    if out is not None and jax.process_index() == 0:
        header = {"task": task.name, "split": config.data.eval_split, "reward": reward}
        header |= {"model": str(config.model.path), "temperature": params.temperature, "seed": seed}
        write_run(
            out, rows, header | metrics | {"training_metrics": str(out.parent.parent / "metrics.jsonl")}
        )
    return flat_summary(metrics)


def train(config: ml_collections.ConfigDict, workdir: str | Path) -> RunSummary:
    """Runs (or resumes) the experiment described by `config` in `workdir`."""
    sharding.initialize_distributed()
    validate(config, jax.device_count())
    clock_start = time.perf_counter()  # accelerators are billed from here: loading and compiles included
    events: JsonLogSink | None = None
    early: list[tuple[str, dict]] = []  # JSON logs need the run id, known once a checkpoint is read

    def say(message: str, event: str = "message", **fields: Any) -> None:
        if not config.logging.json_logs:
            _log(message)
        elif events is None:
            early.append((message, {"event": event, **fields}))
        elif jax.process_index() == 0:
            events.event(fields.pop("event", event), fields.pop("step", None), message=message, **fields)

    workdir = Path(workdir).expanduser().resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))

    # Model, tokenizer, mesh.
    t_load = time.perf_counter()
    model, tokenizer = load_policy(config)
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    sampler = Sampler(model, tokenizer, mesh=mesh)
    say(
        f"loaded {config.model.path} ({model.cfg.family}, {model.cfg.num_params() / 1e6:.0f}M params) in "
        f"{time.perf_counter() - t_load:.1f}s; mesh {dict(mesh.shape)} on {jax.device_count()} "
        f"{jax.devices()[0].platform} device(s)"
    )

    # Data.
    task = get_task(config.data.task)
    options = dict(config.data.options)
    train_samples = task.load(config.data.train_split, config.data.path, chat=config.data.chat, **options)
    eval_samples = task.load(config.data.eval_split, config.data.path, chat=config.data.chat, **options)
    eval_samples = eval_samples[: config.data.eval_limit]
    pipeline = make_pipeline(train_samples, config.rl.prompts_per_step, seed=config.seed, num_epochs=None)
    reward_name = config.reward.name or task.reward
    say(
        f"task {task.name}: {len(train_samples)} training prompts, {len(eval_samples)} held-out; "
        f"reward {reward_name}"
    )

    # Optimiser, state, step function.
    optimizer = make_optimizer(optim_config(config))
    state = init_train_state(model, optimizer, mesh=mesh, master_dtype=config.model.param_dtype)
    graphdef = nnx.graphdef(model)
    loss_config = _loss_config(config)
    # The frozen reference: a copy of the initial policy, held only when the KL term is on. Made before
    # the memory probe, which must count it as resident.
    ref_params = jax.tree.map(jnp.copy, state.params) if config.rl.beta > 0 else None
    micro_batches = _micro_batches(config, sampler, task, train_samples, graphdef, optimizer, loss_config,
                                   state, mesh, workdir, say)  # fmt: skip
    train_step = _CompiledSteps(make_train_step(
        graphdef,
        optimizer,
        loss_config,
        temperature=config.sampling.temperature,
        micro_batches=micro_batches,
        mesh=mesh,
    ))  # fmt: skip
    # Old log-probs (mu > 1) and reference log-probs (beta > 0) at the sampling temperature.
    logprob_fn = make_logprob_fn(graphdef, temperature=config.sampling.temperature, mesh=mesh)
    advantage_fn = get_advantage_fn(config.rl.advantage)
    sampling = SamplingParams(
        temperature=config.sampling.temperature,
        top_p=config.sampling.top_p,
        top_k=config.sampling.top_k,
        max_new_tokens=config.sampling.max_new_tokens,
    )

    # Resume.
    checkpointer = Checkpointer(
        workdir / "checkpoints", keep=config.train.keep_checkpoints, best_metric="eval_accuracy"
    )
    start, meta = 0, {}
    latest = checkpointer.latest_step()
    if latest is not None:
        state, meta = checkpointer.restore(None, state)  # the newest intact step (warns on damaged ones)
        start = int(meta["step"])
        say(f"resumed from {workdir / 'checkpoints'} at step {start}")
    iterator = batches(pipeline, meta.get("data_iterator"))
    sampler.update_params(export_params(state.params, model.cfg.param_dtype))
    metrics_file = workdir / "metrics.jsonl"
    run_id = meta.get("run_id") or new_run_id()
    extra_sinks: list = []
    if jax.process_index() == 0:
        if config.logging.json_logs:
            events = JsonLogSink(run_id)
            for message, fields in early:
                say(message, **fields)
            extra_sinks.append(events)
        if config.logging.prometheus_port or config.logging.pushgateway:
            prometheus = PrometheusSink(
                run_id, port=config.logging.prometheus_port or None, pushgateway=config.logging.pushgateway
            )
            extra_sinks.append(prometheus)
            if prometheus.port:
                say(f"Prometheus metrics on http://0.0.0.0:{prometheus.port}/metrics", port=prometheus.port)
    # A resumed run drops what was logged after its checkpoint and rewrites those steps exactly once.
    writer = MetricsWriter(
        workdir,
        tensorboard=config.logging.tensorboard,
        wandb_project=config.logging.wandb_project,
        run_id=run_id,
        config=config.to_dict(),
        resume_step=start if latest is not None else None,
        extra_sinks=extra_sinks,
    )
    price, price_source = device_price(jax.devices()[0].device_kind, config.logging.price_per_hour)
    cost = None
    if price is None:
        say(f"no cost metrics: {price_source}", event="warning")
    else:
        cost = CostTracker.restore(meta.get("cost"), price, jax.device_count(), config.train.steps)
        cost.elapsed_s += time.perf_counter() - clock_start  # this process's loading time so far
        cost.mark()

    eval_before = meta.get("eval_before")
    if eval_before is None:
        eval_before = _evaluate(sampler, task, eval_samples, config, config.seed, workdir / "eval" / "before")
        writer.write(0, {f"eval/{k}": v for k, v in eval_before.items()})
    say(
        f"held-out accuracy before training: {eval_before['accuracy']:.3f} "
        f"(reward {eval_before['reward']:.3f})"
    )

    key = jax.random.key(config.seed)
    G = config.rl.group_size
    reward_pool = RewardPool(timeout_s=config.reward.timeout_s, on_error=config.reward.on_error)
    preemption = PreemptionHandler()
    progress = Progress(config.train.steps, initial=start, quiet=config.logging.json_logs)
    last_eval: dict[str, float] = {}
    step = start
    try:
        for step in range(start + 1, config.train.steps + 1):
            t0 = time.perf_counter()
            step_key = jax.random.fold_in(key, step)

            timing = {"rollout": 0.0, "reward": 0.0}

            def generate_round(_: int, round_key=step_key, timing=timing) -> dict[str, np.ndarray]:
                nonlocal round_index
                round_index += 1
                t_round = time.perf_counter()
                prompts = next(iterator)
                ids, mask = encode_prompts(sampler, task, prompts, config.data.chat)
                # Round 1 samples with the step's key; refill rounds (dynamic sampling) fold from it.
                round_seed = round_key if round_index == 1 else jax.random.fold_in(round_key, round_index)
                rollout = jax.device_get(
                    sampler.generate_ids(ids, mask, sampling, seed=round_seed, group_size=G)
                )
                completions = [
                    tokenizer.decode(tokenizer.truncate_at_stop(rollout.tokens[r, : rollout.lengths[r]]))
                    for r in range(len(rollout.tokens))
                ]
                # Each row's token count travels with its sample, for the length rewards (overlong,
                # length_penalty) alone or inside a weighted_sum.
                repeated = [
                    {**prompts[r // G], "completion_length": int(rollout.lengths[r])}
                    for r in range(len(completions))
                ]
                t_reward = time.perf_counter()
                rewards = reward_pool.submit(
                    reward_name, completions, repeated, **dict(config.reward.options)
                ).result()
                timing["rollout"] += t_reward - t_round
                timing["reward"] += time.perf_counter() - t_reward
                return rollout_rows(ids, mask, rollout, rewards.scores, G)

            round_index = 0
            if config.rl.dynamic_sampling:
                filled = fill_batch(
                    generate_round,
                    config.rl.prompts_per_step,
                    G,
                    max_rounds=config.rl.dynamic_sampling_rounds,
                )
                rows, ds_stats = filled.rollouts, filled.stats
                rows["mask"] = rows["mask"] & filled.kept[:, None]  # padding groups carry no loss
            else:
                rows, ds_stats = generate_round(config.rl.prompts_per_step), None
            ids, mask, rollout = rows_to_batch_inputs(rows, G, sampler.prompt_buckets, tokenizer.pad_id)
            scores = rows["rewards"]
            lengths = np.asarray(rollout.lengths)
            t1 = t2 = time.perf_counter()  # rollout, then reward, per generation round (see `timing`)
            advantages = advantage_fn(jnp.asarray(scores), G)
            batch = batch_from_rollout(ids, mask, rollout, advantages)
            batch = sharding.shard_batch(batch, mesh)
            state, updates = update_on_rollout(
                train_step,
                state,
                batch,
                epochs=config.rl.mu,
                logprob_fn=logprob_fn,
                ref_params=ref_params,
                mesh=mesh,
            )
            # The next step donates these buffers: the sampler gets the new ones every step.
            sampler.update_params(export_params(state.params, model.cfg.param_dtype))
            step_metrics = jax.device_get(updates[-1])
            t3 = time.perf_counter()

            generated = int(lengths.sum())
            finished = np.asarray(rollout.finished)
            metrics = {
                "reward/mean": float(np.mean(scores)),
                "reward/std": float(np.std(scores)),
                "accuracy": float(np.mean(scores >= PASS_THRESHOLD)),
                "response/length_mean": float(lengths.mean()),
                "response/length_max": int(lengths.max()),
                "response/truncation_rate": float(1.0 - finished.mean()),
                "groups/zero_variance_fraction": float(np.mean(np.std(scores.reshape(-1, G), axis=1) == 0)),
                **(
                    {
                        "groups/dropped_fraction": ds_stats["dropped_fraction"],
                        "groups/generation_rounds": ds_stats["rounds"],
                        "groups/padded": ds_stats["groups_padded"],
                    }
                    if ds_stats
                    else {}
                ),
                "time/rollout_and_reward_s": t1 - t0,
                "time/rollout_s": timing["rollout"],  # sampling + detokenising, all rounds
                "time/reward_s": timing["reward"],
                "time/train_s": t3 - t2,
                "time/step_s": t3 - t0,
                "optim/micro_batches": micro_batches,
                "throughput/rollout_tokens_per_s": generated / max(t1 - t0, 1e-9),
                "throughput/train_tokens_per_s": float(np.asarray(batch["attn_mask"]).sum())
                * config.rl.mu
                / max(t3 - t2, 1e-9),
                **{f"train/{k}": float(np.asarray(v)) for k, v in step_metrics.items()},
                # Cumulative (the per-update flag is train/skipped): alerts count its increase.
                "train/skipped_updates": int(jax.device_get(state.skipped)),
                **_flops_metrics(
                    _model_flops(model.cfg, batch["tokens"].shape),
                    train_step.flops(batch),
                    len(updates),
                    t3 - t2,
                    1 if mesh is None else mesh.size,
                ),
            }
            if config.train.eval_every and step % config.train.eval_every == 0 and step < config.train.steps:
                last_eval = _evaluate(
                    sampler, task, eval_samples, config, config.seed, workdir / "eval" / f"step_{step}"
                )
                metrics.update({f"eval/{k}": v for k, v in last_eval.items()})
            if cost is not None:
                metrics.update(cost.step(step, int(np.asarray(batch["attn_mask"]).sum()) * config.rl.mu))
            writer.write(step, metrics)
            progress.update(step, reward=metrics["reward/mean"], accuracy=metrics["accuracy"])

            stop = preemption.should_stop(step)  # every host calls this every step
            if step % config.train.checkpoint_every == 0 or stop:
                ran_eval = "eval/accuracy" in metrics
                _save(
                    checkpointer,
                    state,
                    step,
                    iterator,
                    eval_before,
                    writer.run_id,
                    last_eval if ran_eval else None,
                    cost,
                )
            if stop:
                checkpointer.wait()
                say(f"preemption signal received: checkpoint saved at step {step}; exiting")
                break
    finally:
        progress.close()
        reward_pool.close()

    preempted = preemption.requested
    eval_after = {}
    if not preempted:
        eval_after = _evaluate(sampler, task, eval_samples, config, config.seed, workdir / "eval" / "after")
    if eval_after:
        writer.write(step, {f"eval/{k}": v for k, v in eval_after.items()})
        if step % config.train.checkpoint_every:
            _save(checkpointer, state, step, iterator, eval_before, writer.run_id, eval_after, cost)
    checkpointer.wait()
    checkpointer.close()
    writer.close()

    plot = None
    export_dir = None
    report, verdict = None, None
    if not preempted:
        plot = str(workdir / "reward_curve.png")
        plot_rewards(metrics_file, plot)
        if jax.process_index() == 0 and (workdir / "eval" / "before" / "samples.jsonl").exists():
            before, after = load_run(workdir / "eval" / "before"), load_run(workdir / "eval" / "after")
            comparison = compare_runs(before, after, seed=config.seed)
            report = str(write_report(before, after, comparison, workdir / "eval" / "compare"))
            (workdir / "eval" / "compare" / "comparison.json").write_text(json.dumps(comparison, indent=2))
            verdict = comparison["verdict"]
        if config.train.export_hf and jax.process_index() == 0:
            export_dir = str(
                export_hf(
                    nnx.merge(graphdef, state.params), workdir / "hf_export", tokenizer, dtype="float32"
                )
            )
    run_cost = None
    if cost is not None:
        after_accuracy = eval_after.get("accuracy") if eval_after else None
        run_cost = cost.summary(eval_before.get("accuracy"), after_accuracy)
        run_cost["price_source"] = price_source
    summary = RunSummary(
        cost=run_cost,
        workdir=str(workdir),
        steps=step,
        eval_before=eval_before,
        eval_after=eval_after,
        checkpoint_dir=str(workdir / "checkpoints"),
        tensorboard_dir=str(workdir / "tensorboard") if config.logging.tensorboard else None,
        metrics_file=str(metrics_file),
        reward_plot=plot,
        export_dir=export_dir,
        preempted=preempted,
        eval_report=report,
        eval_verdict=verdict,
    )
    (workdir / "summary.json").write_text(json.dumps(dataclasses.asdict(summary), indent=2))
    if events is not None and jax.process_index() == 0:
        events.event("end", step, preempted=preempted, eval_before=eval_before, eval_after=eval_after,
                     verdict=verdict, cost=run_cost)  # fmt: skip
    return summary


def _micro_batches(
    config, sampler, task, train_samples, graphdef, optimizer, loss_config, state, mesh, workdir, say
) -> int:
    """`optim.micro_batches`, or the count the memory probe / token budget picks for the worst-case batch.

    Worst case: every row at the longest training prompt's bucket plus the whole generation budget. The
    choice and every estimate behind it go to WORKDIR/memory_probe.json.
    """
    from rlvr_jax.rl.memory import micro_batches_for_tokens, probe_train_step_micro_batches

    o = config.optim
    if o.micro_batches and not o.micro_batch_tokens:
        return int(o.micro_batches)
    rows = config.rl.prompts_per_step * config.rl.group_size
    shards = 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]
    prompt_len = encode_prompts(sampler, task, train_samples, config.data.chat)[0].shape[1]
    completion_len = config.sampling.max_new_tokens
    if o.micro_batch_tokens:
        count = micro_batches_for_tokens(rows, prompt_len + completion_len, o.micro_batch_tokens, shards)
        say(
            f"micro-batches: {count} (at most {o.micro_batch_tokens} tokens each: {rows} rows x "
            f"{prompt_len + completion_len} tokens)",
            micro_batches=count,
        )
        return count
    choice = probe_train_step_micro_batches(
        graphdef,
        optimizer,
        loss_config,
        state=state,
        rows=rows,
        prompt_len=prompt_len,
        completion_len=completion_len,
        temperature=config.sampling.temperature,
        mesh=mesh,
        old_logprobs=config.rl.mu > 1,
        budget_bytes=int(o.memory_budget_gb * 1e9) if o.memory_budget_gb else None,
    )
    say(f"memory probe: {choice.summary()}", micro_batches=choice.micro_batches)
    if jax.process_index() == 0:
        (workdir / "memory_probe.json").write_text(json.dumps(choice.to_json(), indent=2))
    return choice.micro_batches


def rollout_rows(ids, mask, rollout, scores, group_size: int) -> dict[str, np.ndarray]:
    """One generation round as per-row arrays (what dynamic sampling filters and concatenates).

    Prompts are stored unpadded, one object per row, because rounds may pad to different prompt buckets;
    `rows_to_batch_inputs` pads them again to one width.
    """
    prompts = np.empty(len(ids) * group_size, dtype=object)
    for i in range(len(ids)):
        for g in range(group_size):
            prompts[i * group_size + g] = np.asarray(ids[i][mask[i]])
    return {
        "prompt": prompts,
        "tokens": np.asarray(rollout.tokens),
        "logprobs": np.asarray(rollout.logprobs),
        "mask": np.asarray(rollout.mask),
        "lengths": np.asarray(rollout.lengths),
        "finished": np.asarray(rollout.finished),
        "rewards": np.asarray(scores, np.float32),
    }


def rows_to_batch_inputs(rows: dict[str, np.ndarray], group_size: int, buckets, pad_id: int):
    """Left-padded prompt ids / mask [prompts, P] and a GenerateOutput [rows, N] from per-row arrays.

    P is rounded up to a prompt bucket, so the train step sees a bounded set of shapes.
    """
    from rlvr_jax.generate.sampler import GenerateOutput, bucket

    prompts = rows["prompt"][::group_size]
    width = bucket(max(len(p) for p in prompts), buckets)
    ids = np.full((len(prompts), width), pad_id, np.int32)
    mask = np.zeros((len(prompts), width), bool)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = p
        mask[i, width - len(p) :] = True
    out = GenerateOutput(
        tokens=rows["tokens"],
        logprobs=rows["logprobs"],
        mask=rows["mask"],
        lengths=rows["mask"].sum(axis=1).astype(np.int32),
        finished=rows["finished"],
        steps=np.int32(rows["tokens"].shape[1]),
    )
    return ids, mask, out


class _CompiledSteps:
    """The jitted train step, compiled ahead of time once per batch shape, so that XLA's cost analysis
    of the very executable that runs gives the FLOPs for MFU without compiling anything twice."""

    def __init__(self, step_fn: Any):
        self.step_fn = step_fn
        self.compiled: dict[Any, Any] = {}
        self._flops: dict[Any, float | None] = {}

    @staticmethod
    def _key(batch: dict) -> tuple:
        return tuple(sorted((k, np.shape(v)) for k, v in batch.items()))

    def __call__(self, state: Any, batch: dict) -> Any:
        key = self._key(batch)
        if key not in self.compiled:
            self.compiled[key] = self.step_fn.lower(state, batch).compile()
            self._flops[key] = step_flops(self.compiled[key])
        return self.compiled[key](state, batch)

    def flops(self, batch: dict) -> float | None:
        """FLOPs per device of one update on a batch of this shape (None before it ran, or unknown)."""
        return self._flops.get(self._key(batch))


def _model_flops(cfg: Any, shape: tuple[int, int]) -> float:
    """Model FLOPs of one update (forward + backward) on a [rows, seq] batch, PaLM-style: 6 per parameter
    per token plus 12 * layers * heads * head_dim * seq per token for attention. Remat's recomputation is
    not counted (it is hardware work, not model work), so MFU is comparable across remat policies."""
    rows, seq = shape
    per_token = 6 * cfg.num_params() + 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq
    return float(per_token * rows * seq)


def _flops_metrics(
    model_flops: float, xla_flops: float | None, updates: int, seconds: float, devices: int
) -> dict[str, float]:
    """Training TFLOP/s per device and MFU (against the device's bf16 peak, when known).

    MFU uses the model FLOPs (`_model_flops`). XLA's cost analysis of the compiled update is logged beside
    it, but it counts a while loop's body once, so for our layer `scan` it is about 1/num_layers of the
    real work: a check on the executable, not an MFU numerator.
    """
    if seconds <= 0:
        return {}
    per_device = model_flops * updates / devices
    out = {"throughput/train_tflops_per_device": per_device / seconds / 1e12}
    if xla_flops is not None:
        out["throughput/xla_cost_tflops_per_device"] = xla_flops * updates / seconds / 1e12
    utilisation = mfu(per_device, seconds, peak=peak_flops())
    if utilisation is not None:
        out["throughput/mfu"] = utilisation
    return out


def _save(checkpointer, state, step, iterator, eval_before, run_id, eval_metrics, cost=None) -> None:
    """Checkpoints the state with what exact resumption needs; ranks it only when it was just evaluated."""
    meta = {
        "step": step,
        "data_iterator": iterator.get_state(),
        "eval_before": eval_before,
        "run_id": run_id,
        "cost": cost.state() if cost is not None else None,
    }
    metrics = {"eval_accuracy": eval_metrics["accuracy"]} if eval_metrics else None
    if not checkpointer.save(step, state, meta, metrics=metrics):
        _log(f"warning: no checkpoint written at step {step} (non-finite state or step already saved)")


def format_cost(cost: dict[str, Any]) -> str:
    """One line: total, device-hours at what price, per million tokens and per accuracy point gained."""
    text = (
        f"${cost['usd_total']:.4g} ({cost['device_hours']:.3g} device-hours at "
        f"${cost['price_per_device_hour']:.2f}/h, {cost['price_source']})"
    )
    if cost.get("usd_per_million_tokens") is not None:
        text += f"; ${cost['usd_per_million_tokens']:.3g} per million tokens"
    if cost.get("usd_per_accuracy_point") is not None:
        text += f"; ${cost['usd_per_accuracy_point']:.3g} per accuracy point gained"
    elif cost.get("accuracy_points_gained") is not None:
        text += "; no accuracy gained"
    return text


def print_summary(summary: RunSummary) -> None:
    before, after = summary.eval_before, summary.eval_after
    lines = [""]
    if after:
        lines.append(
            f"held-out accuracy: before {before['accuracy']:.3f} -> after {after['accuracy']:.3f} "
            f"(n={after['n']}; mean reward {before['reward']:.3f} -> {after['reward']:.3f})"
        )
    if summary.eval_verdict:
        lines.append(f"after vs before: {summary.eval_verdict}")
    if summary.cost:
        lines.append(f"cost:          {format_cost(summary.cost)}")
    lines.append(f"checkpoints:   {summary.checkpoint_dir}")
    if summary.tensorboard_dir:
        lines.append(f"TensorBoard:   tensorboard --logdir {summary.tensorboard_dir}")
    lines.append(f"metrics:       {summary.metrics_file}")
    if summary.reward_plot:
        lines.append(f"reward curve:  {summary.reward_plot}")
    if summary.eval_report:
        lines.append(f"eval report:   {summary.eval_report}")
    if summary.export_dir:
        lines.append(f"HF export:     {summary.export_dir}")
    _log("\n".join(lines))
