"""Where models come from: a local folder, a hub id, ModelScope, or the locally built tiny model;
and in what precision they run."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from .tiny import TINY_NAME, ensure_tiny_folder

DEFAULT_BASE_MODEL = "Qwen/Qwen3-0.6B"
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
log = logging.getLogger(__name__)


class ModelSourceError(RuntimeError):
    """The base model cannot be found or fetched; the message says how to get it."""


class SetupError(ValueError):
    """The requested precision/quantization cannot run on this machine or install."""


def _how_to_download(name: str, folder: str | None = None) -> str:
    folder = folder or f"./{name.rsplit('/', 1)[-1]}"
    return (
        f"Download the weights once, on a machine with internet access, then pass the folder:\n"
        f"  huggingface-cli download {name} --local-dir {folder}\n"
        f"  # or, from ModelScope: modelscope download --model {name} --local_dir {folder}\n"
        f"  qwen3-lora train --base-model {folder}\n"
        f"(offline smoke run without any weights: --base-model {TINY_NAME})"
    )


@dataclass(frozen=True)
class ModelSource:
    """What `from_pretrained` opens: a folder or hub id, and a GGUF file inside it if any."""

    path: str
    gguf_file: str | None = None

    def kwargs(self) -> dict:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


def resolve_model_source(
    name: str, hub: str = "huggingface", marker: str = "config.json"
) -> ModelSource:
    """Turn `--base-model` into something `from_pretrained` can open, or explain what to do.

    `name` is a folder, a hub id, `tiny`, or a `.gguf` file (dequantised on load). A folder must
    hold `marker` (config.json for a model, tokenizer_config.json for a tokenizer alone).
    """
    if name == TINY_NAME:
        return ModelSource(str(ensure_tiny_folder()))
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelSourceError(f"GGUF file {name!r} does not exist")
        return ModelSource(str(path.parent), path.name)
    if path.exists():
        if path.is_dir() and not (path / marker).exists() and not (path / "config.json").exists():
            raise ModelSourceError(
                f"{path} is a folder but holds no config.json: it is not a transformers model "
                f"folder. Point --base-model at the folder that contains config.json and the "
                f"*.safetensors files."
            )
        return ModelSource(str(path))
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise ModelSourceError(
            f"model folder {name!r} does not exist.\n{_how_to_download(DEFAULT_BASE_MODEL, name)}"
        )
    if hub == "modelscope":
        try:
            from modelscope import snapshot_download
        except ImportError as exc:
            raise ModelSourceError(
                "--hub modelscope needs the modelscope package: pip install 'qwen3-lora[modelscope]'"
            ) from exc
        try:
            return ModelSource(snapshot_download(name))
        except Exception as exc:
            raise ModelSourceError(
                f"cannot fetch {name!r} from ModelScope: {exc}\n{_how_to_download(name)}"
            ) from exc
    return ModelSource(name)


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


def clear_gguf_quantizer(model) -> None:
    """A dequantised GGUF model still carries the quantizer flag, which makes Trainer refuse to
    train it and `save_pretrained` refuse to save it; its weights are plain tensors by now."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _hub_failure(name: str, exc: Exception) -> ModelSourceError:
    return ModelSourceError(
        f"cannot load {name!r}: it is not a local folder and could not be fetched from the hub "
        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}).\n"
        f"{_how_to_download(name)}"
    )


def load_tokenizer(name: str, hub: str = "huggingface", trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    source = resolve_model_source(name, hub, marker="tokenizer_config.json")
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source.path, trust_remote_code=trust_remote_code, **source.kwargs()
        )
    except OSError as exc:
        raise _hub_failure(name, exc) from exc
    except (ImportError, ValueError) as exc:
        raise (_gguf_failure(name, exc) or exc) from exc
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
    if name == "fp32":
        return Precision("fp32", torch.float32, None)
    dtype = torch.bfloat16 if name == "bf16" else torch.float16
    # Frozen base weights in half precision, LoRA weights kept in fp32 by PEFT, compute in autocast.
    return Precision(name, dtype, dtype)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_base_model(
    name: str,
    dtype: torch.dtype = torch.float32,
    hub: str = "huggingface",
    trust_remote_code: bool = False,
    quantization: str | None = None,
    device: torch.device | None = None,
):
    """Load the base causal LM; a clear `ModelSourceError` when it cannot be found."""
    from transformers import AutoModelForCausalLM

    source = resolve_model_source(name, hub)
    device = device or default_device()
    kwargs: dict = {"dtype": dtype, "trust_remote_code": trust_remote_code, **source.kwargs()}
    if quantization:
        kwargs["quantization_config"] = _quantization_config(quantization, dtype, device)
        kwargs["device_map"] = {"": device.index or 0}
    try:
        model = AutoModelForCausalLM.from_pretrained(source.path, **kwargs)
    except OSError as exc:
        raise _hub_failure(name, exc) from exc
    except (ImportError, ValueError) as exc:
        raise (_gguf_failure(name, exc) or exc) from exc
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
