"""Fuzzing the in-process app (FastAPI's TestClient, real tiny model): whatever the body, the
answer is never a 5xx, and every error is an OpenAI-style error object."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from qwen3_lora.deploy.serve import ServeConfig, create_app

FUZZ = settings(
    max_examples=100,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
TASK_NAMES = [
    "问题场景分类",
    "问题类型分类",
    "问题回答",
    "文件名称提取",
    "scene",
    "qa",
    "nope",
    "%20",
]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
texts = st.text(max_size=40)
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "developer", "tool", ""])},
    optional={
        "content": texts
        | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": texts}), max_size=2)
        | json_values
    },
)
chat_bodies = st.fixed_dictionaries(
    {"messages": st.lists(message, max_size=3) | json_values},
    optional={
        "model": st.sampled_from(["fuzz-model", "other"]) | json_values,
        "max_tokens": st.integers(-3, 10**9) | json_values,
        "temperature": st.floats(-1, 3) | json_values,
        "top_p": st.floats(-0.5, 1.5) | json_values,
        "n": st.integers(0, 3),
        "stream": st.booleans(),
        "stop": texts | st.lists(texts, max_size=6) | json_values,
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
        "chat_template_kwargs": st.fixed_dictionaries({"enable_thinking": st.booleans()}),
    },
)
# Mostly well-formed requests, so that the model paths (not only validation) are fuzzed too.
valid_chat_bodies = st.fixed_dictionaries(
    {
        "model": st.just("fuzz-model"),
        "messages": st.lists(
            st.fixed_dictionaries(
                {"role": st.sampled_from(["system", "user", "assistant"]), "content": texts}
            ),
            max_size=2,
        ).map(lambda m: [*m, {"role": "user", "content": "任务: 问题回答\n输入: 数据清洗流程"}]),
    },
    optional={
        "max_tokens": st.integers(1, 10**6),
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0.01, 1),
        "stream": st.booleans(),
        "stop": texts | st.lists(texts, max_size=3),
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
        "chat_template_kwargs": st.fixed_dictionaries({"enable_thinking": st.booleans()}),
    },
)
task_bodies = st.fixed_dictionaries(
    {"input": texts | json_values}, optional={"max_tokens": st.integers(-3, 10**9) | json_values}
)


@pytest.fixture(scope="module")
def client(memorised_adapter):
    from qwen3_lora.inference.predictor import Predictor

    predictor = Predictor.load(adapter=str(memorised_adapter), precision="fp32")
    config = ServeConfig(
        adapter=str(memorised_adapter),
        served_model_name="fuzz-model",
        max_tokens_cap=4,  # keep each generation short
        max_body_bytes=16 * 1024,
        request_timeout_s=60,
    )
    with TestClient(create_app(predictor, config)) as test_client:
        yield test_client


def _check(response) -> None:
    event(f"status {response.status_code}")
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
    elif response.headers["content-type"].startswith("text/event-stream"):
        assert response.text.rstrip().endswith("data: [DONE]")


def test_openapi_schema_is_served(client):
    schema = client.get("/openapi.json").json()
    assert {"/v1/chat/completions", "/v1/tasks/{task}", "/v1/models"} <= set(schema["paths"])


@FUZZ
@given(body=valid_chat_bodies | chat_bodies)
def test_fuzz_chat_completions_never_5xx(client, body):
    _check(client.post("/v1/chat/completions", json=body))


@FUZZ
@given(task=st.sampled_from(TASK_NAMES) | st.text(min_size=1, max_size=10), body=task_bodies)
def test_fuzz_task_endpoint_never_5xx(client, task, body):
    _check(client.post(f"/v1/tasks/{quote(task, safe='')}", json=body))


@FUZZ
@given(
    path=st.sampled_from(["/v1/chat/completions", "/v1/tasks/scene", "/v1/route"]),
    raw=st.binary(max_size=64) | json_values.map(lambda v: json.dumps(v).encode()),
    content_type=st.sampled_from(["application/json", "text/plain", ""]),
)
def test_fuzz_raw_bodies_never_5xx(client, path, raw, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    _check(client.post(path, content=raw, headers=headers))
