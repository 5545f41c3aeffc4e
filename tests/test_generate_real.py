"""The real SmolLM2-135M-Instruct GGUF: our sampler's greedy tokens equal transformers' greedy tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlvr_jax.generate import Sampler, SamplingParams
from rlvr_jax.weights import load_model
from tests.hf_reference import transformers_gguf_model, transformers_gguf_tokenizer

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "What is 12 times 7?",
    "Name three primary colors.",
    "Explain what a prime number is in one sentence.",
    "Translate 'good morning' into Spanish.",
    "Who wrote Romeo and Juliet?",
    "List the first five even numbers.",
]


@pytest.fixture(scope="module")
def ours(smollm_gguf):
    return load_model(smollm_gguf)


@pytest.fixture(scope="module")
def reference(smollm_gguf):
    """transformers' own GGUF loader: its float32 model and its tokenizer."""
    return transformers_gguf_model(smollm_gguf), transformers_gguf_tokenizer(smollm_gguf)


def _hf_greedy(reference, prompt: str, n: int, stop_ids) -> list[int]:
    model, tokenizer = reference
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, do_sample=False, eos_token_id=list(stop_ids))
    return out[0, ids.shape[1] :].tolist()


def test_capital_of_france_greedy_16_tokens_match_transformers(ours, reference):
    sampler = Sampler(ours.model, ours.tokenizer)
    [[completion]] = sampler.complete([PROMPTS[0]], SamplingParams(temperature=0.0, max_new_tokens=16))
    assert "Paris" in completion.text
    expected = _hf_greedy(reference, PROMPTS[0], 16, ours.tokenizer.stop_ids)
    assert completion.token_ids == expected


def test_eight_chat_prompts_32_tokens_match_transformers_in_one_padded_batch(ours, reference):
    sampler = Sampler(ours.model, ours.tokenizer)
    n = 32
    results = sampler.complete(PROMPTS, SamplingParams(temperature=0.0, max_new_tokens=n))
    for prompt, [completion] in zip(PROMPTS, results, strict=True):
        expected = _hf_greedy(reference, prompt, n, ours.tokenizer.stop_ids)
        assert completion.token_ids == expected, f"{prompt!r}: ours {completion.token_ids} vs {expected}"
        assert completion.finished == (expected[-1] in ours.tokenizer.stop_ids)


def test_logits_match_transformers_on_the_real_model(ours, reference):
    model, tokenizer = reference
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPTS[2]}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = model(ids).logits.float().numpy()
    got, _ = ours.model(ids.numpy().astype(np.int32))
    diff = np.abs(np.asarray(got) - expected).max()
    assert diff < 1e-3, f"max |logits diff| {diff}"
