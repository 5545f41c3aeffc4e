"""Evaluate a model (a hub id, HF folder, GGUF file, or a training checkpoint) on a task's held-out split.

The same `generate_and_score` the trainer calls every `train.eval_every` steps, so a curve logged during
training and a number reported here are computed the same way; this adds the files a comparison needs
(`samples.jsonl`, `metrics.json`) and a plot of response lengths.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import math
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
from flax import nnx

from rlvr_jax import sharding
from rlvr_jax.checkpointing import Checkpointer, CheckpointError, abstract_like
from rlvr_jax.config import eval_max_new_tokens, eval_reward, lora_options, prompt_buckets
from rlvr_jax.data import get_task
from rlvr_jax.data.base import load_samples
from rlvr_jax.data.heldout import HeldOutReport, held_out_split
from rlvr_jax.evaluation.generate_and_score import ScoredSample, generate_and_score
from rlvr_jax.evaluation.metrics import EXTRA_REWARDS, PASS_THRESHOLD, VARIANTS, eval_metrics
from rlvr_jax.evaluation.runs import write_run
from rlvr_jax.generate import Sampler, SamplingParams
from rlvr_jax.models.lora import combine
from rlvr_jax.optim.state import partition_trainable
from rlvr_jax.progress import Progress


@dataclasses.dataclass
class EvalResult:
    out: Path
    metrics: dict[str, Any]
    rows: list[dict[str, Any]]


def resolve_checkpoint(path: str | Path, step: str | int | None = None) -> tuple[Path, int]:
    """(checkpoint folder, step) from a training workdir, its `checkpoints/` folder, or one step's folder.

    step: an int, "latest" / None, or "best" (the best held-out accuracy the run recorded).
    """
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if (path / "checkpoints").is_dir():
        path = path / "checkpoints"
    elif path.name.isdigit() and step in (None, "latest"):
        path, step = path.parent, int(path.name)
    ckpt = Checkpointer(path, best_metric="eval_accuracy")
    try:
        steps = ckpt.all_steps()
        if not steps:
            raise FileNotFoundError(f"no checkpoints in {path}: pass a training workdir or its checkpoints/")
        if step in (None, "latest"):
            chosen = steps[-1]
        elif step == "best":
            chosen = ckpt.best_step() or steps[-1]
        else:
            chosen = int(step)
            if chosen not in steps:
                raise FileNotFoundError(f"no checkpoint {chosen} in {path}; have steps {steps}")
    finally:
        ckpt.close()
    return path, chosen


def load_for_eval(config: ml_collections.ConfigDict, checkpoint: str | Path | None = None, step=None):
    """(model, tokenizer, description): `config.model.path`, with a training checkpoint's weights if given.

    A checkpoint holds the whole train state; only its parameters are read, straight into the model's
    storage dtype and placement (no optimizer state is built or allocated). Pass the config the run was
    trained with: the model it names gives the parameters' shapes.
    """
    from rlvr_jax.weights import load_policy

    model, tokenizer = load_policy(
        config.model.path, dtype=config.model.dtype, param_dtype=config.model.param_dtype,
        remat=config.model.remat, attention=config.model.get("attention", "auto"),
        lora_options=lora_options(config), seed=config.get("seed", 0),
    )  # fmt: skip
    source = str(config.model.path)
    if checkpoint is None:
        return model, tokenizer, {"model": source}
    folder, chosen = resolve_checkpoint(checkpoint, step)
    graphdef, params = nnx.split(model)
    trainable, frozen = partition_trainable(params)  # a LoRA run's checkpoint holds the adapters alone
    ckpt = Checkpointer(folder)
    try:
        params = combine(ckpt.restore_params(chosen, abstract_like(trainable)), frozen)
    except CheckpointError:
        raise  # damaged files: its message names them
    except ValueError as e:
        raise ValueError(
            f"checkpoint {folder}/{chosen} does not fit the model {source} with this config ({e}); "
            "pass the --config the run was trained with"
        ) from None
    finally:
        ckpt.close()
    model = nnx.merge(graphdef, params)
    return model, tokenizer, {"model": source, "checkpoint": str(folder), "checkpoint_step": chosen}


def is_training_run(path: str | Path) -> bool:
    """Whether `path` is a training workdir (it has `checkpoints/`) or such a workdir's `checkpoints/`."""
    path = Path(path).expanduser()
    if (path / "checkpoints").is_dir():
        return True
    return path.is_dir() and path.name == "checkpoints" and (path.parent / "config.json").is_file()


def load_training_run(
    path: str | Path, step: str | int | None = None, *, dtype: str = "float32"
) -> tuple[Any, Any, dict[str, Any]]:
    """(model, tokenizer, description) of a training run's checkpoint, needing nothing but its workdir.

    The run's own `config.json` (written when it started) names the base model, which gives the
    architecture and the tokenizer; the checkpoint's parameters replace its weights (`load_for_eval`).
    step: "latest" / None, "best" (best held-out accuracy) or a step number. dtype: compute and storage
    dtype of the loaded parameters (the run's own may be bf16 compute over f32 master weights).
    """
    folder, chosen = resolve_checkpoint(path, step)
    config_file = folder.parent / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{config_file} is missing: a training workdir holds the config.json its run started with; "
            "pass the workdir the trainer wrote"
        )
    saved = json.loads(config_file.read_text())
    model = dict(saved.get("model") or {})
    if not model.get("path"):
        raise ValueError(f"{config_file} names no model.path, so the run's base model is unknown")
    from rlvr_jax.weights import source_kind

    try:
        source_kind(model["path"])
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"the run's base model {model['path']!r} (model.path in {config_file}) is not there from "
            f"{Path.cwd()}: start from the directory the training ran in, or make that path exist ({e})"
        ) from None
    # The run's LoRA settings come along: its checkpoint then holds the adapters alone, over model.path.
    lora = dict(model.get("lora") or {"rank": 0})
    config = ml_collections.ConfigDict({
        "seed": saved.get("seed", 0),
        "model": {"path": model["path"], "dtype": dtype, "param_dtype": dtype, "remat": "none", "lora": lora},
    })  # fmt: skip
    return load_for_eval(config, folder, chosen)


def score_held_out(
    sampler: Sampler,
    task: Any,
    samples: list[dict[str, Any]],
    config: ml_collections.ConfigDict,
    *,
    num_samples: int = 1,
    temperature: float | None = None,
    batch_size: int = 64,
    description: str = "eval",
    quiet: bool = False,
    leave: bool | None = True,
) -> tuple[list[dict[str, Any]], dict[str, Any], SamplingParams]:
    """Generates and scores `num_samples` completions per item: (rows of samples.jsonl, `eval_metrics`,
    the sampling used). The one evaluation behind `evaluate` and the trainer's held-out evaluations.

    temperature: None = greedy for one sample per item (`sampling.eval_temperature`), the training
    temperature for several (pass@k needs distinct samples). The budget is `sampling.eval_max_new_tokens`
    (else the training budget): evaluation's own, so that it can let the base model finish its answers.
    description, quiet, leave: the progress display (`rlvr_jax.progress`): items done and the accuracy so
    far, as a bar or, in a log, a line at most every 10 s; `leave=None` hides a bar nested in training's.
    """
    if temperature is None:
        temperature = config.sampling.eval_temperature if num_samples == 1 else config.sampling.temperature
    reward, reward_options = eval_reward(config, task.reward)
    budget = eval_max_new_tokens(config)
    params = SamplingParams(
        temperature=float(temperature), top_p=config.sampling.top_p if temperature > 0 else 1.0,
        max_new_tokens=budget,
    )  # fmt: skip

    progress = Progress(
        len(samples), description=description, unit="item", fields={}, quiet=quiet, min_interval_s=10.0,
        leave=leave,
    )  # fmt: skip

    def on_batch(done: int, scored: list[ScoredSample]) -> None:
        accuracy = sum(s.reward >= PASS_THRESHOLD for s in scored) / max(len(scored), 1)
        progress.update(done, accuracy=accuracy)

    with progress:
        scored = generate_and_score(
            sampler, task, samples, params, chat=config.data.chat, num_samples=num_samples,
            batch_size=batch_size, seed=config.seed, reward=reward,
            reward_options=reward_options, extra_rewards=EXTRA_REWARDS.get(reward, ()),
            on_batch=on_batch,
        )  # fmt: skip
    rows = [s.to_row() for s in scored]
    metrics = eval_metrics(rows, reward=reward, max_new_tokens=budget, seed=config.seed)
    return rows, metrics, params


def _held_out_samples(
    config: ml_collections.ConfigDict,
    split: str,
    limit: int | None,
    train_config: ml_collections.ConfigDict | None = None,
) -> tuple[Any, list, HeldOutReport]:
    """(task, the items to evaluate, the held-out report): `split` of the config's task without repeats
    and without questions that `train_config`'s training split asks (default: `config`'s own), then the
    first `limit`. Training data that cannot be loaded leaves the check undone, said in the report."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    task = get_task(config.data.task)
    trained = train_config if train_config is not None else config
    train_task = get_task(trained.data.task)
    train, skipped = None, None
    if train_task.name == task.name and split == trained.data.train_split:
        skipped = "the evaluated split is the training split"
    else:
        try:
            train = load_samples(train_task, trained, trained.data.train_split)
        except (OSError, ValueError) as e:  # DataError is a ValueError; a moved data.path an OSError
            skipped = f"the training prompts ({train_task.name} {trained.data.train_split}) did not load: {e}"
    samples, report = held_out_split(
        train, load_samples(task, config, split), split=split, procedural=task.procedural, limit=limit,
        skipped=skipped,
    )  # fmt: skip
    return task, samples, report


def read_exclude(path: str | Path) -> list[str]:
    """Item ids to report accuracy without: a JSON list of ids, or an object whose `exclude` is one (such
    as benchmarks/results/mbpp_humaneval_near_duplicates.json)."""
    path = Path(path).expanduser()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"--exclude {path}: cannot be read as JSON ({e})") from None
    ids = data.get("exclude") if isinstance(data, dict) else data
    if not isinstance(ids, list) or not all(isinstance(i, str | int) for i in ids):
        raise ValueError(
            f"--exclude {path}: expected a JSON list of item ids, or an object with one as `exclude`"
        )
    return [str(i) for i in ids]


def without_items(
    rows: list[dict[str, Any]], exclude: list[str], *, reward: str, max_new_tokens: int, seed: int
) -> dict[str, Any]:
    """The metrics of `rows` without the items in `exclude` (near-duplicates of training items, say), with
    the excluded ids that were evaluated; the with-and-without pair shows how much they move the number."""
    dropped = set(exclude)
    kept = [r for r in rows if str(r["id"]) not in dropped]
    found = sorted({str(r["id"]) for r in rows} & dropped)
    return {
        "excluded_ids": found,
        **eval_metrics(kept, reward=reward, max_new_tokens=max_new_tokens, seed=seed),
    }


def evaluate(
    config: ml_collections.ConfigDict,
    out: str | Path,
    *,
    split: str | None = None,
    limit: int | None = None,
    num_samples: int = 1,
    temperature: float | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_step: str | int | None = None,
    batch_size: int = 64,
    quiet: bool = False,
    reward_fns: Any = None,
    train_config: ml_collections.ConfigDict | None = None,
    exclude: str | Path | None = None,
) -> EvalResult:
    """Generates `num_samples` completions for each held-out item, scores them, writes the run to `out`.

    temperature: None = greedy for one sample per item, the config's training temperature for several
    (pass@k needs distinct samples).
    reward_fns: score with these instead of the config's reward: a registered name, a function (this
    package's signature or TRL's), or a weighted list of them (`rlvr_jax.rewards.set_reward`).
    train_config: the config whose training prompts are not held out (`rlvr_jax.data.heldout`); default:
      the config the checkpoint's run saved, else `config`. Evaluating HumanEval after MBPP training
      without a checkpoint (the base model): pass the MBPP config, so both evaluations see the same items.
    exclude: a JSON file of item ids (`read_exclude`) to also report the metrics without, under
      `without_excluded` in metrics.json (HumanEval's near-duplicates of MBPP training items, say).
    """
    from rlvr_jax.config import validate, with_hub_fallback

    if reward_fns is not None:
        from rlvr_jax.rewards.callables import set_reward

        config = copy.deepcopy(config)
        set_reward(config, reward_fns)
    validate(config)  # every check that needs no model, before loading one
    config = with_hub_fallback(config)  # a model.path missing here: its model.hub_id, said in one line
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    chosen = temperature
    if chosen is None:
        chosen = config.sampling.eval_temperature if num_samples == 1 else config.sampling.temperature
    if num_samples > 1 and chosen <= 0:
        raise ValueError(
            f"num_samples={num_samples} with temperature {chosen}: greedy samples are all the same; "
            "pass a temperature > 0 (e.g. 0.8)"
        )
    split = split or config.data.eval_split
    excluded = read_exclude(exclude) if exclude is not None else None
    if train_config is None and checkpoint is not None:
        from rlvr_jax.config import saved_config, saved_config_path

        run_folder = resolve_checkpoint(checkpoint, checkpoint_step)[0]
        train_config = saved_config(run_folder) if saved_config_path(run_folder) else None
    task, samples, report = _held_out_samples(config, split, limit, train_config)
    if not quiet:
        print(report.line(), flush=True)

    t0 = time.perf_counter()
    model, tokenizer, source = load_for_eval(config, checkpoint, checkpoint_step)
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    sampler = Sampler(model, tokenizer, mesh=mesh, prompt_buckets=prompt_buckets(config))
    load_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    rows, metrics, params = score_held_out(
        sampler, task, samples, config, num_samples=num_samples, temperature=chosen,
        batch_size=batch_size, description=f"eval {task.name}", quiet=quiet,
    )  # fmt: skip
    gen_s = time.perf_counter() - t1
    metrics = {
        "task": task.name,
        "split": split,
        "reward": eval_reward(config, task.reward)[0],
        **source,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "seed": config.seed,
        "held_out": report.to_json(),
        **metrics,
        "time": {
            "load_s": round(load_s, 2),
            "generate_and_score_s": round(gen_s, 2),
            "samples_per_s": round(len(rows) / max(gen_s, 1e-9), 2),
        },
        "hardware": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "jax_version": jax.__version__,
    }
    if excluded is not None:
        metrics["without_excluded"] = {
            "source": str(exclude),
            **without_items(rows, excluded, reward=metrics["reward"],
                            max_new_tokens=eval_max_new_tokens(config), seed=config.seed),
        }  # fmt: skip
    out = write_run(out, rows, metrics)
    return EvalResult(out=out, metrics=metrics, rows=rows)


def describe(metrics: dict[str, Any]) -> str:
    """A few lines for the terminal: accuracy with its interval, pass@k, extra scores, lengths, the
    truncated share, accuracy among finished answers, and the budget within which 95% of answers finish."""
    acc = metrics["accuracy"]
    pct = lambda x: "nan" if x is None or math.isnan(x) else f"{100 * x:.1f}%"
    lines = [
        f"{metrics['task']} / {metrics['split']}: {metrics['num_items']} items x "
        f"{metrics['samples_per_item']} sample(s), temperature {metrics['temperature']}",
        f"accuracy   {pct(acc['value'])}  95% CI [{pct(acc['ci_low'])}, {pct(acc['ci_high'])}]  "
        f"({acc['method']})",
        f"mean reward {metrics['mean_reward']['value']:.3f}",
    ]
    for variant in VARIANTS:
        if f"accuracy_{variant}" in metrics:  # the code rewards' verdict on the whole code block
            v = metrics[f"accuracy_{variant}"]
            interval = f"95% CI [{pct(v['ci_low'])}, {pct(v['ci_high'])}]"
            lines.insert(
                2, f"{variant:<10} {pct(v['value'])}  {interval}  (the whole code block as the program)"
            )
    for k, v in metrics.get("pass_at_k", {}).items():
        lines.append(f"pass@{k:<4} {pct(v)}")
    for name in EXTRA_REWARDS:
        if name in metrics:
            lines.append(f"{name:<10} {metrics[name]['value']:.3f}")
    if "without_excluded" in metrics:
        w = metrics["without_excluded"]
        lines.append(
            f"without the {len(w['excluded_ids'])} excluded items ({w['source']}): "
            f"{pct(w['accuracy']['value'])}  95% CI [{pct(w['accuracy']['ci_low'])}, "
            f"{pct(w['accuracy']['ci_high'])}]  (n={w['num_items']})"
        )
    for level, v in metrics.get("by_level", {}).items():
        lines.append(f"  {level:<10} {pct(v['value'])} (n={v['n']})")
    if "response_tokens" in metrics:
        budget = metrics.get("max_new_tokens")
        at = f" by the budget of {budget} tokens" if budget else ""
        lines.append(
            f"response tokens: mean {metrics['response_tokens']['mean']:.0f}, "
            f"truncated {pct(metrics['truncation_rate'])}{at}"
        )
    if "accuracy_finished" in metrics:
        done = metrics["accuracy_finished"]
        if done["n"]:
            lines.append(f"accuracy among finished answers {pct(done['value'])} (n={done['n']} items)")
        else:
            lines.append("accuracy among finished answers: none finished within the budget")
    if "tokens_for_95_finished" in metrics:  # what sampling.eval_max_new_tokens should be at least
        needed = metrics["tokens_for_95_finished"]
        lines.append(
            f"95% of answers finish within {needed} tokens"
            if needed is not None
            else "fewer than 95% of answers finish within the budget: raise sampling.eval_max_new_tokens "
            "to measure the budget they need"
        )
    return "\n".join(lines)
