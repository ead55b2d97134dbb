"""Soak test for 2-process torchrun training: N short trainings of the tiny model, one after
another; each must exit 0, write exactly one complete adapter and abort no process.

    python scripts/torchrun_soak.py --runs 20                 # the acceptance run
    python scripts/torchrun_soak.py --runs 20 --logs /tmp/soak   # keep failed runs' output

A run fails when torchrun exits non-zero, its output shows a process killed by a signal
("terminate called", "Signal 6", "SIGABRT", "SIGTERM") or a traceback, or the output folder
does not hold one adapter whose safetensors file opens. Prints one line per run, then the
number of failures and the run times. A run that outlives --timeout is aborted with every
process it started, each printing its threads' stacks into the run's output (`run_tree`).
tests/test_distributed.py runs two of these in CI and runs its own torchrun commands through
`run_tree` too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

BAD_MARKERS = ("terminate called", "Signal 6", "SIGABRT", "SIGTERM", "Traceback")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_tree(cmd: list[str], env: dict, timeout: float) -> tuple[subprocess.CompletedProcess, bool]:
    """Run `cmd` capturing its output: (the completed process, whether it outlived `timeout`).
    A run that outlives it is aborted with every process it started (SIGABRT: with the
    PYTHONFAULTHANDLER=1 it runs under, each Python process prints its threads' stacks), then
    killed, so a hang says where it hung and leaves no process behind. torchrun starts its
    workers in sessions of their own, so they are found as its descendants, not by process
    group."""
    env = {**env, "PYTHONFAULTHANDLER": "1"}
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
            hung = False
        except subprocess.TimeoutExpired:
            hung = True
            descendants = psutil.Process(proc.pid).children(recursive=True)
            for process in reversed(descendants):  # workers first, while torchrun waits on them
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.send_signal(signal.SIGABRT)
            proc.send_signal(signal.SIGABRT)
            # Popen reaps its own child (psutil reaping it would lose the exit status).
            _, alive = psutil.wait_procs(descendants, timeout=20)
            for process in alive:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.kill()
            try:
                out, err = proc.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), hung


def _prepare(work: Path, base: str | None) -> tuple[Path, Path]:
    from qwen3_lora.data.records import load_builtin
    from qwen3_lora.models.tiny import build_tiny_folder

    base = Path(base) if base else build_tiny_folder(work / "tiny")
    rows: dict[str, list] = {}
    for r in load_builtin("train"):
        group = rows.setdefault(r.task, [])
        if len(group) < 8:
            group.append({"task": r.task, "input": r.input, "output": r.output})
    data = work / "subset.jsonl"
    data.write_text(
        "".join(json.dumps(x, ensure_ascii=False) + "\n" for g in rows.values() for x in g),
        encoding="utf-8",
    )
    return base, data


def _check_adapter(out: Path) -> str | None:
    from safetensors import safe_open

    # Checkpoints hold adapters of their own; the run's adapter is the one at the top.
    found = [p for p in out.rglob("adapter_model.safetensors") if "checkpoints" not in p.parts]
    if found != [out / "adapter_model.safetensors"]:
        return f"expected one adapter in {out}, found {[str(p) for p in found]}"
    try:
        with safe_open(str(found[0]), "pt") as fh:
            if not list(fh.keys()):
                return "adapter has no tensors"
    except Exception as exc:  # a truncated file is exactly what we look for
        return f"adapter does not open: {exc}"
    if not (out / "adapter_config.json").is_file() or not (out / "train_config.yaml").is_file():
        return "adapter_config.json or train_config.yaml missing"
    return None


def run_once(base: Path, data: Path, out: Path, steps: int, timeout: float):
    torchrun = str(Path(sys.executable).parent / "torchrun")
    cmd = [
        torchrun,
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        "-m",
        "qwen3_lora",
        "train",
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
        "--batch-size",
        "2",
        "--grad-accum",
        "1",
        "--max-steps",
        str(steps),
        "--save-steps",
        str(max(1, steps // 2)),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    began = time.perf_counter()
    proc, hung = run_tree(cmd, env, timeout)
    seconds = time.perf_counter() - began
    problems = ["timeout (hang)"] if hung else []
    if proc.returncode != 0:
        problems.append(f"exit {proc.returncode}")
    problems += [f"stderr: {m!r}" for m in BAD_MARKERS if m in proc.stderr]
    if proc.returncode == 0 and (bad := _check_adapter(out)):
        problems.append(bad)
    return seconds, problems, proc


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--steps", type=int, default=4, help="optimizer steps per training")
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--logs", help="folder for the stdout/stderr of failed runs")
    p.add_argument("--work", help="scratch folder (default: a temporary one, removed after)")
    p.add_argument("--base-model", help="a model folder (default: the tiny model, built here)")
    args = p.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="torchrun-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    import qwen3_lora

    print(f"qwen3_lora from {qwen3_lora.__file__}; work in {work}", flush=True)
    base, data = _prepare(work, args.base_model)
    times, failures = [], 0
    for i in range(1, args.runs + 1):
        out = work / f"run-{i}"
        seconds, problems, proc = run_once(base, data, out, args.steps, args.timeout)
        times.append(seconds)
        status = "ok" if not problems else "FAIL " + "; ".join(problems)
        print(f"run {i:3d}: {seconds:6.1f} s  {status}", flush=True)
        if problems:
            failures += 1
            if args.logs:
                logs = Path(args.logs)
                logs.mkdir(parents=True, exist_ok=True)
                for name in ("stdout", "stderr"):
                    text = getattr(proc, name) or ""
                    (logs / f"run-{i}.{name}").write_text(text, encoding="utf-8")
        shutil.rmtree(out, ignore_errors=True)
    print(
        f"{failures}/{args.runs} failed; run time mean {statistics.mean(times):.1f} s, "
        f"max {max(times):.1f} s",
        flush=True,
    )
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
