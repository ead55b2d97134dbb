"""Attention for LoRA training on CPU: plain matmul + softmax for short sequences, sdpa otherwise.

On CPU, `sdpa` runs torch's fused flash kernel, whose backward pass is slow for the short
sequences this project trains on; plain matmul attention is faster up to a few hundred tokens
and no faster beyond (benchmarks/results/LATEST.md, the `sdpa` ablation). Plain attention
keeps the (length x length) probabilities for backward, so its memory grows with the square of
the length: above `PLAIN_MAX_LENGTH` tokens, and whenever no gradient is being taken (evaluation,
generation), the call goes to sdpa as before.

The plain path is transformers' Llama-family `eager` attention itself (scores in the input dtype,
softmax in fp32, an additive mask), fed sdpa's boolean mask as eager expects it;
tests/test_speed_paths.py checks that losses and gradients match sdpa's.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.models.llama.modeling_llama import eager_attention_forward

NAME = "qwen3_lora_cpu_train"
PLAIN_MAX_LENGTH = 256


def _plain_applies(query: torch.Tensor, kwargs: dict) -> bool:
    unsupported = ("sliding_window", "softcap", "position_bias", "s_aux", "sinks")
    return (
        torch.is_grad_enabled()
        and query.shape[2] <= PLAIN_MAX_LENGTH
        and all(kwargs.get(name) is None for name in unsupported)
    )


def short_plain_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """An `AttentionInterface` function; `attention_mask` is sdpa's (boolean, or None)."""
    if not _plain_applies(query, kwargs):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    q_len, kv_len = query.shape[2], key.shape[2]
    if attention_mask is None and kwargs.get("is_causal", getattr(module, "is_causal", True)):
        # sdpa_mask leaves out a mask that is only causal (no padding): make it explicit.
        attention_mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device)
        attention_mask = attention_mask.tril(kv_len - q_len)
    if attention_mask is not None and attention_mask.dtype == torch.bool:
        # eager adds its mask to the scores: 0 where attended, the dtype's minimum elsewhere.
        additive = torch.zeros(attention_mask.shape, dtype=query.dtype, device=query.device)
        attention_mask = additive.masked_fill_(~attention_mask, torch.finfo(query.dtype).min)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    output, _ = eager_attention_forward(
        module, query, key, value, attention_mask, scale, dropout=dropout
    )
    return output, None


AttentionInterface.register(NAME, short_plain_attention)
AttentionMaskInterface.register(NAME, sdpa_mask)


def choose_training_attention(model, choice: str, device: torch.device) -> str:
    """Set the attention a model trains with; returns the implementation in use.

    `auto`: on CPU, a model loaded with sdpa gets `short_plain_attention`; anything else (CUDA,
    flash-attention, a model without sdpa) keeps what it was loaded with. `sdpa` and `eager`
    force that implementation.
    """
    current = getattr(model.config, "_attn_implementation", None)
    wanted = choice
    if choice == "auto":
        wanted = NAME if device.type == "cpu" and current == "sdpa" else current
    if wanted and wanted != current:
        model.set_attn_implementation(wanted)
    return wanted or "default"
