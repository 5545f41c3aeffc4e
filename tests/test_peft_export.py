"""GPT-2's LoRA adapters out as a PEFT adapter directory: its q / k / v share one fused c_attn module, so
the three adapters become one of rank n * r with a block-diagonal B (rlvr_jax.weights.peft_export); PEFT
must load it onto the transformers GPT-2 and compute our adapter model's logits, whichever of q / k / v and
of the two c_proj modules carry adapters."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

from tests.test_lora import _randomise_b


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    from tests.test_model_parity import _make_hf_model

    path = tmp_path_factory.mktemp("gpt2")
    _make_hf_model("gpt2", path)
    return path


@pytest.mark.parametrize(
    "targets, modules",
    [
        (("q", "k", "v", "o", "up", "down"), ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]),
        (("k", "o"), ["attn.c_attn", "attn.c_proj"]),  # c_proj of the attention, not the MLP's
        (("v", "down"), ["attn.c_attn", "mlp.c_proj"]),
    ],
)
def test_peft_loads_gpt2_adapters_with_a_fused_qkv(gpt2_dir, tmp_path, targets, modules):
    import peft  # a dev dependency (setup.py): missing, this test fails rather than skips
    import transformers

    from rlvr_jax.weights import export_peft, load_policy
    from tests.test_model_parity import TOL, _batch, _hf_logits

    rank, alpha = 2, 8.0
    options = {"rank": rank, "alpha": alpha, "targets": targets}
    model, _ = load_policy(gpt2_dir, dtype="float32", param_dtype="float32", lora_options=options, seed=4)
    model = _randomise_b(model, scale=0.3)
    out = export_peft(model, tmp_path / "adapter", base_model=str(gpt2_dir))
    config = json.loads((out / "adapter_config.json").read_text())
    n = len([t for t in targets if t in ("q", "k", "v")])
    assert config["rank_pattern"] == {"c_attn": n * rank} and config["alpha_pattern"] == {"c_attn": n * alpha}

    base = transformers.AutoModelForCausalLM.from_pretrained(gpt2_dir, attn_implementation="eager")
    peft_model = peft.PeftModel.from_pretrained(base, out).eval()
    adapted = sorted({name.split(".h.0.")[1].removesuffix(".lora_A") for name, _ in
                      peft_model.named_modules() if ".h.0." in name and name.endswith("lora_A")})  # fmt: skip
    assert adapted == sorted(modules)
    ids, mask = _batch(seed=5)
    ours = np.asarray(model(jnp.asarray(ids), mask=jnp.asarray(mask))[0])
    diff = np.abs(_hf_logits(peft_model, ids, mask) - ours)[mask].max()
    assert diff < TOL, f"PEFT's GPT-2 adapter model differs from ours by {diff}"
    plain = transformers.AutoModelForCausalLM.from_pretrained(gpt2_dir, attn_implementation="eager").eval()
    assert np.abs(_hf_logits(plain, ids, mask) - ours)[mask].max() > 0.1  # the adapters matter
