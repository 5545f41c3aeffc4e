"""The server's settings, validated once at start-up.

Everything that bounds work or memory lives here (batch size, queue length, token limits, timeouts), so
that a request can be checked against plain numbers at the edge and a bad flag fails before the model
loads instead of after minutes of compilation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

# Four shapes by default: start-up compiles each one (seconds on a GPU, ~30 s each on a small CPU), so more
# buckets are a flag away (--prompt_buckets, --new_token_buckets) rather than a default cost.
DEFAULT_PROMPT_BUCKETS = (256, 1024)
DEFAULT_NEW_TOKEN_BUCKETS = (128, 512)
# Ceilings for settings, so that a typo (or inf) fails at start-up rather than in arithmetic later.
MAX_SETTING = 2**31 - 1
MAX_BATCH = 4096
MAX_TIMEOUT_S = 7 * 24 * 3600.0
MAX_BODY_BYTES = 1 << 30
MIN_SEED, MAX_SEED = -(2**63), 2**63 - 1
# The most alternatives per token a request may ask for (chat `top_logprobs`, completions `logprobs`):
# OpenAI's chat limit, which vLLM's default --max-logprobs also is (OpenAI's completions allow 5).
MAX_LOGPROBS = 20
ENGINES = ("continuous", "static")


def parse_buckets(text: str, flag: str) -> tuple[int, ...]:
    """'64,128' -> (64, 128); a message naming the flag when the list is not positive integers."""
    try:
        values = tuple(sorted({int(v) for v in text.split(",") if v.strip()}))
    except ValueError:
        raise ValueError(
            f"{flag} takes comma-separated positive integers such as 64,128; got {text!r}"
        ) from None
    if values and values[-1] > MAX_SETTING:
        raise ValueError(f"{flag}: {values[-1]} is too large (at most {MAX_SETTING})")
    if not values or values[0] < 1:
        raise ValueError(f"{flag} takes comma-separated positive integers such as 64,128; got {text!r}")
    return values


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """How the server batches, bounds and times requests.

    engine "continuous" (the default, `serving.slot_engine`): max_batch decode slots; requests join and
    leave between device calls of stream_chunk_tokens steps. It compiles one prefill per (batch, prompt)
    bucket, one decode per batch bucket and one more with top log-probs; the batch buckets are the
    prefill batch sizes and the slot prefixes decoded.
    engine "static" (`serving.engine`): a batch runs from prefill to its last token. Every (batch, prompt,
    new-token) bucket combination is compiled, so the product of the three bucket lists is the number of
    compilations (x2: prefill and decode chunk).
    Either way everything is compiled at start-up, before /ready.
    """

    model_name: str
    engine: str = "continuous"
    max_batch: int = 8
    batch_buckets: tuple[int, ...] = ()  # default: (max_batch,)
    max_queue: int = 64
    batch_wait_ms: float = 5.0
    prompt_buckets: tuple[int, ...] = DEFAULT_PROMPT_BUCKETS
    new_token_buckets: tuple[int, ...] = DEFAULT_NEW_TOKEN_BUCKETS
    max_prompt_tokens: int = 0  # 0: the largest prompt bucket
    max_tokens_limit: int = 0  # 0: the largest new-token bucket
    request_timeout_s: float = 120.0
    stream_chunk_tokens: int = 8
    max_body_bytes: int = 1 << 20
    seed: int = 0
    # Alternatives per token the sampler (and the prompt scorer) compute for every batch: the most a request
    # may ask for. One compiled variant serves all requests; 0 turns alternatives off (a request may still
    # ask for its chosen tokens' log-probs) and saves the per-step top-k over the vocabulary.
    max_logprobs: int = MAX_LOGPROBS
    # Connections: a request head must be complete within header_timeout_s of the connection opening (or of
    # the previous response), each part of a body must arrive within body_timeout_s, and an idle keep-alive
    # connection is closed after keep_alive_s. Slow or half-open clients cannot pile up.
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keep_alive_s: float = 5.0

    def __post_init__(self) -> None:
        def positive(name: str, value: float, most: float = MAX_SETTING) -> None:
            if not 0 < value <= most:  # NaN fails too
                raise ValueError(f"{name} must be > 0 and at most {most:g}, got {value}")

        positive("max_batch", self.max_batch, MAX_BATCH)
        positive("max_queue", self.max_queue)
        positive("request_timeout_s", self.request_timeout_s, MAX_TIMEOUT_S)
        positive("stream_chunk_tokens", self.stream_chunk_tokens)
        positive("max_body_bytes", self.max_body_bytes, MAX_BODY_BYTES)
        positive("header_timeout_s", self.header_timeout_s, MAX_TIMEOUT_S)
        positive("body_timeout_s", self.body_timeout_s, MAX_TIMEOUT_S)
        positive("keep_alive_s", self.keep_alive_s, MAX_TIMEOUT_S)
        if not 0 <= self.batch_wait_ms <= MAX_TIMEOUT_S * 1000:
            raise ValueError(
                f"batch_wait_ms must be in 0..{MAX_TIMEOUT_S * 1000:g}, got {self.batch_wait_ms}"
            )
        if not MIN_SEED <= self.seed <= MAX_SEED:
            raise ValueError(
                f"seed must be a signed 64-bit integer ({MIN_SEED}..{MAX_SEED}), got {self.seed}"
            )
        if not (isinstance(self.max_logprobs, int) and 0 <= self.max_logprobs <= MAX_LOGPROBS):
            raise ValueError(
                f"max_logprobs must be an integer in 0..{MAX_LOGPROBS}, got {self.max_logprobs!r}"
            )
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if not self.model_name:
            raise ValueError("model_name must not be empty (it is what clients pass as `model`)")
        batch = _sorted_positive(self.batch_buckets or (self.max_batch,), "batch_buckets")
        if batch[-1] != self.max_batch:
            raise ValueError(
                f"the largest batch bucket ({batch[-1]}) must equal max_batch ({self.max_batch}): a batch "
                "of max_batch rows needs a compiled shape"
            )
        prompt = _sorted_positive(self.prompt_buckets, "prompt_buckets")
        new = _sorted_positive(self.new_token_buckets, "new_token_buckets")
        object.__setattr__(self, "batch_buckets", batch)
        object.__setattr__(self, "prompt_buckets", prompt)
        object.__setattr__(self, "new_token_buckets", new)
        if self.max_prompt_tokens == 0:
            object.__setattr__(self, "max_prompt_tokens", prompt[-1])
        if self.max_tokens_limit == 0:
            object.__setattr__(self, "max_tokens_limit", new[-1])
        # Beyond the largest bucket the sampler would round up to a shape nobody compiled.
        if not 0 < self.max_prompt_tokens <= prompt[-1]:
            raise ValueError(
                f"max_prompt_tokens ({self.max_prompt_tokens}) must be in 1..{prompt[-1]} (the largest "
                "prompt bucket); add a larger prompt bucket to accept longer prompts"
            )
        if not 0 < self.max_tokens_limit <= new[-1]:
            raise ValueError(
                f"max_tokens_limit ({self.max_tokens_limit}) must be in 1..{new[-1]} (the largest "
                "new-token bucket); add a larger new-token bucket to allow longer completions"
            )

    @property
    def compiled_shapes(self) -> list[tuple[int, int, int]]:
        """(batch rows, prompt length, new tokens) of every shape the static engine compiles before the
        server is ready (the continuous engine's are `ContinuousEngine.compiled_shapes`)."""
        return [
            (b, p, n) for b in self.batch_buckets for p in self.prompt_buckets for n in self.new_token_buckets
        ]


def check_api_key(key: str) -> None:
    """An API key must be sendable in an HTTP header: printable ASCII without spaces."""
    if not key or not all(33 <= ord(c) <= 126 for c in key):
        raise ValueError(
            "the API key must be non-empty printable ASCII without spaces (it travels in the "
            "'Authorization: Bearer KEY' header)"
        )


def _sorted_positive(values: Sequence[int], name: str) -> tuple[int, ...]:
    out = tuple(sorted({int(v) for v in values}))
    if not out or out[0] < 1:
        raise ValueError(f"{name} must be a non-empty list of positive integers, got {list(values)}")
    return out
