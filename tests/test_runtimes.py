"""The runtimes benchmark (llama.cpp vs our Predictor), in its smoke form, runs end to end in
separate processes and reports every figure; a smoke run publishes nothing."""

from __future__ import annotations

import json

from benchmark_run import ROOT, run_benchmark
from conftest import import_llama_cpp

import_llama_cpp()


def test_smoke_measures_every_engine_in_its_own_process(tmp_path):
    readme = (ROOT / "README.md").read_text("utf-8")
    done = run_benchmark("runtimes", "--smoke", "--out", str(tmp_path))
    (path,) = tmp_path.glob("*-runtimes-smoke.json")
    report = json.loads(path.read_text("utf-8"))
    assert set(report["engines"]) == {"ours", "q8_0", "f16"}
    for engine in report["engines"].values():
        assert engine["queries"] == report["queries"] == 4
        assert engine["score_ms_median"] > 0 and engine["generate_label_ms_median"] > 0
        assert engine["generation_tokens_per_s"] > 0
        assert 0 < engine["peak_rss_gb"] < 8
    # llama.cpp's processes hold neither torch nor the driver's memory
    assert report["engines"]["q8_0"]["peak_rss_gb"] < report["engines"]["ours"]["peak_rss_gb"]
    assert report["comparison"]["classification_speedup"] > 0
    assert report["commit"] and report["machine"]["cores"] >= 1
    assert "| llama.cpp q8_0 |" in done.stdout
    assert (ROOT / "README.md").read_text("utf-8") == readme
    assert not (tmp_path / "RUNTIMES.md").exists()
