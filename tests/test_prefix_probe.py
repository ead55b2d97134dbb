"""The shared-prefix probe (benchmarks/prefix_probe.py): computing a one-task micro-batch's
common prompt prefix once gives the plain path's loss and LoRA gradients."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_prefix_path_equals_the_plain_path(tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    # One thread: a tiny model gains nothing from more, and they would wait on each other.
    command = ["-m", "benchmarks.prefix_probe", "--smoke", "--threads", "1", "--rounds", "1"]
    done = subprocess.run(
        [sys.executable, *command, "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (path,) = tmp_path.glob("*-prefix-probe-smoke.json")
    report = json.loads(path.read_text("utf-8"))
    equality = report["equality_fp32_no_dropout"]
    assert equality["equal"] and equality["max_abs_loss_difference"] < 1e-5
    # Every micro-batch shares the chat scaffolding and the task line.
    assert min(report["shared_prefix_tokens"]) >= 5
    assert report["timing"]["prefix_tokens_saved"] > 0
