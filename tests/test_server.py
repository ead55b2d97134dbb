"""`qwen3-lora serve` as a real process on loopback: the official OpenAI client, raw HTTP for the
error paths, the admission limits (429/504), the access log, and a bounded load test."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from conftest import MEMORISE

API_KEY = "test-key-0123456789"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
MODEL_ID = "memorised-tiny"
MAX_BODY = 64 * 1024


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


SLOW_SERVE = Path(__file__).with_name("slow_serve.py")


class ServerProcess:
    def __init__(self, args: list[str], log_path: Path, delay_ms: float | None = None):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = log_path.open("wb")
        # A delay runs the server through the test-only launcher whose model calls sleep first.
        launcher = [str(SLOW_SERVE), str(delay_ms)] if delay_ms else ["-m", "qwen3_lora", "serve"]
        self.proc = subprocess.Popen(
            [sys.executable, *launcher, *args, "--port", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not ready in {timeout}s:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._log.close()

    def access_records(self) -> list[dict]:
        records = []
        for line in self.log_path.read_text(encoding="utf-8").splitlines():
            if line.startswith("{"):
                records.append(json.loads(line))
        return records


@pytest.fixture(scope="module")
def servers(tmp_path_factory, memorised_adapter):
    """The main server and a deliberately tiny one (1 running + 1 queued, slow model calls)."""
    logs = tmp_path_factory.mktemp("server-logs")
    common = ["--adapter", str(memorised_adapter), "--precision", "fp32"]
    limits = ["--max-body-bytes", str(MAX_BODY), "--max-tokens-cap", "64"]
    main = ServerProcess(
        [*common, "--api-key", API_KEY, "--served-model-name", MODEL_ID, *limits],
        logs / "main.log",
    )
    busy = ServerProcess(
        [*common, "--max-concurrency", "1", "--max-queue", "1", "--request-timeout", "4"],
        logs / "busy.log",
        delay_ms=2500,
    )
    try:
        main.wait_ready()
        busy.wait_ready()
        yield {"main": main, "busy": busy}
    finally:
        main.stop()
        busy.stop()


@pytest.fixture(scope="module")
def server(servers) -> ServerProcess:
    return servers["main"]


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=60)


def _user(task: str, text: str) -> list[dict]:
    return [{"role": "user", "content": f"任务: {task}\n输入: {text}"}]


def _error(response: httpx.Response) -> dict:
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    return error


def test_health_needs_no_key_and_models_lists_the_served_model(server):
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
    models = httpx.get(f"{server.url}/v1/models", headers=AUTH).json()
    assert [m["id"] for m in models["data"]] == [MODEL_ID]


def test_openai_client_chat_completion(client):
    sample = MEMORISE[0]
    reply = client.chat.completions.create(
        model=MODEL_ID, messages=_user(sample["task"], sample["input"]), max_tokens=20
    )
    assert reply.choices[0].message.content == sample["output"]
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_openai_client_streaming_chat_completion(client, server):
    sample = MEMORISE[4]  # the long QA answer: several deltas
    stream = client.chat.completions.create(
        model=MODEL_ID,
        messages=_user(sample["task"], sample["input"]),
        max_tokens=40,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() == sample["output"]
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0

    body = {"model": MODEL_ID, "messages": _user(sample["task"], sample["input"]), "stream": True}
    raw = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=AUTH, timeout=60)
    assert raw.headers["content-type"].startswith("text/event-stream")
    events = [line for line in raw.text.splitlines() if line]
    assert events[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in events)


def test_task_endpoint_by_name_and_id(server):
    scene = httpx.post(
        f"{server.url}/v1/tasks/scene", json={"input": MEMORISE[0]["input"]}, headers=AUTH
    )
    assert scene.status_code == 200, scene.text
    body = scene.json()
    assert body["task"] == "问题场景分类" and body["label"] == MEMORISE[0]["output"]
    assert 0.5 < body["probability"] <= 1.0
    extract = httpx.post(
        f"{server.url}/v1/tasks/文件名称提取", json={"input": MEMORISE[5]["input"]}, headers=AUTH
    )
    assert extract.json() == {"task": "文件名称提取", "answer": MEMORISE[5]["output"]}


def test_route_endpoint_returns_the_routers_result(server):
    response = httpx.post(
        f"{server.url}/v1/route", json={"input": MEMORISE[0]["input"]}, headers=AUTH, timeout=60
    )
    assert response.status_code == 200, response.text
    result = response.json()
    assert {"input", "scene", "type", "answer", "file_name", "action"} <= set(result)
    assert result["scene"]["label"] == MEMORISE[0]["output"]
    assert result["action"] in ("answer", "task")


def test_missing_or_wrong_key_is_401(server):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        response = httpx.get(f"{server.url}/v1/models", headers=headers)
        assert response.status_code == 401
        assert _error(response)["code"] == "invalid_api_key"
        assert response.headers["www-authenticate"] == "Bearer"
    unauth = httpx.post(f"{server.url}/v1/tasks/scene", json={"input": "x"})
    assert unauth.status_code == 401


def test_bad_requests_are_400_with_openai_error_objects(server):
    url = f"{server.url}/v1/chat/completions"
    malformed = httpx.post(
        url, content=b'{"messages": [', headers={**AUTH, "Content-Type": "application/json"}
    )
    assert malformed.status_code == 400 and _error(malformed)["code"] == "invalid_json"
    bad_field = httpx.post(
        url, json={"messages": _user("问题场景分类", "x"), "temperature": 5}, headers=AUTH
    )
    assert bad_field.status_code == 400 and _error(bad_field)["param"] == "temperature"
    no_messages = httpx.post(url, json={"messages": []}, headers=AUTH)
    assert no_messages.status_code == 400 and _error(no_messages)["param"] == "messages"
    task_no_input = httpx.post(f"{server.url}/v1/tasks/scene", json={"text": "x"}, headers=AUTH)
    assert task_no_input.status_code == 400 and _error(task_no_input)["param"] == "input"


def test_unknown_task_model_or_path_is_404(server):
    task = httpx.post(f"{server.url}/v1/tasks/no-such-task", json={"input": "x"}, headers=AUTH)
    assert task.status_code == 404 and _error(task)["code"] == "task_not_found"
    assert "问题场景分类" in _error(task)["message"]
    model = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": "gpt-4o", "messages": _user("问题场景分类", "x")},
        headers=AUTH,
    )
    assert model.status_code == 404 and _error(model)["code"] == "model_not_found"
    assert httpx.get(f"{server.url}/v1/nothing", headers=AUTH).status_code == 404


def test_oversize_body_is_413(server):
    big = {"input": "数" * MAX_BODY}
    response = httpx.post(f"{server.url}/v1/tasks/scene", json=big, headers=AUTH)
    assert response.status_code == 413 and _error(response)["code"] == "body_too_large"


def test_prompt_beyond_the_context_is_400(server, client):
    long_text = "数据清洗流程是什么？帮我发布服务" * 700  # > the tiny model's 2048 positions
    response = httpx.post(f"{server.url}/v1/tasks/qa", json={"input": long_text}, headers=AUTH)
    assert response.status_code == 400
    assert _error(response)["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL_ID, messages=_user("问题回答", long_text))
    assert info.value.code == "context_length_exceeded"


def test_max_tokens_is_clamped_to_the_cap(client):
    reply = client.chat.completions.create(
        model=MODEL_ID, messages=_user("问题回答", "数据清洗流程"), max_tokens=100_000
    )
    assert reply.usage.completion_tokens <= 64


def test_overload_is_429_and_slow_requests_504(servers):
    """1 running + 1 queued on a server whose model calls take 2.5 s, with a 4 s timeout: of
    four simultaneous requests one succeeds, the queued one times out, and two are refused."""
    busy = servers["busy"]

    async def one(client: httpx.AsyncClient) -> int:
        response = await client.post("/v1/tasks/scene", json={"input": MEMORISE[0]["input"]})
        if response.status_code != 200:
            _error(response)
        return response.status_code

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=busy.url, timeout=30) as client:
            return await asyncio.gather(*(one(client) for _ in range(4)))

    assert sorted(asyncio.run(burst())) == [200, 429, 429, 504]
    assert httpx.get(f"{busy.url}/health").status_code == 200


def test_every_request_is_logged_as_json(server):
    httpx.post(f"{server.url}/v1/tasks/type", json={"input": MEMORISE[2]["input"]}, headers=AUTH)
    time.sleep(0.2)
    records = server.access_records()
    assert records, server.log_path.read_text()[-2000:]
    assert all({"id", "route", "status", "latency_ms"} <= set(r) for r in records)
    ok = [r for r in records if r["route"] == "/v1/tasks/{task}" and r["status"] == 200]
    assert ok and ok[-1]["prompt_tokens"] > 0 and ok[-1]["task"] == "type"
    assert any(r["status"] == 401 for r in records)


def test_openapi_schema_is_served(server):
    schema = httpx.get(f"{server.url}/openapi.json", headers=AUTH).json()
    assert {"/v1/chat/completions", "/v1/tasks/{task}", "/v1/models", "/health"} <= set(
        schema["paths"]
    )


LOAD_REQUESTS = 120


def test_load_concurrent_task_requests_all_correct(server):
    """LOAD_REQUESTS task requests in flight at once; every answer is the memorised one."""
    cases = [MEMORISE[i % len(MEMORISE)] for i in range(LOAD_REQUESTS)]
    ids = {
        "问题场景分类": "scene",
        "问题类型分类": "type",
        "问题回答": "qa",
        "文件名称提取": "extract",
    }

    async def one(client: httpx.AsyncClient, i: int, case: dict) -> tuple[float, dict, int]:
        task = case["task"] if i % 2 else ids[case["task"]]
        start = time.perf_counter()
        response = await client.post(f"/v1/tasks/{task}", json={"input": case["input"]})
        return (time.perf_counter() - start) * 1000, response.json(), response.status_code

    async def run() -> list[tuple[float, dict, int]]:
        limits = httpx.Limits(max_connections=LOAD_REQUESTS, max_keepalive_connections=0)
        async with httpx.AsyncClient(
            base_url=server.url, headers=AUTH, timeout=120, limits=limits
        ) as client:
            jobs = [one(client, i, case) for i, case in enumerate(cases)]
            return await asyncio.wait_for(asyncio.gather(*jobs), timeout=180)

    began = time.perf_counter()
    results = asyncio.run(run())
    wall = time.perf_counter() - began
    for (_, body, status), case in zip(results, cases, strict=True):
        assert status == 200, body
        assert body.get("label", body.get("answer")) == case["output"], (case, body)
    batches = [r.get("batch_size", 0) for r in server.access_records() if "batch_size" in r]
    assert max(batches) > 1, "concurrent task requests were never batched"
    latencies = sorted(ms for ms, _, _ in results)
    q = statistics.quantiles(latencies, n=100)
    print(
        f"\nload: {LOAD_REQUESTS} concurrent task requests in {wall:.2f} s "
        f"({LOAD_REQUESTS / wall:.1f} req/s); latency ms p50 {q[49]:.0f}, p90 {q[89]:.0f}, "
        f"p99 {q[98]:.0f}, max {latencies[-1]:.0f}; largest batch {max(batches)}"
    )


def test_a_stream_left_early_closes_its_producer_and_frees_the_slot():
    """A client that goes away stops the generation (the producer is closed), and the model
    slot comes back only once the producer has ended."""
    from qwen3_lora.deploy.serve import ModelRunner, ServeConfig

    produced, closed = [], []

    def pieces():
        try:
            for i in range(10_000):
                produced.append(i)
                time.sleep(0.001)
                yield str(i)
        finally:
            closed.append(len(produced))

    async def scenario():
        runner = ModelRunner(None, ServeConfig(max_concurrency=1, max_queue=0))
        runner.start()
        try:
            stream = runner.stream(pieces)
            assert await stream.__anext__() == "0"
            await stream.aclose()  # the client disconnected
            for _ in range(200):  # the producer notices at its next piece
                if runner.admission._slots._value == 1:
                    break
                await asyncio.sleep(0.01)
            return runner.admission._slots._value
        finally:
            runner.stop()

    assert asyncio.run(scenario()) == 1
    assert closed and closed[0] < 10_000 and len(produced) == closed[0]
