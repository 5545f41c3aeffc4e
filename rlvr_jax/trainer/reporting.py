"""What a run leaves behind: metrics and their sinks, held-out evaluations, checkpoints, and the end of
the run (final evaluation, before / after report, reward curve, HF export, summary)."""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import jax
from flax import nnx

from rlvr_jax.config import eval_reward
from rlvr_jax.evaluation.compare import compare_runs, write_report
from rlvr_jax.evaluation.evaluate import score_held_out
from rlvr_jax.evaluation.metrics import flat_summary
from rlvr_jax.evaluation.runs import load_run, write_run
from rlvr_jax.monitoring.cost import CostTracker, device_price
from rlvr_jax.monitoring.exporters import JsonLogSink, PrometheusSink
from rlvr_jax.monitoring.media import figure_tags
from rlvr_jax.monitoring.metrics import MetricsWriter, new_run_id, plot_rewards
from rlvr_jax.optim.state import checkpoint_view
from rlvr_jax.progress import Progress
from rlvr_jax.trainer.setup import Run
from rlvr_jax.weights import export_hf, export_peft


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
    peft_dir: str | None = None  # a LoRA run's adapters alone, as a PEFT adapter directory (with export_dir)


class RunLog:
    """The run's metrics: metrics.jsonl, TensorBoard, W&B, Prometheus and JSON events (process 0), the
    cost tracker, and the progress display (a bar, or a line per step in a log: `rlvr_jax.progress`). A
    resumed run drops what was logged after its checkpoint and rewrites those steps exactly once."""

    def __init__(self, run: Run, meta: dict[str, Any], start: int, clock_start: float):
        config = run.config
        self.run_id = meta.get("run_id") or new_run_id()
        self.writer = MetricsWriter(
            run.workdir, tensorboard=config.logging.tensorboard, wandb_project=config.logging.wandb_project,
            wandb_name=config.logging.wandb_name, wandb_group=config.logging.wandb_group,
            wandb_tags=config.logging.wandb_tags,
            run_id=self.run_id, config=config.to_dict(), resume_step=start if meta else None,
            extra_sinks=self._sinks(run),
        )  # fmt: skip
        price, self.price_source = device_price(jax.devices()[0].device_kind, config.logging.price_per_hour)
        self.cost: CostTracker | None = None
        if price is None:
            run.console.say(f"no cost metrics: {self.price_source}", event="warning")
        else:
            self.cost = CostTracker.restore(meta.get("cost"), price, jax.device_count(), config.train.steps)
            self.cost.elapsed_s += time.perf_counter() - clock_start  # this process's loading time so far
            self.cost.mark()
        self.progress = Progress(config.train.steps, initial=start, quiet=config.logging.json_logs)

    def _sinks(self, run: Run) -> list[Any]:
        logging, sinks = run.config.logging, []
        if jax.process_index() != 0:
            return sinks
        if logging.json_logs:
            events = JsonLogSink(self.run_id)
            run.console.attach(events)
            sinks.append(events)
        if logging.prometheus_port or logging.pushgateway:
            prometheus = PrometheusSink(
                self.run_id, port=logging.prometheus_port or None, pushgateway=logging.pushgateway
            )
            sinks.append(prometheus)
            if prometheus.port:
                run.console.say(
                    f"Prometheus metrics on http://0.0.0.0:{prometheus.port}/metrics", port=prometheus.port
                )
        return sinks

    def step(self, step: int, metrics: dict[str, Any], tokens: int) -> None:
        """Logs one training step (with its cost) and shows it in the progress display."""
        if self.cost is not None:
            metrics.update(self.cost.step(step, tokens))
        self.progress.update(step, self.writer.write(step, metrics))


def evaluate_held_out(run: Run, name: str, log: RunLog | None = None, step: int = 0) -> dict[str, float]:
    """The held-out evaluation (the same as scripts/evaluate.py), saved as a run in WORKDIR/eval/<name>;
    returns the scalars to log. With `log`, a few of its samples also go to TensorBoard / W&B at `step`
    (`logging.log_samples`)."""
    config = run.config
    rows, metrics, params = score_held_out(
        run.sampler, run.task, run.eval_samples, config, description=f"eval {name}",
        quiet=config.logging.json_logs, leave=None,
    )  # fmt: skip
    out = run.workdir / "eval" / name
    if jax.process_index() == 0:
        reward = eval_reward(config, run.task.reward)[0]
        header = {"task": run.task.name, "split": config.data.eval_split, "reward": reward}
        header |= {"model": str(config.model.path), "temperature": params.temperature, "seed": config.seed}
        if run.held_out is not None:
            header["held_out"] = run.held_out.to_json()
        write_run(out, rows, header | metrics | {"training_metrics": str(run.workdir / "metrics.jsonl")})
    if log is not None:
        log.writer.write_samples(step, "eval/samples", rows, config.logging.log_samples)
    return flat_summary(metrics)


def save_checkpoint(
    run: Run, log: RunLog, step: int, iterator_state: dict, eval_before: dict, evaluated: dict | None
) -> None:
    """Checkpoints the state with what exact resumption needs; ranks it only when it was just evaluated."""
    meta = {
        "step": step,
        "data_iterator": iterator_state,
        "eval_before": eval_before,
        "run_id": log.run_id,
        "cost": log.cost.state() if log.cost is not None else None,
    }
    metrics = {"eval_accuracy": evaluated["accuracy"]} if evaluated else None
    if not run.checkpointer.save(step, checkpoint_view(run.state), meta, metrics=metrics):
        run.console.say(
            f"warning: no checkpoint written at step {step} (non-finite state or step already saved)"
        )


def finish(
    run: Run, log: RunLog, step: int, eval_before: dict, iterator_state: dict, preempted: bool
) -> RunSummary:
    """The end of the run: final evaluation and checkpoint, reward curve, before / after report, export,
    cost, WORKDIR/summary.json. A preempted run only closes its files (it resumes later)."""
    config, workdir = run.config, run.workdir
    eval_after = {} if preempted else evaluate_held_out(run, "after", log, step)
    if eval_after:
        log.writer.write(step, {f"eval/{k}": v for k, v in eval_after.items()})
        if step % config.train.checkpoint_every:
            save_checkpoint(run, log, step, iterator_state, eval_before, eval_after)
    run.checkpointer.wait()
    run.checkpointer.close()
    plot = report = verdict = export_dir = peft_dir = None
    primary = jax.process_index() == 0  # the one writer of the workdir's files (the others only checkpoint)
    if not preempted:
        plot = str(workdir / "reward_curve.png")
        if primary:
            plot_rewards(workdir / "metrics.jsonl", plot)
        report, verdict = _compare_before_after(run, log, step)
        if config.train.export_hf and primary:
            model = nnx.merge(run.graphdef, run.state.params)
            export_dir = str(
                export_hf(model, workdir / "hf_export", run.tokenizer, dtype=config.train.export_dtype)
            )
            if model.cfg.lora_rank:  # the adapters alone, for PEFT
                peft = export_peft(model, workdir / "peft_adapter", base_model=str(config.model.path))
                peft_dir = str(peft)
    log.writer.close()
    run_cost = None
    if log.cost is not None:
        run_cost = log.cost.summary(eval_before.get("accuracy"), eval_after.get("accuracy"))
        run_cost["price_source"] = log.price_source
    summary = RunSummary(
        workdir=str(workdir), steps=step, eval_before=eval_before, eval_after=eval_after,
        checkpoint_dir=str(workdir / "checkpoints"),
        tensorboard_dir=str(workdir / "tensorboard") if config.logging.tensorboard else None,
        metrics_file=str(workdir / "metrics.jsonl"), reward_plot=plot, export_dir=export_dir,
        preempted=preempted, eval_report=report, eval_verdict=verdict, cost=run_cost, peft_dir=peft_dir,
    )  # fmt: skip
    if primary:
        (workdir / "summary.json").write_text(json.dumps(dataclasses.asdict(summary), indent=2))
    if run.console.events is not None:
        run.console.events.event("end", step, preempted=preempted, eval_before=eval_before,
                                 eval_after=eval_after, verdict=verdict, cost=run_cost)  # fmt: skip
    return summary


def _compare_before_after(run: Run, log: RunLog, step: int) -> tuple[str | None, str | None]:
    """The paired before / after comparison and its report (WORKDIR/eval/compare); its figures also go to
    TensorBoard / W&B at `step`, beside the curves."""
    folder = run.workdir / "eval"
    if jax.process_index() != 0 or not (folder / "before" / "samples.jsonl").exists():
        return None, None
    before, after = load_run(folder / "before"), load_run(folder / "after")
    comparison = compare_runs(before, after, seed=run.config.seed)
    report = str(write_report(before, after, comparison, folder / "compare"))
    (folder / "compare" / "comparison.json").write_text(json.dumps(comparison, indent=2))
    log.writer.write_figures(step, figure_tags(folder / "compare", "eval/compare"))
    return report, comparison["verdict"]


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


def _share(evaluation: dict[str, float], key: str) -> str:
    value = evaluation.get(key)
    return "n/a" if value is None or value != value else f"{100 * value:.0f}%"


def _finished(evaluation: dict[str, float]) -> str:
    """Accuracy among finished answers with its n, e.g. "0.385 (n=13)"; n/a for an evaluation that
    predates it (a run resumed from an older checkpoint) or with no finished answer."""
    value, n = evaluation.get("accuracy_finished"), evaluation.get("n_finished")
    return "n/a" if value is None or value != value else f"{value:.3f} (n={n})"


def describe_evaluation(evaluation: dict[str, float]) -> str:
    """One evaluation in a line: accuracy, reward, truncated share, accuracy among finished answers."""
    text = f"{evaluation['accuracy']:.3f} (reward {evaluation['reward']:.3f}"
    if "truncation_rate" in evaluation:
        text += f"; truncated {_share(evaluation, 'truncation_rate')}, accuracy among finished answers "
        text += _finished(evaluation)
    return text + ")"


def print_summary(summary: RunSummary) -> None:
    """The run's closing lines: held-out accuracy before and after, the truncated share and accuracy among
    finished answers of each, the verdict (which says whether a gain is answers that now fit the token
    budget), cost, where files are."""
    before, after = summary.eval_before, summary.eval_after
    lines = [""]
    if after:
        lines.append(
            f"held-out accuracy: before {before['accuracy']:.3f} -> after {after['accuracy']:.3f} "
            f"(n={after['n']}; mean reward {before['reward']:.3f} -> {after['reward']:.3f})"
        )
        if "truncation_rate" in after:
            lines.append(f"truncated:         before {_share(before, 'truncation_rate')} -> after "
                         f"{_share(after, 'truncation_rate')}; accuracy among finished answers: before "
                         f"{_finished(before)} -> after {_finished(after)}")  # fmt: skip
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
    if summary.peft_dir:
        lines.append(f"PEFT adapter:  {summary.peft_dir}")
    if jax.process_index() == 0:
        print("\n".join(lines), flush=True)
