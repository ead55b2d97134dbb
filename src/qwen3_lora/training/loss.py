"""The training loss: next-token cross-entropy over the supervised tokens only.

Labels are -100 on the prompt and padding (`prompt.encoding`); the LM head runs only at
positions whose next token is supervised, and the cross-entropy is computed a few rows at a
time in fp32, so neither the vocabulary projection nor its fp32 copy covers the whole batch.
"""

from __future__ import annotations

import torch

from ..prompt.encoding import IGNORE_INDEX


def supervised_positions(labels: torch.Tensor) -> torch.Tensor:
    """Sequence positions whose next token is supervised in at least one row of the batch."""
    return (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero().squeeze(-1)


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of (N, V) logits, fp32 inside, without fp32 copies of all logits.

    `F.cross_entropy(logits.float())` keeps an fp32 copy, the fp32 log-softmax and an fp32
    gradient of the whole (N, V) block alive at once: for Qwen3's 151,936-word vocabulary that is
    the largest allocation of a training step. This computes the same loss and gradient a chunk of
    rows at a time: forward keeps one log-sum-exp per row, backward writes softmax - one-hot into
    a gradient of the logits' own dtype.
    """

    @staticmethod
    def forward(ctx, logits, targets, chunk: int):
        valid = targets != IGNORE_INDEX
        safe = targets.masked_fill(~valid, 0)
        lse = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        with torch.autocast(logits.device.type, enabled=False):
            for i in range(0, logits.shape[0], chunk):
                lse[i : i + chunk] = torch.logsumexp(logits[i : i + chunk].float(), dim=-1)
            picked = logits.gather(1, safe[:, None]).squeeze(1).float()
        ctx.save_for_backward(logits, safe, valid, lse)
        ctx.chunk = chunk
        return ((lse - picked) * valid).sum()

    @staticmethod
    def backward(ctx, grad_output):
        logits, safe, valid, lse = ctx.saved_tensors
        grad = torch.empty_like(logits)
        scale = valid.float() * grad_output.float()
        with torch.autocast(logits.device.type, enabled=False):
            for i in range(0, logits.shape[0], ctx.chunk):
                part = (logits[i : i + ctx.chunk].float() - lse[i : i + ctx.chunk, None]).exp_()
                rows = torch.arange(part.shape[0], device=part.device)
                part[rows, safe[i : i + ctx.chunk]] -= 1.0
                grad[i : i + ctx.chunk] = part.mul_(scale[i : i + ctx.chunk, None])
        return grad, None, None


def chunked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, chunk: int = 32):
    """`F.cross_entropy(logits.float(), targets, ignore_index=-100, reduction="sum")`, with the
    fp32 work done `chunk` rows at a time (same value and gradient, a fraction of the memory)."""
    return _ChunkedCrossEntropy.apply(logits, targets, chunk)


def causal_lm_loss(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    num_items: int | torch.Tensor | None = None,
    labels_only: bool = True,
) -> torch.Tensor:
    """Next-token cross-entropy summed over supervised tokens / `num_items` (default: their count).

    With `labels_only`, the vocabulary projection runs only at positions whose next token is
    supervised (`logits_to_keep` with explicit indices): prompt and padding positions need no
    logits. The call still goes through the model's own forward, so DDP/FSDP wrappers and
    autocast see it. The value equals the model's own loss.
    """
    labels = batch["labels"]
    if not labels_only:
        out = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=labels,
            use_cache=False,
            **({"num_items_in_batch": num_items} if num_items is not None else {}),
        )
        return out.loss
    keep = supervised_positions(labels)
    logits = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        use_cache=False,
        logits_to_keep=keep,
    ).logits
    targets = labels[:, keep + 1]
    total = chunked_cross_entropy(logits.flatten(0, 1), targets.flatten())
    denominator = (targets != IGNORE_INDEX).sum() if num_items is None else num_items
    return total / denominator
