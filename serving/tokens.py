"""Token ids as the strings and bytes that OpenAI's `logprobs` fields show.

A token is not always a whole character: byte-level BPE (GPT-2, Qwen, SmolLM2) and SentencePiece with
byte fallback (Llama, Gemma) split rare characters into single UTF-8 bytes, so `decode([id])` alone would
give U+FFFD for such a token and lose its bytes. `TokenTexts` recovers each token's exact bytes from the
vocabulary instead:
- byte-level BPE: every character of the vocabulary string stands for one byte (GPT-2's table);
- SentencePiece: "<0xNN>" is the byte NN, "▁" is a space;
- added tokens (special or not) are their own UTF-8 text;
- anything else: the UTF-8 of `decode([id])`.

The `token` string is those bytes as UTF-8 text, or, when they are not valid UTF-8 on their own (part of a
character), "bytes:" and their escapes (e.g. "bytes:\\xe6\\x97"), OpenAI's convention; the chat format's
`bytes` field always has the bytes. Special tokens are skipped in the response text, so they add nothing
to `text_offset` (`visible_chars`).
"""

from __future__ import annotations

import functools
import json
from typing import Any

_BYTE_FALLBACK_PREFIX, _SPIECE_SPACE = "<0x", "\u2581"


@functools.cache
def _byte_level_table() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte, inverted: character -> byte."""
    printable = {
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    }
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def _decoder_types(hf: Any) -> set[str]:
    """The decoder step names of a fast tokenizer ("ByteLevel", "ByteFallback", "Metaspace", ...)."""
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        return set()
    decoder = json.loads(backend.to_str()).get("decoder") or {}
    steps = decoder.get("decoders", [decoder]) if decoder.get("type") == "Sequence" else [decoder]
    return {str(step.get("type")) for step in steps}


class TokenTexts:
    """Token id -> (token string, bytes) for the logprobs fields; cached, since the same ids recur."""

    def __init__(self, hf_tokenizer: Any):
        self.hf = hf_tokenizer
        kinds = _decoder_types(hf_tokenizer)
        self.byte_level = "ByteLevel" in kinds
        self.byte_fallback = "ByteFallback" in kinds or "Metaspace" in kinds
        added = getattr(hf_tokenizer, "added_tokens_decoder", {}) or {}
        self.added = {int(i): str(getattr(t, "content", t)) for i, t in added.items()}
        self.special = frozenset(int(i) for i in getattr(hf_tokenizer, "all_special_ids", ()))

    @functools.lru_cache(maxsize=1 << 16)  # noqa: B019  # one instance per server, kept for its lifetime
    def token_bytes(self, token_id: int) -> bytes:
        if token_id in self.added:
            return self.added[token_id].encode("utf-8")
        piece = self.hf.convert_ids_to_tokens(int(token_id))
        if isinstance(piece, str) and self.byte_level:
            table = _byte_level_table()
            if all(ch in table for ch in piece):
                return bytes(table[ch] for ch in piece)
        if isinstance(piece, str) and self.byte_fallback:
            if piece.startswith(_BYTE_FALLBACK_PREFIX) and piece.endswith(">") and len(piece) == 6:
                return bytes([int(piece[3:5], 16)])
            return piece.replace(_SPIECE_SPACE, " ").encode("utf-8")
        return self.hf.decode([int(token_id)]).encode("utf-8")

    def token(self, token_id: int) -> str:
        """The token as text, or "bytes:\\x.." when its bytes are only part of a character."""
        raw = self.token_bytes(token_id)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)

    def visible(self, token_id: int) -> bool:
        """False for special tokens, which the response text leaves out."""
        return token_id not in self.special
