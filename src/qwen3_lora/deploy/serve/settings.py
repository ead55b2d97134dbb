"""What `qwen3-lora serve` loads and how it limits requests: `ServeConfig` and its flags."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from ...models.loading import PRECISIONS
from ...models.source import HUBS

API_KEY_ENV = "QWEN3_LORA_API_KEY"


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
    workspace: str | None = None  # the web console reads and writes only inside it
    enable_training: bool = False  # the console may start train/eval jobs and swap the adapter
    max_jobs: int = 1  # console jobs running at once

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
        for name in ("max_queue", "batch_window_ms"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_context is not None and self.max_context <= 0:
            problems.append(f"max_context must be > 0, got {self.max_context}")
        if self.max_jobs <= 0:
            problems.append(f"max_jobs must be > 0, got {self.max_jobs}")
        if self.workspace is not None and not Path(self.workspace).is_dir():
            problems.append(f"--workspace {self.workspace} is not a folder")
        if self.enable_training and not self.workspace:
            problems.append("--enable-training needs --workspace (jobs write only inside it)")
        if not 0 <= self.port <= 65535:
            problems.append(f"port must be in 0..65535, got {self.port}")
        if self.api_key is not None and not self.api_key.strip():
            problems.append(f"--api-key / {API_KEY_ENV} is set but empty")
        return problems

    def model_name(self) -> str:
        """The id clients pass as `model`: --served-model-name, else the folder's name."""
        source = self.adapter or self.model or "model"
        return self.served_model_name or Path(source.rstrip("/")).name or source


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `qwen3-lora serve`, one per `ServeConfig` field (unset: the field's default)."""
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--adapter", help="LoRA adapter folder (base model from its config)")
    what.add_argument("--model", help="merged or plain model folder, hub id, or 'tiny'")
    p.add_argument("--base-model", help="with --adapter: override the base model")
    p.add_argument("--precision", choices=list(PRECISIONS), help="default auto")
    p.add_argument("--hub", choices=list(HUBS), help="default huggingface")
    p.add_argument("--trust-remote-code", action="store_true", help="run code shipped with a model")
    p.add_argument("--tasks", help="task registry YAML (default: built-in)")
    p.add_argument("--host", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, help="default 8000")
    p.add_argument(
        "--api-key",
        help="require 'Authorization: Bearer KEY' on every route but /health "
        f"(default: ${API_KEY_ENV}; none: no auth)",
    )
    p.add_argument("--served-model-name", help="model id clients send (default: folder name)")
    p.add_argument("--max-body-bytes", type=int, help="larger bodies get 413 (default 1 MiB)")
    p.add_argument("--max-tokens-cap", type=int, help="max_tokens is clamped to this (1024)")
    p.add_argument("--default-max-tokens", type=int, help="when a request sets none (512)")
    p.add_argument("--max-context", type=int, help="context limit (default: the model's)")
    p.add_argument("--max-concurrency", type=int, help="requests running at once (32)")
    p.add_argument("--max-queue", type=int, help="requests waiting; beyond: 429 (256)")
    p.add_argument("--request-timeout", dest="request_timeout_s", type=float, help="504 (120 s)")
    p.add_argument("--batch-window-ms", type=float, help="task requests collected per batch (5)")
    p.add_argument("--max-batch-size", type=int, help="largest task batch (32)")
    p.add_argument(
        "--workspace",
        help="folder the web console at / reads eval reports and training runs from, and writes "
        "its jobs into (nothing outside it is read or written)",
    )
    p.add_argument(
        "--enable-training",
        action="store_true",
        help="let the console start train/eval jobs and load their adapters (needs --workspace; "
        "off by default)",
    )
    p.add_argument("--max-jobs", type=int, help="console jobs running at once (1)")


def config_from_arguments(args: argparse.Namespace, environ: dict) -> ServeConfig:
    """A `ServeConfig` from parsed flags; the API key falls back to `$QWEN3_LORA_API_KEY`."""
    values = {
        k: v
        for k, v in vars(args).items()
        if k in ServeConfig.__dataclass_fields__ and v is not None
    }
    values.setdefault("api_key", environ.get(API_KEY_ENV) or None)
    return ServeConfig(**values)
