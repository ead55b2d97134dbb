"""What every benchmark shares: the machine and commit it ran on, memory and matmul-peak
measurements, the random-weight model and tokenizer it trains, and writing its result files.

Results are written atomically (`qwen3_lora.files.atomic_write_text`) and every result JSON
records `machine` and `commit` (`write_result`), so a figure can be traced to the code and the
hardware that produced it. README tables are rendered into blocks between marker comments
(`render_block`), never typed by hand.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from qwen3_lora.files import atomic_write_text

if TYPE_CHECKING:
    import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
GB = 1e9
HELLO_IDS = [9707, 11, 1879, 0]  # Qwen3's ids of "Hello, world!"
TINY, QWEN3_SHAPE = "tiny", "qwen3-0.6b-shape"


def go_offline() -> None:
    """Nothing a benchmark runs may reach a model hub; worker processes inherit this."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# ---------------------------------------------------------------------------------------------
# The machine and the code


def _version(name: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine() -> dict:
    """CPU, cores, memory, accelerator and library versions of this process's machine."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    for line in cpuinfo.splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = None
    try:
        import psutil

        mem = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    facts = {
        "host": socket.gethostname(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "avx512_bf16": "avx512_bf16" in cpuinfo,
        "amx": "amx_tile" in cpuinfo,
        "memory_gib": mem,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "peft": _version("peft"),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }
    for optional in ("trl", "accelerate", "bitsandbytes"):
        if _version(optional):
            facts[optional] = _version(optional)
    if torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name(0)
        facts["cuda"] = torch.version.cuda
    return facts


def commit() -> dict:
    """The commit the benchmark ran on: `git rev-parse HEAD` and whether the tree had changes
    (results files aside, which the benchmarks themselves write)."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--", ".", ":!benchmarks/results")
    return {"sha": sha, "dirty": bool(status) if status is not None else None}


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


# ---------------------------------------------------------------------------------------------
# Measurements


def rss_bytes() -> tuple[int, int]:
    """(current RSS, peak RSS since the last reset) of this process, from /proc."""
    fields = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) * 1024
    except OSError:
        peak = lifetime_peak_rss()
        return peak, peak
    return fields.get("VmRSS", 0), fields.get("VmHWM", 0)


def reset_peak_rss() -> bool:
    """Restart the kernel's peak-RSS counter (VmHWM) at the current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def lifetime_peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def matmul_peak(dtype: torch.dtype, n: int, seconds: float, device: str = "cpu") -> float:
    """Best GFLOP/s of an n x n x n matmul on this process's threads (or GPU) over `seconds`."""
    import torch

    from qwen3_lora.models.loading import cpu_supports_bf16

    if dtype == torch.bfloat16 and device == "cpu" and not cpu_supports_bf16():
        n = min(n, 512)  # emulated bf16 runs at ~1 GFLOP/s: one 3072^3 matmul would take ~45 s

    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    cuda = device.startswith("cuda")
    repeats = 10 if cuda else 1  # one GPU matmul is too short to time alone
    a @ b
    best, began = 0.0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(repeats):
            a @ b
        if cuda:
            torch.cuda.synchronize()
        best = max(best, repeats * 2 * n**3 / (time.perf_counter() - t))
    return best / 1e9


# ---------------------------------------------------------------------------------------------
# What the benchmarks train: Qwen3's tokenizer (or the tiny one) and random-weight models


def build_tokenizer(tiny: bool):
    """(tokenizer, facts): the tiny test BPE, or Qwen3's vocabulary rebuilt offline."""
    if tiny:
        from qwen3_lora.models.tiny import build_tokenizer as tiny_tokenizer

        return tiny_tokenizer(), {"kind": "tiny BPE (tests)"}
    from qwen3_lora.models.qwen_tokenizer import load_qwen3_tokenizer

    tokenizer = load_qwen3_tokenizer()
    hello = tokenizer("Hello, world!", add_special_tokens=False)["input_ids"]
    if hello != HELLO_IDS:
        raise SystemExit(f"the Qwen3 tokenizer is wrong: 'Hello, world!' -> {hello}")
    return tokenizer, {"kind": "Qwen3 (qwen-tokenizer BPE ranks)", "hello_world": hello}


def build_model(tokenizer, arch: str, dtype: torch.dtype | None = None):
    """A random-weight Qwen3 of `arch` (bf16 by default); the 0.6B shape gets the checkpoint's
    151,936 rows."""
    import torch

    from qwen3_lora.models.qwen_tokenizer import QWEN3_EMBEDDING_ROWS
    from qwen3_lora.models.tiny import build_model as build_random

    model = build_random(tokenizer, arch, dtype=dtype or torch.bfloat16)
    if arch != TINY:
        # The published checkpoint pads its embedding to 151,936 rows.
        model.resize_token_embeddings(QWEN3_EMBEDDING_ROWS, mean_resizing=False)
    return model


def model_shape(config) -> dict:
    """The sizes the FLOP count needs (`benchmarks.flops`), from a transformers config."""
    return {
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "head_dim": config.head_dim,
        "vocab_size": config.vocab_size,
    }


def build_model_folder(tokenizer, arch: str, folder: Path) -> dict:
    """Save a random-weight model of `arch` (bf16 safetensors) and the tokenizer to `folder`."""
    model = build_model(tokenizer, arch)
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    shape = model_shape(model.config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    return {"arch": arch, "params": total, "embedding_params": embedding, "shape": shape}


# ---------------------------------------------------------------------------------------------
# Result files


def write_result(path: Path, report: dict) -> Path:
    """Write a result JSON atomically, with the machine and the commit it ran on."""
    report.setdefault("machine", machine())
    report.setdefault("commit", commit())
    atomic_write_text(path, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return path


def write_text(path: Path, text: str) -> Path:
    atomic_write_text(path, text)
    return path


def command_line(module: str, argv: list[str] | None = None) -> str:
    """The command a result records: `python -m <module>` and the arguments it was given
    (`argv`, else this process's), so that a partial or tuned run never reads as the plain one."""
    return shlex.join(["python", "-m", module, *(sys.argv[1:] if argv is None else argv)])


def result_name(kind: str = "", smoke: bool = False) -> str:
    """`<date>-<host>[-kind][-smoke].json`."""
    parts = [time.strftime("%Y-%m-%d"), socket.gethostname()]
    parts += [kind] if kind else []
    parts += ["smoke"] if smoke else []
    return "-".join(parts) + ".json"


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- benchmarks:{name}:start -->", f"<!-- benchmarks:{name}:end -->"


def replace_block(text: str, name: str, body: str) -> str:
    """`text` with the block between `name`'s marker comments replaced by `body`."""
    start, end = _markers(name)
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"no {start} ... {end} block to render into")
    return pattern.sub(lambda _: f"{start}\n{body.strip()}\n{end}", text, count=1)


def render_block(name: str, body: str, readme: Path = README) -> bool:
    """Rewrite `name`'s block in the README (atomically); False when it has no such block."""
    text = readme.read_text("utf-8")
    if _markers(name)[0] not in text:
        return False
    new = replace_block(text, name, body)
    if new != text:
        atomic_write_text(readme, new)
    return True
