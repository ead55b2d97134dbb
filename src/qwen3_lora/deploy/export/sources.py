"""What an export reads: the model to write (an adapter merged into its base, a model folder,
or a base with the adapter on top for gguf-lora), its tokenizer, and the training settings
beside the adapter."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from ...models.adapter import ADAPTER_CONFIG, AdapterFolder, ModelToLoad
from ...models.loading import load_base_model
from ...models.source import ModelSource, resolve_model_source

log = logging.getLogger(__name__)
CPU = torch.device("cpu")
DEFAULT_NUM_CTX = 4096


@dataclass
class Loaded:
    """The model to write, its tokenizer, and where it came from."""

    model: torch.nn.Module
    tokenizer: object
    source: ModelSource  # the base model (the model itself for a plain folder)
    adapter: AdapterFolder | None
    origin: str  # a sentence for the README

    @property
    def source_gguf(self) -> Path | None:
        """The GGUF file the base was loaded from, if it was."""
        if not self.source.gguf_file:
            return None
        return Path(self.source.path) / self.source.gguf_file


def load_merged(adapter, model, base_model, hub, trust_remote_code) -> Loaded:
    """The model for one GGUF: `adapter` merged into its base (in fp32), or `model` (a folder,
    hub id or .gguf file; an adapter folder passed as `model` is merged too)."""
    from ..merge import merge_in_memory

    if adapter is None and (Path(model).expanduser() / ADAPTER_CONFIG).is_file():
        adapter = model
    if adapter is None:
        source = resolve_model_source(str(model), hub)
        # In its own dtype: each tensor is widened to fp32 only while it is written.
        dtype = checkpoint_dtype(source, trust_remote_code)
        # The tokenizer first: the model's load then reuses a GGUF file's parse (gguf_reads).
        tokenizer = ModelToLoad(source).load_tokenizer(trust_remote_code)
        loaded = load_base_model(source, dtype, trust_remote_code, device=CPU)
        return Loaded(loaded, tokenizer, source, None, f"The model `{source.name}`")
    folder = AdapterFolder.read(adapter)
    source = folder.base_source(base_model, hub)
    merged = merge_in_memory(
        folder.path,
        base_model=base_model,
        dtype="fp32",
        hub=hub,
        trust_remote_code=trust_remote_code,
    )
    origin = f"The LoRA adapter `{folder.path}` merged into `{merged.base_model}`"
    return Loaded(merged.model, merged.tokenizer, source, folder, origin)


def checkpoint_dtype(source: ModelSource, trust_remote_code: bool) -> torch.dtype:
    """The dtype a model's config.json declares (fp32 when it declares none, or for GGUF)."""
    if source.gguf_file:
        return torch.float32
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(source.path, trust_remote_code=trust_remote_code)
    declared = getattr(config, "dtype", None) or "float32"
    if isinstance(declared, torch.dtype):
        return declared
    found = getattr(torch, str(declared).removeprefix("torch."), None)
    return found if isinstance(found, torch.dtype) else torch.float32


def load_base_for(folder: AdapterFolder, base_model, hub, trust_remote_code) -> Loaded:
    """The adapter's base model alone (fp32), with the tokenizer saved beside the adapter."""
    source = folder.base_source(base_model, hub)
    tokenizer = ModelToLoad(source, folder).load_tokenizer(trust_remote_code)  # as above
    base = load_base_model(source, torch.float32, trust_remote_code, device=CPU)
    origin = f"The LoRA adapter `{folder.path}` for `{source.name}`"
    return Loaded(base, tokenizer, source, folder, origin)


def training_max_length(loaded: Loaded, model: str | Path | None) -> int | None:
    """`max_length` of the train_config.yaml beside the adapter; a merged folder names its
    adapter in merge_config.json."""
    folder = loaded.adapter.path if loaded.adapter else None
    record = Path(model) / "merge_config.json" if model is not None else None
    if folder is None and record is not None and record.is_file():
        named = json.loads(record.read_text("utf-8")).get("adapter")
        folder = Path(named) if named else None
    config = folder / "train_config.yaml" if folder is not None else None
    if config is None or not config.is_file():
        return None
    value = (yaml.safe_load(config.read_text("utf-8")) or {}).get("max_length")
    return value if isinstance(value, int) and value > 0 else None


def context_for_ollama(loaded: Loaded, model) -> tuple[int, bool]:
    """(num_ctx, whether it is the training max length) for the Modelfile."""
    trained = training_max_length(loaded, model)
    if trained:
        return trained, True
    context = int(getattr(loaded.model.config, "max_position_embeddings", 0) or DEFAULT_NUM_CTX)
    log.info("no train_config.yaml beside the adapter: num_ctx %d", min(context, DEFAULT_NUM_CTX))
    return min(context, DEFAULT_NUM_CTX), False
