"""Console jobs: forms validated into argv lists the real CLI parses, progress from the run's
files, the CLI's own failure message, cancel (SIGTERM, then SIGKILL), the running-jobs limit,
re-attaching after a server restart. Commands run under the real job runner; the command
itself is the fake CLI (tests/fake_cli.py), a fraction of a second per step."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys

import pytest
from console_support import fake_jobs, make_workspace, wait_for

from qwen3_lora.cli import build_parser
from qwen3_lora.deploy.serve.console import Jobs, Workspace, fields
from qwen3_lora.deploy.serve.console.fields import FieldsError, parse_job, train_form
from qwen3_lora.deploy.serve.console.joblog import failure_reason
from qwen3_lora.deploy.serve.console.jobs import JobError, _group_has_live_member
from qwen3_lora.deploy.serve.errors import ApiError
from qwen3_lora.training.config import TrainConfig, build_config

ENDED = ("succeeded", "failed", "cancelled", "lost")


@pytest.fixture
def workspace(tmp_path):
    return make_workspace(tmp_path / "ws")


def finished(jobs: Jobs, job_id: str, timeout: float = 30.0) -> dict:
    return wait_for(
        lambda: (job := jobs.get(job_id))["status"] in ENDED and job, timeout, what=job_id
    )


def test_the_training_form_follows_train_config(monkeypatch):
    config = {f.name: f for f in dataclasses.fields(TrainConfig)}
    form = train_form()
    assert [f.name for f in form] == [f.name for f in fields.TRAIN_FORM if f.name in config]
    assert ("chat_template" in [f.name for f in form]) == ("chat_template" in config)
    defaults = TrainConfig()
    for f in form:
        assert f.default == getattr(defaults, f.name) and f.help == config[f.name].metadata["help"]
    extra = fields.FormField("no_such_option", "number", 1, 2)
    monkeypatch.setattr(fields, "TRAIN_FORM", (*fields.TRAIN_FORM, extra))
    assert "no_such_option" not in [f.name for f in train_form()]  # TrainConfig decides


def test_argv_is_a_list_of_checked_values_the_real_cli_parses(workspace):
    ws = Workspace.open(workspace)
    spec = parse_job(
        "train",
        {
            "output_dir": "runs/new",
            "base_model": "Qwen/Qwen3-0.6B",
            "data": ["data/memorise.jsonl"],
            "builtin_data": False,
            "epochs": 2,
            "learning_rate": 1e-4,
            "lora_r": 16,
            "max_steps": 50,
        },
        ws,
    )
    data = str(ws.root / "data" / "memorise.jsonl")
    assert spec.args == [
        *("--base-model", "Qwen/Qwen3-0.6B", "--data", data, "--no-builtin-data"),
        *("--epochs", "2", "--max-steps", "50", "--learning-rate", "0.0001", "--lora-r", "16"),
        *("--output-dir", str(ws.root / "runs" / "new")),
    ]
    assert spec.output_dir == "runs/new" and spec.planned_steps == 50
    args = vars(build_parser().parse_args(["train", *spec.args]))
    config = build_config(
        {}, {k: v for k, v in args.items() if k in TrainConfig.__dataclass_fields__}
    )
    assert (config.epochs, config.max_steps, config.lora_r, config.data) == (2, 50, 16, [data])
    assert config.builtin_data is False and config.learning_rate == 1e-4
    # A choice field (TrainConfig's choices): passed on only when it differs from the default.
    loss_on = next(f for f in train_form() if f.name == "loss_on")
    assert loss_on.kind == "choice" and loss_on.choices == ("all", "last")
    base = {"output_dir": "runs/new", "base_model": "tiny"}
    assert "--loss-on" not in parse_job("train", {**base, "loss_on": "all"}, ws).args
    spec = parse_job("train", {**base, "loss_on": "last", "chat_template": "chatml"}, ws)
    assert spec.args[spec.args.index("--loss-on") + 1] == "last"
    args = vars(build_parser().parse_args(["train", *spec.args]))
    assert (args["loss_on"], args["chat_template"]) == ("last", "chatml")
    spec = parse_job(
        "eval",
        {
            "adapter": "runs/demo",
            "output_dir": "eval/new",
            "compare_base": True,
            "data": ["data/memorise.jsonl"],
        },
        ws,
    )
    args = build_parser().parse_args(["eval", *spec.args])
    assert (args.adapter, args.output_dir) == (
        str(ws.root / "runs" / "demo"),
        str(ws.root / "eval" / "new"),
    )
    assert args.compare_base and args.data == [data]


@pytest.mark.parametrize(
    ("form", "needle"),
    [
        ({"output_dir": "../escape"}, "'..' is not allowed"),
        ({"output_dir": "/tmp/abs"}, "not an absolute one"),
        ({"output_dir": "runs/demo"}, "already exists"),
        ({"output_dir": "-x"}, "must not start with '-'"),
        ({"output_dir": "runs/x", "base_model": "--output-dir=/etc"}, "neither a workspace model"),
        ({"output_dir": "runs/x", "base_model": "/models/qwen"}, "neither a workspace model"),
        ({"output_dir": "runs/x", "data": ["/etc/passwd"]}, "data:"),
        ({"output_dir": "runs/x", "data": ["../../etc/passwd"]}, "data:"),
        ({"output_dir": "runs/x", "data": ["eval/demo/report.md"]}, "data:"),
        ({"output_dir": "runs/x", "data": "data/memorise.jsonl"}, "must be a list"),
        ({"output_dir": "runs/x", "epochs": "3; rm -rf /"}, "epochs must be a number"),
        ({"output_dir": "runs/x", "epochs": True}, "epochs must be a number"),
        ({"output_dir": "runs/x", "lora_r": 2.5}, "lora_r must be an integer"),
        ({"output_dir": "runs/x", "learning_rate": 5}, "learning_rate must be in"),
        ({"output_dir": "runs/x", "max_steps": 0}, "max_steps must be in"),
        ({"output_dir": "runs/x", "builtin_data": False}, "at least one file"),
        ({"output_dir": "runs/x", "builtin_data": "no"}, "true or false"),
        ({"output_dir": "runs/x", "extra_flag": "--resume"}, "unknown field"),
        ({"output_dir": "runs/x", "loss_on": "--resume"}, "loss_on must be one of all, last"),
        ({"output_dir": "runs/x", "chat_template": "llama9"}, "not a built-in template"),
    ],
)
def test_invalid_fields_are_refused(workspace, form, needle):
    with pytest.raises(FieldsError) as err:
        parse_job("train", {"base_model": "tiny", **form}, Workspace.open(workspace))
    assert err.value.status == 400 and needle in err.value.message, err.value.message


def test_every_problem_is_reported_together_and_models_are_checked(workspace):
    ws = Workspace.open(workspace)
    with pytest.raises(FieldsError) as err:
        parse_job("train", {"output_dir": "..", "epochs": -1, "lora_r": 0}, ws)
    assert len(err.value.problems) == 4  # base_model is required too
    (ws.root / "models" / "qwen").mkdir(parents=True)
    spec = parse_job("train", {"output_dir": "runs/x", "base_model": "models/qwen"}, ws)
    assert spec.args[:2] == ["--base-model", str(ws.root / "models" / "qwen")]
    served = "/srv/Qwen3-0.6B"  # the server's own base model, outside the workspace
    spec = parse_job("train", {"output_dir": "runs/x", "base_model": served}, ws, (served,))
    assert spec.args[:2] == ["--base-model", served]
    with pytest.raises(FieldsError, match="not a finished run"):
        parse_job("eval", {"adapter": "data", "output_dir": "eval/x"}, ws)


def test_a_training_job_runs_to_the_end_with_progress(workspace):
    jobs = fake_jobs(workspace)
    job = jobs.start("train", {"output_dir": "runs/t1", "base_model": "tiny", "max_steps": 6})
    assert job["status"] == "running" and job["progress"]["total"] == 6
    seen = set()

    def ended():
        nonlocal job
        job = jobs.get(job["id"])
        seen.add(job["progress"]["step"])
        return job["status"] != "running"

    wait_for(ended, 30)
    assert job["status"] == "succeeded" and job["exit_code"] == 0, job
    assert job["progress"]["step"] == 6 and job["progress"]["fraction"] == 1.0
    assert job["progress"]["tokens_per_s"] == 1234.5 and len(seen) > 2  # it moved as it ran
    record = json.loads((workspace / ".jobs" / f"{job['id']}.json").read_text())
    assert record["status"] == "succeeded" and isinstance(record["argv"], list)
    assert "done: 6 optimizer steps" in jobs.log(job["id"], 0)["text"]
    assert [j["id"] for j in jobs.list()] == [job["id"]]


def test_a_failing_command_shows_the_clis_own_error(workspace):
    jobs = fake_jobs(workspace)
    job = finished(
        jobs, jobs.start("train", {"output_dir": "runs/f", "base_model": "fake/fail"})["id"]
    )
    assert job["status"] == "failed" and job["exit_code"] == 2
    assert job["error"] == "error: cannot load 'fake/fail': not a local folder, no hub here"
    crash = finished(
        jobs, jobs.start("train", {"output_dir": "runs/c", "base_model": "fake/crash"})["id"]
    )
    assert (
        crash["status"] == "failed" and crash["error"] == "RuntimeError: CUDA out of memory (fake)"
    )
    tail = "loading\r10%\r\nerror: invalid training config:\n  - lora_r must be > 0\n"
    assert failure_reason(tail) == "error: invalid training config:\n  - lora_r must be > 0"


def test_cancel_terminates_then_kills_a_stubborn_job(workspace):
    jobs = fake_jobs(workspace, step_s=0.3, kill_after_s=1.0, max_running=2)
    polite = jobs.start("train", {"output_dir": "runs/p", "base_model": "tiny", "max_steps": 100})
    stubborn = jobs.start(
        "train", {"output_dir": "runs/s", "base_model": "fake/stubborn", "max_steps": 100}
    )
    # Both are past their start-up (the stubborn one ignores SIGTERM from its first step).
    wait_for(lambda: all(jobs.get(j["id"])["progress"]["step"] for j in (polite, stubborn)), 30)
    for job in (polite, stubborn):
        jobs.cancel(job["id"])
    done = finished(jobs, polite["id"])
    assert done["status"] == "cancelled" and done["exit_code"] == -signal.SIGTERM
    assert jobs.get(stubborn["id"])["status"] == "running"  # until the SIGKILL
    killed = finished(jobs, stubborn["id"], timeout=15)
    assert killed["status"] == "cancelled" and killed["exit_code"] == -signal.SIGKILL
    with pytest.raises(JobError) as err:
        jobs.cancel(stubborn["id"])
    assert err.value.status == 409 and err.value.code == "not_running"


def test_only_max_running_jobs_at_once_and_one_job_per_folder(workspace):
    jobs = fake_jobs(workspace, step_s=0.3, max_running=1)
    first = jobs.start("train", {"output_dir": "runs/a1", "base_model": "tiny", "max_steps": 100})
    with pytest.raises(JobError) as err:
        jobs.start("train", {"output_dir": "runs/a2", "base_model": "tiny", "max_steps": 2})
    assert err.value.status == 409 and err.value.code == "too_many_jobs"
    jobs.max_running = 2
    with pytest.raises(ApiError) as err:  # in use: refused as busy, or as not empty any more
        jobs.start("train", {"output_dir": "runs/a1", "base_model": "tiny"})
    assert err.value.code in ("output_in_use", "invalid_fields"), err.value.message
    assert "writes there" in err.value.message or "already exists" in err.value.message
    jobs.cancel(first["id"])
    finished(jobs, first["id"])
    second = jobs.start("train", {"output_dir": "runs/a2", "base_model": "tiny", "max_steps": 2})
    assert finished(jobs, second["id"])["status"] == "succeeded"


def test_a_new_server_reattaches_to_a_running_job_or_marks_it_lost(workspace):
    old = fake_jobs(workspace, step_s=0.1, max_running=2)
    job = old.start("train", {"output_dir": "runs/r", "base_model": "tiny", "max_steps": 15})
    gone = old.start("train", {"output_dir": "runs/l", "base_model": "tiny", "max_steps": 100})
    wait_for(lambda: old.get(job["id"])["progress"]["step"], 30)
    procs = dict(old._procs)
    old._procs.clear()  # the server goes away; its jobs run on in their own sessions
    os.killpg(procs[gone["id"]].pid, signal.SIGKILL)  # runner and command die without a word
    procs[gone["id"]].wait()
    # The leader's wait returns before the kill has ended its child on a busy machine: the job
    # is lost only once no process of its group runs.
    wait_for(
        lambda: not _group_has_live_member(procs[gone["id"]].pid), 10, what="the killed job's end"
    )
    new = fake_jobs(workspace)
    assert new.get(job["id"])["status"] == "running"
    lost = new.get(gone["id"])
    assert lost["status"] == "lost" and "no server watched" in lost["error"]
    # The runner's parent (this process) keeps it a zombie once it ends: seen as ended.
    ended = finished(new, job["id"])
    assert ended["status"] == "succeeded" and ended["exit_code"] == 0
    procs[job["id"]].wait(timeout=5)


def test_an_eval_job_writes_a_report(workspace):
    jobs = fake_jobs(workspace)
    form = {"adapter": "runs/demo", "output_dir": "eval/new", "compare_base": True}
    job = finished(jobs, jobs.start("eval", form)["id"])
    assert job["status"] == "succeeded", job
    assert (workspace / "eval" / "new" / "report.json").is_file()
    assert "--compare-base" in job["argv"] and job["progress"]["tasks_done"] == 4


def test_job_ids_are_checked_before_touching_files(workspace):
    jobs = fake_jobs(workspace)
    for bad in ("../../etc/passwd", "x", "20250101-000000-train-zzzzzz"):
        with pytest.raises(JobError) as err:
            jobs.get(bad)
        assert err.value.status == 404


def test_log_pages_end_on_utf8_boundaries(workspace, monkeypatch):
    from qwen3_lora.deploy.serve.console import joblog

    jobs = fake_jobs(workspace)
    job = finished(
        jobs,
        jobs.start("train", {"output_dir": "runs/u", "base_model": "tiny", "max_steps": 1})["id"],
    )
    with (workspace / ".jobs" / job["log"]).open("ab") as fh:
        fh.write("中文日志\n".encode())
    whole = jobs.log(job["id"], 0)
    assert whole["text"].endswith("中文日志\n") and jobs.log(job["id"])["offset"] == whole["size"]
    monkeypatch.setattr(joblog, "PAGE_BYTES", 5)  # pages end inside characters
    text, offset = "", 0
    while page := jobs.log(job["id"], offset)["text"]:
        assert "\ufffd" not in page
        text, offset = text + page, offset + len(page.encode())
    assert text == whole["text"] and jobs.log(job["id"], offset + 100)["reset"]


def test_the_api_key_is_not_inherited_by_jobs(workspace, monkeypatch):
    monkeypatch.setenv("QWEN3_LORA_API_KEY", "secret")
    show = "import os; print('KEY=' + str(os.environ.get('QWEN3_LORA_API_KEY')))"
    jobs = Jobs(Workspace.open(workspace), prefix=(sys.executable, "-c", show))
    job = finished(jobs, jobs.start("train", {"output_dir": "runs/k", "base_model": "tiny"})["id"])
    assert "KEY=None" in jobs.log(job["id"], 0)["text"]
