"""lm-evaluation-harness against the server, offline: `lm_eval --model local-completions` on local tasks.

A tiny random model (SmolLM2's tokenizer, sharp logits) is served in-process by uvicorn; `lm_eval` runs as
a subprocess: the command `scripts/lm_eval_tasks.py` prints, on the tasks it writes (3 GSM8K items,
generate_until; 3 SST-2 items, multiple_choice by log-likelihood). GSM8K: every item's completion, reward
and pass must equal what `scripts/evaluate.py`'s function gets with the same prompts (data.chat=False),
greedy, same budget. SST-2: every log-likelihood must equal the sum of the continuation's log-probs from
one forward pass of the model, and lm-eval's accuracy the one those give.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import shlex
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rlvr_jax.evaluation.evaluate import evaluate
from rlvr_jax.models import ModelConfig, init_model
from rlvr_jax.weights import export_hf
from rlvr_jax.weights.loader import load_model, load_tokenizer
from tests.conftest import REPO

ITEMS, MAX_GEN_TOKS = 3, 12  # items per task, new tokens per GSM8K completion


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, smollm_gguf) -> Path:
    """A tiny random llama with SmolLM2's tokenizer, saved as an HF folder (what both sides load)."""
    tokenizer = load_tokenizer(smollm_gguf)
    cfg = ModelConfig(
        family="llama", vocab_size=tokenizer.vocab_size, hidden_size=32, num_layers=2, num_heads=4,
        num_kv_heads=2, head_dim=8, intermediate_size=64, eos_token_ids=tokenizer.stop_ids[:1],
    )  # fmt: skip
    model = init_model(cfg, seed=4)
    model.lm_head[...] = model.lm_head[...] * 50.0  # sharp: greedy choices are clear-cut, no near ties
    out = tmp_path_factory.mktemp("lm_eval_model") / "tiny"
    export_hf(model, out, tokenizer)
    return out


@pytest.fixture(scope="module")
def server_url(model_dir) -> str:
    """scripts/serve.py's app and uvicorn server, in a thread of this process."""
    from rlvr_jax.serving.app import create_app
    from rlvr_jax.serving.config import ServerConfig
    from rlvr_jax.serving.engine import Engine
    from rlvr_jax.serving.server import uvicorn_server

    config = ServerConfig(
        model_name="tiny", max_batch=1, prompt_buckets=(256,), new_token_buckets=(16,), max_logprobs=5
    )

    def load() -> Engine:
        loaded = load_model(model_dir)
        return Engine.from_loaded(loaded.model, loaded.tokenizer, config)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn_server(
        create_app(config, load), config, host="127.0.0.1", port=port, log_level="warning"
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not become ready"
        try:
            if httpx.get(f"{url}/ready").status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    yield url
    server.should_exit = True
    thread.join(60)


@pytest.fixture(scope="module")
def lm_eval_run(server_url, model_dir, shared_dir, tmp_path_factory) -> dict[str, list[dict]]:
    """Runs the command scripts/lm_eval_tasks.py prints; returns each task's logged samples."""
    out = tmp_path_factory.mktemp("lm_eval")
    env = {
        **os.environ, "PYTHONPATH": str(REPO), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(out / "hf_datasets"), "TOKENIZERS_PARALLELISM": "false",
    }  # fmt: skip
    spec = importlib.util.spec_from_file_location(
        "lm_eval_tasks_script", REPO / "scripts" / "lm_eval_tasks.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        script.main([
            "--model", str(model_dir), "--data", str(shared_dir / "data"), "--out", str(out),
            "--limit", str(ITEMS), "--max_gen_toks", str(MAX_GEN_TOKS), "--url", server_url,
            "--served_model_name", "tiny",
        ])  # fmt: skip
    command = shlex.split(printed.getvalue().strip().splitlines()[-1])
    assert command[:5] == [
        "HF_DATASETS_OFFLINE=1",
        "HF_HUB_OFFLINE=1",
        "lm_eval",
        "--model",
        "local-completions",
    ]
    ran = subprocess.run(
        [sys.executable, "-m", "lm_eval", *command[3:]], capture_output=True, text=True, env=env, timeout=600
    )
    assert ran.returncode == 0, ran.stderr[-4000:]
    samples = {}
    for task in ("rlvr_gsm8k", "rlvr_sst2"):
        [path] = (out / "results").rglob(f"samples_{task}_*.jsonl")
        samples[task] = [json.loads(line) for line in path.read_text().splitlines()]
    [results] = (out / "results").rglob("results_*.json")
    samples["results"] = json.loads(results.read_text())["results"]
    return samples


def test_lm_eval_gsm8k_matches_scripts_evaluate_item_by_item(lm_eval_run, model_dir, shared_dir, tmp_path):
    sys.path.insert(0, str(REPO))
    from configs.gsm8k import get_config

    config = get_config()
    config.model.path = str(model_dir)
    config.model.dtype = config.model.param_dtype = "float32"
    config.model.remat = "none"
    config.data.path = str(shared_dir / "data" / "gsm8k")
    config.data.chat = False
    config.sampling.max_new_tokens = config.sampling.eval_max_new_tokens = MAX_GEN_TOKS
    ours = evaluate(config, tmp_path / "eval", split="test", limit=ITEMS, quiet=True)
    by_id = {row["id"]: row for row in ours.rows}
    assert all(row["completion"].strip() for row in ours.rows)  # something to compare, item by item
    theirs = lm_eval_run["rlvr_gsm8k"]
    assert len(theirs) == ITEMS
    for sample in theirs:
        row = by_id[sample["doc"]["id"]]
        assert sample["filtered_resps"][0] == row["completion"]  # the same greedy tokens, the same text
        assert sample["reward"] == row["reward"] and sample["acc"] == float(row["passed"])
    accuracy = lm_eval_run["results"]["rlvr_gsm8k"]["acc,none"]
    assert accuracy == pytest.approx(np.mean([row["passed"] for row in ours.rows]))


def test_lm_eval_multiple_choice_loglikelihoods_equal_a_forward_pass(lm_eval_run, model_dir):
    loaded = load_model(model_dir)
    tok = loaded.tokenizer
    graphdef, params = nnx.split(loaded.model)

    @jax.jit
    def log_softmax(ids):  # one shape for every sequence (padded on the right: the model is causal)
        logits, _ = nnx.merge(graphdef, params)(ids)
        return jax.nn.log_softmax(logits[0].astype(jnp.float32), axis=-1)

    choices = [" negative", " positive"]
    samples = lm_eval_run["rlvr_sst2"]
    assert len(samples) == ITEMS
    correct = []
    for sample in samples:
        context = sample["doc"]["prompt"]
        lls = []
        for choice in choices:  # lm-eval's split: the context's tokens, then the rest of the whole's
            ctx = tok.encode(context, chat_formatted=True)
            whole = tok.encode(context + choice, chat_formatted=True)
            padded = np.zeros((1, 256), np.int32)
            padded[0, : len(whole)] = whole
            lp = np.asarray(log_softmax(padded))
            lls.append(float(sum(lp[t - 1, whole[t]] for t in range(len(ctx), len(whole)))))
        theirs = [float(resp[0]) for resp in sample["filtered_resps"]]
        np.testing.assert_allclose(theirs, lls, atol=2e-3)
        assert sample["acc"] == float(int(np.argmax(lls)) == sample["doc"]["label"])
        correct.append(sample["acc"])
    assert lm_eval_run["results"]["rlvr_sst2"]["acc,none"] == pytest.approx(np.mean(correct))
