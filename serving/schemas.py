"""OpenAI request and response bodies (completions, chat completions, models, errors) as pydantic models.

Requests are validated here, once, at the edge: a wrong type, an empty message list or a value out of
range becomes a 400 whose message names the field, before anything reaches the batcher. Limits that
depend on the server's flags (max_tokens, prompt length, n) are checked in `serving.app`, which knows
them. Unknown fields are rejected (as OpenAI does), so a misspelt `temprature` is not silently ignored.

Every integer has a range the code after it can hold (a seed is a signed 64-bit integer, top_k fits an
int32), floats must be finite, and every string must be encodable as UTF-8: JSON's "\ud800" escape gives
Python a lone surrogate, which the tokenizer (and any UTF-8 output) cannot take. Such values are the
client's mistake and get a 400, never a 500 from deep inside the sampler.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from rlvr_jax.serving.config import (  # OpenAI's seed is a signed 64-bit integer
    MAX_LOGPROBS,
    MAX_SEED,
    MIN_SEED,
)

# OpenAI's own ranges.
Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
TopP = Annotated[float, Field(gt=0.0, le=1.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
MAX_STOP_STRINGS = 4
MAX_STOP_CHARS = 256  # a stop string is searched for in every decoded chunk
MAX_N = 1024  # a static ceiling; the server's own limit (--max_batch) is checked in serving.app
MAX_TOP_K = 2**31 - 1  # the sampler keeps top_k in an int32; any k >= the vocabulary means "no filter"
MAX_ID_CHARS = 256  # response ids, model names, user tags: short identifiers


def _encodable(text: str) -> str:
    """Refuses text that UTF-8 cannot encode (a lone surrogate from a JSON "\ud800" escape)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise PydanticCustomError(
            "invalid_text",
            "is not valid Unicode text: it holds an unpaired surrogate ({char}) at character {at}, which "
            "cannot be encoded as UTF-8; send well-formed text",
            {"char": ascii(e.object[e.start])[1:-1], "at": e.start},
        ) from None
    return text


Text = Annotated[str, AfterValidator(_encodable)]
ShortText = Annotated[str, Field(max_length=MAX_ID_CHARS), AfterValidator(_encodable)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class StreamOptions(_Strict):
    include_usage: bool = False


class _SamplingFields(_Strict):
    """The fields both endpoints share."""

    model: ShortText = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=0)  # 0: completions with echo only (scoring)
    temperature: Temperature = 1.0
    top_p: TopP = 1.0
    top_k: int = Field(default=0, ge=0, le=MAX_TOP_K)  # an extension many servers accept; 0 disables it
    n: int = Field(default=1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Text | list[Text] | None = None
    seed: int | None = Field(default=None, ge=MIN_SEED, le=MAX_SEED)
    user: ShortText | None = None
    # Accepted so that clients sending OpenAI's defaults work; any other value is refused in `check`.
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, v: str | list[str] | None) -> list[str] | None:
        if v is None:
            return None
        stops = [v] if isinstance(v, str) else v
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings are allowed, got {len(stops)}")
        if any(s == "" for s in stops):
            raise ValueError("stop strings must not be empty")
        if any(len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"a stop string may have at most {MAX_STOP_CHARS} characters")
        return stops or None

    def unsupported(self) -> str | None:
        """A message for a recognised field whose value this server cannot honour, else None."""
        if self.presence_penalty or self.frequency_penalty:
            return "presence_penalty and frequency_penalty are not supported by this server; leave them at 0"
        if self.stream_options is not None and not self.stream:
            return "stream_options is only allowed when stream is true"
        return None

    @property
    def stop_strings(self) -> list[str]:
        return list(self.stop or [])  # normalised to a list by the validator


# How many alternatives a request may ask for per token: OpenAI's chat limit (20) for both APIs (OpenAI's
# completions allow 5, vLLM as many as its --max-logprobs, 20 by default); the server's --max_logprobs
# may allow fewer (checked in `serving.app`). Strict: `true` is not a number of alternatives.
Logprobs = Annotated[int, Field(ge=0, le=MAX_LOGPROBS, strict=True)]


class CompletionRequest(_SamplingFields):
    """POST /v1/completions. `prompt`: a string, a list of strings, token ids, or a list of token-id lists.

    logprobs: k returns every token's log-prob and its k most probable alternatives (0: the chosen tokens'
    only); with `echo` the prompt's tokens too, and then max_tokens may be 0 (score the prompt only).
    """

    prompt: Text | list[Text] | list[int] | list[list[int]]
    echo: bool = False
    suffix: Text | None = None
    logprobs: Logprobs | None = None

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, v: Any) -> Any:
        if isinstance(v, list) and not v:
            raise ValueError("prompt must not be an empty list")
        if isinstance(v, list) and any(isinstance(p, list) and not p for p in v):
            raise ValueError("a token-id prompt must not be empty")
        return v

    def unsupported(self) -> str | None:
        if self.max_tokens == 0 and not self.echo:
            return "max_tokens 0 generates nothing; it is only allowed with echo: true (to score the prompt)"
        if self.suffix:
            return "suffix (insertion) is not supported by this server; leave it unset"
        return super().unsupported()


class TextPart(_Strict):
    type: Literal["text"]
    text: Text


class ChatMessage(BaseModel):
    """One message. Content parts other than text (images, audio) are refused with a message."""

    model_config = ConfigDict(extra="ignore")  # name, tool_call_id, ... are ignored, not refused

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_SamplingFields):
    """POST /v1/chat/completions. logprobs: true returns the generated tokens' log-probs, top_logprobs: k
    (needs logprobs: true) their k most probable alternatives too."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)  # OpenAI's newer name for max_tokens
    logprobs: Annotated[bool, Field(strict=True)] | None = None
    top_logprobs: Logprobs | None = None

    def unsupported(self) -> str | None:
        if self.max_tokens == 0:
            return "max_tokens must be at least 1 for chat completions"
        if self.top_logprobs is not None and not self.logprobs:
            return "top_logprobs needs logprobs: true; set logprobs to true, or leave top_logprobs unset"
        return super().unsupported()

    def template_messages(self) -> list[dict[str, str]]:
        """Messages as the chat template expects them ('developer' is OpenAI's new name for 'system')."""
        return [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in self.messages
        ]

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class FeedbackRequest(_Strict):
    """POST /v1/feedback: the verified outcome of an earlier completion, for pass-rate drift.

    `id` is the completion's response id; `index` which of its prompts (0 for chat and one-prompt
    completions). `outcome`: 1 / 0 (true / false) for pass / fail, or a reward in [0, 1].
    """

    id: ShortText = Field(min_length=1)
    index: int = Field(default=0, ge=0, le=MAX_N)
    outcome: float = Field(ge=0.0, le=1.0)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


FinishReason = Literal["stop", "length"] | None


class CompletionLogprobs(BaseModel):
    """The completions API's log-probs of a choice: one entry per token of its text (the prompt's first when
    echoed, whose log-prob and alternatives are null). `top_logprobs` maps the k best tokens (and the
    chosen one) to their log-probs; `text_offset` is where each token starts in the text, in characters."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    """The chat API's log-probs of a choice: one entry per generated token of its message."""

    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReason


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: FinishReason


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "rlvr-jax"
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())
