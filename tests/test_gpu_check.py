"""`python -m benchmarks.gpu_check --dry-run`: every part of the GPU check runs on the CPU with
the tiny model, so the check cannot rot while no GPU is at hand."""

from __future__ import annotations

import json

import pytest
from benchmark_run import run_benchmark

# ~30 s on an idle 2-core machine: four parts, a served model in a second process.
pytestmark = pytest.mark.slow


def test_dry_run_runs_every_part_and_renders(tmp_path):
    run_benchmark("gpu_check", "--dry-run", "--out", str(tmp_path))
    (path,) = tmp_path.glob("*-gpu-dry.json")
    report = json.loads(path.read_text("utf-8"))
    parts = report["parts"]
    assert set(parts) == {"training", "qlora", "scoring", "server"}
    assert not [name for name, part in parts.items() if "error" in part]
    run = parts["training"]["runs"]["defaults"]
    assert run["optimizer_steps"] == 3 and run["useful_tokens_per_s"] > 0
    assert parts["qlora"]["optimizer_steps"] == 2
    for batch in ("1", "8"):
        figures = parts["scoring"]["per_batch"][batch]
        assert figures["score_ms_per_query"] > 0 and figures["generate_ms_per_query"] > 0
    server = parts["server"]
    assert server["ok"] and server["task"]["answer"]["label"] and server["chat"]["status"] == 200
    assert report["commit"]["sha"] and report["machine"]["torch"]
    # The rendered section goes between the README's markers, nowhere else.
    readme = tmp_path / "README.md"
    readme.write_text(
        "a\n<!-- benchmarks:gpu_check:start -->\nold\n<!-- benchmarks:gpu_check:end -->\nb\n"
    )
    run_benchmark("gpu_check", "--render", str(path), "--readme", str(readme))
    text = readme.read_text()
    assert text.startswith("a\n<!-- benchmarks:gpu_check:start -->\n[") and text.endswith(
        "end -->\nb\n"
    )
    assert "old" not in text and "| batch 8 " in text
    assert (tmp_path / "GPU.md").read_text().startswith("# GPU check")
