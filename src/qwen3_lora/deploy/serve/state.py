"""What every route of one server shares: the settings, the runner, and the model being served,
with the checks every model request passes first (a known task, a prompt that fits the context,
an adapter to switch off when the request asks for the base model).

The served model can be swapped while the server runs (the console's "load into the
playground"): a request reads `ServeState.model` once, at its start, and uses that
`ServedModel` throughout, so it never renders with one model's tokenizer and runs on another.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from .errors import ApiError
from .runner import ModelRunner
from .settings import ServeConfig

# Tokenize long texts off the event loop (fast tokenizers release the GIL).
_TOKENIZE_INLINE_CHARS = 4096


@dataclass(frozen=True)
class ServedModel:
    """One loaded predictor and the per-request checks that depend on it."""

    predictor: object
    config: ServeConfig

    @property
    def tokenizer(self):
        return self.predictor.tokenizer

    @property
    def registry(self):
        return self.predictor.registry

    @property
    def has_adapter(self) -> bool:
        return bool(getattr(self.predictor, "has_adapter", False))

    @property
    def context_length(self) -> int:
        model = int(self.predictor.context_length)
        return min(model, self.config.max_context or model)

    async def count_tokens(self, text: str) -> int:
        def count() -> int:
            return len(self.tokenizer(text, add_special_tokens=False).input_ids)

        if len(text) <= _TOKENIZE_INLINE_CHARS:
            return count()
        return await asyncio.to_thread(count)

    def check_budget(self, prompt_tokens: int, requested: int | None, param: str) -> int:
        """max_tokens after clamping to the cap; 400 when the prompt leaves no room for it."""
        config, context_length = self.config, self.context_length
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

    def resolve_task(self, name: str):
        task = self.registry.get(name)
        if task is None:
            known = ", ".join(f"{t.name} ({t.id})" for t in self.registry.tasks)
            raise ApiError(
                404,
                f"unknown task {name!r}; known tasks: {known}",
                type="not_found_error",
                param="task",
                code="task_not_found",
            )
        return task

    def require_adapter(self, adapter: bool) -> None:
        """`adapter: false` asks for the base model: 400 when there is no adapter to switch off."""
        if not adapter and not self.has_adapter:
            raise ApiError(
                400,
                "adapter: false asks for the base model with the adapter switched off, but this "
                "server serves a model without an adapter",
                param="adapter",
                code="no_adapter",
            )


@dataclass
class ServeState:
    model: ServedModel
    config: ServeConfig
    runner: ModelRunner
    created: int = field(default_factory=lambda: int(time.time()))

    @classmethod
    def over(cls, predictor, config: ServeConfig, runner: ModelRunner) -> ServeState:
        return cls(ServedModel(predictor, config), config, runner)

    @property
    def model_id(self) -> str:
        return self.config.model_name()

    def use_predictor(self, predictor) -> None:
        """Serve `predictor` from now on; requests already running finish on the one they took."""
        self.model = ServedModel(predictor, self.config)
        self.runner.predictor = predictor


def log_fields(request) -> dict:
    """The request's fields for its access-log line (`middleware.AccessLog`)."""
    return request.scope.setdefault("qwen3_lora.log", {})
