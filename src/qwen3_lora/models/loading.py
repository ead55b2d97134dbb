"""Loading a model and its tokenizer from a `ModelSource`, and choosing the precision it runs in."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError
from .gguf_reads import forget_gguf_reads, share_gguf_reads
from .source import ModelSource, ModelSourceError, hub_failure, resolve_model_source

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
log = logging.getLogger(__name__)


class SetupError(UserError):
    """The requested precision/quantization cannot run on this machine or install."""


def _gguf_failure(name: str, exc: Exception) -> ModelSourceError | None:
    """A clear error for GGUF loading problems (missing `gguf`, unsupported architecture)."""
    text = str(exc)
    if "gguf" in text.lower() and ("install" in text.lower() or isinstance(exc, ImportError)):
        return ModelSourceError(
            f"loading {name!r} needs the gguf package: pip install 'qwen3-lora[gguf]'"
        )
    if "not supported" in text.lower() and "gguf" in text.lower():
        return ModelSourceError(
            f"{name!r}: {text.splitlines()[0]}. transformers' GGUF loader supports llama, "
            f"mistral, qwen2, qwen3 and a few other architectures; convert the model to a "
            f"transformers folder instead."
        )
    return None


def damaged_safetensors(path: str | Path) -> str | None:
    """Why a .safetensors file cannot be read (truncated, not safetensors), or None if it can.

    Opening checks the header and that the tensors cover the file exactly, which catches a
    truncated write or copy; a flipped bit inside the tensor data goes unnoticed (no checksum)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            fh.keys()
    except (SafetensorError, OSError) as exc:
        return str(exc)
    return None


def _first_line(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(". ")


def _load_failure(source: ModelSource, exc: Exception) -> UserError | None:
    """A clear error for a model or tokenizer that `from_pretrained` could not load, or None for
    errors that are not about the model's files (those keep their traceback)."""
    if isinstance(exc, (TypeError, AttributeError, NameError, AssertionError)):
        return None  # a bug, not a file problem
    if (gguf := _gguf_failure(source.name, exc)) is not None:
        return gguf
    from safetensors import SafetensorError

    folder = Path(source.path)
    if not folder.is_dir() and isinstance(exc, SafetensorError):
        return ModelSourceError(
            f"cannot load {source.name!r}: a downloaded weight file is damaged or incomplete "
            f"({_first_line(exc)}); fetch it again: huggingface-cli download {source.name} "
            f"--force-download"
        )
    if not folder.is_dir():
        return hub_failure(source.name, exc) if isinstance(exc, OSError) else None
    damaged = [
        f"{p.name} is damaged or incomplete ({why})"
        for p in sorted(folder.glob("*.safetensors"))
        if (why := damaged_safetensors(p))
    ]
    gguf_path = folder / source.gguf_file if source.gguf_file else None
    what = f"the model file {gguf_path}" if gguf_path else f"the model folder {folder}"
    if damaged or isinstance(exc, (OSError, SafetensorError, json.JSONDecodeError)):
        return ModelSourceError(
            f"cannot load {what}: {'; '.join(damaged) or _first_line(exc)}. Its files look "
            f"damaged or incomplete (an interrupted download or copy?): download or copy them "
            f"again."
        )
    return ModelSourceError(f"cannot load {what}: {_first_line(exc)}")


def clear_gguf_quantizer(model) -> None:
    """A dequantised GGUF model still carries the quantizer flag, which makes Trainer refuse to
    train it and `save_pretrained` refuse to save it; its weights are plain tensors by now."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def load_tokenizer(source: ModelSource | str, trust_remote_code: bool = False):
    """The tokenizer of a model source (a name is resolved first, as `--tokenizer` is); pad falls
    back to eos when the tokenizer has none."""
    from transformers import AutoTokenizer

    if isinstance(source, str):
        source = resolve_model_source(source, tokenizer_only=True)

    if source.gguf_file:
        share_gguf_reads()
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source.path, trust_remote_code=trust_remote_code, **source.kwargs()
        )
    except Exception as exc:  # tokenizers raises a bare Exception for a malformed tokenizer.json
        raise (_load_failure(source, exc) or exc) from exc
    return with_pad_fallback(tokenizer)


def with_pad_fallback(tokenizer):
    """Give a tokenizer without a pad token its eos as pad."""
    if tokenizer.pad_token is None:
        # Padding positions are masked out of both attention and loss, so any id will do.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@dataclass(frozen=True)
class Precision:
    """How a run computes: the dtype of the frozen weights and the autocast dtype (or None)."""

    name: str
    weight_dtype: torch.dtype
    autocast_dtype: torch.dtype | None


def cpu_supports_bf16() -> bool:
    """Native bf16 matmul on this CPU (AVX512-BF16/AMX); elsewhere bf16 is emulated and slow."""
    check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool((check and check()) or (amx and amx()))


def resolve_precision(name: str, device: torch.device) -> Precision:
    """`auto`: bf16 where the hardware does it natively, fp16 on older GPUs, else fp32."""
    if name not in PRECISIONS:
        raise SetupError(f"precision must be one of {', '.join(PRECISIONS)}, not {name!r}")
    if name == "auto":
        if device.type == "cuda":
            name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            name = "bf16" if cpu_supports_bf16() else "fp32"
    if name == "fp16" and device.type == "cpu":
        raise SetupError("fp16 is unusably slow on CPU (~1 GFLOP/s); use bf16 or fp32")
    if name == "bf16" and device.type == "cpu" and not cpu_supports_bf16():
        log.warning(
            "bf16 on this CPU is emulated (no AVX512-BF16 or AMX): its matmuls run at a few "
            "GFLOP/s, far slower than fp32; --precision auto picks fp32 here"
        )
    if name == "fp32":
        return Precision("fp32", torch.float32, None)
    dtype = torch.bfloat16 if name == "bf16" else torch.float16
    # Frozen base weights in half precision, LoRA weights kept in fp32 by PEFT, compute in autocast.
    return Precision(name, dtype, dtype)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_base_model(
    source: ModelSource | str,
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
    quantization: str | None = None,
    device: torch.device | None = None,
):
    """Load the base causal LM (a name is resolved first); a clear `ModelSourceError` when it
    cannot be found."""
    from transformers import AutoModelForCausalLM

    if isinstance(source, str):
        source = resolve_model_source(source)

    device = device or default_device()
    kwargs: dict = {"dtype": dtype, "trust_remote_code": trust_remote_code, **source.kwargs()}
    if quantization:
        kwargs["quantization_config"] = _quantization_config(quantization, dtype, device)
        kwargs["device_map"] = {"": device.index or 0}
    if source.gguf_file:
        share_gguf_reads()
    try:
        model = AutoModelForCausalLM.from_pretrained(source.path, **kwargs)
    except Exception as exc:  # safetensors raises its own SafetensorError for a truncated file
        raise (_load_failure(source, exc) or exc) from exc
    finally:
        forget_gguf_reads()  # the weights are in: nothing reads the file again
    if source.gguf_file:
        clear_gguf_quantizer(model)
    if not quantization:
        model.to(device)
    return model


def _quantization_config(kind: str, dtype: torch.dtype, device: torch.device):
    if kind != "4bit":
        raise SetupError(f"--quantization supports only '4bit', not {kind!r}")
    if device.type != "cuda":
        raise SetupError("--quantization 4bit (QLoRA) needs a CUDA GPU with bitsandbytes")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise SetupError("QLoRA needs bitsandbytes: pip install 'qwen3-lora[qlora]'") from exc
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
    )
