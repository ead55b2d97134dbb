"""Where qwen3-lora keeps files of its own: the cache folder (the built `tiny` model, Qwen3's
converted tokenizer, REPL history)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "QWEN3_LORA_CACHE"


def cache_dir() -> Path:
    """`$QWEN3_LORA_CACHE`, default ~/.cache/qwen3-lora."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "qwen3-lora")
