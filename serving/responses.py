"""Response bodies of one request, whole or as server-sent-event chunks, in OpenAI's shapes.

Log-probs follow OpenAI's two formats: the completions API's parallel lists (`tokens`, `token_logprobs`,
`top_logprobs` as token -> log-prob maps that also hold the chosen token, `text_offset`), and the chat
API's `content` list of {token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}. A streamed chunk
carries the entries of the tokens whose text it carries (`serving.choices`). JSON has no -inf, so a
log-prob that underflowed is sent as -9999.0, as vLLM does.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from rlvr_jax.serving import schemas
from rlvr_jax.serving.choices import Choices, TokenLogprob

UNDERFLOW_LOGPROB = -9999.0


def sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _finite(logprob: float) -> float:
    return logprob if math.isfinite(logprob) else UNDERFLOW_LOGPROB


class Reply:
    """Builds the response bodies (whole or chunked) of one request, chat or text completion."""

    def __init__(self, model: str, chat: bool, choices: Choices, prompt_tokens: int):
        self.model, self.chat, self.choices, self.prompt_tokens = model, chat, choices, prompt_tokens
        self.id = schemas.new_id("chatcmpl" if chat else "cmpl")
        self.created = schemas.now()

    def usage(self) -> schemas.Usage:
        completion = sum(self.choices.completion_tokens)
        return schemas.Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=completion,
            total_tokens=self.prompt_tokens + completion,
        )

    def logprobs(self, entries: Sequence[TokenLogprob]) -> dict[str, Any] | None:
        """The `logprobs` object of a choice (or chunk) with these entries; None when none were asked."""
        texts = self.choices.token_texts
        if texts is None:
            return None
        if self.chat:
            content = []
            for e in entries:
                top = [
                    {"token": texts.token(t), "logprob": _finite(lp), "bytes": list(texts.token_bytes(t))}
                    for t, lp in e.top
                ]
                content.append(
                    {
                        "token": texts.token(e.token_id),
                        "logprob": _finite(e.logprob if e.logprob is not None else -math.inf),
                        "bytes": list(texts.token_bytes(e.token_id)),
                        "top_logprobs": top,
                    }
                )
            return {"content": content, "refusal": None}
        tops: list[dict[str, float] | None] = []
        for e in entries:
            if e.logprob is None:  # an echoed prompt's first token: no context, no distribution
                tops.append(None)
                continue
            alternatives: dict[str, float] = {}
            for t, lp in e.top:
                alternatives.setdefault(texts.token(t), _finite(lp))
            alternatives.setdefault(texts.token(e.token_id), _finite(e.logprob))  # OpenAI: up to k + 1
            tops.append(alternatives)
        return {
            "tokens": [texts.token(e.token_id) for e in entries],
            "token_logprobs": [None if e.logprob is None else _finite(e.logprob) for e in entries],
            "top_logprobs": tops,
            "text_offset": [e.offset for e in entries],
        }

    def whole(self) -> dict[str, Any]:
        reasons, c = self.choices.finish_reasons, self.choices
        common = dict(id=self.id, created=self.created, model=self.model, usage=self.usage())
        if self.chat:
            return schemas.ChatCompletionResponse(
                choices=[
                    schemas.ChatChoice(
                        index=i, message=schemas.AssistantMessage(content=c.text(i)),
                        logprobs=self.logprobs(c.entries[i]), finish_reason=r,
                    )
                    for i, r in enumerate(reasons)
                ], **common,
            ).model_dump(mode="json")  # fmt: skip
        return schemas.CompletionResponse(
            choices=[
                schemas.CompletionChoice(
                    index=i, text=c.text(i), logprobs=self.logprobs(c.entries[i]), finish_reason=r
                )
                for i, r in enumerate(reasons)
            ],
            **common,
        ).model_dump(mode="json")

    def chunk(
        self, index: int, content: Any, finish_reason: str | None, entries: Sequence[TokenLogprob] = ()
    ) -> dict[str, Any]:
        """One chunk: `content` is the chat delta dict, or the text for a text completion; `entries` the
        log-probs of the tokens it carries (its `logprobs` is null when the request asked for none, or for
        a chunk without tokens)."""
        logprobs = self.logprobs(entries) if entries else None
        if self.chat:
            choice = {"index": index, "delta": content, "logprobs": logprobs, "finish_reason": finish_reason}
        else:
            choice = {"index": index, "text": content, "logprobs": logprobs, "finish_reason": finish_reason}
        return {
            "id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created, "model": self.model, "choices": [choice],
        }  # fmt: skip

    def usage_chunk(self) -> dict[str, Any]:
        body = self.chunk(0, {}, None)
        body["choices"] = []
        body["usage"] = self.usage().model_dump()
        return body
