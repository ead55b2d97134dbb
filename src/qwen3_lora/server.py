"""`qwen3-lora serve`: an OpenAI-compatible HTTP server over a `Predictor` (FastAPI + uvicorn).

Routes: `POST /v1/chat/completions` (plain and SSE streaming), `GET /v1/models`, `GET /health`,
`GET /v1/tasks`, `POST /v1/tasks/{task}` and `POST /v1/route`. Errors are OpenAI-style
`{"error": {"message", "type", "param", "code"}}` objects.

The model runs on one worker thread, never on the event loop. Every model request is admitted
under two limits: `max_concurrency` requests hold a model slot and up to `max_queue` more wait
for one; beyond that the answer is 429 at once. A request that has not finished within
`request_timeout_s` (queueing included) gets 504; the work it already started still holds its
slot until it ends, so timeouts cannot pile unbounded work onto the model. Task requests for the
same task are collected for `batch_window_ms` and run as one batch.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from .config import ConfigError
from .predict import PredictorError
from .prompt import render_chat, render_prompt, split_thinking
from .router import route

log = logging.getLogger(__name__)
access_log = logging.getLogger("qwen3_lora.server.access")

API_KEY_ENV = "QWEN3_LORA_API_KEY"
# Test-only: milliseconds every model call sleeps first, so tests can fill the queue and hit
# the timeout deterministically. Never set it in production.
TEST_DELAY_ENV = "QWEN3_LORA_TEST_DELAY_MS"
GREEDY_BELOW = 1e-5  # temperatures under this decode greedily
# Tokenize long texts off the event loop (fast tokenizers release the GIL).
_TOKENIZE_INLINE_CHARS = 4096


# --------------------------------------------------------------------------- configuration


@dataclass
class ServeConfig:
    """What `qwen3-lora serve` loads and how it limits requests."""

    adapter: str | None = None
    model: str | None = None
    base_model: str | None = None
    precision: str = "auto"
    hub: str = "huggingface"
    trust_remote_code: bool = False
    tasks: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = field(default=None, repr=False)
    served_model_name: str | None = None
    max_body_bytes: int = 1 << 20
    max_tokens_cap: int = 1024
    default_max_tokens: int = 512
    max_context: int | None = None
    max_concurrency: int = 32
    max_queue: int = 256
    request_timeout_s: float = 120.0
    batch_window_ms: float = 5.0
    max_batch_size: int = 32
    test_delay_ms: float = 0.0  # test-only, from QWEN3_LORA_TEST_DELAY_MS

    def validate(self) -> list[str]:
        """Every problem with the values, not just the first."""
        problems = []
        if bool(self.adapter) == bool(self.model):
            problems.append("give exactly one of --adapter (a LoRA folder) or --model (a model)")
        if self.model and self.base_model:
            problems.append("--base-model goes with --adapter; with --model it is the model")
        for name in (
            "max_body_bytes",
            "max_tokens_cap",
            "default_max_tokens",
            "max_concurrency",
            "max_batch_size",
            "request_timeout_s",
        ):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("max_queue", "batch_window_ms", "test_delay_ms"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_context is not None and self.max_context <= 0:
            problems.append(f"max_context must be > 0, got {self.max_context}")
        if not 0 <= self.port <= 65535:
            problems.append(f"port must be in 0..65535, got {self.port}")
        if self.api_key is not None and not self.api_key.strip():
            problems.append(f"--api-key / {API_KEY_ENV} is set but empty")
        return problems

    def model_name(self) -> str:
        """The id clients pass as `model`: --served-model-name, else the folder's name."""
        source = self.adapter or self.model or "model"
        return self.served_model_name or Path(source.rstrip("/")).name or source


# --------------------------------------------------------------------------- errors


class ApiError(Exception):
    """An error answered as an OpenAI-style error object."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status,
            message,
            type,
            param,
            code,
        )


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _error_response(exc: ApiError, headers: dict | None = None) -> JSONResponse:
    body = error_body(exc.message, exc.type, exc.param, exc.code)
    return JSONResponse(body, status_code=exc.status, headers=headers)


def server_busy() -> ApiError:
    return ApiError(
        429,
        "the server is at its concurrency and queue limits; retry later",
        type="rate_limit_error",
        code="server_busy",
    )


def request_timeout(seconds: float) -> ApiError:
    return ApiError(
        504, f"the request did not finish within {seconds:g} s", type="timeout", code="timeout"
    )


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in (
        (400, "bad request: invalid JSON or fields, or prompt + max_tokens over the context"),
        (401, "missing or wrong API key"),
        (404, "unknown task or model"),
        (413, "request body too large"),
        (429, "concurrency and queue limits reached"),
        (504, "request timed out"),
    )
}


# --------------------------------------------------------------------------- request schemas


def _encodable(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("text must be valid Unicode (no lone surrogates)") from exc
    return text


Text = Annotated[str, AfterValidator(_encodable)]


class TextPart(BaseModel):
    type: Literal["text"]
    text: Text


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatTemplateKwargs(BaseModel):
    enable_thinking: bool = False


class ChatCompletionRequest(BaseModel):
    """The OpenAI chat-completions fields this server honours; unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=1, description="only 1 is supported")
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Text | list[Text] | None = Field(default=None, description="up to 4 stop strings")
    chat_template_kwargs: ChatTemplateKwargs | None = Field(
        default=None, description="`{'enable_thinking': true}` lets Qwen3 think first"
    )

    def stop_strings(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]


class TaskRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    input: Text = Field(min_length=1, description="the user's text")
    max_tokens: int | None = Field(
        default=None, ge=1, description="answer length cap for generation/extraction tasks"
    )


class RouteRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    input: Text = Field(min_length=1, description="the user's text")


# --------------------------------------------------------------------------- model runner


@dataclass
class _BatchItem:
    text: str
    future: asyncio.Future


class ModelRunner:
    """Runs model work on one worker thread under the admission limits and the request timeout."""

    def __init__(self, predictor, config: ServeConfig):
        self.predictor = predictor
        self.config = config
        self._admitted = 0
        self._slots: asyncio.Semaphore | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._pending: dict[tuple[str, int | None], list[_BatchItem]] = {}
        self._timers: dict[tuple[str, int | None], asyncio.TimerHandle] = {}

    # Lifecycle: asyncio objects belong to the loop the app runs on.
    def start(self) -> None:
        self._slots = asyncio.Semaphore(self.config.max_concurrency)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qwen3-lora-model")

    def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def limit(self) -> int:
        return self.config.max_concurrency + self.config.max_queue

    def _on_model_thread(self, fn: Callable, *args, **kwargs):
        if self.config.test_delay_ms:
            time.sleep(self.config.test_delay_ms / 1000)
        return fn(*args, **kwargs)

    def _admit(self) -> None:
        if self._slots is None:
            raise RuntimeError("ModelRunner.start() was not called (use the app's lifespan)")
        if self._admitted >= self.limit:
            raise server_busy()
        self._admitted += 1

    def _release(self, future: asyncio.Future | None = None) -> None:
        self._admitted -= 1
        self._slots.release()
        if future is not None and not future.cancelled():
            future.exception()  # retrieved: a timed-out request no longer awaits it

    async def _acquire_slot(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout)
        except asyncio.TimeoutError:
            raise request_timeout(self.config.request_timeout_s) from None

    async def _run_admitted(self, start: Callable[[], asyncio.Future]):
        """Admit, wait for a slot, start the work and await it until the request's deadline."""
        self._admit()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.request_timeout_s
        work = None
        try:
            await self._acquire_slot(self.config.request_timeout_s)
            try:
                work = start()
            except BaseException:
                self._slots.release()
                raise
        finally:
            if work is None:
                self._admitted -= 1
        work.add_done_callback(self._release)
        try:
            return await asyncio.wait_for(asyncio.shield(work), max(0.0, deadline - loop.time()))
        except asyncio.TimeoutError:
            raise request_timeout(self.config.request_timeout_s) from None

    async def call(self, fn: Callable, *args, **kwargs):
        """Run `fn` on the model thread."""
        loop = asyncio.get_running_loop()
        return await self._run_admitted(
            lambda: loop.run_in_executor(
                self._executor, lambda: self._on_model_thread(fn, *args, **kwargs)
            )
        )

    async def predict(self, task: str, text: str, max_new_tokens: int | None):
        """(prediction, batch size): one task prediction, batched with others for the task."""
        return await self._run_admitted(lambda: self._enqueue(task, text, max_new_tokens))

    def _enqueue(self, task: str, text: str, max_new_tokens: int | None) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        key = (task, max_new_tokens)
        item = _BatchItem(text, loop.create_future())
        batch = self._pending.setdefault(key, [])
        batch.append(item)
        if len(batch) >= self.config.max_batch_size:
            self._flush(key)
        elif key not in self._timers:
            self._timers[key] = loop.call_later(
                self.config.batch_window_ms / 1000, self._flush, key
            )
        return item.future

    def _flush(self, key: tuple[str, int | None]) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        items = self._pending.pop(key, [])
        if not items:
            return
        task, max_new_tokens = key
        texts = [item.text for item in items]
        kwargs: dict[str, Any] = {"batch_size": len(texts)}
        if max_new_tokens:
            kwargs["max_new_tokens"] = max_new_tokens
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(
            self._executor,
            lambda: self._on_model_thread(self.predictor.predict, task, texts, **kwargs),
        )

        def deliver(done: asyncio.Future) -> None:
            error = None if done.cancelled() else done.exception()
            results = None if done.cancelled() or error else done.result()
            for i, item in enumerate(items):
                if item.future.done():
                    continue
                if done.cancelled():
                    item.future.cancel()
                elif error is not None:
                    item.future.set_exception(error)
                else:
                    item.future.set_result((results[i], len(items)))

        work.add_done_callback(deliver)

    async def stream(self, make_pieces: Callable[[], Iterator[str]]) -> AsyncIterator[str]:
        """Iterate `make_pieces()` on the model thread, yielding its pieces on the event loop.

        Raises 429/504 `ApiError`s before the first piece; past the deadline it raises 504 too,
        and the producer is closed at its next piece. The slot is held until the producer ends.
        """
        self._admit()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.request_timeout_s
        queue: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()
        started = False

        def put(kind: str, value: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, (kind, value))
            except RuntimeError:  # the loop is closed: the server is shutting down
                stop.set()

        def produce() -> None:
            try:
                if self.config.test_delay_ms:
                    time.sleep(self.config.test_delay_ms / 1000)
                # After a stop (client gone, deadline) the producer is closed, which ends a
                # generation at its next token; the slot stays taken until it has ended.
                pieces = make_pieces()
                try:
                    for piece in pieces:
                        if stop.is_set():
                            break
                        put("piece", piece)
                finally:
                    close = getattr(pieces, "close", None)
                    if close is not None:
                        close()
            except BaseException as exc:
                put("error", exc)
            finally:
                put("end", None)

        try:
            await self._acquire_slot(self.config.request_timeout_s)
            try:
                work = loop.run_in_executor(self._executor, produce)
            except BaseException:
                self._slots.release()
                raise
            started = True
            work.add_done_callback(self._release)
            while True:
                try:
                    kind, value = await asyncio.wait_for(
                        queue.get(), max(0.0, deadline - loop.time())
                    )
                except asyncio.TimeoutError:
                    raise request_timeout(self.config.request_timeout_s) from None
                if kind == "end":
                    return
                if kind == "error":
                    raise value
                yield value
        finally:
            stop.set()
            if not started:
                self._admitted -= 1


# --------------------------------------------------------------------------- helpers


async def count_tokens(tokenizer, text: str) -> int:
    def count() -> int:
        return len(tokenizer(text, add_special_tokens=False).input_ids)

    if len(text) <= _TOKENIZE_INLINE_CHARS:
        return count()
    return await asyncio.to_thread(count)


class StopScanner:
    """Cut streamed text at the first stop string, holding back what could start one."""

    def __init__(self, stops: list[str]):
        self.stops = stops
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.buffer = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        """Text that is safe to emit now."""
        if self.stopped:
            return ""
        self.buffer += piece
        cut = min((i for i in (self.buffer.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self.buffer, self.stopped = self.buffer[:cut], "", True
            return out
        keep = min(self.hold, len(self.buffer))
        out = self.buffer[: len(self.buffer) - keep]
        self.buffer = self.buffer[len(out) :]
        return out

    def flush(self) -> str:
        out, self.buffer = ("" if self.stopped else self.buffer), ""
        return out


def _sse(payload: dict | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n"


def _log_fields(request: Request) -> dict:
    return request.scope.setdefault("qwen3_lora.log", {})


# --------------------------------------------------------------------------- ASGI middleware


async def _send_error(send, status: int, body: dict, headers: list | None = None) -> None:
    raw = json.dumps(body, ensure_ascii=False).encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(raw)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": raw})


class AccessLog:
    """One structured JSON log line per request: id, route, status, latency_ms, tokens."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        given = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if 0 < len(given) <= 64 and given.isprintable() else uuid.uuid4().hex
        fields = scope.setdefault("qwen3_lora.log", {})
        status = [500]

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode("latin-1")),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            record = {
                "id": request_id,
                "method": scope.get("method"),
                "route": getattr(route, "path", None) or scope.get("path"),
                "status": status[0],
                "latency_ms": round((time.perf_counter() - start) * 1000, 2),
                "prompt_tokens": fields.get("prompt_tokens"),
                "completion_tokens": fields.get("completion_tokens"),
            }
            for key in ("task", "batch_size"):
                if key in fields:
                    record[key] = fields[key]
            access_log.info(json.dumps(record, ensure_ascii=False), extra={"request": record})


class BearerAuth:
    """Every route but /health needs `Authorization: Bearer <key>`, compared in constant time."""

    OPEN_PATHS = frozenset({"/health"})

    def __init__(self, app, api_key: str | None):
        self.app = app
        self.key = api_key.encode("utf-8") if api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.key is None or scope.get("path") in self.OPEN_PATHS:
            return await self.app(scope, receive, send)
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key):
            return await self.app(scope, receive, send)
        message = (
            "missing API key: send 'Authorization: Bearer <key>'"
            if not header
            else "invalid API key"
        )
        await _send_error(
            send,
            401,
            error_body(message, "invalid_request_error", None, "invalid_api_key"),
            [(b"www-authenticate", b"Bearer")],
        )


class BodyLimit:
    """Refuse bodies over `max_bytes` with 413, before the app (or JSON parsing) sees them."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def _too_large(self, send) -> None:
        message = f"request body exceeds {self.max_bytes} bytes"
        await _send_error(
            send, 413, error_body(message, "invalid_request_error", None, "body_too_large")
        )

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                if int(declared) > self.max_bytes:
                    return await self._too_large(send)
            except ValueError:
                pass  # the server (h11) rejects a malformed Content-Length itself
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before sending its body
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await self._too_large(send)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


# --------------------------------------------------------------------------- the app


def _validation_error(exc: RequestValidationError) -> ApiError:
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if first.get("type") == "json_invalid":
        return ApiError(400, "the request body is not valid JSON", code="invalid_json")
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}"
        for e in errors[:5]
    )
    return ApiError(400, f"invalid request: {problems}", param=".".join(loc) or None, code=None)


def create_app(predictor, config: ServeConfig) -> FastAPI:
    """The ASGI app: routes, error handlers and middleware over a loaded `Predictor`."""
    runner = ModelRunner(predictor, config)
    tokenizer = predictor.tokenizer
    registry = predictor.registry
    model_id = config.model_name()
    created = int(time.time())
    context_length = min(
        int(predictor.context_length), config.max_context or int(predictor.context_length)
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        runner.start()
        try:
            yield
        finally:
            runner.stop()

    app = FastAPI(
        title="qwen3-lora",
        description="OpenAI-compatible chat completions and the data-platform task endpoints.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.runner = runner

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return _error_response(exc)

    @app.exception_handler(PredictorError)
    async def _unanswerable(request: Request, exc: PredictorError):
        return _error_response(ApiError(400, str(exc)))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return _error_response(_validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return _error_response(
            ApiError(exc.status_code, str(exc.detail), type=kind), headers=exc.headers
        )

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        log.exception("internal error on %s", request.url.path)
        return _error_response(
            ApiError(500, "internal server error; see the server log", type="server_error")
        )

    def check_budget(prompt_tokens: int, requested: int | None, param: str) -> int:
        """max_tokens after clamping to the cap; 400 when the prompt leaves no room for it."""
        room = context_length - prompt_tokens
        if requested is None:
            max_tokens = min(config.default_max_tokens, config.max_tokens_cap, room)
        else:
            max_tokens = min(requested, config.max_tokens_cap)
        if max_tokens < 1 or prompt_tokens + max_tokens > context_length:
            raise ApiError(
                400,
                f"this model's context is {context_length} tokens; the prompt has "
                f"{prompt_tokens} and max_tokens is {max_tokens}: shorten the input or lower "
                f"max_tokens",
                param=param,
                code="context_length_exceeded",
            )
        return max_tokens

    def resolve_task(name: str):
        task = registry.get(name)
        if task is None:
            known = ", ".join(f"{t.name} ({t.id})" for t in registry.tasks)
            raise ApiError(
                404,
                f"unknown task {name!r}; known tasks: {known}",
                type="not_found_error",
                param="task",
                code="task_not_found",
            )
        return task

    @app.get("/health", tags=["meta"])
    async def health():
        """Liveness: 200 once the model is loaded (no API key needed)."""
        return {"status": "ok", "model": model_id}

    @app.get("/v1/models", tags=["openai"], responses=ERROR_RESPONSES)
    async def list_models():
        return {
            "object": "list",
            "data": [{"id": model_id, "object": "model", "created": created, "owned_by": "local"}],
        }

    @app.get("/v1/tasks", tags=["tasks"], responses=ERROR_RESPONSES)
    async def list_tasks():
        return {
            "object": "list",
            "data": [
                {"name": t.name, "id": t.id, "kind": t.kind, "labels": list(t.labels)}
                for t in registry.tasks
            ],
        }

    @app.post("/v1/tasks/{task}", tags=["tasks"], responses=ERROR_RESPONSES)
    async def run_task(task: str, body: TaskRequest, request: Request):
        """Run one registered task (by Chinese name or id) on `input`."""
        spec = resolve_task(task)
        fields = _log_fields(request)
        fields["task"] = spec.id
        prompt = render_prompt(tokenizer, spec.name, body.input)
        fields["prompt_tokens"] = prompt_tokens = await count_tokens(tokenizer, prompt)
        # Classifiers score their labels; the others generate up to max_tokens.
        requested = None if spec.is_classification else body.max_tokens
        max_tokens = check_budget(prompt_tokens, requested, "input")
        prediction, fields["batch_size"] = await runner.predict(
            spec.name, body.input, None if spec.is_classification else max_tokens
        )
        result: dict[str, Any] = {"task": spec.name}
        if spec.is_classification:
            result["label"] = prediction.output
        else:
            result["answer"] = prediction.output
        if prediction.probability is not None:
            result["probability"] = prediction.probability
        return result

    @app.post("/v1/route", tags=["tasks"], responses=ERROR_RESPONSES)
    async def route_text(body: RouteRequest, request: Request):
        """The router's structured result: scene, type and what follows from them."""
        # The router runs several task prompts over the text; the longest must fit.
        prompt_tokens = max(
            [
                await count_tokens(tokenizer, render_prompt(tokenizer, t.name, body.input))
                for t in registry.tasks
            ]
        )
        _log_fields(request)["prompt_tokens"] = prompt_tokens
        max_tokens = check_budget(prompt_tokens, None, "input")
        result = await runner.call(route, predictor, body.input, max_new_tokens=max_tokens)
        return jsonable_encoder(result)

    @app.post("/v1/chat/completions", tags=["openai"], responses=ERROR_RESPONSES)
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        """OpenAI chat completions; `stream: true` answers with server-sent events."""
        if body.model and body.model != model_id:
            raise ApiError(
                404,
                f"the model {body.model!r} does not exist; this server serves {model_id!r}",
                type="not_found_error",
                param="model",
                code="model_not_found",
            )
        if body.messages[-1].role != "user":
            raise ApiError(
                400, "the last message must have role 'user'", param="messages", code=None
            )
        messages = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in body.messages
        ]
        stops = body.stop_strings()
        if len(stops) > 4:
            raise ApiError(400, "at most 4 stop strings", param="stop")
        thinking = bool(body.chat_template_kwargs and body.chat_template_kwargs.enable_thinking)
        prompt = render_chat(tokenizer, messages, thinking=thinking)
        fields = _log_fields(request)
        fields["prompt_tokens"] = prompt_tokens = await count_tokens(tokenizer, prompt)
        max_tokens = check_budget(
            prompt_tokens, body.max_completion_tokens or body.max_tokens, "max_tokens"
        )
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        sampling = {
            "max_new_tokens": max_tokens,
            # A vanishing temperature overflows the scaled logits (inf/nan): that is greedy.
            "temperature": body.temperature if body.temperature >= GREEDY_BELOW else 0.0,
            "top_p": body.top_p,
        }
        if body.stream:
            return await _stream_chat(
                body, prompt, prompt_tokens, sampling, stops, thinking, completion_id, fields
            )

        reasoning, answer = await runner.call(
            predictor.chat, messages, thinking=thinking, **sampling
        )
        completion_tokens = await count_tokens(tokenizer, reasoning + answer)
        fields["completion_tokens"] = completion_tokens
        finish = "length" if completion_tokens >= max_tokens else "stop"
        scanner = StopScanner(stops)
        cut = scanner.feed(answer) + scanner.flush()
        if scanner.stopped:
            answer, finish = cut, "stop"
        message: dict[str, Any] = {"role": "assistant", "content": answer}
        if reasoning:
            message["reasoning_content"] = reasoning
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_id,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    async def _stream_chat(
        body, prompt, prompt_tokens, sampling, stops, thinking, completion_id, fields
    ):
        kwargs = dict(sampling)
        pieces = runner.stream(lambda: predictor.stream(prompt, **kwargs))
        # Wait for the first piece here, so 429/504/model errors still get a proper status.
        try:
            first = await anext(pieces)
        except StopAsyncIteration:
            first = None
        created_at = int(time.time())

        def chunk(delta: dict, finish: str | None = None) -> dict:
            return {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created_at,
                "model": model_id,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }

        async def events() -> AsyncIterator[str]:
            scanner = StopScanner(stops)
            produced: list[str] = []
            held = ""  # with thinking on: text before the end of the thinking block
            in_thinking = thinking
            yield _sse(chunk({"role": "assistant", "content": ""}))
            try:

                async def all_pieces():
                    if first is not None:
                        yield first
                    async for piece in pieces:
                        yield piece

                async for piece in all_pieces():
                    produced.append(piece)
                    if in_thinking:
                        held += piece
                        if "</think>" not in held:
                            continue
                        reasoning, piece = split_thinking(held)
                        in_thinking, held = False, ""
                        if reasoning:
                            yield _sse(chunk({"reasoning_content": reasoning}))
                    text = scanner.feed(piece)
                    if text:
                        yield _sse(chunk({"content": text}))
                    if scanner.stopped:
                        break
                tail = scanner.flush() + (scanner.feed(held) + scanner.flush() if held else "")
                if tail:
                    yield _sse(chunk({"content": tail}))
                completion_tokens = await count_tokens(tokenizer, "".join(produced))
                fields["completion_tokens"] = completion_tokens
                finish = (
                    "length"
                    if completion_tokens >= sampling["max_new_tokens"] and not scanner.stopped
                    else "stop"
                )
                yield _sse(chunk({}, finish))
                if body.stream_options and body.stream_options.include_usage:
                    usage = {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": completion_tokens,
                        "total_tokens": prompt_tokens + completion_tokens,
                    }
                    yield _sse({**chunk({}), "choices": [], "usage": usage})
            except ApiError as exc:
                yield _sse(error_body(exc.message, exc.type, exc.param, exc.code))
            except Exception:
                log.exception("stream %s failed", completion_id)
                yield _sse(error_body("internal server error", "server_error"))
            finally:
                await pieces.aclose()
            yield _sse("[DONE]")

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    # Outermost first: log everything, then authenticate, then bound the body.
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    app.add_middleware(BearerAuth, api_key=config.api_key)
    app.add_middleware(AccessLog)
    return app


# --------------------------------------------------------------------------- entry point


def load_predictor(config: ServeConfig):
    from .predict import Predictor

    try:
        return Predictor.load(
            base_model=config.model or config.base_model,
            adapter=config.adapter,
            precision=config.precision,
            hub=config.hub,
            trust_remote_code=config.trust_remote_code,
            tasks=config.tasks,
        )
    except PredictorError as exc:
        raise ConfigError(str(exc)) from exc


def warm_up(predictor) -> None:
    """One short call per task, so the first requests do not pay for lazy set-up."""
    began = time.perf_counter()
    for task in predictor.registry.tasks:
        predictor.predict(task.name, ["你好"], max_new_tokens=1)
    log.info("warmed up in %.0f ms", (time.perf_counter() - began) * 1000)


def _configure_access_log() -> None:
    """Access lines are bare JSON objects on stderr, one per request."""
    if access_log.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    access_log.addHandler(handler)
    access_log.setLevel(logging.INFO)
    access_log.propagate = False


def serve(config: ServeConfig) -> None:
    """Load the model and serve it with uvicorn until interrupted."""
    import uvicorn

    problems = config.validate()
    if problems:
        raise ConfigError("invalid serve settings:\n  " + "\n  ".join(problems))
    if config.test_delay_ms:
        log.warning(
            "%s=%g: every model call sleeps first (test-only)", TEST_DELAY_ENV, config.test_delay_ms
        )
    predictor = load_predictor(config)
    warm_up(predictor)
    app = create_app(predictor, config)
    _configure_access_log()
    if config.host not in ("127.0.0.1", "localhost", "::1") and not config.api_key:
        log.warning(
            "serving on %s without --api-key: anyone who can reach it can use it", config.host
        )
    log.info(
        "serving %s on http://%s:%d (context %d, max_tokens cap %d, concurrency %d + queue %d)",
        config.model_name(),
        config.host,
        config.port,
        min(predictor.context_length, config.max_context or predictor.context_length),
        config.max_tokens_cap,
        config.max_concurrency,
        config.max_queue,
    )
    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
    )


def read_test_delay_ms() -> float:
    """QWEN3_LORA_TEST_DELAY_MS (test-only), 0 when unset."""
    raw = os.environ.get(TEST_DELAY_ENV, "").strip()
    try:
        return float(raw) if raw else 0.0
    except ValueError as exc:
        raise ConfigError(
            f"{TEST_DELAY_ENV} must be a number of milliseconds, not {raw!r}"
        ) from exc
