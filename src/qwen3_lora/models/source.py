"""Where a model comes from: a local folder, a hub id (Hugging Face or ModelScope), a `.gguf`
file, or the locally built `tiny` model. Resolved once into a `ModelSource` that every loader
takes, so a hub snapshot is fetched once per run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .tiny import TINY_NAME, ensure_tiny_folder

DEFAULT_BASE_MODEL = "Qwen/Qwen3-0.6B"
HUBS = ("huggingface", "modelscope")


class ModelSourceError(UserError):
    """The base model cannot be found or fetched; the message says how to get it."""


def how_to_download(name: str, folder: str | None = None) -> str:
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
    """A model as the user named it (`name`, which adapter configs record) and what
    `from_pretrained` opens: a folder or hub id (`path`) and a GGUF file inside it, if any."""

    name: str
    path: str
    gguf_file: str | None = None

    def kwargs(self) -> dict:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


def resolve_model_source(
    name: str,
    hub: str = "huggingface",
    *,
    gguf_file: str | None = None,
    tokenizer_only: bool = False,
) -> ModelSource:
    """Turn `--base-model` (and `--gguf-file`) into a `ModelSource`, or explain what to do.

    `name` is a folder, a hub id, `tiny`, or a `.gguf` file (dequantised on load); `gguf_file`
    names a `.gguf` inside the folder `name`. A folder must hold config.json, or only
    tokenizer_config.json when `tokenizer_only`.
    """
    if gguf_file:
        name = str(Path(name) / gguf_file)
    if name == TINY_NAME:
        return ModelSource(name, str(ensure_tiny_folder()))
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelSourceError(f"GGUF file {name!r} does not exist")
        return ModelSource(name, str(path.parent), path.name)
    if path.exists():
        markers = ("config.json", "tokenizer_config.json") if tokenizer_only else ("config.json",)
        if path.is_dir() and not any((path / m).exists() for m in markers):
            raise ModelSourceError(
                f"{path} is a folder but holds no config.json: it is not a transformers model "
                f"folder. Point --base-model at the folder that contains config.json and the "
                f"*.safetensors files."
            )
        return ModelSource(name, str(path))
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise ModelSourceError(
            f"model folder {name!r} does not exist.\n{how_to_download(DEFAULT_BASE_MODEL, name)}"
        )
    if hub == "modelscope":
        return ModelSource(name, _modelscope_snapshot(name))
    return ModelSource(name, name)


def _modelscope_snapshot(name: str) -> str:
    try:
        from modelscope import snapshot_download
    except ImportError as exc:
        raise ModelSourceError(
            "--hub modelscope needs the modelscope package: pip install 'qwen3-lora[modelscope]'"
        ) from exc
    try:
        return snapshot_download(name)
    except Exception as exc:
        raise ModelSourceError(
            f"cannot fetch {name!r} from ModelScope: {exc}\n{how_to_download(name)}"
        ) from exc


def hub_failure(name: str, exc: Exception) -> ModelSourceError:
    """`from_pretrained` could not open `name` locally nor fetch it."""
    return ModelSourceError(
        f"cannot load {name!r}: it is not a local folder and could not be fetched from the hub "
        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}).\n"
        f"{how_to_download(name)}"
    )
