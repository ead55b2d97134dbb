"""The console's workspace: paths confined to it (no `..`, no absolute paths, no symlinks out),
report and run reading, metrics read by offset with half-written lines. No model, no server."""

from __future__ import annotations

import json
import os

import pytest
from console_support import make_workspace

from qwen3_lora.deploy.serve.console import reports
from qwen3_lora.deploy.serve.console.reports import read_metrics
from qwen3_lora.deploy.serve.console.workspace import Workspace, WorkspaceError, check_relative


@pytest.fixture
def ws(tmp_path):
    return Workspace.open(make_workspace(tmp_path / "ws"))


def _refused(ws, raw, status, code, **kwargs):
    with pytest.raises(WorkspaceError) as err:
        ws.resolve(raw, **kwargs)
    assert (err.value.status, err.value.code) == (status, code), err.value.message
    return err.value


@pytest.mark.parametrize(
    "raw",
    [
        "..",
        "../x",
        "a/../../x",
        "a/..",
        "/etc/passwd",
        "//etc",
        "~/x",
        "C:/x",
        "a\\..\\b",
        "a\x00b",
        "a\nb",
        "-rf",
        "runs/--help",
    ],
)
def test_unsafe_spellings_are_refused_before_the_disk(ws, raw):
    _refused(ws, raw, 400, "invalid_path")


def test_plain_relative_paths_resolve_inside(ws):
    assert ws.resolve("eval/demo") == ws.root / "eval" / "demo"
    assert ws.resolve("./eval//demo/") == ws.root / "eval" / "demo"
    assert ws.resolve("") == ws.root
    assert check_relative("a/./b").as_posix() == "a/b"
    _refused(ws, "nope", 404, "not_found")
    assert ws.resolve("new/run", must_exist=False) == ws.root / "new" / "run"


def test_symlinks_pointing_out_are_refused_inside_ones_allowed(ws, tmp_path):
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "report.json").write_text("{}")
    (ws.root / "out").symlink_to(outside)
    (ws.root / "in").symlink_to(ws.root / "eval")
    (ws.root / "dangling").symlink_to(tmp_path / "nothing-here")
    for raw in ("out", "out/report.json", "out/missing", "dangling"):
        _refused(ws, raw, 403, "outside_workspace")
    _refused(ws, "out/run", 403, "outside_workspace", must_exist=False)
    with pytest.raises(WorkspaceError) as err:
        ws.new_folder("out/run")  # a job may not write through a symlink either
    assert err.value.status == 403
    assert ws.resolve("in/demo") == ws.root / "eval" / "demo"
    (ws.root / "loop").symlink_to(ws.root / "loop")
    with pytest.raises(WorkspaceError):
        ws.resolve("loop")


def test_listings_skip_symlinked_folders_and_files_pointing_out(ws, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "eval").mkdir(parents=True)
    (elsewhere / "eval" / "report.json").write_text(json.dumps({"models": {}}))
    (elsewhere / "metrics.jsonl").write_text('{"step": 1, "loss": 9.9}\n')
    (ws.root / "linked").symlink_to(elsewhere)
    (ws.root / "eval" / "sneaky").mkdir()
    (ws.root / "eval" / "sneaky" / "report.json").symlink_to(elsewhere / "eval" / "report.json")
    (ws.root / "runs" / "sneaky").mkdir()
    (ws.root / "runs" / "sneaky" / "metrics.jsonl").symlink_to(elsewhere / "metrics.jsonl")
    assert [r["path"] for r in reports.list_reports(ws)] == ["eval/demo"]
    assert [r["path"] for r in reports.list_runs(ws)] == ["runs/demo"]
    for read in (reports.read_report, reports.run_metrics):
        with pytest.raises(WorkspaceError) as err:
            read(ws, "eval/sneaky" if read is reports.read_report else "runs/sneaky")
        assert err.value.status == 403


def test_reports_summary_report_and_misses(ws):
    (summary,) = reports.list_reports(ws)
    assert summary["path"] == "eval/demo" and summary["models"] == ["base", "tuned"]
    full = reports.read_report(ws, "eval/demo")
    assert full["report"]["models"]["tuned"]["问题场景分类"]["confusion"]["matrix"][1] == [1, 2, 0]
    assert full["misses"] == {
        "tuned": {"问题场景分类": 1, "文件名称提取": 1},
        "base": {"问题场景分类": 1},
    }
    misses = reports.read_misses(ws, "eval/demo")
    assert misses["total"] == 3
    assert reports.read_misses(ws, "eval/demo", model="tuned", task="文件名称提取")["total"] == 1
    page = reports.read_misses(ws, "eval/demo", offset=1, limit=1)
    assert page["total"] == 3 and len(page["data"]) == 1
    bad = ws.root / "eval" / "broken"
    bad.mkdir()
    (bad / "report.json").write_text("{not json")
    assert "error" in {r["path"]: r for r in reports.list_reports(ws)}["eval/broken"]
    with pytest.raises(WorkspaceError) as err:
        reports.read_report(ws, "eval/broken")
    assert err.value.status == 422
    with pytest.raises(WorkspaceError) as err:
        reports.read_report(ws, "runs/demo")  # a folder without report.json
    assert err.value.status == 404


def test_runs_listing_and_progress(ws):
    (ws.root / "runs" / "demo" / "progress.json").write_text('{"step": 20, "max_steps": 20}')
    (run,) = reports.list_runs(ws)
    assert (run["path"], run["steps"], run["finished"]) == ("runs/demo", 20, True)
    assert run["last_eval_loss"] is not None and run["progress"]["max_steps"] == 20


def test_metrics_leave_a_half_written_last_line_for_the_next_read(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')
    first = read_metrics(path)
    assert [r["step"] for r in first["rows"]] == [1]
    assert first["partial"] and first["offset"] == len('{"step": 1, "loss": 2.0}\n')
    with path.open("a") as fh:
        fh.write('ss": 1.5}\nnot json\n[1, 2]\n{"step": 3, "loss": 1.0}\n')
    second = read_metrics(path, first["offset"])
    assert [r["step"] for r in second["rows"]] == [2, 3]
    assert second["bad"] == 2 and not second["partial"]
    assert read_metrics(path, second["offset"])["rows"] == []


def test_metrics_rewritten_shorter_is_a_reset(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": i, "loss": 1.0}) + "\n" for i in range(1, 50)))
    offset = read_metrics(path)["offset"]
    path.write_text(json.dumps({"step": 1, "loss": 3.0}) + "\n")  # a resume trimmed it
    again = read_metrics(path, offset)
    assert again["reset"] and [r["step"] for r in again["rows"]] == [1]
    os.remove(path)
    assert read_metrics(path, 10)["reset"]


def test_data_files_offer_data_not_a_runs_or_reports_own_files(ws):
    (ws.root / "runs" / "demo" / "tokenizer.json").write_text("{}")  # a run's own file
    (ws.root / "data" / "more").mkdir()
    (ws.root / "data" / "more" / "extra.json").write_text("[]")
    files = ws.data_files(exclude=reports.OWN_FILES)
    assert files == ["data/memorise.jsonl", "data/more/extra.json"]


def test_new_folder_refuses_existing_content_and_the_jobs_folder(ws):
    with pytest.raises(WorkspaceError) as err:
        ws.new_folder("runs/demo")
    assert err.value.status == 409
    for raw in (".jobs/x", "", ".", "../x"):
        with pytest.raises(WorkspaceError):
            ws.new_folder(raw)
    (ws.root / "empty").mkdir()
    assert ws.new_folder("empty") == ws.root / "empty"
