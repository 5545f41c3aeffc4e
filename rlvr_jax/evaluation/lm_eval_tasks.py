"""lm-evaluation-harness tasks built from this project's own tasks, offline, to run against the server.

`write_tasks` writes a folder for `lm_eval --include_path`: for each task a local JSON-lines file (the
first `limit` held-out items, prompts rendered by `rlvr_jax.data` exactly as `scripts/evaluate.py` renders
them with `data.chat=False`) and a task YAML that reads it (`dataset_path: json`, so nothing is
downloaded), plus a small module the YAMLs call (`rlvr_lm_eval.py`, which imports this one):

- `rlvr_gsm8k` (generate_until): greedy, `max_gen_toks` new tokens, no stop string but the model's own stop
  token, scored by the task's reward (`numeric` for GSM8K) through `score_generation`: the rule
  `scripts/evaluate.py` applies, so per-item results agree with it. One difference: lm-eval does not say
  whether a completion ended by itself or was cut off by the token budget, so the reward sees
  `finished=None` (no answer from a final "= N" line, no trimming of a number the budget may have cut).
- `rlvr_sst2` (multiple_choice): log-likelihood of " negative" / " positive" after the prompt
  ("Review: ...\\nSentiment (positive or negative):"); `acc` is the share where the gold label's is higher.
  It needs the server's `echo` + `logprobs` (prompt scoring).

lm-eval's `local-completions` model needs the model's tokenizer as a Hugging Face folder (to count context
tokens for log-likelihoods); `save_tokenizer` writes one for any model source (a GGUF file included).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rlvr_jax.data import get_task
from rlvr_jax.evaluation.metrics import PASS_THRESHOLD
from rlvr_jax.rewards.base import get_reward

TASKS = ("gsm8k", "sst2")
SHIM = "rlvr_lm_eval"  # the module next to the YAMLs that their `!function` tags name
SENTIMENT_CHOICES = ("negative", "positive")  # label 0, label 1; lm-eval puts a space before each


def doc_prompt(doc: Mapping[str, Any]) -> str:
    """The prompt as `rlvr_jax.data` rendered it (lm-eval's `doc_to_text`)."""
    return str(doc["prompt"])


def score_generation(doc: Mapping[str, Any], results: Sequence[str]) -> dict[str, float]:
    """lm-eval's `process_results` for a generation: the item's reward (`doc["reward"]`), pass or fail
    as evaluation counts it (reward >= PASS_THRESHOLD)."""
    sample = {**doc, "finished": None}  # lm-eval does not report why a completion ended
    reward = float(get_reward(doc["reward"])([results[0]], [sample]).scores[0])
    return {"acc": float(reward >= PASS_THRESHOLD), "reward": reward}


def _generate_yaml(name: str, data: Path, max_gen_toks: int) -> str:
    return f"""task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {json.dumps(str(data))}
test_split: test
output_type: generate_until
doc_to_text: !function {SHIM}.doc_prompt
doc_to_target: answer
process_results: !function {SHIM}.score_generation
num_fewshot: 0
generation_kwargs:
  until: []
  do_sample: false
  temperature: 0.0
  max_gen_toks: {int(max_gen_toks)}
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: reward
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def _choice_yaml(name: str, data: Path) -> str:
    return f"""task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {json.dumps(str(data))}
test_split: test
output_type: multiple_choice
doc_to_text: !function {SHIM}.doc_prompt
doc_to_target: label
doc_to_choice: {json.dumps(list(SENTIMENT_CHOICES))}
num_fewshot: 0
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def task_items(task: str, data_dir: str | Path, limit: int) -> list[dict[str, Any]]:
    """The first `limit` held-out items of a task, as `scripts/evaluate.py --split=test` loads them with
    `data.chat=False` (plain prompts), reduced to what the lm-eval task reads."""
    data_dir = Path(data_dir)
    items = get_task(task).load("test", data_dir / task, chat=False, limit=limit)
    if task == "gsm8k":
        return [
            {"id": s["id"], "prompt": s["prompt"], "answer": s["answer"], "reward": "numeric"} for s in items
        ]
    if task == "sst2":
        return [{"id": s["id"], "prompt": s["prompt"], "label": int(s["label"])} for s in items]
    raise ValueError(f"no lm-eval task for {task!r}; these are built: {', '.join(TASKS)}")


def write_tasks(
    out: str | Path, data_dir: str | Path, *, limit: int, max_gen_toks: int, tasks: Sequence[str] = TASKS
) -> list[str]:
    """Writes the task folder (data, YAMLs, the shim module); returns the lm-eval task names."""
    if limit < 1 or max_gen_toks < 1:
        raise ValueError(f"limit and max_gen_toks must be >= 1, got {limit} and {max_gen_toks}")
    out = Path(out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for task in tasks:
        name = f"rlvr_{task}"
        data = out / f"{name}.jsonl"
        data.write_text("".join(json.dumps(item) + "\n" for item in task_items(task, data_dir, limit)))
        yaml = _choice_yaml(name, data) if task == "sst2" else _generate_yaml(name, data, max_gen_toks)
        (out / f"{name}.yaml").write_text(yaml)
        names.append(name)
    (out / f"{SHIM}.py").write_text(
        '"""Called by the task YAMLs here; the functions are in rlvr_jax.evaluation.lm_eval_tasks."""\n'
        "from rlvr_jax.evaluation.lm_eval_tasks import doc_prompt, score_generation  # noqa: F401\n"
    )
    return names


def save_tokenizer(model: str | Path, out: str | Path) -> Path:
    """The model's tokenizer as a Hugging Face folder (for lm-eval's `tokenizer=`): from a hub id, an HF
    folder, a GGUF file, or a training workdir (its base model's)."""
    from rlvr_jax.evaluation.evaluate import is_training_run, resolve_checkpoint
    from rlvr_jax.weights.loader import load_tokenizer, source_kind

    source = str(model)
    if is_training_run(source):
        folder, _ = resolve_checkpoint(source)
        source = json.loads((folder.parent / "config.json").read_text())["model"]["path"]
    out = Path(out).expanduser().resolve()
    load_tokenizer(source, kind=source_kind(source)).save(out)
    return out
