"""Writing GGUF files with the `gguf` package: which storage type each tensor gets, and a writer
that streams tensors to disk one at a time (header and tensor table first, then each tensor
computed, encoded and written), so a model is never held twice in memory.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .architectures import ExportError, TensorSource

# --outtype -> (tensor type, file type) for the types the `gguf` package encodes itself.
FLOAT_OUTTYPES = ("f32", "f16", "bf16")
PACKAGE_OUTTYPES = (*FLOAT_OUTTYPES, "q8_0", "q5_0", "q5_1", "q4_0", "q4_1")
# K-quants: llama.cpp's own quantizer (llama_model_quantize) re-encodes an f32 export.
KQUANT_OUTTYPES = ("q4_k_m", "q5_k_m", "q6_k")
OUTTYPES = PACKAGE_OUTTYPES + KQUANT_OUTTYPES


def gguf_module():
    try:
        import gguf
    except ImportError as exc:
        raise ExportError(
            f"export needs the gguf package: pip install 'qwen3-lora[gguf]' ({exc})"
        ) from exc
    return gguf


def tensor_type(outtype: str):
    gguf = gguf_module()
    if outtype not in PACKAGE_OUTTYPES:
        raise ExportError(f"--outtype {outtype!r}: one of {', '.join(PACKAGE_OUTTYPES)} here")
    return gguf.GGMLQuantizationType[outtype.upper()]


def file_type(outtype: str) -> int:
    gguf = gguf_module()
    name = "ALL_F32" if outtype == "f32" else f"MOSTLY_{outtype.upper()}"
    return int(gguf.LlamaFileType[name])


def storage_type(name: str, shape: tuple[int, ...], wanted):
    """1-D tensors and norms stay F32 (llama.cpp computes norms in F32); rows that do not fill
    whole quantization blocks fall back to F16, as llama.cpp's converter does."""
    gguf = gguf_module()
    qt = gguf.GGMLQuantizationType
    if len(shape) <= 1 or name.endswith("_norm.weight"):
        return qt.F32
    block = gguf.GGML_QUANT_SIZES[wanted][0]
    return wanted if shape[-1] % block == 0 else qt.F16


@dataclass(frozen=True)
class _Planned:
    source: TensorSource
    stored: Any  # GGMLQuantizationType


def _encoded_layout(shape: tuple[int, ...], stored) -> tuple[tuple[int, ...], np.dtype, int]:
    """The numpy shape, dtype and byte count `gguf.quants.quantize` returns for `stored`."""
    gguf = gguf_module()
    qt = gguf.GGMLQuantizationType
    if stored == qt.F32:
        return shape, np.dtype(np.float32), int(np.prod(shape)) * 4
    if stored == qt.F16:
        return shape, np.dtype(np.float16), int(np.prod(shape)) * 2
    byte_shape = gguf.quants.quant_shape_to_byte_shape(shape, stored)
    return byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape))


def write_gguf(
    path: Path, arch: str, add_metadata, tensors: Iterable[TensorSource], outtype: str
) -> dict:
    """Write one GGUF to `path`: `add_metadata(writer)` adds the keys, then every tensor is
    encoded as `outtype` (see `storage_type`) and streamed out. Returns a small summary."""
    gguf = gguf_module()
    wanted = tensor_type(outtype)
    planned = [_Planned(t, storage_type(t.name, t.shape, wanted)) for t in tensors]
    writer = gguf.GGUFWriter(str(path), arch)
    add_metadata(writer)
    for p in planned:
        shape, dtype, nbytes = _encoded_layout(p.source.shape, p.stored)
        writer.add_tensor_info(p.source.name, shape, dtype, nbytes, raw_dtype=p.stored)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    n_params = 0
    try:
        for p in planned:
            values = p.source.load().numpy()
            n_params += values.size
            writer.write_tensor_data(gguf.quants.quantize(values, p.stored))
    finally:
        writer.close()
    counts: dict[str, int] = {}
    for p in planned:
        counts[p.stored.name] = counts.get(p.stored.name, 0) + 1
    return {"tensors": len(planned), "parameters": n_params, "tensor_types": counts}


def read_metadata(path: str | Path, array_limit: int = 1000) -> dict[str, Any]:
    """A GGUF's keys and `tensors` (name -> (type, shape)), for tests and reports. Arrays
    longer than `array_limit` (a vocabulary) are given as their length."""
    gguf = gguf_module()
    reader = gguf.GGUFReader(str(path))
    out: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        is_array = field.types[0] == gguf.GGUFValueType.ARRAY
        out[key] = (
            len(field.data) if is_array and len(field.data) > array_limit else field.contents()
        )
    out["tensors"] = {
        t.name: (t.tensor_type.name, [int(x) for x in t.shape]) for t in reader.tensors
    }
    return out
