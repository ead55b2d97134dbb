"""Data-parallel training with torchrun: 2 CPU processes (gloo) train like one process with the
same effective batch, write one adapter and one metrics file, resume across world sizes, and
every process ends cleanly (no abort at exit, run after run).

The command is the README's multi-GPU command with 2 CPU processes instead of N GPUs. The
acceptance soak, 20 runs in a row, is `python scripts/torchrun_soak.py --runs 20`; this file
runs two in a row.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
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
# What a process that died of a signal or an exception leaves in torchrun's output.
UNCLEAN = ("terminate called", "Signal 6", "SIGABRT", "SIGTERM", "Traceback")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(nproc: int, out: Path, data: Path, base: Path, *extra: str) -> None:
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
            str(_free_port()),
            "-m",
            "qwen3_lora",
            "train",
            *common,
        ]
    # faulthandler: a process that gets SIGABRT prints where each of its threads was.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    proc = _run_or_dump(cmd, env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not [m for m in UNCLEAN if m in proc.stderr], proc.stderr[-3000:]
    return proc


def _run_or_dump(cmd: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    """Run `cmd`; if it outlives `timeout`, abort it and every process it started (each Python
    process then prints its threads' stacks: PYTHONFAULTHANDLER) and fail with that output, so
    a hang says where it hung and leaves no process behind. torchrun starts its workers in
    sessions of their own, so they are found as its descendants, not by process group."""
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            tree = [proc_ := psutil.Process(proc.pid), *proc_.children(recursive=True)]
            for process in reversed(tree):  # workers first, while torchrun still waits on them
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.send_signal(signal.SIGABRT)
            _, alive = psutil.wait_procs(tree, timeout=20)
            for process in alive:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.kill()
            out, err = proc.communicate()
            pytest.fail(f"no end after {timeout:.0f} s: {cmd}\n{err[-6000:]}\n{out[-1000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


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
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    proc = _run_or_dump([*cmd, "--base-model", str(tiny_model_dir)], env, timeout=600)
    assert proc.returncode == 0 and "0/2 failed" in proc.stdout, proc.stdout + proc.stderr[-3000:]
