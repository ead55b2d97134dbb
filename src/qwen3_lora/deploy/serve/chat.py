"""`POST /v1/chat/completions`: OpenAI chat completions, whole or streamed as server-sent events.

The conversation is rendered by `prompt.render.render_chat` (thinking off unless the request's
`chat_template_kwargs` turns it on); stop strings cut the answer (`StopScanner`); a streamed
answer whose client goes away stops generating at its next token (`runner.stream`).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from ...prompt.render import TemplateError, render_chat, split_thinking
from .errors import ERROR_RESPONSES, ApiError, error_body
from .runner import stream_with_adapter, with_adapter
from .schemas import ChatCompletionRequest
from .state import ServedModel, ServeState, log_fields

GREEDY_BELOW = 1e-5  # temperatures under this decode greedily
MAX_STOP_STRINGS = 4
log = logging.getLogger(__name__)


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


def sse(payload: dict | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n"


@dataclass
class ChatTurn:
    """One validated chat request, rendered and budgeted, ready to run on `model`."""

    model: ServedModel
    body: ChatCompletionRequest
    messages: list[dict]
    prompt: str
    prompt_tokens: int
    sampling: dict
    stops: list[str]
    thinking: bool
    id: str
    log: dict

    def usage(self, completion_tokens: int) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
        }


async def prepare_turn(state: ServeState, body: ChatCompletionRequest, request: Request):
    m = state.model
    if body.model and body.model != state.model_id:
        raise ApiError(
            404,
            f"the model {body.model!r} does not exist; this server serves {state.model_id!r}",
            type="not_found_error",
            param="model",
            code="model_not_found",
        )
    m.require_adapter(body.adapter)
    if body.messages[-1].role != "user":
        raise ApiError(400, "the last message must have role 'user'", param="messages", code=None)
    messages = [
        {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        for m in body.messages
    ]
    stops = body.stop_strings()
    if len(stops) > MAX_STOP_STRINGS:
        raise ApiError(400, f"at most {MAX_STOP_STRINGS} stop strings", param="stop")
    thinking = bool(body.chat_template_kwargs and body.chat_template_kwargs.enable_thinking)
    try:
        prompt = render_chat(m.tokenizer, messages, thinking=thinking)
    except TemplateError as exc:  # e.g. Gemma's template: roles must alternate
        raise ApiError(400, str(exc), param="messages", code=None) from exc
    fields = log_fields(request)
    fields["prompt_tokens"] = prompt_tokens = await m.count_tokens(prompt)
    requested = body.max_completion_tokens or body.max_tokens
    sampling = {
        "max_new_tokens": m.check_budget(prompt_tokens, requested, "max_tokens"),
        # A vanishing temperature overflows the scaled logits (inf/nan): that is greedy.
        "temperature": body.temperature if body.temperature >= GREEDY_BELOW else 0.0,
        "top_p": body.top_p,
    }
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    return ChatTurn(
        m, body, messages, prompt, prompt_tokens, sampling, stops, thinking, completion_id, fields
    )


async def complete(state: ServeState, turn: ChatTurn) -> dict:
    """The whole answer as one `chat.completion` object."""
    p = turn.model.predictor
    reasoning, answer = await state.runner.call(
        with_adapter,
        p,
        turn.body.adapter,
        p.chat,
        turn.messages,
        thinking=turn.thinking,
        **turn.sampling,
    )
    completion_tokens = await turn.model.count_tokens(reasoning + answer)
    turn.log["completion_tokens"] = completion_tokens
    finish = "length" if completion_tokens >= turn.sampling["max_new_tokens"] else "stop"
    scanner = StopScanner(turn.stops)
    cut = scanner.feed(answer) + scanner.flush()
    if scanner.stopped:
        answer, finish = cut, "stop"
    message: dict[str, Any] = {"role": "assistant", "content": answer}
    if reasoning:
        message["reasoning_content"] = reasoning
    return {
        "id": turn.id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": state.model_id,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": turn.usage(completion_tokens),
    }


async def stream(state: ServeState, turn: ChatTurn) -> StreamingResponse:
    """The answer as `chat.completion.chunk` events; 429/504 still come as a status."""
    sampling = dict(turn.sampling)
    p = turn.model.predictor
    pieces = state.runner.stream(
        lambda: stream_with_adapter(p, turn.body.adapter, lambda: p.stream(turn.prompt, **sampling))
    )
    # Wait for the first piece here, so 429/504/model errors still get a proper status.
    try:
        first = await anext(pieces)
    except StopAsyncIteration:
        first = None
    created_at = int(time.time())

    def chunk(delta: dict, finish: str | None = None) -> dict:
        return {
            "id": turn.id,
            "object": "chat.completion.chunk",
            "created": created_at,
            "model": state.model_id,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    async def all_pieces():
        if first is not None:
            yield first
        async for piece in pieces:
            yield piece

    async def events() -> AsyncIterator[str]:
        yield sse(chunk({"role": "assistant", "content": ""}))
        try:
            async for event in _answer_events(state, turn, all_pieces(), chunk):
                yield event
        except ApiError as exc:
            yield sse(error_body(exc.message, exc.type, exc.param, exc.code))
        except Exception:
            log.exception("stream %s failed", turn.id)
            yield sse(error_body("internal server error", "server_error"))
        finally:
            await pieces.aclose()
        yield sse("[DONE]")

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _answer_events(state: ServeState, turn: ChatTurn, pieces, chunk) -> AsyncIterator[str]:
    """The content (and reasoning) events of a streamed answer, then its finish and usage."""
    scanner = StopScanner(turn.stops)
    produced: list[str] = []
    held = ""  # with thinking on: text before the end of the thinking block
    in_thinking = turn.thinking
    async for piece in pieces:
        produced.append(piece)
        if in_thinking:
            held += piece
            if "</think>" not in held:
                continue
            reasoning, piece = split_thinking(held)
            in_thinking, held = False, ""
            if reasoning:
                yield sse(chunk({"reasoning_content": reasoning}))
        text = scanner.feed(piece)
        if text:
            yield sse(chunk({"content": text}))
        if scanner.stopped:
            break
    tail = scanner.flush() + (scanner.feed(held) + scanner.flush() if held else "")
    if tail:
        yield sse(chunk({"content": tail}))
    completion_tokens = await turn.model.count_tokens("".join(produced))
    turn.log["completion_tokens"] = completion_tokens
    limit = turn.sampling["max_new_tokens"]
    finish = "length" if completion_tokens >= limit and not scanner.stopped else "stop"
    yield sse(chunk({}, finish))
    if turn.body.stream_options and turn.body.stream_options.include_usage:
        yield sse({**chunk({}), "choices": [], "usage": turn.usage(completion_tokens)})


def chat_routes(state: ServeState) -> APIRouter:
    api = APIRouter()

    @api.post("/v1/chat/completions", tags=["openai"], responses=ERROR_RESPONSES)
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        """OpenAI chat completions; `stream: true` answers with server-sent events."""
        turn = await prepare_turn(state, body, request)
        return await (stream(state, turn) if body.stream else complete(state, turn))

    return api
