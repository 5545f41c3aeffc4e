"""Response bodies of one request, whole or as server-sent-event chunks, in OpenAI's shapes."""

from __future__ import annotations

import json
from typing import Any

from rlvr_jax.serving import schemas
from rlvr_jax.serving.choices import Choices


def sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


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

    def whole(self) -> dict[str, Any]:
        reasons, c = self.choices.finish_reasons, self.choices
        common = dict(id=self.id, created=self.created, model=self.model, usage=self.usage())
        if self.chat:
            return schemas.ChatCompletionResponse(
                choices=[
                    schemas.ChatChoice(
                        index=i, message=schemas.AssistantMessage(content=c.text(i)), finish_reason=r
                    )
                    for i, r in enumerate(reasons)
                ], **common,
            ).model_dump(mode="json")  # fmt: skip
        return schemas.CompletionResponse(
            choices=[
                schemas.CompletionChoice(index=i, text=c.text(i), finish_reason=r)
                for i, r in enumerate(reasons)
            ],
            **common,
        ).model_dump(mode="json")

    def chunk(self, index: int, content: Any, finish_reason: str | None) -> dict[str, Any]:
        """One chunk: `content` is the chat delta dict, or the text for a text completion."""
        if self.chat:
            choice = {"index": index, "delta": content, "logprobs": None, "finish_reason": finish_reason}
        else:
            choice = {"index": index, "text": content, "logprobs": None, "finish_reason": finish_reason}
        return {
            "id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created, "model": self.model, "choices": [choice],
        }  # fmt: skip

    def usage_chunk(self) -> dict[str, Any]:
        body = self.chunk(0, {}, None)
        body["choices"] = []
        body["usage"] = self.usage().model_dump()
        return body
