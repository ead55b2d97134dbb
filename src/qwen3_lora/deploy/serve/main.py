"""`qwen3-lora serve`: load the model once, warm it up, and run the app with uvicorn."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

from ...errors import UserError
from ...inference.predictor import Predictor
from .app import create_app
from .console import console_from_config
from .middleware import access_log
from .settings import ServeConfig

log = logging.getLogger(__name__)
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


class ServeSettingsError(UserError):
    """`qwen3-lora serve` was given settings it cannot run with."""


def load_predictor(config: ServeConfig) -> Predictor:
    return Predictor.load(
        base_model=config.model or config.base_model,
        adapter=config.adapter,
        precision=config.precision,
        hub=config.hub,
        trust_remote_code=config.trust_remote_code,
        tasks=config.tasks,
    )


def adapter_loader(config: ServeConfig) -> Callable[[str], Predictor]:
    """What the console's "load into the playground" calls: an adapter folder -> a warmed-up
    predictor, loaded as this server loads its own (precision, hub, tasks)."""

    def load(folder: str) -> Predictor:
        predictor = load_predictor(
            dataclasses.replace(config, adapter=folder, model=None, base_model=None)
        )
        warm_up(predictor)
        return predictor

    return load


def warm_up(predictor) -> None:
    """One short call per task, so the first requests do not pay for lazy set-up."""
    began = time.perf_counter()
    for task in predictor.registry.tasks:
        predictor.predict(task.name, ["你好"], max_new_tokens=1)
    log.info("warmed up in %.0f ms", (time.perf_counter() - began) * 1000)


def configure_access_log() -> None:
    """Access lines are bare JSON objects on stderr, one per request."""
    if access_log.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    access_log.addHandler(handler)
    access_log.setLevel(logging.INFO)
    access_log.propagate = False


def check_settings(config: ServeConfig) -> None:
    problems = config.validate()
    if problems:
        raise ServeSettingsError("invalid serve settings:\n  " + "\n  ".join(problems))


def run_app(app, predictor, config: ServeConfig) -> None:
    """Serve `app` with uvicorn until interrupted."""
    import uvicorn

    configure_access_log()
    if config.host not in LOCAL_HOSTS and not config.api_key:
        log.warning(
            "serving on %s without --api-key: anyone who can reach it can use it", config.host
        )
    if config.enable_training and config.host not in LOCAL_HOSTS and not config.api_key:
        log.warning(
            "--enable-training without --api-key: anyone who reaches %s can train", config.host
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


def serve(config: ServeConfig) -> None:
    """Load the model and serve it until interrupted."""
    check_settings(config)
    console = console_from_config(config, load_adapter=adapter_loader(config))
    predictor = load_predictor(config)
    warm_up(predictor)
    run_app(create_app(predictor, config, console=console), predictor, config)
