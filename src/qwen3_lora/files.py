"""Files qwen3-lora writes: its cache folder, and atomic writes.

Every output a user relies on (adapters, tokenizers, configs, merged models, exported GGUF
files, reports) is written under a temporary name in the same folder, flushed to disk and then
renamed over the final name, so a crash or kill leaves either the previous complete file or the
new complete one, never a truncated file under the real name.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

CACHE_ENV = "QWEN3_LORA_CACHE"
TEMP_PREFIX = ".tmp-"


def cache_dir() -> Path:
    """`$QWEN3_LORA_CACHE`, default ~/.cache/qwen3-lora."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "qwen3-lora")


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a folder be opened
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write; on success it is fsynced and renamed to `path`,
    on failure removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.parent / f"{TEMP_PREFIX}{path.name}.{secrets.token_hex(4)}"
    # Created like any new file (0666 less the umask), not mkstemp's 0600.
    os.close(os.open(tmp_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
