"""The FLOPs a LoRA training step needs, written once: every benchmark's utilisation uses it.

For a decoder with frozen base weights and LoRA adapters, per micro-batch:

    linear    = 4 x P_linear x T             forward 2 P per token, input gradients 2 P; the
                                             frozen weights need no weight gradients
    lm_head   = 4 x hidden x vocab x S       forward and input gradient, only at the S positions
                                             whose next token is supervised (no other position
                                             needs logits)
    attention = 12 x layers x heads x head_dim x sum over sequences of L (L + 1) / 2
                                             QK^T and AV are 2 x d FLOPs per (query, key) pair
                                             each, forward; backward twice that (gradients of
                                             Q, K, V and the probabilities); causal: only the
                                             L (L + 1) / 2 pairs a query may see
    lora      = 6 x P_lora x T               forward, input and weight gradients

T: non-pad tokens; S: supervised target positions; P_linear: the decoder's linear weights (the
non-embedding parameters less the norms, 0.01% of them); P_lora = r x (in + out) summed over the
adapted projections. The embedding lookup is no matmul and costs nothing here.

The old figure, kept beside it for comparison with earlier runs, is 4 x all parameters x T:
embeddings counted as if they were a matmul at every token, the LM head at every position.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

# Qwen3's projections: name -> (in, out) as functions of the shape.
PROJECTIONS = {
    "q_proj": lambda s: (s["hidden_size"], s["num_attention_heads"] * s["head_dim"]),
    "k_proj": lambda s: (s["hidden_size"], s["num_key_value_heads"] * s["head_dim"]),
    "v_proj": lambda s: (s["hidden_size"], s["num_key_value_heads"] * s["head_dim"]),
    "o_proj": lambda s: (s["num_attention_heads"] * s["head_dim"], s["hidden_size"]),
    "gate_proj": lambda s: (s["hidden_size"], s["intermediate_size"]),
    "up_proj": lambda s: (s["hidden_size"], s["intermediate_size"]),
    "down_proj": lambda s: (s["intermediate_size"], s["hidden_size"]),
}


def linear_params(shape: Mapping) -> int:
    """The decoder's linear weights (every projection of every layer)."""
    per_layer = sum(i * o for i, o in (f(shape) for f in PROJECTIONS.values()))
    return shape["num_hidden_layers"] * per_layer


def lora_params(shape: Mapping, r: int, targets: Iterable[str] = tuple(PROJECTIONS)) -> int:
    """LoRA A and B parameters of rank `r` on the `targets` projections of every layer."""
    per_layer = sum(r * sum(PROJECTIONS[t](shape)) for t in targets)
    return shape["num_hidden_layers"] * per_layer


def causal_pairs(lengths: Iterable[int]) -> int:
    """(query, key) pairs causal attention computes over sequences of these lengths."""
    return sum(n * (n + 1) // 2 for n in lengths)


def step_flops(
    shape: Mapping, tokens: int, supervised: int, pairs: int, lora: int = 0
) -> dict[str, int]:
    """FLOPs a LoRA step needs for `tokens` non-pad tokens with `supervised` supervised
    targets and `pairs` causal attention pairs (see the module docstring); by part and total."""
    attention_width = shape["num_attention_heads"] * shape["head_dim"]
    parts = {
        "linear": 4 * linear_params(shape) * tokens,
        "lm_head": 4 * shape["hidden_size"] * shape["vocab_size"] * supervised,
        "attention": 12 * shape["num_hidden_layers"] * attention_width * pairs,
        "lora": 6 * lora * tokens,
    }
    parts["total"] = sum(parts.values())
    return parts


def old_step_flops(params: int, tokens: int) -> int:
    """The earlier count: 4 x all parameters (embeddings included) x non-pad tokens."""
    return 4 * params * tokens
