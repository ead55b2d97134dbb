"""The shared-prefix probe (benchmarks/prefix_probe.py): computing a one-task micro-batch's
common prompt prefix once gives the plain path's loss and LoRA gradients."""

from __future__ import annotations

import json

from benchmark_run import run_benchmark


def test_smoke_prefix_path_equals_the_plain_path(tmp_path):
    # One thread: a tiny model gains nothing from more, and they would wait on each other.
    args = ["--smoke", "--threads", "1", "--rounds", "1", "--out", str(tmp_path)]
    run_benchmark("prefix_probe", *args)
    (path,) = tmp_path.glob("*-prefix-probe-smoke.json")
    report = json.loads(path.read_text("utf-8"))
    equality = report["equality_fp32_no_dropout"]
    assert equality["equal"] and equality["max_abs_loss_difference"] < 1e-5
    # Every micro-batch shares the chat scaffolding and the task line.
    assert min(report["shared_prefix_tokens"]) >= 5
    assert report["timing"]["prefix_tokens_saved"] > 0
