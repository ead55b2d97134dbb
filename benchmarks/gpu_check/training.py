"""Parts 1 and 2: bf16 LoRA training of an epoch, and QLoRA 4-bit for a few steps, through
`train()` itself, timed by the train_speed pacer (with no driver to wait for)."""

from __future__ import annotations

import gc
import time
from pathlib import Path

import torch

from benchmarks.common import GB
from benchmarks.flops import step_flops
from benchmarks.train_speed.pacer import Pacer, supervised_lookup


class NoDriver:
    """The pacer's pipe with nobody at the other end: every window is let through at once."""

    def __init__(self):
        self.sent: list[dict] = []

    def send(self, msg: dict) -> None:
        self.sent.append(msg)

    def recv(self) -> str:
        return "go"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _reset_memory(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_memory_gb(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / GB if device.startswith("cuda") else None


def train_timed(ctx: dict, name: str, overrides: dict, windows_per_run: int = 8) -> dict:
    """One `train()` run on the built-in train split; figures from its timed windows (the first
    window, with the first kernels and allocations, excluded)."""
    from qwen3_lora.training.config import TrainConfig
    from qwen3_lora.training.train import train

    values = {
        "base_model": str(ctx["model_dir"]),
        "data": [str(ctx["train_file"])],
        "builtin_data": False,
        "output_dir": str(ctx["workdir"] / name),
        "epochs": 1,
        "eval_each_epoch": False,
        "save_steps": 10**9,
        "report_to": ["none"],
        "logging_steps": 10,
        **overrides,
    }
    config = TrainConfig(**values)
    records = ctx["records"]
    micro = -(-len(records) // config.batch_size)
    if config.max_steps > 0:
        micro = min(micro, config.max_steps * config.grad_accum)
    conn = NoDriver()
    lookup = supervised_lookup(ctx["tokenizer"], records, config.max_length)
    pacer = Pacer(conn, max(1, micro // windows_per_run), lookup)
    device = ctx["device"]
    _reset_memory(device)
    began = time.perf_counter()
    result = train(config, callbacks=[pacer])
    _sync(device)
    wall = time.perf_counter() - began
    windows = [m for m in conn.sent if m["event"] == "window"]
    timed = windows[1:] or windows
    seconds = sum(w["seconds"] for w in timed)
    tokens = sum(w["tokens"] for w in timed)
    flops = step_flops(
        ctx["shape"],
        tokens=tokens,
        supervised=sum(w["supervised"] for w in timed),
        pairs=sum(w["pairs"] for w in timed),
        lora=ctx["lora_params"],
    )["total"]
    all_tokens = sum(w["tokens"] for w in windows)
    return {
        "overrides": overrides,
        "batching": f"{config.batch_size} x {config.grad_accum}",
        "optimizer_steps": result.optimizer_steps,
        "final_loss": result.final_loss,
        "micro_batches": windows[-1]["micro"] if windows else 0,
        "useful_tokens": all_tokens,
        "useful_tokens_per_s": tokens / seconds if seconds else 0.0,
        "loop_seconds": round(sum(w["seconds"] for w in windows), 3),
        "wall_seconds_with_setup": round(wall, 2),
        # A whole epoch at the steady rate (what a second epoch of a run costs).
        "seconds_per_epoch": ctx["split_tokens"] * seconds / tokens if tokens else None,
        "util_bf16_needed": flops / seconds / (ctx["bf16_peak_gflops"] * 1e9) if seconds else 0.0,
        "peak_gpu_memory_gb": _peak_memory_gb(device),
        "output_dir": str(Path(values["output_dir"])),
    }


def training(ctx: dict) -> dict:
    """Part 1: one epoch in the default batching and one in micro-batches of 8 (the same 8
    samples per optimizer step, half the kernel launches per sample)."""
    dry = ctx["dry_run"]
    limit = {"max_steps": 3} if dry else {}
    runs = {"defaults": train_timed(ctx, "defaults", {**limit})}
    if not dry:  # the same code path again; a dry run checks it once
        runs["b8"] = train_timed(ctx, "b8", {"batch_size": 8, "grad_accum": 1})
    ctx["adapter"] = runs["defaults"]["output_dir"]
    return {"runs": runs, "projected_from_steps": bool(dry)}


def qlora(ctx: dict) -> dict:
    """Part 2: QLoRA (4-bit base) for a few steps; on the CPU (dry run) without quantization,
    which bitsandbytes' 4-bit kernels need CUDA for."""
    dry = ctx["dry_run"]
    overrides = {"max_steps": 2 if dry else 6, "logging_steps": 1}
    if not dry:
        overrides["quantization"] = "4bit"
    figures = train_timed(ctx, "qlora", overrides, windows_per_run=4)
    figures["quantization"] = overrides.get("quantization") or "none (dry run on CPU)"
    return figures
