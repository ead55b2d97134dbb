"""Data-parallel training with torchrun: 2 CPU processes (gloo) train like one process with the
same effective batch, write one adapter and one metrics file, resume across world sizes, and
every process ends cleanly (no abort at exit, run after run).

The command is the README's multi-GPU command with 2 CPU processes instead of N GPUs. The
acceptance soak, 20 runs in a row, is `python scripts/torchrun_soak.py --runs 20`; this file
runs two in a row.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from qwen3_lora.data.records import load_builtin, load_records
from qwen3_lora.models.adapter import quiet_peft_wrapping
from qwen3_lora.prompt.encoding import PadCollator, encode_records
from qwen3_lora.training.loss import causal_lm_loss

pytestmark = pytest.mark.slow
SOAK = Path(__file__).resolve().parents[1] / "scripts" / "torchrun_soak.py"


def _soak_module():
    spec = importlib.util.spec_from_file_location("torchrun_soak", SOAK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The soak script's: what a process that died of a signal or an exception leaves in
# torchrun's output, a free port, and running a process tree with a timeout.
soak = _soak_module()


def _train(
    nproc: int, out: Path, data: Path, base: Path, *extra: str
) -> subprocess.CompletedProcess:
    common = [
        "--base-model",
        str(base),
        "--output-dir",
        str(out),
        "--data",
        str(data),
        "--no-builtin-data",
        "--no-eval-each-epoch",
        "--report-to",
        "none",
        "--precision",
        "fp32",
        "--lora-dropout",
        "0",
        "--learning-rate",
        "3e-3",
        "--batch-size",
        "2",
        "--seed",
        "5",
        *extra,
    ]
    if nproc == 1:
        cmd = [sys.executable, "-m", "qwen3_lora", "train", *common]
    else:
        torchrun = str(Path(sys.executable).parent / "torchrun")
        cmd = [
            torchrun,
            "--nproc_per_node",
            str(nproc),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(soak.free_port()),
            "-m",
            "qwen3_lora",
            "train",
            *common,
        ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = _run_or_dump(cmd, env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not [m for m in soak.BAD_MARKERS if m in proc.stderr], proc.stderr[-3000:]
    return proc


def _run_or_dump(cmd: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    """Run `cmd` through the soak script's `run_tree`; fail with the stacks of a hang."""
    proc, hung = soak.run_tree(cmd, env, timeout)
    if hung:
        pytest.fail(
            f"no end after {timeout:.0f} s: {cmd}\n{proc.stderr[-6000:]}\n{proc.stdout[-1000:]}"
        )
    return proc


def _train_loss(adapter: Path, base: Path, data: Path) -> float:
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    with quiet_peft_wrapping():
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)
    model.eval()
    encoded, _ = encode_records(tokenizer, load_records([data]), 512)
    batch = PadCollator(tokenizer.pad_token_id)([e.as_features() for e in encoded])
    with torch.no_grad():
        return causal_lm_loss(model, batch).item()


@pytest.fixture(scope="module")
def subset(tmp_path_factory) -> Path:
    rows = {}
    for r in load_builtin("train"):
        rows.setdefault(r.task, [])
        if len(rows[r.task]) < 8:
            rows[r.task].append({"task": r.task, "input": r.input, "output": r.output})
    path = tmp_path_factory.mktemp("ddp") / "subset.jsonl"
    lines = [json.dumps(x, ensure_ascii=False) for group in rows.values() for x in group]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_two_processes_match_one_with_the_same_effective_batch(tmp_path, tiny_model_dir, subset):
    # Effective batch 8 both ways: 2 x 1 process x 4 accumulation = 2 x 2 processes x 2.
    _train(1, tmp_path / "one", subset, tiny_model_dir, "--grad-accum", "4", "--epochs", "8")
    proc = _train(2, tmp_path / "two", subset, tiny_model_dir, "--grad-accum", "2", "--epochs", "8")
    assert "effective batch 8 = 2 per device x 2 process(es) x 2 accumulation" in proc.stderr
    assert proc.stdout.count("done:") == 1  # only the main process reports

    two = tmp_path / "two"
    assert len(list(two.glob("adapter_model.safetensors"))) == 1
    assert len(list(two.rglob("metrics.jsonl"))) == 1
    steps = [json.loads(x)["step"] for x in (two / "metrics.jsonl").read_text().splitlines()]
    one_steps = [
        json.loads(x)["step"] for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == one_steps  # same number of optimizer steps, each logged once

    before = _train_loss_base(tiny_model_dir, subset)
    loss_one = _train_loss(tmp_path / "one", tiny_model_dir, subset)
    loss_two = _train_loss(two, tiny_model_dir, subset)
    print(
        f"train-set loss: base {before:.4f}, 1 process {loss_one:.4f}, 2 processes {loss_two:.4f}"
    )
    assert loss_one < before - 0.5 and loss_two < before - 0.5
    # Different shards see different sample orders; the learned adapters must still agree.
    assert abs(loss_one - loss_two) < 0.1 * (before - loss_one), (before, loss_one, loss_two)


def _train_loss_base(base: Path, data: Path) -> float:
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base).eval()
    encoded, _ = encode_records(tokenizer, load_records([data]), 512)
    batch = PadCollator(tokenizer.pad_token_id)([e.as_features() for e in encoded])
    with torch.no_grad():
        return causal_lm_loss(model, batch).item()


def test_resume_across_a_different_number_of_processes(tmp_path, tiny_model_dir, subset):
    out = tmp_path / "run"
    _train(
        2, out, subset, tiny_model_dir, "--max-steps", "2", "--save-steps", "2", "--grad-accum", "2"
    )
    _train(
        1,
        out,
        subset,
        tiny_model_dir,
        "--max-steps",
        "4",
        "--save-steps",
        "2",
        "--grad-accum",
        "4",
        "--resume",
    )
    steps = [
        json.loads(x)["step"]
        for x in (out / "metrics.jsonl").read_text().splitlines()
        if "loss" in json.loads(x)
    ]
    assert steps == [1, 2, 3, 4]
    assert (out / "checkpoints" / "checkpoint-4" / "trainer_state.json").is_file()


def test_consecutive_runs_end_cleanly(tiny_model_dir):
    cmd = [sys.executable, str(SOAK), "--runs", "2", "--steps", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = _run_or_dump([*cmd, "--base-model", str(tiny_model_dir)], env, timeout=600)
    assert proc.returncode == 0 and "0/2 failed" in proc.stdout, proc.stdout + proc.stderr[-3000:]


def test_a_hung_process_tree_is_aborted_with_its_stacks_and_leaves_nothing_behind(tmp_path):
    # A parent that, like torchrun, starts a child in a session of its own and waits on it.
    pid_file = tmp_path / "child.pid"
    child = "import time\ndef waiting_in_the_child():\n    time.sleep(600)\nwaiting_in_the_child()"
    parent = (
        "import subprocess, sys\n"
        f"p = subprocess.Popen([sys.executable, '-c', {child!r}], start_new_session=True)\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "p.wait()"
    )
    proc, hung = soak.run_tree([sys.executable, "-c", parent], dict(os.environ), timeout=5)
    assert hung and proc.returncode != 0
    assert "waiting_in_the_child" in proc.stderr  # the child's stack, printed on SIGABRT
    child_pid = int(pid_file.read_text())
    assert not psutil.pid_exists(child_pid) or psutil.Process(child_pid).status() == "zombie"


def test_a_process_tree_that_ends_in_time_is_not_touched():
    proc, hung = soak.run_tree([sys.executable, "-c", "print('done')"], dict(os.environ), 60)
    assert not hung and proc.returncode == 0 and proc.stdout == "done\n"
