"""Chat formatting through the model's own template, including templates that have no system role."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer as RawTokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import PreTrainedTokenizerFast

from rlvr_jax.models.tokenizer import Tokenizer

# Gemma 2's template in miniature: no system role (it raises), turns marked <start_of_turn>/<end_of_turn>.
NO_SYSTEM = (
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
WITH_SYSTEM = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def _tokenizer(template: str) -> Tokenizer:
    vocab = {w: i for i, w in enumerate(["<pad>", "</s>", "<end_of_turn>", "Be", "brief", "Hi"])}
    raw = RawTokenizer(WordLevel(vocab, unk_token="<pad>"))
    raw.pre_tokenizer = Whitespace()
    hf = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", eos_token="</s>")
    hf.chat_template = template
    return Tokenizer(hf)


def test_a_template_without_a_system_role_gets_the_system_text_in_the_first_user_turn():
    text = _tokenizer(NO_SYSTEM).format("Hi", system="Be brief")
    assert text == "<start_of_turn>user\nBe brief\n\nHi<end_of_turn>\n<start_of_turn>model\n"


def test_a_template_with_a_system_role_keeps_it():
    assert (
        _tokenizer(WITH_SYSTEM).format("Hi", system="Be brief")
        == "<system>Be brief</s><user>Hi</s><assistant>"
    )


def test_other_template_errors_are_not_hidden():
    broken = "{{ raise_exception('Conversation roles must alternate') }}"
    with pytest.raises(Exception, match="alternate"):
        _tokenizer(broken).format("Hi", system="Be brief")
