"""Generating text from prompt token ids: left-padded batches cut at the stop ids, and streaming.

Greedy unless a temperature is given. Streaming runs `generate` on a thread and can be cancelled
at the next token by closing the iterator.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import torch

from .errors import PredictorError


def generation_kwargs(
    *,
    pad_id: int,
    stop_ids: list[int],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    stop_at_eot: bool = True,
) -> dict:
    """`generate` keyword arguments: greedy at temperature 0, sampling (top-p) above."""
    if temperature < 0 or not 0 < top_p <= 1:
        raise PredictorError("temperature must be >= 0 and top_p in (0, 1]")
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "pad_token_id": pad_id}
    if temperature > 0:
        kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
    else:
        kwargs.update(do_sample=False)
    # Without stop_at_eot the turn may run on past <|im_end|>, up to max_new_tokens.
    kwargs["eos_token_id"] = stop_ids if stop_at_eot else []
    return kwargs


def left_padded(ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of prompts padded on the left to the longest one."""
    width = max(len(i) for i in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, seq in enumerate(ids):
        input_ids[row, width - len(seq) :] = torch.tensor(seq)
        mask[row, width - len(seq) :] = 1
    return input_ids, mask


@torch.inference_mode()
def generate_ids(
    model: Any, ids: list[list[int]], kwargs: dict, stop_ids: list[int] | None
) -> list[list[int]]:
    """New token ids of each prompt, generated as one left-padded batch, cut at the first of
    `stop_ids` (None: kept whole)."""
    device = next(model.parameters()).device
    input_ids, mask = left_padded(ids, kwargs["pad_token_id"])
    out = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device), **kwargs)
    results = []
    for row in out[:, input_ids.shape[1] :].tolist():
        if stop_ids is not None:
            row = row[: next((i for i, t in enumerate(row) if t in stop_ids), len(row))]
        results.append(row)
    return results


def stream_text(model: Any, tokenizer: Any, ids: torch.Tensor, kwargs: dict) -> Iterator[str]:
    """Yield the text deltas of one prompt's continuation as they are generated.

    Closing the iterator early (`close()`, or dropping it) stops the generation at its next
    token and waits until it has stopped.
    """
    from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

    device = next(model.parameters()).device
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    cancelled = threading.Event()

    class Cancelled(StoppingCriteria):
        def __call__(self, input_ids, scores, **_) -> torch.BoolTensor:
            return torch.full((input_ids.shape[0],), cancelled.is_set(), device=input_ids.device)

    failure: list[BaseException] = []

    def run() -> None:
        try:
            with torch.inference_mode():
                model.generate(
                    input_ids=ids.to(device),
                    attention_mask=torch.ones_like(ids).to(device),
                    streamer=streamer,
                    stopping_criteria=StoppingCriteriaList([Cancelled()]),
                    **kwargs,
                )
        except BaseException as exc:  # re-raised in the caller's thread
            failure.append(exc)
            streamer.end()

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    try:
        for delta in streamer:
            if delta:
                yield delta
    finally:
        cancelled.set()
        worker.join()
    if failure:
        raise failure[0]
