"""Shared pieces of the web console's tests: a workspace with a report, a run and data files,
jobs run by the fake CLI, a live uvicorn server in a thread, and waiting by polling."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from pathlib import Path

import fake_cli
from conftest import MEMORISE

from qwen3_lora.deploy.serve.console import Jobs, Workspace

FAKE_CLI = Path(__file__).with_name("fake_cli.py")
API_KEY = "console-test-key-0123"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")


def make_workspace(root: Path) -> Path:
    """eval/demo (a base-vs-tuned report), runs/demo (a finished run), data/memorise.jsonl."""
    report = root / "eval" / "demo"
    report.mkdir(parents=True)
    (report / "report.json").write_text(
        json.dumps(fake_cli.sample_report("runs/demo"), ensure_ascii=False), "utf-8"
    )
    _jsonl(report / "predictions.jsonl", fake_cli.sample_predictions())
    run = root / "runs" / "demo"
    rows = []
    for step in range(1, 21):
        rows.append(
            {"step": step, "loss": round(2.5 * 0.85**step + 0.3, 4), "tokens_per_s": 2100.0}
        )
        if step % 10 == 0:
            rows.append({"step": step, "eval_loss": round(2.5 * 0.85**step + 0.5, 4)})
    _jsonl(run / "metrics.jsonl", rows)
    (run / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "x"}))
    _jsonl(root / "data" / "memorise.jsonl", MEMORISE)
    return root


def fake_jobs(workspace: Path, step_s: float = 0.05, **kwargs) -> Jobs:
    """Jobs whose commands are the fake CLI, `step_s` seconds per training step."""
    return Jobs(
        Workspace.open(workspace),
        prefix=(sys.executable, str(FAKE_CLI)),
        env={"FAKE_STEP_S": str(step_s)},
        **kwargs,
    )


def wait_for(condition, timeout: float = 30.0, interval: float = 0.05, what: str = "condition"):
    """Poll `condition()` until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what} not met within {timeout} s")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """uvicorn serving `app` on 127.0.0.1 in a daemon thread (a context manager)."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        wait_for(lambda: self.server.started or not self.thread.is_alive(), 60, what="uvicorn")
        if not self.server.started:
            raise RuntimeError("uvicorn did not start")
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def raw_get(self, target: str, headers: dict | None = None) -> tuple[int, bytes]:
        """GET `target` byte for byte, as a hostile client sends it (no normalising)."""
        lines = [f"GET {target} HTTP/1.1", "Host: x", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            raw = b""
            while chunk := sock.recv(65536):
                raw += chunk
        return int(raw.split(b" ", 2)[1]), raw
