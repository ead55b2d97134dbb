"""K-quants (q4_k_m, q5_k_m, q6_k): llama.cpp's own quantizer re-encodes an f32 export.

The `gguf` package cannot write K-quants (its numpy quantizers cover the legacy block types
only). llama.cpp's `llama_model_quantize` does, with the mixed per-tensor choices the `_m`
variants mean; it is reached through llama-cpp-python (`pip install 'qwen3-lora[llamacpp]'`)
when importable, else through a `llama-quantize` binary on PATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from .architectures import ExportError

FTYPE_NAMES = {"q4_k_m": "Q4_K_M", "q5_k_m": "Q5_K_M", "q6_k": "Q6_K"}
Quantizer = Callable[[Path, Path], str]


def _threads() -> int:
    return max(1, os.cpu_count() or 1)


def find_quantizer(outtype: str) -> Quantizer:
    """A function writing `target` as `outtype` from a GGUF `source` (returning the tool's
    name), or a clear error saying what to install."""
    ftype = FTYPE_NAMES[outtype]
    try:
        import llama_cpp
    except ImportError:
        llama_cpp = None
    if llama_cpp is not None:

        def with_library(source: Path, target: Path) -> str:
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
            params.nthread = _threads()
            status = llama_cpp.llama_model_quantize(
                str(source).encode(), str(target).encode(), params
            )
            if status != 0:
                raise ExportError(f"llama.cpp could not quantize {source} to {ftype} ({status})")
            return "llama-cpp-python"

        return with_library
    binary = shutil.which("llama-quantize")
    if binary is None:
        raise ExportError(
            f"--outtype {outtype} needs llama.cpp's quantizer: pip install "
            f"'qwen3-lora[llamacpp]' (llama-cpp-python), or put llama.cpp's llama-quantize "
            f"on PATH. Without it the exporter writes f32, f16, bf16, q8_0, q5_0, q5_1, q4_0 "
            f"and q4_1."
        )

    def with_binary(source: Path, target: Path) -> str:
        command = [binary, str(source), str(target), ftype, str(_threads())]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise ExportError(f"llama-quantize failed ({done.returncode}): {done.stderr[-500:]}")
        return binary

    return with_binary
