"""`create_app`: the ASGI app of `qwen3-lora serve` over a loaded `Predictor`.

Routes: `POST /v1/chat/completions` (plain and SSE streaming, `chat`), `GET /v1/models`,
`GET /health`, `GET /v1/tasks`, `POST /v1/tasks/{task}` and `POST /v1/route` (`tasks`), and the
web console at `/` with its `/api/...` routes (`console`). Errors
are OpenAI-style objects (`errors`); every model request passes the admission limits
(`limits`) and runs on the model thread (`runner`); middleware logs, authenticates and bounds
the body (`middleware`).
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from .chat import chat_routes
from .console import PAGE_PATHS, STATIC_PREFIX, Console, console_from_config, install_console
from .errors import install_error_handlers
from .middleware import AccessLog, BearerAuth, BodyLimit
from .runner import ModelRunner
from .settings import ServeConfig
from .state import ServeState
from .tasks import task_routes


def create_app(
    predictor,
    config: ServeConfig,
    runner: ModelRunner | None = None,
    *,
    console: Console | None = None,
) -> FastAPI:
    """The app: routes, error handlers and middleware. `runner` defaults to a `ModelRunner`,
    `console` to the one the config's --workspace / --enable-training describe."""
    state = ServeState.over(predictor, config, runner or ModelRunner(predictor, config))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.runner.start()
        try:
            yield
        finally:
            state.runner.stop()

    app = FastAPI(
        title="qwen3-lora",
        description="OpenAI-compatible chat completions and the data-platform task endpoints.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.runner = state.runner
    app.state.serve = state
    install_error_handlers(app)
    app.include_router(task_routes(state))
    app.include_router(chat_routes(state))
    install_console(app, state, console or console_from_config(config))
    # Outermost first: log everything, then authenticate, then bound the body.
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    app.add_middleware(
        BearerAuth, api_key=config.api_key, page_paths=PAGE_PATHS, page_prefix=STATIC_PREFIX
    )
    app.add_middleware(AccessLog)
    return app
