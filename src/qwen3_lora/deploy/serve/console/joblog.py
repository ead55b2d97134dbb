"""A job's log: paged reads that never cut a UTF-8 character, and why a failed command failed."""

from __future__ import annotations

import os
import re
from pathlib import Path

TAIL_BYTES = 16 << 10  # what a first look at a log shows
PAGE_BYTES = 64 << 10  # the most one read returns
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b")


def read_tail(path: Path, size: int) -> bytes:
    """The last `size` bytes of a file (b"" when it cannot be read)."""
    try:
        with path.open("rb") as fh:
            end = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, end - size))
            return fh.read()
    except OSError:
        return b""


def utf8_prefix(data: bytes) -> bytes:
    """`data` less a UTF-8 sequence cut at its end (the next read starts with it)."""
    for cut in range(min(4, len(data)) + 1):
        head = data[: len(data) - cut]
        try:
            head.decode("utf-8")
            return head
        except UnicodeDecodeError:
            continue
    return data  # not UTF-8 at all: shown with replacement characters


def read_log(path: Path, offset: int | None = None) -> dict:
    """Text from byte `offset` (default: the last TAIL_BYTES), at most PAGE_BYTES of it.

    `offset` in the answer is where the next read starts; `reset` says the log is shorter than
    the offset asked for (read again from the start); `truncated`, that the tail left out the
    beginning.
    """
    try:
        size = path.stat().st_size
    except OSError:
        size = 0
    start = max(0, size - TAIL_BYTES) if offset is None else max(0, int(offset))
    reset = start > size
    if reset:
        start = 0
    data = b""
    if size > start:
        with path.open("rb") as fh:
            fh.seek(start)
            data = utf8_prefix(fh.read(PAGE_BYTES))
    return {
        "text": data.decode("utf-8", "replace"),
        "offset": start + len(data),
        "size": size,
        "truncated": offset is None and start > 0,
        "reset": reset,
    }


def failure_reason(log_tail: str) -> str | None:
    """Why a command failed, from the end of its log: the CLI's own `error: ...` message with the
    lines that follow it, else a traceback's last line, else the last line."""
    lines = [ln.rstrip() for ln in log_tail.replace("\r", "\n").splitlines() if ln.strip()]
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("error:"):
            return "\n".join(lines[i : i + 20])
    for line in reversed(lines):
        if _EXCEPTION_LINE.match(line):
            return line
    return lines[-1] if lines else None
