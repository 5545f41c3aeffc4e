"""Tokenizers, chat templates and stop tokens, wrapped once for the whole framework.

The sampler needs left-padded fixed-shape id arrays and a set of stop ids; rewards and evaluation need
text. `Tokenizer` is the single place that turns one into the other, so that chat formatting, BOS handling
and padding side are decided once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rlvr_jax.models.config import ModelConfig

# End-of-turn markers of common chat formats; when the vocabulary has one, generation stops on it too.
_END_OF_TURN = (
    "<|im_end|>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<|endoftext|>",
    "<|end|>",
    "</s>",
    "<end_of_turn>",
)

Message = dict[str, str]


class Tokenizer:
    """A transformers tokenizer plus the decisions the framework makes about it."""

    def __init__(self, hf_tokenizer: Any, config: ModelConfig | None = None, extra_eos: Sequence[int] = ()):
        self.hf = hf_tokenizer
        self.hf.padding_side = "left"
        ids: list[int] = []
        if config is not None:
            ids += list(config.eos_token_ids)
        ids += list(extra_eos)
        if self.hf.eos_token_id is not None:
            ids.append(int(self.hf.eos_token_id))
        vocab = self.hf.get_vocab()
        ids += [vocab[t] for t in _END_OF_TURN if t in vocab]
        self.stop_ids: tuple[int, ...] = tuple(dict.fromkeys(int(i) for i in ids))
        if not self.stop_ids:
            raise ValueError(
                "the tokenizer defines no EOS token and the config none either; set eos_token_id"
            )
        pad = self.hf.pad_token_id
        self.pad_id: int = int(pad) if pad is not None else self.stop_ids[0]

    @property
    def chat_template(self) -> str | None:
        return getattr(self.hf, "chat_template", None)

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    def format(self, prompt: str | Sequence[Message], chat: bool = True, system: str | None = None) -> str:
        """A prompt as the model should see it: through the chat template when `chat`, else as given."""
        if not chat:
            if not isinstance(prompt, str):
                raise ValueError("a list of messages needs chat=True (and a tokenizer with a chat template)")
            return prompt
        if not self.chat_template:
            raise ValueError(
                "this tokenizer has no chat template; pass chat=False (plain prompts) or use an instruct "
                "model whose tokenizer_config.json / GGUF carries one"
            )
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        if system is not None:
            messages = [{"role": "system", "content": system}, *messages]
        try:
            return self.hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as e:  # jinja2's TemplateError, raised by the template's own raise_exception
            if messages[0]["role"] != "system" or "system" not in str(e).lower() or len(messages) < 2:
                raise
        # Templates without a system role (Gemma 2's raises "System role not supported"): the system text
        # goes at the top of the first user turn, as Gemma 3's template does with a system message itself.
        first = {**messages[1], "content": f"{messages[0]['content']}\n\n{messages[1]['content']}"}
        return self.hf.apply_chat_template([first, *messages[2:]], tokenize=False, add_generation_prompt=True)

    def encode(self, text: str, chat_formatted: bool = False) -> list[int]:
        """Token ids; a chat-formatted string already carries its special tokens, so none are added."""
        return list(self.hf(text, add_special_tokens=not chat_formatted)["input_ids"])

    def encode_batch(
        self,
        texts: Sequence[str],
        chat_formatted: bool = False,
        length: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Left-padded [batch, length] int32 ids and a bool mask; `length` defaults to the longest row.

        Rows longer than `length` raise: silently cutting a prompt changes the task.
        """
        rows = [self.encode(t, chat_formatted) for t in texts]
        longest = max((len(r) for r in rows), default=0)
        length = length or longest
        if longest > length:
            raise ValueError(f"a prompt has {longest} tokens, more than the allowed {length}")
        ids = np.full((len(rows), length), self.pad_id, np.int32)
        mask = np.zeros((len(rows), length), bool)
        for i, r in enumerate(rows):
            if r:
                ids[i, length - len(r) :] = r
                mask[i, length - len(r) :] = True
        return ids, mask

    def decode(self, ids: Sequence[int] | np.ndarray, skip_special_tokens: bool = True) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def truncate_at_stop(self, ids: Sequence[int]) -> list[int]:
        """The ids before the first stop token (the stop token itself is not part of the answer)."""
        out = []
        for i in ids:
            if int(i) in self.stop_ids:
                break
            out.append(int(i))
        return out

    def save(self, directory: str | os.PathLike) -> list[Path]:
        """Writes the tokenizer's files (tokenizer.json, its config, the chat template); returns them."""
        return [Path(f) for f in self.hf.save_pretrained(str(directory))]


def generation_eos(directory: Path) -> list[int]:
    path = directory / "generation_config.json"
    if not path.is_file():
        return []
    eos = json.loads(path.read_text()).get("eos_token_id")
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, list) else [eos])]
