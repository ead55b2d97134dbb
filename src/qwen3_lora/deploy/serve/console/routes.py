"""The console's routes: the page at `/`, its files under `/static/`, and `/api/...`.

    GET  /api/info                             the served model; what this console may do
    GET  /api/workspace/files                  data files for the training form
    GET  /api/workspace/reports                evaluation reports (folders with report.json)
    GET  /api/workspace/reports/{path}         report.json + misses per model and task
    GET  /api/workspace/reports/{path}/misses  wrong predictions (?model=&task=&offset=&limit=)
    GET  /api/workspace/runs                   training runs (folders with metrics.jsonl)
    GET  /api/workspace/runs/{path}/metrics    metrics rows from byte ?offset= (poll it)
    GET  /api/jobs                             the jobs, newest first
    POST /api/jobs                             {"kind": "train"|"eval", "fields": {...}} -> 201
    GET  /api/jobs/{id}                        one job and its progress
    GET  /api/jobs/{id}/log                    log text from byte ?offset= (default: the tail)
    POST /api/jobs/{id}/cancel                 SIGTERM, SIGKILL after a grace period -> 202
    POST /api/model/load                       {"adapter": "runs/x"}: serve that adapter now

The API key guards all of them (`middleware.BearerAuth`); the page and its files are open.
Errors are the server's error objects; invalid job fields add `problems`, one per field.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, FastAPI, Query
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from ....models.adapter import ADAPTER_CONFIG
from ..errors import ApiError
from ..state import ServeState
from . import reports
from .fields import FORMS
from .jobs import Jobs
from .workspace import Workspace, WorkspaceError

STATIC_DIR = Path(__file__).with_name("static")
PAGE_PATHS = frozenset({"/", "/favicon.ico"})
STATIC_PREFIX = "/static/"
# The page may load and call only this server: no CDN, no outside fonts, no inline script.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'; form-action 'none'"
    ),
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@dataclass
class Console:
    """What the console may do: read `workspace`, run `jobs` (only with --enable-training), and
    `load_adapter(folder)` -> a new predictor to serve (blocking; run on a worker thread)."""

    workspace: Workspace | None = None
    jobs: Jobs | None = None
    load_adapter: Callable[[str], Any] | None = None
    _loading: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["train", "eval"]
    fields: dict[str, Any] = Field(default_factory=dict)


class LoadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    adapter: str = Field(min_length=1, max_length=1024)


def _served(state: ServeState, ws: Workspace | None) -> dict:
    predictor = state.model.predictor
    adapter = getattr(predictor, "adapter", None)
    info = {
        "model": state.model_id,
        "base_model": getattr(predictor, "base_model", None),
        "adapter": adapter,
        "has_adapter": state.model.has_adapter,
    }
    if ws is not None and adapter:
        with contextlib.suppress(ValueError, OSError):
            info["adapter_in_workspace"] = ws.relative(Path(adapter))
    return info


def console_routes(state: ServeState, console: Console) -> APIRouter:
    api = APIRouter(tags=["console"])

    def ws() -> Workspace:
        if console.workspace is None:
            raise ApiError(
                404,
                "this server has no workspace: start it with --workspace DIR",
                type="not_found_error",
                code="no_workspace",
            )
        return console.workspace

    def jobs() -> Jobs:
        if console.jobs is None:
            raise ApiError(
                403,
                "training is off: start the server with --workspace DIR --enable-training",
                type="permission_error",
                code="training_disabled",
            )
        return console.jobs

    @api.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    def page():
        return FileResponse(STATIC_DIR / "index.html", headers=PAGE_HEADERS)

    @api.get("/favicon.ico", include_in_schema=False)
    def favicon():
        return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml")

    @api.get("/api/info")
    def info():
        served = _served(state, console.workspace)
        training = console.jobs is not None
        return {
            **served,
            "compare": served["has_adapter"],
            "workspace": console.workspace is not None,
            "training": training,
            "can_load": training and console.load_adapter is not None,
            "max_jobs": console.jobs.max_running if training else 0,
            "forms": {k: [f.schema() for f in form()] for k, form in FORMS.items()}
            if training
            else {},
        }

    @api.get("/api/workspace/files")
    def data_files():
        return {"data": ws().data_files(exclude=reports.OWN_FILES)}

    @api.get("/api/workspace/reports")
    def list_reports():
        return {"data": reports.list_reports(ws())}

    # Before the plain report route, whose {path:path} would swallow "/misses".
    @api.get("/api/workspace/reports/{path:path}/misses")
    def misses(
        path: str,
        model: str | None = None,
        task: str | None = None,
        offset: int = Query(0, ge=0),
        limit: int = Query(100, ge=1, le=1000),
    ):
        return reports.read_misses(ws(), path, model=model, task=task, offset=offset, limit=limit)

    @api.get("/api/workspace/reports/{path:path}")
    def report(path: str):
        return reports.read_report(ws(), path)

    @api.get("/api/workspace/runs")
    def list_runs():
        return {"data": reports.list_runs(ws())}

    @api.get("/api/workspace/runs/{path:path}/metrics")
    def run_metrics(path: str, offset: int = Query(0, ge=0)):
        return reports.run_metrics(ws(), path, offset)

    @api.get("/api/jobs")
    def list_jobs():
        if console.jobs is None:
            return {"data": [], "enabled": False}
        return {"data": console.jobs.list(), "enabled": True}

    @api.post("/api/jobs", status_code=201)
    def start_job(body: JobRequest):
        base = getattr(state.model.predictor, "base_model", None)
        return jobs().start(body.kind, body.fields, allowed_models=(base,) if base else ())

    @api.get("/api/jobs/{job_id}")
    def get_job(job_id: str):
        return jobs().get(job_id)

    @api.get("/api/jobs/{job_id}/log")
    def job_log(job_id: str, offset: int | None = Query(None, ge=0)):
        return jobs().log(job_id, offset)

    @api.post("/api/jobs/{job_id}/cancel", status_code=202)
    def cancel_job(job_id: str):
        return jobs().cancel(job_id)

    @api.post("/api/model/load")
    async def load_model(body: LoadRequest):
        jobs()  # swapping the served model belongs to training mode
        if console.load_adapter is None:
            raise ApiError(501, "this server cannot load another adapter", code="cannot_load")
        folder = ws().folder(body.adapter)
        if not (folder / ADAPTER_CONFIG).is_file():
            raise WorkspaceError(
                400,
                f"{body.adapter!r} holds no {ADAPTER_CONFIG}: not a finished run",
                "not_adapter",
            )
        if console._loading.locked():
            raise ApiError(409, "another adapter is being loaded", code="loading")
        async with console._loading:
            try:
                new = await asyncio.to_thread(console.load_adapter, str(folder))
            except Exception as exc:  # the loader's own message (a UserError says what to do)
                raise ApiError(
                    400, f"cannot load {body.adapter}: {exc}", code="load_failed"
                ) from exc
        state.use_predictor(new)
        return info()

    return api


def install_console(app: FastAPI, state: ServeState, console: Console) -> None:
    """Add the console's page, files and API to the serve app."""
    app.include_router(console_routes(state, console))
    app.mount(STATIC_PREFIX.rstrip("/"), StaticFiles(directory=STATIC_DIR), name="console")
