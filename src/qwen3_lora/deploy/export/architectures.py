"""What each supported architecture looks like in llama.cpp: its GGUF name, its hyperparameter
keys and how its transformers tensors become GGUF tensors.

The tensor names come from the `gguf` package's name maps; the per-architecture facts (llama's
Q/K row order, Gemma 3's `1 + w` norms and sliding window) follow llama.cpp's
`convert_hf_to_gguf.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from ...errors import UserError

# transformers model_type -> the GGUF architecture name llama.cpp loads.
GGUF_ARCHITECTURES = {"qwen3": "qwen3", "llama": "llama", "gemma3_text": "gemma3"}


class ExportError(UserError):
    """The model or adapter cannot be exported as asked; the message says what to change."""


def gguf_architecture(config) -> str:
    """The GGUF architecture of a transformers config, or a clear error naming the supported."""
    model_type = getattr(config, "model_type", None)
    if model_type not in GGUF_ARCHITECTURES:
        supported = ", ".join(sorted(GGUF_ARCHITECTURES))
        raise ExportError(
            f"cannot export model_type {model_type!r} to GGUF: supported architectures are "
            f"{supported}. Export the merged folder (`qwen3-lora merge`) and convert it with "
            f"llama.cpp's convert_hf_to_gguf.py instead."
        )
    return GGUF_ARCHITECTURES[model_type]


def _arch_enum(name: str):
    import gguf

    return next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == name)


def tensor_name_map(arch: str, n_layers: int):
    import gguf

    return gguf.get_tensor_name_map(_arch_enum(arch), n_layers)


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def llama_permute(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """transformers keeps Q/K rows in rotate-half order; llama.cpp's llama uses interleaved RoPE."""
    rows = weight.shape[0]
    return (
        weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def row_transform(arch: str, config, hf_name: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The change a tensor (or a LoRA B matrix, whose rows are the output rows) needs on its way
    into llama.cpp, or None."""
    if arch == "llama" and hf_name.endswith("q_proj.weight"):
        return lambda t: llama_permute(t, config.num_attention_heads)
    if arch == "llama" and hf_name.endswith("k_proj.weight"):
        return lambda t: llama_permute(t, config.num_key_value_heads)
    return None


@dataclass(frozen=True)
class TensorSource:
    """One GGUF tensor: its name, its shape, and how to compute its float32 values."""

    name: str
    shape: tuple[int, ...]
    load: Callable[[], torch.Tensor]


def model_tensors(model, arch: str, n_vocab: int | None = None) -> Iterator[TensorSource]:
    """The GGUF tensors of a (merged, PEFT-free) transformers model, computed lazily one by one.

    `n_vocab` trims the embedding and output rows to a vocabulary shorter than the matrix.
    """
    config = model.config
    names = tensor_name_map(arch, config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for hf_name, param in model.state_dict().items():
        if ".base_layer." in hf_name or ".lora_" in hf_name:
            raise ExportError(f"{hf_name}: the model still holds LoRA layers; merge it first")
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        if hf_name == "lm_head.weight" and tied:
            continue  # llama.cpp reads token_embd when there is no output.weight
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ExportError(f"{hf_name}: no llama.cpp tensor for it in the {arch} architecture")
        shape = tuple(param.shape)
        trim = n_vocab if name in ("token_embd.weight", "output.weight") else None
        if trim is not None and shape[0] > trim:
            shape = (trim, *shape[1:])
        yield TensorSource(name, shape, _loader(param, arch, config, hf_name, trim))


def _loader(param: torch.Tensor, arch: str, config, hf_name: str, trim: int | None):
    transform = row_transform(arch, config, hf_name)
    plus_one = arch == "gemma3" and hf_name.endswith("norm.weight")

    def load() -> torch.Tensor:
        t = param.detach().to(torch.float32)
        if trim is not None:
            t = t[:trim]
        if transform is not None:
            t = transform(t)
        if plus_one:
            t = t + 1.0  # Gemma3RMSNorm computes x * (1 + w); llama.cpp computes x * w
        return t

    return load


def add_hyperparameters(writer, config, arch: str) -> None:
    """The `{arch}.*` keys llama.cpp reads for this architecture."""
    dim = head_dim(config)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(dim)
    writer.add_value_length(dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    rope = getattr(config, "rope_parameters", None) or {}
    if arch == "gemma3":
        rope = _add_gemma3(writer, config, rope, dim)
    else:
        writer.add_rope_freq_base(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)))
    _add_rope_scaling(writer, rope)
    if arch == "llama":
        writer.add_vocab_size(config.vocab_size)
        writer.add_rope_dimension_count(dim)


def _add_gemma3(writer, config, rope: dict, dim: int) -> dict:
    if config.query_pre_attn_scalar != dim:
        # llama.cpp's gemma3 scales attention by 1/sqrt(head_dim), fixed.
        raise ExportError(
            f"gemma3: query_pre_attn_scalar ({config.query_pre_attn_scalar}) differs from "
            f"head_dim ({dim}); llama.cpp cannot represent this model"
        )
    writer.add_rope_freq_base(rope["full_attention"]["rope_theta"])
    writer.add_rope_freq_base_swa(rope["sliding_attention"]["rope_theta"])
    writer.add_sliding_window(config.sliding_window)
    writer.add_sliding_window_pattern([t == "sliding_attention" for t in config.layer_types])
    if config.final_logit_softcapping:
        writer.add_final_logit_softcapping(config.final_logit_softcapping)
    return rope["full_attention"]


def _add_rope_scaling(writer, rope: dict) -> None:
    import gguf

    kind = rope.get("rope_type", "default")
    if kind == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(rope["factor"])
        writer.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
    elif kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope["factor"])
    elif kind != "default":
        raise ExportError(
            f"rope_type {kind!r} is not supported by the exporter (supported: default, linear, "
            f"yarn; llama3-style scaling needs a rope_freqs tensor it does not write)"
        )
