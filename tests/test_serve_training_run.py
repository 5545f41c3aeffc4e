"""`scripts/serve.py --model WORKDIR`: a training run's checkpoint served directly, on a 2-step tiny run.

The run is made as tests/test_trainer.py makes its tiny runs (its fixture and config, reused); the server
must load exactly the parameters that evaluation (`load_for_eval`) loads for the same step.
"""

from __future__ import annotations

import importlib.util
import time

import jax
import numpy as np
import pytest
from fastapi.testclient import TestClient
from flax import nnx

from rlvr_jax.cli import fail_cleanly
from rlvr_jax.evaluation.evaluate import load_for_eval
from rlvr_jax.generate import Sampler, SamplingParams
from rlvr_jax.serving.app import create_app
from rlvr_jax.serving.config import ServerConfig
from rlvr_jax.serving.engine import Engine
from tests.conftest import REPO
from tests.test_trainer import _tiny_config, tiny_model_dir  # noqa: F401  # the fixture, reused


@pytest.fixture(scope="module")
def serve_script():
    spec = importlib.util.spec_from_file_location("serve_script", REPO / "scripts" / "serve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _config(model_dir):
    overrides = {
        "train.steps": 2, "train.checkpoint_every": 1, "data.eval_limit": 2, "rl.prompts_per_step": 2,
        "rl.group_size": 2,
    }  # fmt: skip
    return _tiny_config(model_dir, **overrides)


@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory):  # noqa: F811
    from rlvr_jax.trainer import train

    workdir = tmp_path_factory.mktemp("serve_run") / "digits-run"
    train(_config(tiny_model_dir), workdir)
    return workdir


def _params(model) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model))]


def test_serve_loads_a_training_runs_checkpoint_by_step(run, tiny_model_dir, serve_script, capsys):  # noqa: F811
    assert serve_script.default_model_name(str(run)) == "digits-run"
    assert serve_script.default_model_name(str(run / "checkpoints")) == "digits-run"
    config = _config(tiny_model_dir)
    base, _, _ = load_for_eval(config)
    loaded = {}
    for step in ("1", None, "latest", "best"):
        model, tokenizer = serve_script.load_source(str(run), step, "float32")
        loaded[step] = _params(model)
        assert tokenizer.stop_ids  # the base model's tokenizer came with it
    evaluated, _, source = load_for_eval(config, run, 1)
    assert source["checkpoint_step"] == 1
    for a, b in zip(loaded["1"], _params(evaluated), strict=True):
        np.testing.assert_array_equal(a, b)
    last, _, _ = load_for_eval(config, run, 2)
    for a, b in zip(loaded[None], _params(last), strict=True):
        np.testing.assert_array_equal(a, b)
    assert all((a == b).all() for a, b in zip(loaded[None], loaded["latest"], strict=True))
    assert any((a != b).any() for a, b in zip(loaded["1"], loaded[None], strict=True))  # training moved it
    assert any((a != b).any() for a, b in zip(loaded["1"], _params(base), strict=True))
    model, _ = serve_script.load_source(str(run / "checkpoints"), "2", "bfloat16")
    assert {x.dtype for x in _params(model)} == {np.dtype("bfloat16")}

    # The checks that run before the server starts: a missing step, a step for a source without steps.
    for argv, says in [
        (["--model", str(run), "--checkpoint_step", "9"], "no checkpoint 9 in"),
        (["--model", str(run), "--checkpoint_step", "first"], "--checkpoint_step must be latest, best or"),
        (["--model", str(tiny_model_dir), "--checkpoint_step", "1"], "is not one (no checkpoints/ folder)"),
    ]:
        assert fail_cleanly(lambda argv=argv: serve_script.main(argv)) == 2
        assert says in capsys.readouterr().err


def test_the_server_answers_with_the_runs_latest_weights(run, tiny_model_dir, serve_script):  # noqa: F811
    config = ServerConfig(model_name="digits-run", max_batch=1, prompt_buckets=(32,), new_token_buckets=(4,))
    model, tokenizer = serve_script.load_source(str(run), None, "float32")
    with TestClient(create_app(config, lambda: Engine.from_loaded(model, tokenizer, config))) as client:
        deadline = time.monotonic() + 300
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, client.get("/ready").json()
            time.sleep(0.05)
        assert client.get("/v1/models").json()["data"][0]["id"] == "digits-run"
        body = {"model": "digits-run", "prompt": "Write some digits (3).", "max_tokens": 4, "temperature": 0}
        reply = client.post("/v1/completions", json=body)
    assert reply.status_code == 200, reply.text
    # What evaluation's loading of the last checkpoint generates, greedily, for the same prompt.
    evaluated, _, _ = load_for_eval(_config(tiny_model_dir), run, 2)
    [[completion]] = Sampler(evaluated, tokenizer, prompt_buckets=(32,), new_token_buckets=(4,)).complete(
        [body["prompt"]], SamplingParams(temperature=0.0, max_new_tokens=4), chat=False
    )
    assert reply.json()["choices"][0]["text"] == completion.text
