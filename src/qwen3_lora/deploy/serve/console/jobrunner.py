"""Runs one console job's command and records how it ended, even when the server is gone.

    python jobrunner.py EXIT_FILE -- ARGV...

`jobs.Jobs` starts this script by path in a new session (its own process group); it starts ARGV
in the same group, waits for it and writes EXIT_FILE atomically: {"exit_code", "ended"}, a
negative code for a command killed by a signal. SIGTERM, SIGINT and SIGHUP sent to the group
reach ARGV directly; this script only notes them and keeps waiting, so the exit is recorded.

Standard library only and run by path, not imported: importing the package would load the
server's dependencies into every job for nothing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time


def write_atomically(path: str, record: dict) -> None:
    # The same temporary-name-fsync-rename steps as qwen3_lora.files.atomic_write_text.
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(record, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: jobrunner.py EXIT_FILE -- ARGV...", file=sys.stderr)
        return 2
    exit_file, command = argv[0], argv[2:]
    received: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: received.append(signum))
    try:
        code = subprocess.Popen(command).wait()
    except OSError as exc:
        print(f"error: cannot start {command[0]}: {exc}", file=sys.stderr, flush=True)
        code = 127
    write_atomically(exit_file, {"exit_code": code, "ended": time.time(), "signals": received})
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
