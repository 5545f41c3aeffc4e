"""The FastAPI app: OpenAI-compatible routes, health and readiness, Prometheus metrics.

Routes: POST /v1/completions, POST /v1/chat/completions (both with SSE streaming), GET /v1/models,
GET /health (the process answers), GET /ready (model loaded and every bucket compiled), GET /metrics,
POST /v1/feedback (a completion's verified outcome, for drift monitoring).

Drift: given a `DriftMonitor` (`scripts/serve.py --drift_reference PROFILE.json`), every completed request
puts each prompt's text (a chat's last user message; a completion's prompt, decoded when sent as token ids)
and its first choice's text into the monitor's window, keyed by (response id, prompt index). Observing is
an append to a bounded deque; the statistics are computed when /metrics is scraped (in a worker thread, so
the event loop keeps serving), at most once per `min_interval_s`. A client that verifies an answer later
posts {"id": response id, "index": prompt index, "outcome": 0..1} to /v1/feedback.

The model loads and compiles in a background thread after the server has started listening, so that
liveness probes pass during a long start-up and /ready tells the truth. Every request is checked here,
at the edge, against the server's limits (counts and sizes before any work proportional to them: n before
rows are built, text length before tokenisation); anything wrong becomes a 4xx with a message that says
what to change, and never reaches the batcher, which checks each job once more on its own before queueing
it. With an API key, everything but the probes, /metrics and the API description needs it
(`serving.middleware`); /openapi.json lists the status codes the routes really answer with
(`serving.openapi`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response, StreamingResponse

from rlvr_jax.serving import schemas
from rlvr_jax.serving.batcher import Batcher, InvalidJob, Job, QueueFull, ShuttingDown, Update
from rlvr_jax.serving.choices import Choices, Echo
from rlvr_jax.serving.config import ServerConfig, check_api_key
from rlvr_jax.serving.continuous import ContinuousBatcher
from rlvr_jax.serving.engine import Engine
from rlvr_jax.serving.errors import ApiError, install_error_handlers
from rlvr_jax.serving.metrics import CONTENT_TYPE, ServerMetrics
from rlvr_jax.serving.middleware import ApiKeyMiddleware, HttpMiddleware
from rlvr_jax.serving.openapi import document_responses
from rlvr_jax.serving.responses import Reply, sse
from rlvr_jax.serving.slot_engine import ContinuousEngine
from rlvr_jax.serving.tokens import TokenTexts

if TYPE_CHECKING:  # scipy and friends load only when a server monitors drift
    from rlvr_jax.monitoring.drift import DriftMonitor

log = logging.getLogger(__name__)

# Completions default to OpenAI's 16 new tokens; chat to as many as the server allows.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
# Generous: no token of the tokenizers we know covers more characters, so text longer than
# --max_prompt_tokens x this cannot fit and is refused before tokenisation costs time proportional to it.
MAX_CHARS_PER_TOKEN = 64

OnFailure = Callable[[BaseException], None]


@dataclasses.dataclass
class ServerState:
    """What the routes share: settings, metrics, and (once loaded) the engine and batcher."""

    config: ServerConfig
    metrics: ServerMetrics
    status: str = "loading"  # loading | ready | failed | stopping
    error: str | None = None
    engine: Engine | None = None
    batcher: Batcher | None = None
    started: int = dataclasses.field(default_factory=schemas.now)
    drift: DriftMonitor | None = None
    token_texts: TokenTexts | None = None  # built at the first request for log-probs


def create_app(
    config: ServerConfig,
    load_engine: Callable[[], Engine],
    *,
    on_load_failure: OnFailure | None = None,
    drift: DriftMonitor | None = None,
    api_key: str | None = None,
) -> FastAPI:
    """The app. `load_engine` runs in a background thread at start-up (load the model, build the sampler);
    the app then compiles every bucket and starts the batcher. `on_load_failure` is told when that fails
    (the command-line server uses it to exit with the message). `drift` watches the traffic (see above).
    `api_key`: when given, every route but the probes, /metrics and the API description needs
    `Authorization: Bearer <api_key>` (401 otherwise)."""
    if api_key is not None:
        check_api_key(api_key)
    state = ServerState(config=config, metrics=ServerMetrics(config.max_batch), drift=drift)
    if drift is not None:
        drift.register(state.metrics.registry)
    app = FastAPI(title="rlvr-jax inference server", lifespan=_lifespan(state, load_engine, on_load_failure))
    app.state.server = state
    install_error_handlers(app)
    _add_probe_routes(app, state)
    _add_api_routes(app, state)
    if api_key is not None:
        app.add_middleware(ApiKeyMiddleware, api_key=api_key)
    app.add_middleware(  # added last, so outermost: it also counts the 401s and 413s of the layers inside
        HttpMiddleware, metrics=state.metrics, max_body_bytes=config.max_body_bytes,
        body_timeout_s=config.body_timeout_s, routes=frozenset(getattr(r, "path", "") for r in app.routes),
    )  # fmt: skip
    document_responses(app, api_key=api_key is not None)
    return app


# -- start-up and shutdown ----------------------------------------------------------------------------------


def _load(state: ServerState, load_engine: Callable[[], Engine], on_load_failure: OnFailure | None) -> None:
    """Loads the model, compiles every bucket, starts the batcher; the server is ready after that."""
    config = state.config
    try:
        engine = load_engine()
        state.metrics.compilations.set(engine.compile_count)

        def count(*_: Any) -> None:
            state.metrics.compilations.set(engine.compile_count)

        seconds = engine.warmup(on_shape=count)
        count()  # the prompt scorer's shapes too
        batcher = _batcher(engine, config, state.metrics)
        batcher.start()
        state.engine, state.batcher = engine, batcher
        if state.status == "loading":
            state.status = "ready"
            state.metrics.ready.set(1)
        log.info("ready: %d shapes compiled in %.1f s", len(engine.compiled_shapes), seconds)
    except BaseException as e:
        state.status, state.error = "failed", f"{type(e).__name__}: {e}"
        log.error("loading the model failed: %s", state.error)
        if on_load_failure is not None:
            on_load_failure(e)


def _batcher(engine: Engine, config: ServerConfig, metrics: ServerMetrics) -> Batcher:
    """Continuous batching over the engine's slots, or static batches (`--engine`)."""
    wait_s = config.batch_wait_ms / 1000
    if isinstance(engine, ContinuousEngine):
        return ContinuousBatcher(
            engine, max_queue=config.max_queue, wait_s=wait_s, seed=config.seed, metrics=metrics
        )
    return Batcher(
        engine, max_batch=config.max_batch, max_queue=config.max_queue, wait_s=wait_s, seed=config.seed,
        metrics=metrics,
    )  # fmt: skip


def _lifespan(
    state: ServerState, load_engine: Callable[[], Engine], on_load_failure: OnFailure | None
) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    """Loads in a background thread once the server listens; at shutdown, drains the batcher."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = threading.Thread(
            target=_load, args=(state, load_engine, on_load_failure), name="model-loader", daemon=True
        )
        loader.start()
        yield
        # Uvicorn has already waited for the requests in flight; finish whatever the batcher still holds.
        state.status = "stopping"
        state.metrics.ready.set(0)
        timeout = state.config.request_timeout_s
        if state.batcher is not None and not state.batcher.stop(timeout=timeout):
            log.warning("the batcher was still busy after %.0f s at shutdown", timeout)

    return lifespan


# -- routes -------------------------------------------------------------------------------------------------


def _add_probe_routes(router: FastAPI, state: ServerState) -> None:
    """/health, /ready and /metrics: for load balancers, orchestrators and Prometheus (no API key)."""
    config = state.config

    @router.get("/health")
    async def health() -> dict[str, str]:
        """Liveness: the process and its event loop answer (loading or not)."""
        return {"status": "ok"}

    @router.get("/ready")
    async def ready() -> JSONResponse:
        """Readiness: 200 once the model is loaded and every bucket compiled, 503 before and at shutdown."""
        body: dict[str, Any] = {"status": state.status, "model": config.model_name}
        if state.error:
            body["error"] = state.error
        if state.status == "ready" and state.engine is not None:
            body["engine"] = config.engine
            body["compiled_shapes"] = len(state.engine.compiled_shapes)
        return JSONResponse(body, status_code=200 if state.status == "ready" else 503)

    @router.get("/metrics")
    async def metrics() -> Response:
        """Prometheus metrics (text exposition format)."""
        if state.engine is not None:
            state.metrics.compilations.set(state.engine.compile_count)
        # Off the event loop: a scrape may recompute the drift statistics over the whole window.
        return Response(await asyncio.to_thread(state.metrics.render), media_type=CONTENT_TYPE)


def _add_api_routes(router: FastAPI, state: ServerState) -> None:
    """The OpenAI routes (completions, chat completions, models) and /v1/feedback."""
    config = state.config

    @router.post("/v1/completions", response_model=None)
    async def completions(body: schemas.CompletionRequest) -> Response:
        arrived = time.monotonic()
        engine = _ready_engine(state, body)
        prompts = _completion_prompts(state, engine, body)
        max_tokens = _max_tokens(state, engine, body.max_tokens, prompts, COMPLETIONS_DEFAULT_MAX_TOKENS)
        _check_logprobs(state, body.logprobs, "logprobs")
        wanted = body.echo or state.drift is not None
        texts = _completion_texts(engine, body, prompts) if wanted else None
        echo = (
            [Echo(t, tuple(p)) for t, p in zip(texts, prompts, strict=True)] if body.echo and texts else None
        )
        logprobs = _Logprobs(body.logprobs, prompt=body.echo) if body.logprobs is not None else None
        return await _generate(
            state, engine, body, prompts, max_tokens, arrived, chat=False, texts=texts, logprobs=logprobs,
            echo=echo,
        )  # fmt: skip

    @router.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: schemas.ChatCompletionRequest) -> Response:
        arrived = time.monotonic()
        engine = _ready_engine(state, body)
        prompt = _chat_prompt(state, engine, body)
        max_tokens = _max_tokens(state, engine, body.requested_max_tokens, [prompt], None)
        _check_logprobs(state, body.top_logprobs, "top_logprobs")
        texts = [_chat_text(body)] if state.drift is not None else None
        logprobs = _Logprobs(body.top_logprobs or 0) if body.logprobs else None
        return await _generate(
            state, engine, body, [prompt], max_tokens, arrived, chat=True, texts=texts, logprobs=logprobs
        )

    @router.get("/v1/models")
    async def models() -> schemas.ModelList:
        context = state.engine.context_length if state.engine is not None else 0
        card = schemas.ModelCard(id=config.model_name, created=state.started, max_model_len=context)
        return schemas.ModelList(data=[card])

    @router.post("/v1/feedback")
    async def feedback(body: schemas.FeedbackRequest) -> dict[str, Any]:
        """The verified outcome of an earlier completion: counted in the drift monitor's live pass rate."""
        if state.drift is None:
            raise ApiError(
                404, "drift monitoring is off on this server; start it with --drift_reference PROFILE.json",
                code="drift_monitoring_off",
            )  # fmt: skip
        if not state.drift.record_outcome((body.id, body.index), body.outcome):
            raise ApiError(
                404, f"no completion {body.id!r} with prompt index {body.index} in the drift window (the "
                f"last {state.drift.capacity} prompts); send feedback sooner, or check the id",
                param="id", code="unknown_completion",
            )  # fmt: skip
        return {"id": body.id, "index": body.index, "outcome": body.outcome, "accepted": True}


# -- request checks -----------------------------------------------------------------------------------------


def _ready_engine(state: ServerState, body: schemas._SamplingFields) -> Engine:
    """The engine when the server can take this request; otherwise the error that says why not."""
    if state.status != "ready" or state.engine is None:
        if state.status == "failed":
            raise ApiError(503, f"the model failed to load: {state.error}", type="server_error")
        what = "shutting down" if state.status == "stopping" else "still loading and compiling"
        raise ApiError(
            503, f"the server is {what}; retry when GET /ready returns 200", type="server_error",
            headers={"Retry-After": "5"},
        )  # fmt: skip
    if body.model != state.config.model_name:
        message = (
            f"the model {body.model!r} does not exist on this server; it serves "
            f"{state.config.model_name!r} (GET /v1/models lists it)"
        )
        raise ApiError(404, message, param="model", code="model_not_found")
    problem = body.unsupported()
    if problem:
        raise ApiError(400, problem)
    return state.engine


def _check_rows(state: ServerState, prompts: int, n: int) -> None:
    """prompts x n against the batch, before any row is built (n may be any integer a client sends)."""
    cfg = state.config
    if prompts * n > cfg.max_batch:
        raise ApiError(
            400, f"this request asks for {prompts} x {n} completions (prompts x n), more than this server's "
            f"batch of {cfg.max_batch} (--max_batch); send fewer prompts or a smaller n", param="n",
        )  # fmt: skip


def _check_logprobs(state: ServerState, k: int | None, param: str) -> None:
    """The alternatives asked for per token against the server's --max_logprobs (the schema has already
    bounded k by the API's own limit)."""
    most = state.config.max_logprobs
    if k is not None and k > most:
        why = "returns no alternatives" if most == 0 else f"returns at most {most} alternatives per token"
        raise ApiError(
            400,
            f"{param} is {k}, but this server {why} (--max_logprobs); ask for at most {most}",
            param=param,
        )


def _check_chars(state: ServerState, chars: int, param: str) -> None:
    """Text far too long for --max_prompt_tokens is refused before tokenisation costs anything."""
    limit = state.config.max_prompt_tokens
    if chars > limit * MAX_CHARS_PER_TOKEN:
        raise ApiError(
            400, f"the prompt has {chars} characters, more than {limit} tokens can hold; this server accepts "
            f"at most {limit} prompt tokens (--max_prompt_tokens). Shorten the prompt or the conversation.",
            param=param, code="context_length_exceeded",
        )  # fmt: skip


def _completion_prompts(
    state: ServerState, engine: Engine, body: schemas.CompletionRequest
) -> list[list[int]]:
    """The request's prompts as token ids: one string, several, token ids, or several token-id lists.
    Their number and size are checked before anything is tokenised."""
    p = body.prompt
    if isinstance(p, str) or all(isinstance(x, str) for x in p):
        texts = [p] if isinstance(p, str) else list(p)
        _check_rows(state, len(texts), body.n)
        for text in texts:
            _check_chars(state, len(text), "prompt")
        prompts = [engine.encode_text(text) for text in texts]  # type: ignore[arg-type]
    else:
        prompts = [list(p)] if all(isinstance(x, int) for x in p) else [list(x) for x in p]  # type: ignore
        _check_rows(state, len(prompts), body.n)
    for ids in prompts:
        if len(ids) > state.config.max_prompt_tokens:
            break  # _max_tokens says so, with the numbers
        bad = [t for t in ids if not 0 <= t < engine.vocab_size]
        if bad:
            raise ApiError(
                400, f"token id {bad[0]} is outside this model's vocabulary (0..{engine.vocab_size - 1})",
                param="prompt",
            )  # fmt: skip
        if not ids:
            raise ApiError(
                400, "the prompt is empty after tokenisation; send at least one token", param="prompt"
            )
    return prompts


def _chat_prompt(state: ServerState, engine: Engine, body: schemas.ChatCompletionRequest) -> list[int]:
    """The conversation through the model's chat template, as token ids; size checked before templating."""
    if not engine.tokenizer.chat_template:
        message = (
            f"{state.config.model_name!r} has no chat template, so its messages cannot be formatted; "
            "use /v1/completions with a plain prompt"
        )
        raise ApiError(400, message, param="messages")
    _check_rows(state, 1, body.n)
    limit = state.config.max_prompt_tokens
    if len(body.messages) > limit:
        raise ApiError(
            400, f"the conversation has {len(body.messages)} messages, more than {limit} prompt tokens can "
            "hold (--max_prompt_tokens); send fewer", param="messages", code="context_length_exceeded",
        )  # fmt: skip
    _check_chars(state, sum(len(m.text()) for m in body.messages), "messages")
    try:
        return engine.encode_chat(body.template_messages())
    except Exception as e:  # the model's own Jinja template refused the conversation
        message = f"the model's chat template rejected these messages: {e}"
        raise ApiError(400, message, param="messages") from e


def _completion_texts(engine: Engine, body: schemas.CompletionRequest, prompts: list[list[int]]) -> list[str]:
    """The prompts as text for drift monitoring: as sent, or decoded when sent as token ids."""
    if isinstance(body.prompt, str):
        return [body.prompt]
    if all(isinstance(x, str) for x in body.prompt):
        return list(body.prompt)  # type: ignore[arg-type]
    return [engine.tokenizer.decode(ids) for ids in prompts]


def _chat_text(body: schemas.ChatCompletionRequest) -> str:
    """What a chat asks, for drift monitoring: its last user message (training prompts are single turns)."""
    users = [m for m in body.messages if m.role == "user"]
    return (users[-1] if users else body.messages[-1]).text()


def _max_tokens(
    state: ServerState, engine: Engine, requested: int | None, prompts: list[list[int]], default: int | None
) -> int:
    """Checks prompt lengths and max_tokens against the server's limits and the model's context."""
    cfg = state.config
    longest = max(len(p) for p in prompts)
    if longest > cfg.max_prompt_tokens:
        raise ApiError(
            400, f"the prompt has {longest} tokens; this server accepts at most {cfg.max_prompt_tokens} "
            "prompt tokens (--max_prompt_tokens). Shorten the prompt or the conversation.",
            param="messages" if default is None else "prompt", code="context_length_exceeded",
        )  # fmt: skip
    room = engine.context_length - longest
    if room < 1:
        message = (
            f"the prompt has {longest} tokens, which fills the model's context of "
            f"{engine.context_length} tokens; shorten it"
        )
        raise ApiError(400, message, code="context_length_exceeded")
    if requested is None:
        return min(default or cfg.max_tokens_limit, cfg.max_tokens_limit, room)
    if requested > cfg.max_tokens_limit:
        message = (
            f"max_tokens is {requested}, but this server generates at most {cfg.max_tokens_limit} "
            "tokens per completion (--max_tokens_limit); ask for fewer"
        )
        raise ApiError(400, message, param="max_tokens")
    if requested > room:
        raise ApiError(
            400, f"the prompt ({longest} tokens) plus max_tokens ({requested}) exceed the model's context of "
            f"{engine.context_length} tokens; ask for at most {room} tokens", param="max_tokens",
            code="context_length_exceeded",
        )  # fmt: skip
    return requested


# -- generation ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Logprobs:
    """What a request asked for: k alternatives per token, and (completions' echo) the prompt's too."""

    top: int
    prompt: bool = False


def _token_texts(state: ServerState, engine: Engine) -> TokenTexts:
    if state.token_texts is None:
        state.token_texts = TokenTexts(engine.tokenizer.hf)
    return state.token_texts


async def _generate(
    state: ServerState,
    engine: Engine,
    body: schemas._SamplingFields,
    prompts: list[list[int]],
    max_tokens: int,
    arrived: float,
    *,
    chat: bool,
    texts: list[str] | None = None,
    logprobs: _Logprobs | None = None,
    echo: list[Echo] | None = None,
) -> Response:
    """Runs the job; `texts` (the prompts as text, with drift monitoring on) are observed once it is done.
    `logprobs`: what the request asked for, if anything; `echo`: each prompt, returned before its choices."""
    cfg = state.config
    _check_rows(state, len(prompts), body.n)
    rows = [p for p in prompts for _ in range(body.n)]  # choice i*n + j is sample j of prompt i
    loop = asyncio.get_running_loop()
    updates: asyncio.Queue[Update] = asyncio.Queue()
    job = Job(
        prompts=rows, max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p, top_k=body.top_k,
        seed=body.seed, enqueued_at=arrived,
        deliver=lambda update: loop.call_soon_threadsafe(updates.put_nowait, update),
        top_logprobs=logprobs.top if logprobs else 0, prompt_logprobs=bool(logprobs and logprobs.prompt),
    )  # fmt: skip
    assert state.batcher is not None
    try:
        state.batcher.submit(job)
    except InvalidJob as e:
        raise ApiError(400, f"invalid request: {e}") from e
    except QueueFull as e:
        raise ApiError(
            429,
            str(e),
            type="rate_limit_exceeded",
            code="queue_full",
            headers={"Retry-After": str(e.retry_after)},
        ) from e
    except ShuttingDown as e:
        raise ApiError(503, str(e), type="server_error", headers={"Retry-After": "5"}) from e
    deadline = arrived + cfg.request_timeout_s
    choices = Choices(
        engine.tokenizer, len(rows), body.stop_strings,
        logprobs=_token_texts(state, engine) if logprobs else None,
        echo=[e for e in echo for _ in range(body.n)] if echo is not None else None,
    )  # fmt: skip
    prompt_tokens = sum(len(p) for p in prompts)
    reply = Reply(body.model, chat, choices, prompt_tokens)

    def observe() -> None:
        if state.drift is not None and texts is not None:
            for i, text in enumerate(texts):  # choice i*n is the first sample of prompt i
                state.drift.observe(text, choices.completion(i * body.n), key=(reply.id, i))

    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        events = _stream(
            state.batcher, job, updates, choices, reply, deadline, cfg.request_timeout_s, include_usage,
            on_done=observe,
        )  # fmt: skip
        return StreamingResponse(
            events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )
    try:
        while not choices.done:
            update = await _next_update(updates, deadline, cfg.request_timeout_s)
            choices.apply(update.rows)
    except BaseException:
        state.batcher.cancel(job)
        raise
    state.batcher.cancel(job)  # finished (possibly by a stop string before the sampler knew): free its rows
    observe()
    return JSONResponse(reply.whole())


async def _next_update(updates: asyncio.Queue[Update], deadline: float, timeout_s: float) -> Update:
    """The job's next update, or the error that ends it (a generation failure, or the request timeout)."""
    try:
        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
            update = await updates.get()
    except TimeoutError:
        raise ApiError(
            504, f"the request did not finish within the server's {timeout_s:.0f} s request timeout "
            "(--request_timeout); the server is busy or max_tokens is large: retry, or ask for fewer tokens",
            type="timeout", code="request_timeout",
        ) from None  # fmt: skip
    if update.error:
        raise ApiError(500, update.error, type="server_error")
    return update


async def _stream(
    batcher: Batcher,
    job: Job,
    updates: asyncio.Queue[Update],
    choices: Choices,
    reply: Reply,
    deadline: float,
    timeout_s: float,
    include_usage: bool,
    on_done: Callable[[], None] | None = None,
) -> AsyncIterator[str]:
    """Server-sent events: a role chunk (chat), text deltas as they decode, finish reasons, [DONE].

    Errors after the 200 header has gone out (timeout, generation failure) are sent as an `error` event,
    which OpenAI clients raise as an exception, followed by [DONE]. `on_done` runs once every choice has
    finished (not after a timeout, nor for a client that went away).
    """
    try:
        if reply.chat:
            for i in range(len(choices.finish_reasons)):
                yield sse(reply.chunk(i, {"role": "assistant", "content": ""}, None))
        while not choices.done:
            try:
                update = await _next_update(updates, deadline, timeout_s)
            except ApiError as e:
                yield sse({"error": {"message": e.message, "type": e.type, "code": e.code}})
                break
            for change in choices.apply(update.rows):
                if change.text or change.logprobs:
                    content = {"content": change.text} if reply.chat else change.text
                    yield sse(reply.chunk(change.index, content, None, change.logprobs))
                if change.finish_reason:
                    yield sse(reply.chunk(change.index, {} if reply.chat else "", change.finish_reason))
        if choices.done and on_done is not None:
            on_done()
        if include_usage and choices.done:
            yield sse(reply.usage_chunk())
        yield "data: [DONE]\n\n"
    finally:
        batcher.cancel(job)  # done, failed, or the client went away: the batcher drops its rows
