"""`qwen3-lora serve`: an OpenAI-compatible HTTP server over a `Predictor` (FastAPI + uvicorn).

settings (`ServeConfig`, flags) -> errors (OpenAI-style error objects) -> schemas (request
bodies) -> limits (429 / 504 admission) -> runner (the model thread, task batching) ->
middleware (access log, API key, body size) -> routes (`tasks`, `chat`, and the web console:
`console`) -> `app.create_app` -> `main.serve`.
"""

from .app import create_app
from .main import load_predictor, serve
from .runner import ModelRunner
from .settings import API_KEY_ENV, ServeConfig

__all__ = ["API_KEY_ENV", "ModelRunner", "ServeConfig", "create_app", "load_predictor", "serve"]
