"""One model GGUF: general keys, the architecture's hyperparameters, the tokenizer and chat
template, then the tensors; K-quants go through llama.cpp's quantizer from an f32 file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...files import TEMP_PREFIX, atomic_path
from .architectures import ExportError, add_hyperparameters, model_tensors
from .gguf_file import KQUANT_OUTTYPES, file_type, gguf_module, write_gguf
from .template import ChatTurns
from .tokenizer import (
    add_bpe_tokenizer,
    copy_tokenizer,
    gguf_vocab_size,
    is_byte_level_bpe,
    special_tokens,
)


@dataclass(frozen=True)
class ModelFacts:
    """What every file of one export shares: architecture, chat template, stop tokens."""

    arch: str
    template: str  # the chat template, thinking forced off
    turns: ChatTurns
    stop_ids: list[int]  # the first is the end of turn
    stop: list[str]
    source_gguf: Path | None  # the GGUF the base model was loaded from, if any


def _vocabulary(model, tokenizer, facts: ModelFacts) -> tuple[int, bool]:
    """(rows the GGUF's embedding keeps, whether the tokenizer is rebuilt rather than copied)."""
    rows = model.get_input_embeddings().weight.shape[0]
    if is_byte_level_bpe(tokenizer):
        return rows, True
    if facts.source_gguf is None:
        raise ExportError(
            f"{type(tokenizer).__name__} is not a byte-level BPE tokenizer, which is the kind "
            f"the exporter rebuilds; other tokenizers (SentencePiece) are copied from a GGUF "
            f"base model, and this base was not loaded from one"
        )
    n_vocab = gguf_vocab_size(facts.source_gguf)
    if n_vocab > rows:
        raise ExportError(f"{facts.source_gguf} has {n_vocab} tokens but the model {rows} rows")
    return n_vocab, False


def _metadata(model, tokenizer, facts: ModelFacts, outtype: str, name: str, n_vocab, rebuild):
    def add(writer) -> None:
        gguf = gguf_module()
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name)
        writer.add_file_type(file_type(outtype))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        add_hyperparameters(writer, model.config, facts.arch)
        special = special_tokens(tokenizer, facts.stop_ids[0])
        if rebuild:
            add_bpe_tokenizer(writer, tokenizer, n_vocab, special)
        else:
            copy_tokenizer(writer, facts.source_gguf, special)
        writer.add_chat_template(facts.template)

    return add


def write_model(path: Path, model, tokenizer, facts: ModelFacts, outtype: str, name: str) -> dict:
    """Write `model` (merged, PEFT-free) to `path` as `outtype`, atomically."""
    n_vocab, rebuild = _vocabulary(model, tokenizer, facts)
    encoded = "f32" if outtype in KQUANT_OUTTYPES else outtype

    def write(target: Path) -> dict:
        add = _metadata(model, tokenizer, facts, encoded, name, n_vocab, rebuild)
        return write_gguf(
            target, facts.arch, add, model_tensors(model, facts.arch, n_vocab), encoded
        )

    if outtype not in KQUANT_OUTTYPES:
        with atomic_path(path) as tmp:
            summary = write(tmp)
    else:
        from .quantize import find_quantizer

        quantize = find_quantizer(outtype)  # before the long f32 write, not after it
        f32 = path.with_name(f"{TEMP_PREFIX}{path.name}.f32")
        try:
            summary = write(f32)
            with atomic_path(path) as tmp:
                summary["quantizer"] = quantize(f32, tmp)
        finally:
            f32.unlink(missing_ok=True)
    summary["bytes"] = path.stat().st_size
    return summary
