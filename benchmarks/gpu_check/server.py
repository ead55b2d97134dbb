"""Part 4: `qwen3-lora serve` answering a task request and a chat completion, on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

SCENE_INPUT = "帮我把2023年成都市DEM数据发布成地图服务"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url: str, body: dict | None = None, timeout: float = 120) -> tuple[int, dict, float]:
    """(status, JSON body, ms) of a GET (no body) or a JSON POST."""
    data = json.dumps(body, ensure_ascii=False).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    began = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            status, text = answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read()
    ms = (time.perf_counter() - began) * 1000
    try:
        return status, json.loads(text or b"{}"), ms
    except json.JSONDecodeError:
        return status, {"raw": text.decode(errors="replace")[:500]}, ms


def _wait_healthy(base: str, proc: subprocess.Popen, log: Path, timeout: float) -> float:
    began = time.perf_counter()
    while time.perf_counter() - began < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if _request(f"{base}/health", timeout=2)[0] == 200:
                return time.perf_counter() - began
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(
        f"the server did not answer /health in {timeout} s:\n{log.read_text()[-3000:]}"
    )


def server(ctx: dict) -> dict:
    port = _free_port()
    what = (
        ["--adapter", ctx["adapter"]] if ctx.get("adapter") else ["--model", str(ctx["model_dir"])]
    )
    command = [sys.executable, "-m", "qwen3_lora", "serve", *what]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    log = ctx["workdir"] / "serve.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    if ctx["dry_run"]:
        env["OMP_NUM_THREADS"] = "1"
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        startup = _wait_healthy(base, proc, log, timeout=180)
        status, task, task_ms = _request(f"{base}/v1/tasks/scene", {"input": SCENE_INPUT})
        model = _request(f"{base}/v1/models")[1]["data"][0]["id"]
        chat_body = {
            "model": model,
            "messages": [{"role": "user", "content": "你好"}],
            "max_tokens": 8,
        }
        chat_status, chat, chat_ms = _request(f"{base}/v1/chat/completions", chat_body)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return {
        "serving": " ".join(what[:1]),
        "startup_seconds": round(startup, 2),
        "task": {"status": status, "ms": round(task_ms, 1), "answer": task},
        "chat": {
            "status": chat_status,
            "ms": round(chat_ms, 1),
            "usage": chat.get("usage"),
            "finish_reason": (chat.get("choices") or [{}])[0].get("finish_reason"),
        },
        "ok": status == 200 and "label" in task and chat_status == 200,
    }
