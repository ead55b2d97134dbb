"""The driver side: a handle on each worker process, and the round-robin that paces them."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
from pathlib import Path

import torch

from benchmarks.common import load_average, matmul_peak
from benchmarks.train_speed.workers import worker_main


class Worker:
    """The driver's handle on one worker process."""

    def __init__(self, name: str, kind: str, opts: dict, workdir: Path):
        self.name = name
        opts = {**opts, "log": str(workdir / f"{name}.log")}
        self.log = Path(opts["log"])
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=worker_main, args=(kind, opts, child), daemon=True)
        # Environment variables (e.g. OMP_WAIT_POLICY) must be there when the child starts:
        # its OpenMP runtime reads them once, on loading.
        env = opts.get("env", {})
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            self.proc.start()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        self.windows: list[dict] = []
        self.ready: dict | None = None
        self.done: dict | None = None

    def receive(self, timeout: float = 3600) -> dict:
        if not self.conn.poll(timeout):
            raise RuntimeError(f"{self.name}: no answer in {timeout} s; see {self.log}")
        try:
            msg = self.conn.recv()
        except EOFError:
            raise self._died() from None
        if msg["event"] == "error":
            raise RuntimeError(f"{self.name} failed:\n{msg['trace']}")
        if msg["event"] == "window":
            self.windows.append(msg)
        elif msg["event"] == "ready":
            self.ready = msg
        elif msg["event"] == "done":
            self.done = msg
        return msg

    def go(self) -> dict:
        """Let the worker run its next window; return what it reports at the end of it."""
        try:
            self.conn.send("go")
        except (BrokenPipeError, ConnectionResetError):
            raise self._died() from None
        msg = self.receive()
        if msg.get("final"):
            self.receive()  # the "done" message
        return msg

    def _died(self) -> RuntimeError:
        """The error for a worker that went away: how it ended, and its log's tail."""
        self.proc.join(10)
        code = self.proc.exitcode
        how = f"exit status {code}"
        if code is not None and code < 0:
            how = f"killed by {signal.Signals(-code).name}"
            if -code == signal.SIGKILL:
                how += (
                    " (most likely the kernel's out-of-memory killer: every worker holds a"
                    " model of its own; run fewer arms, e.g. --no-trl, or on more memory)"
                )
        tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
        return RuntimeError(f"{self.name} died, {how} (see {self.log}):\n{tail}")

    @property
    def finished(self) -> bool:
        return self.done is not None

    def close(self) -> None:
        if self.proc.is_alive():
            with contextlib.suppress(BrokenPipeError, OSError):
                self.conn.send("stop")
            self.proc.join(30)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(10)


class Run:
    """One benchmark run: its matmul-peak measurements and the pacing of its workers."""

    def __init__(self, args):
        self.args = args
        self.peaks: list[dict] = []

    def measure_peak(self, label: str) -> None:
        n = 256 if self.args.smoke else 3072
        seconds = 0.2 if self.args.smoke else 1.5
        self.peaks.append(
            {
                "at": label,
                "bf16_gflops": round(matmul_peak(torch.bfloat16, n, seconds), 1),
                "fp32_gflops": round(matmul_peak(torch.float32, n, seconds), 1),
                "load_average": load_average(),
            }
        )
        print(f"  matmul peak ({label}): {self.peaks[-1]}", flush=True)

    def interleave(self, workers: list[Worker]) -> None:
        """Round-robin: each live worker runs one window in turn until all are done."""
        for w in workers:
            while w.ready is None:
                w.receive()
        while True:
            live = [w for w in workers if not w.finished]
            if not live:
                return
            for w in live:
                msg = w.go()
                print(
                    f"  {w.name:>5}: micro-batch {msg['micro']:>3}, {msg['tokens']:>5} useful "
                    f"tokens in {msg['seconds']:7.2f} s",
                    flush=True,
                )

    def interleave_and_close(self, workers: list[Worker]) -> None:
        try:
            self.interleave(workers)
        finally:
            for w in workers:
                w.close()
