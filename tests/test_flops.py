"""The FLOP count behind every benchmark's utilisation (benchmarks/flops.py), on a tiny config
whose figures are worked out by hand, checked against a real model and PEFT's adapters."""

from __future__ import annotations

import torch

from benchmarks.flops import (
    causal_pairs,
    linear_params,
    lora_params,
    old_step_flops,
    step_flops,
)

TINY = {
    "hidden_size": 8,
    "intermediate_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 4,
    "vocab_size": 32,
}
QWEN3_0_6B = {
    "hidden_size": 1024,
    "intermediate_size": 3072,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 151936,
}


def test_tiny_config_by_hand():
    # Per layer: q 8x8, k 8x4, v 8x4, o 8x8, gate 8x16, up 8x16, down 16x8 = 576.
    assert linear_params(TINY) == 2 * 576
    # r x (in + out): q 16, k 12, v 12, o 16, gate 24, up 24, down 24 = 128 per unit of r.
    assert lora_params(TINY, r=2) == 2 * 2 * 128
    assert lora_params(TINY, r=2, targets=["q_proj", "v_proj"]) == 2 * 2 * (16 + 12)
    assert causal_pairs([3, 1]) == 6 + 1
    parts = step_flops(TINY, tokens=10, supervised=4, pairs=7, lora=512)
    assert parts == {
        "linear": 4 * 1152 * 10,
        "lm_head": 4 * 8 * 32 * 4,
        "attention": 12 * 2 * 8 * 7,
        "lora": 6 * 512 * 10,
        "total": 46080 + 4096 + 1344 + 30720,
    }
    assert old_step_flops(params=1000, tokens=10) == 40000


def test_counts_match_a_real_model_and_peft():
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(**TINY, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config)
    linear = sum(
        m.weight.numel()
        for name, m in model.model.layers.named_modules()
        if isinstance(m, torch.nn.Linear)
    )
    assert linear_params(TINY) == linear
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=targets))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert lora_params(TINY, r=2) == trainable


def test_qwen3_shape_and_the_old_count():
    # The spec's LoRA shape on Qwen3-0.6B: 5,046,272 trainable parameters.
    assert lora_params(QWEN3_0_6B, r=8) == 5_046_272
    assert linear_params(QWEN3_0_6B) == 28 * 15_728_640
    # A 45-token sample with 15 supervised targets: the old count (all 596.0M parameters at
    # every token) overstates the work by about a fifth.
    params = linear_params(QWEN3_0_6B) + 151936 * 1024 + 65_536  # + embedding + norms
    honest = step_flops(QWEN3_0_6B, 45, 15, causal_pairs([45]), lora_params(QWEN3_0_6B, 8))
    assert 0.75 < honest["total"] / old_step_flops(params, 45) < 0.9
