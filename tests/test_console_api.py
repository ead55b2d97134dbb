"""The console's HTTP API over the real serve app and the memorised tiny model: the key on every
route but /health and the page's files, every label's probability, the base model beside the
adapter, report and run routes, traversal attempts (URL-encoded, raw on the socket, symlinks
out), and jobs (fake CLI) including concurrent starts and loading a run into the playground."""

from __future__ import annotations

import asyncio
import copy
import json
import re
import shutil
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conftest import MEMORISE
from console_support import API_KEY, AUTH, LiveServer, fake_jobs, make_workspace, wait_for
from fastapi.testclient import TestClient

from qwen3_lora.cli import build_parser
from qwen3_lora.deploy.serve import ServeConfig, create_app
from qwen3_lora.deploy.serve.console import Console, Workspace
from qwen3_lora.deploy.serve.console.routes import STATIC_DIR
from qwen3_lora.deploy.serve.main import adapter_loader
from qwen3_lora.deploy.serve.settings import config_from_arguments
from qwen3_lora.inference.predictor import Predictor

SCENE_LABELS = ["数据平台相关问题", "通用问题", "无关问题"]


def serve_config(adapter, workspace, **kwargs) -> ServeConfig:
    return ServeConfig(
        adapter=str(adapter),
        precision="fp32",
        api_key=API_KEY,
        served_model_name="memorised-tiny",
        workspace=str(workspace),
        **kwargs,
    )


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, memorised_adapter):
    ws = make_workspace(tmp_path_factory.mktemp("console-api") / "ws")
    # A finished run inside the workspace, to load into the playground.
    skip = shutil.ignore_patterns("checkpoints", "logs")
    shutil.copytree(memorised_adapter, ws / "runs" / "memorised", ignore=skip)
    return ws


@pytest.fixture(scope="module")
def client(workspace, tuned, memorised_adapter):
    config = serve_config(memorised_adapter, workspace, enable_training=True, max_jobs=2)
    jobs = fake_jobs(workspace, max_running=2, kill_after_s=1.0)
    console = Console(Workspace.open(workspace), jobs, load_adapter=adapter_loader(config))
    with TestClient(create_app(tuned, config, console=console)) as c:
        yield c


def error(response) -> dict:
    body = response.json()["error"]
    assert {"message", "type", "param", "code"} <= set(body), body
    return body


def finished(client, job_id, timeout=30.0) -> dict:
    def ended():
        job = client.get(f"/api/jobs/{job_id}", headers=AUTH).json()
        return job if job["status"] != "running" else None

    return wait_for(ended, timeout, what=f"job {job_id}")


def test_the_page_and_its_files_are_open_and_every_api_route_needs_the_key(client):
    page = client.get("/")
    assert page.status_code == 200 and "<title>qwen3-lora console</title>" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name in ("app.js", "app.css", "favicon.svg"):
        assert client.get(f"/static/{name}").status_code == 200
    assert client.head("/").status_code == 200 and client.get("/health").status_code == 200
    for path in (
        "/api/info",
        "/api/jobs",
        "/api/workspace/files",
        "/api/workspace/reports",
        "/api/workspace/reports/eval/demo",
        "/api/workspace/runs",
        "/api/workspace/runs/runs/demo/metrics",
        "/v1/tasks",
    ):
        assert client.get(path).status_code == 401, path
        wrong = client.get(path, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and error(wrong)["code"] == "invalid_api_key"
    for path in ("/api/jobs", "/api/model/load", "/api/jobs/x/cancel", "/static/app.js"):
        assert client.post(path, json={}).status_code == 401, path  # only GET/HEAD are open


def test_the_page_loads_nothing_from_elsewhere():
    allowed = {"http://www.w3.org/2000/svg"}  # an XML namespace, never fetched
    for path in STATIC_DIR.iterdir():
        text = path.read_text("utf-8")
        urls = set(re.findall(r"(?:https?:)?//[A-Za-z0-9.-]+\.[a-z]{2,}[^\s\"')]*", text))
        assert urls <= allowed, (path.name, urls - allowed)
        assert "@import" not in text and "@font-face" not in text
    html = (STATIC_DIR / "index.html").read_text("utf-8")
    assert " style=" not in html and "<script>" not in html  # the CSP allows neither


def test_info_describes_the_served_model_and_the_forms(client, memorised_adapter):
    info = client.get("/api/info", headers=AUTH).json()
    assert info["model"] == "memorised-tiny" and info["adapter"] == str(memorised_adapter)
    assert info["has_adapter"] and info["compare"] and info["training"] and info["can_load"]
    names = [f["name"] for f in info["forms"]["train"]]
    assert names[0] == "base_model" and "output_dir" in names and "learning_rate" in names
    assert next(f["name"] for f in info["forms"]["eval"]) == "adapter"


def test_route_and_tasks_give_every_labels_probability(client):
    text = MEMORISE[0]["input"]  # memorised as 数据平台相关问题
    routed = client.post("/v1/route", json={"input": text}, headers=AUTH).json()
    scene = routed["scene"]
    assert list(scene["scores"]) == SCENE_LABELS and scene["label"] == MEMORISE[0]["output"]
    assert sum(scene["scores"].values()) == pytest.approx(1.0, abs=1e-5)
    assert scene["scores"][scene["label"]] == scene["probability"]
    assert set(routed["type"]["scores"]) == {"问题回答", "任务处理"}
    task = client.post("/v1/tasks/scene", json={"input": text}, headers=AUTH).json()
    assert task["label"] == scene["label"] and task["scores"] == pytest.approx(scene["scores"])
    extract = client.post("/v1/tasks/extract", json={"input": MEMORISE[5]["input"]}, headers=AUTH)
    assert "scores" not in extract.json()


def test_adapter_false_answers_with_the_base_model(client):
    text = MEMORISE[0]["input"]

    def scene(adapter: bool) -> dict:
        body = {"input": text, "adapter": adapter}
        return client.post("/v1/tasks/scene", json=body, headers=AUTH).json()

    tuned, base = scene(True), scene(False)
    assert tuned["label"] == MEMORISE[0]["output"] and tuned["probability"] > 0.5
    assert base["scores"] != pytest.approx(tuned["scores"], abs=1e-3)
    assert scene(True)["scores"] == pytest.approx(tuned["scores"])  # the adapter is back on

    async def together() -> list[dict]:  # one batch window: never one batch for both
        transport = httpx.ASGITransport(app=client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=AUTH) as c:
            bodies = [{"input": text, "adapter": i % 2 == 0} for i in range(6)]
            answers = await asyncio.gather(*(c.post("/v1/tasks/scene", json=b) for b in bodies))
            return [a.json() for a in answers]

    for i, answer in enumerate(asyncio.run(together())):
        expected = tuned if i % 2 == 0 else base
        assert answer["scores"] == pytest.approx(expected["scores"], abs=1e-5)
    qa = MEMORISE[4]  # the memorised answer streams only with the adapter on
    prompt = [{"role": "user", "content": f"任务: {qa['task']}\n输入: {qa['input']}"}]

    def streamed(adapter: bool) -> str:
        body = {"messages": prompt, "max_tokens": 40, "stream": True, "adapter": adapter}
        with client.stream("POST", "/v1/chat/completions", json=body, headers=AUTH) as s:
            events = [json.loads(x[6:]) for x in s.iter_lines() if x.startswith("data: {")]
        return "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])

    assert streamed(True).strip() == qa["output"]
    base_answer = streamed(False)
    assert base_answer.strip() != qa["output"]
    whole = {"messages": prompt, "max_tokens": 40, "adapter": False}
    reply = client.post("/v1/chat/completions", json=whole, headers=AUTH).json()
    assert reply["choices"][0]["message"]["content"] == base_answer.strip()


REFUSE_REPEATED_ROLES = (
    "{%- for m in messages %}{%- if not loop.first and m['role'] == messages[loop.index0 - 1]"
    "['role'] %}{{ raise_exception('Conversation roles must alternate user/assistant') }}"
    "{%- endif %}{%- endfor %}"
)


def test_a_conversation_the_chat_template_refuses_is_400(base, tiny_model_dir, tmp_path):
    tokenizer = copy.deepcopy(base.tokenizer)
    # The tiny model's own template, refusing what Gemma's refuses: two turns of one role.
    tokenizer.chat_template = REFUSE_REPEATED_ROLES + tokenizer.chat_template
    predictor = Predictor(base.model, tokenizer, base.registry, precision=base.precision)
    config = ServeConfig(model=str(tiny_model_dir), workspace=str(tmp_path), precision="fp32")
    with TestClient(create_app(predictor, config)) as c:
        twice = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
        r = c.post("/v1/chat/completions", json={"messages": twice, "max_tokens": 2})
        assert r.status_code == 400, r.text
        assert error(r)["param"] == "messages" and "must alternate" in error(r)["message"]
        once = {"messages": twice[:1], "max_tokens": 2}
        assert c.post("/v1/chat/completions", json=once).status_code == 200


def test_adapter_false_without_an_adapter_is_400(base, tiny_model_dir, tmp_path):
    config = ServeConfig(model=str(tiny_model_dir), workspace=str(tmp_path), precision="fp32")
    with TestClient(create_app(base, config)) as c:
        for path in ("/v1/route", "/v1/tasks/scene"):
            r = c.post(path, json={"input": "x", "adapter": False})
            assert r.status_code == 400 and error(r)["code"] == "no_adapter", path
        chat = {"messages": [{"role": "user", "content": "x"}], "adapter": False}
        r = c.post("/v1/chat/completions", json=chat)
        assert r.status_code == 400 and error(r)["code"] == "no_adapter"
        info = c.get("/api/info").json()  # no --api-key: open
        assert info["compare"] is False and info["training"] is False
        assert c.get("/api/jobs").json() == {"data": [], "enabled": False}
        r = c.post("/api/jobs", json={"kind": "train", "fields": {"output_dir": "runs/x"}})
        assert r.status_code == 403 and error(r)["code"] == "training_disabled"
        assert c.post("/api/model/load", json={"adapter": "runs/x"}).status_code == 403
        assert not (tmp_path / ".jobs").exists()


def test_report_routes(client):
    listed = client.get("/api/workspace/reports", headers=AUTH).json()["data"]
    assert [r["path"] for r in listed] == ["eval/demo"]
    full = client.get("/api/workspace/reports/eval/demo", headers=AUTH).json()
    assert full["report"]["models"]["tuned"]["问题场景分类"]["confusion"]["matrix"][0] == [4, 0, 0]
    assert full["misses"]["tuned"] == {"问题场景分类": 1, "文件名称提取": 1}
    misses = client.get(
        "/api/workspace/reports/eval/demo/misses", params={"model": "tuned"}, headers=AUTH
    ).json()
    assert misses["total"] == 2
    for path, status in (("nope", 404), ("runs/demo", 404), ("data/memorise.jsonl", 400)):
        r = client.get(f"/api/workspace/reports/{path}", headers=AUTH)
        assert r.status_code == status, (path, r.text)
    bad = client.get("/api/workspace/reports/eval/demo/misses?limit=0", headers=AUTH)
    assert bad.status_code == 400


def test_run_metrics_are_polled_by_offset(client, workspace):
    first = client.get("/api/workspace/runs/runs/demo/metrics", headers=AUTH).json()
    assert len(first["rows"]) == 22 and first["finished"]
    with (workspace / "runs" / "demo" / "metrics.jsonl").open("a") as fh:
        fh.write('{"step": 21, "loss": 0.3}\n{"step": 22, "lo')
    url = f"/api/workspace/runs/runs/demo/metrics?offset={first['offset']}"
    more = client.get(url, headers=AUTH).json()
    assert [r["step"] for r in more["rows"]] == [21] and more["partial"]
    runs = [r["path"] for r in client.get("/api/workspace/runs", headers=AUTH).json()["data"]]
    assert "runs/demo" in runs and "runs/memorised" in runs


TRAVERSALS = [
    "%2e%2e/%2e%2e/etc",
    "..%2F..%2Fetc",
    "%2E%2E%2F%2E%2E%2Fetc",
    "eval/%2e%2e/%2e%2e/%2e%2e/etc",
    "%2Fetc",
    "a%00b",
    "eval%5C..%5C..%5Cetc",
    "~root",
    "-rf",
]


@pytest.mark.parametrize("spelling", TRAVERSALS)
@pytest.mark.parametrize(
    "template",
    [
        "/api/workspace/reports/{}",
        "/api/workspace/reports/{}/misses",
        "/api/workspace/runs/{}/metrics",
    ],
)
def test_encoded_traversals_are_refused(client, template, spelling):
    r = client.get(template.format(spelling), headers=AUTH)
    assert r.status_code in (400, 403), (r.status_code, r.text)
    assert error(r)["code"] in ("invalid_path", "outside_workspace")


def test_symlinks_out_of_the_workspace_are_refused(client, workspace, tmp_path):
    secret = tmp_path / "secret-run"
    secret.mkdir()
    (secret / "metrics.jsonl").write_text('{"step": 1, "loss": 9.9}\n')
    (secret / "report.json").write_text("{}")
    (workspace / "runs" / "escape").symlink_to(secret)
    (workspace / "runs" / "half").mkdir()
    (workspace / "runs" / "half" / "metrics.jsonl").symlink_to(secret / "metrics.jsonl")
    for path in (
        "/api/workspace/runs/runs/escape/metrics",
        "/api/workspace/reports/runs/escape",
        "/api/workspace/runs/runs/half/metrics",
    ):
        r = client.get(path, headers=AUTH)
        assert r.status_code == 403 and error(r)["code"] == "outside_workspace", (path, r.text)
    listed = [r["path"] for r in client.get("/api/workspace/runs", headers=AUTH).json()["data"]]
    assert "runs/escape" not in listed and "runs/half" not in listed
    form = {"base_model": "tiny", "output_dir": "runs/escape/new"}
    r = client.post("/api/jobs", json={"kind": "train", "fields": form}, headers=AUTH)
    assert r.status_code == 400 and "outside the workspace" in r.text


def test_literal_dot_dot_on_the_wire_is_refused(workspace, tuned, memorised_adapter):
    """HTTP clients normalise `..` away; a raw request sends it as is, as a hostile one would."""
    config = serve_config(memorised_adapter, workspace)
    app = create_app(tuned, config, console=Console(Workspace.open(workspace)))
    with LiveServer(app) as server:
        for target in (
            "/api/workspace/runs/../../../etc/metrics",
            "/api/workspace/reports/eval/../../x",
            "/api/workspace/runs/runs/%2e%2e/%2e%2e/%2e%2e/etc/metrics",
        ):
            status, raw = server.raw_get(target, AUTH)
            assert status in (400, 403, 404), raw[:300]
            assert b"9.9" not in raw and b"root:" not in raw
        # The open page prefix opens nothing else: `..` after it still needs the key.
        for target in (
            "/static/../api/info",
            "/static/%2e%2e/api/info",
            "/static/../../etc/passwd",
        ):
            status, raw = server.raw_get(target)
            assert status in (401, 404), (target, raw[:300])
            assert b"memorised-tiny" not in raw and b"root:" not in raw


def test_a_job_through_the_api_then_evaluate_and_load_it(client, workspace):
    form = {"output_dir": "runs/api", "base_model": "tiny", "max_steps": 5}
    r = client.post("/api/jobs", json={"kind": "train", "fields": form}, headers=AUTH)
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["status"] == "running" and job["argv"][1].endswith("fake_cli.py")
    listed = client.get("/api/jobs", headers=AUTH).json()
    assert listed["enabled"] and listed["data"][0]["id"] == job["id"]
    done = finished(client, job["id"])
    assert done["status"] == "succeeded" and done["progress"]["step"] == 5
    log = client.get(f"/api/jobs/{job['id']}/log?offset=0", headers=AUTH).json()
    assert "done: 5 optimizer steps" in log["text"]
    again = client.post(f"/api/jobs/{job['id']}/cancel", headers=AUTH)
    assert again.status_code == 409 and error(again)["code"] == "not_running"
    form = {"adapter": "runs/api", "output_dir": "runs/api/eval", "compare_base": True}
    ev = client.post("/api/jobs", json={"kind": "eval", "fields": form}, headers=AUTH)
    assert ev.status_code == 201 and finished(client, ev.json()["id"])["status"] == "succeeded"
    reports = client.get("/api/workspace/reports", headers=AUTH).json()["data"]
    assert "runs/api/eval" in [r["path"] for r in reports]
    # A real adapter (a copy of the memorised one) into the playground: served from now on.
    loaded = client.post("/api/model/load", json={"adapter": "runs/memorised"}, headers=AUTH)
    assert loaded.status_code == 200, loaded.text
    assert loaded.json()["adapter_in_workspace"] == "runs/memorised"
    routed = client.post("/v1/route", json={"input": MEMORISE[1]["input"]}, headers=AUTH).json()
    assert routed["scene"]["label"] == MEMORISE[1]["output"]


def test_job_requests_with_bad_fields_list_every_problem(client):
    form = {"output_dir": "../x", "data": ["/etc/passwd"], "epochs": "many"}
    r = client.post("/api/jobs", json={"kind": "train", "fields": form}, headers=AUTH)
    body = error(r)
    assert r.status_code == 400 and body["code"] == "invalid_fields" and len(body["problems"]) == 4
    for bad in (
        {"kind": "shell", "fields": {}},
        {"kind": "train", "fields": {}, "argv": ["rm", "-rf", "/"]},
    ):
        assert client.post("/api/jobs", json=bad, headers=AUTH).status_code == 400
    raw = {**AUTH, "content-type": "application/json"}
    assert client.post("/api/jobs", content=b"not json", headers=raw).status_code == 400


def test_cancel_and_unknown_jobs(client):
    form = {"output_dir": "runs/c", "base_model": "tiny", "max_steps": 500}
    job = client.post("/api/jobs", json={"kind": "train", "fields": form}, headers=AUTH).json()
    r = client.post(f"/api/jobs/{job['id']}/cancel", headers=AUTH)
    assert r.status_code == 202 and r.json()["cancel_requested"]
    assert finished(client, job["id"])["status"] == "cancelled"
    for bad in ("nope", "..%2F..%2Fetc", "20990101-000000-train-abcdef"):
        assert client.get(f"/api/jobs/{bad}", headers=AUTH).status_code == 404
        assert client.get(f"/api/jobs/{bad}/log", headers=AUTH).status_code == 404
        assert client.post(f"/api/jobs/{bad}/cancel", headers=AUTH).status_code == 404


def test_concurrent_starts_respect_the_limit(client):
    def start(i):
        form = {"output_dir": f"runs/par{i}", "base_model": "tiny", "max_steps": 400}
        return client.post("/api/jobs", json={"kind": "train", "fields": form}, headers=AUTH)

    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(start, range(6)))
    assert sorted(r.status_code for r in responses) == [201, 201, 409, 409, 409, 409]
    assert {error(r)["code"] for r in responses if r.status_code == 409} == {"too_many_jobs"}
    for r in responses:
        if r.status_code == 201:
            client.post(f"/api/jobs/{r.json()['id']}/cancel", headers=AUTH)
            finished(client, r.json()["id"])


def test_model_load_refuses_what_is_not_a_finished_run(client):
    for adapter, code in (
        ("eval/demo", "not_adapter"),
        ("../..", "invalid_path"),
        ("/tmp", "invalid_path"),
        ("nope", "not_found"),
    ):
        r = client.post("/api/model/load", json={"adapter": adapter}, headers=AUTH)
        assert r.status_code in (400, 404) and error(r)["code"] == code, (adapter, r.text)


def test_serve_flags_and_their_checks(tmp_path):
    args = build_parser().parse_args(
        [
            "serve",
            "--adapter",
            "a",
            "--workspace",
            str(tmp_path),
            "--enable-training",
            "--max-jobs",
            "2",
        ]
    )
    config = config_from_arguments(args, {})
    assert (config.workspace, config.enable_training, config.max_jobs) == (str(tmp_path), True, 2)
    assert config.validate() == []
    plain = config_from_arguments(build_parser().parse_args(["serve", "--adapter", "a"]), {})
    assert (plain.workspace, plain.enable_training) == (None, False)  # off by default
    problems = ServeConfig(adapter="a", enable_training=True, max_jobs=0).validate()
    assert any("--enable-training needs --workspace" in p for p in problems)
    assert any("max_jobs" in p for p in problems)
    missing = ServeConfig(adapter="a", workspace=str(tmp_path / "nope")).validate()
    assert any("is not a folder" in p for p in missing)
