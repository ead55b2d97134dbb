"""Inference speed paths for a model with frozen weights (a PEFT adapter over its base, or a
model merged in memory), behind one call that the Predictor makes: `speed_up`.

- `FoldedLinear`: the LM head multiplies its rows as one matrix. `torch.matmul` folds a 3D input
  into one `mm` only when the leading strides allow a view or the weight requires grad
  (pytorch/pytorch#186148). A head fed a strided slice of the hidden states (an int
  `logits_to_keep`: the prefill's last column in `generate`, the label columns in scoring) with
  frozen weights fails both, and matmul falls back to `bmm` over the weight expanded to
  (batch, hidden, vocab) and made contiguous: a copy of Qwen3's whole 151,936 x 1024 head per
  row of the batch, on every call. A base model loaded alone escapes only because its weights
  still require grad.

It computes exactly what `nn.Linear` computes (tests/test_predict.py).
"""

from __future__ import annotations

import torch

__all__ = ["FoldedLinear", "fold_output_head", "speed_up"]


class FoldedLinear(torch.nn.Linear):
    """A linear layer that multiplies its input as one (rows, features) matrix."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        rows = input.reshape(-1, input.shape[-1])
        out = torch.nn.functional.linear(rows, self.weight, self.bias)
        return out.view(*input.shape[:-1], out.shape[-1])


def fold_output_head(model) -> int:
    """Make the `nn.Linear` layers of the model's output head `FoldedLinear`s, in place (same
    weights, tying and state dict; inside a PEFT wrapper of the head too). Returns how many."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if not isinstance(head, torch.nn.Module):
        return 0
    changed = 0
    for module in head.modules():
        if type(module) is torch.nn.Linear:
            module.__class__ = FoldedLinear
            changed += 1
    return changed


def speed_up(model) -> None:
    """The speed paths, in place, for a model about to answer queries (idempotent)."""
    fold_output_head(model)
