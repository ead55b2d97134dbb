"""The task routes: `/health`, `/v1/models`, `/v1/tasks`, `/v1/tasks/{task}` and `/v1/route`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.encoders import jsonable_encoder

from ...inference.router import route
from ...prompt.render import render_prompt
from .errors import ERROR_RESPONSES
from .runner import with_adapter
from .schemas import RouteRequest, TaskRequest
from .state import ServeState, log_fields


def task_routes(state: ServeState) -> APIRouter:
    api = APIRouter()

    @api.get("/health", tags=["meta"])
    async def health():
        """Liveness: 200 once the model is loaded (no API key needed)."""
        return {"status": "ok", "model": state.model_id}

    @api.get("/v1/models", tags=["openai"], responses=ERROR_RESPONSES)
    async def list_models():
        model = {"id": state.model_id, "object": "model", "created": state.created}
        return {"object": "list", "data": [{**model, "owned_by": "local"}]}

    @api.get("/v1/tasks", tags=["tasks"], responses=ERROR_RESPONSES)
    async def list_tasks():
        return {
            "object": "list",
            "data": [
                {"name": t.name, "id": t.id, "kind": t.kind, "labels": list(t.labels)}
                for t in state.model.registry.tasks
            ],
        }

    @api.post("/v1/tasks/{task}", tags=["tasks"], responses=ERROR_RESPONSES)
    async def run_task(task: str, body: TaskRequest, request: Request):
        """Run one registered task (by Chinese name or id) on `input`."""
        m = state.model
        spec = m.resolve_task(task)
        m.require_adapter(body.adapter)
        fields = log_fields(request)
        fields["task"] = spec.id
        prompt = render_prompt(m.tokenizer, spec.name, body.input)
        fields["prompt_tokens"] = prompt_tokens = await m.count_tokens(prompt)
        # Classifiers score their labels; the others generate up to max_tokens.
        requested = None if spec.is_classification else body.max_tokens
        max_tokens = m.check_budget(prompt_tokens, requested, "input")
        prediction, fields["batch_size"] = await state.runner.predict(
            spec.name,
            body.input,
            None if spec.is_classification else max_tokens,
            predictor=m.predictor,
            adapter=body.adapter,
        )
        result: dict[str, Any] = {"task": spec.name}
        if spec.is_classification:
            result["label"] = prediction.output
        else:
            result["answer"] = prediction.output
        if prediction.probability is not None:
            result["probability"] = prediction.probability
        if prediction.scores is not None:
            result["scores"] = prediction.scores  # every label's probability
        return result

    @api.post("/v1/route", tags=["tasks"], responses=ERROR_RESPONSES)
    async def route_text(body: RouteRequest, request: Request):
        """The router's structured result: scene, type and what follows from them."""
        m = state.model
        m.require_adapter(body.adapter)
        # The router runs several task prompts over the text; the longest must fit.
        prompt_tokens = max(
            [
                await m.count_tokens(render_prompt(m.tokenizer, t.name, body.input))
                for t in m.registry.tasks
            ]
        )
        log_fields(request)["prompt_tokens"] = prompt_tokens
        max_tokens = m.check_budget(prompt_tokens, None, "input")
        p = m.predictor
        result = await state.runner.call(
            with_adapter, p, body.adapter, route, p, body.input, max_new_tokens=max_tokens
        )
        return jsonable_encoder(result)

    return api
