"""The worker side of the pacing: a Trainer callback that times training in windows of
micro-batches and waits for the driver between windows."""

from __future__ import annotations

import itertools
import time

import torch
from transformers import TrainerCallback

from benchmarks.common import reset_peak_rss, rss_bytes
from benchmarks.flops import causal_pairs

IGNORE_INDEX = -100
_STARTED = time.perf_counter()


def since_start() -> float:
    """Seconds since this process imported the benchmark (its start-up cost)."""
    return round(time.perf_counter() - _STARTED, 2)


def supervised_targets(labels: torch.Tensor) -> int:
    """Positions of a labelled batch whose next token is a target (labels shift by one)."""
    return int((labels[..., 1:] != IGNORE_INDEX).sum())


def sequence_lengths(kwargs: dict) -> list[int]:
    """Each sequence's non-pad length in a forward call: from the attention mask, from restarts
    of `position_ids` (padding-free batches: one flattened row, no mask), or whole rows."""
    ids = kwargs["input_ids"]
    mask = kwargs.get("attention_mask")
    if mask is not None:
        return [int(n) for n in mask.sum(-1).flatten()]
    positions = kwargs.get("position_ids")
    if positions is not None:
        lengths = []
        for row in positions.reshape(-1, positions.shape[-1]):
            starts = [*(row == 0).nonzero().flatten().tolist(), row.numel()]
            lengths += [b - a for a, b in itertools.pairwise(starts) if b > a]
        return lengths
    return [ids.shape[-1]] * ids.reshape(-1, ids.shape[-1]).shape[0]


class Pacer(TrainerCallback):
    """A Trainer callback that times the training in windows of micro-batches.

    After every `every` micro-batches it reports the window and blocks until the driver says
    go; the wait is not timed. A forward pre-hook on the trained model counts, per window:
    useful tokens (non-pad: the attention-mask sum), positions, causal attention pairs and
    supervised targets. With a `supervised` table (non-pad input ids -> that sample's targets
    under ours' mask: answer and <|im_end|>) each row is looked up there: ours computes its loss
    outside the model, and the spec-style labels cover padding too. Without one, the targets are
    those of the call's `labels` (TRL's).
    """

    def __init__(self, conn, every: int, supervised: dict[tuple, int] | None = None):
        self.conn = conn
        self.every = every
        self.supervised_by_ids = supervised or {}
        self.micro = 0
        self.started = 0.0
        self._zero()

    def _zero(self) -> None:
        self.tokens = self.positions = self.pairs = self.supervised = self.unknown = 0

    def _count(self, module, args, kwargs):
        if not module.training or kwargs.get("input_ids") is None:
            return
        ids, mask = kwargs["input_ids"], kwargs.get("attention_mask")
        self.positions += ids.numel()
        self.tokens += int(mask.sum()) if mask is not None else ids.numel()
        self.pairs += causal_pairs(sequence_lengths(kwargs))
        labels = kwargs.get("labels")
        if not self.supervised_by_ids:
            if labels is not None:
                self.supervised += supervised_targets(labels)
            return
        for i, row in enumerate(ids):
            key = tuple(row[mask[i].bool()].tolist() if mask is not None else row.tolist())
            found = self.supervised_by_ids.get(key)
            if found is None:
                self.unknown += 1
            else:
                self.supervised += found

    def _wait(self):
        if self.conn.recv() != "go":
            raise SystemExit(0)
        self.started = time.perf_counter()

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        from qwen3_lora.training.speed.compiled import is_compiled

        model.register_forward_pre_hook(self._count, with_kwargs=True)
        reset_peak_rss()
        self.conn.send(
            {
                "event": "ready",
                "rss": rss_bytes()[0],
                "since_start": since_start(),
                "compiled": is_compiled(model),
            }
        )
        self._wait()

    def _send_window(self, **extra):
        seconds = time.perf_counter() - self.started
        self.conn.send(
            {
                "event": "window",
                "micro": self.micro,
                "tokens": self.tokens,
                "positions": self.positions,
                "pairs": self.pairs,
                "supervised": self.supervised,
                "unknown_rows": self.unknown,
                "seconds": seconds,
                "rss": rss_bytes(),
                **extra,
            }
        )

    def _micro_end(self):
        self.micro += 1
        if self.micro % self.every == 0:
            self._send_window()
            self._zero()
            reset_peak_rss()  # each window reports its own peak
            self._wait()

    def on_substep_end(self, args, state, control, **kwargs):
        self._micro_end()

    def on_step_end(self, args, state, control, **kwargs):
        self._micro_end()

    def on_train_end(self, args, state, control, **kwargs):
        self._send_window(final=True)


def supervised_lookup(tokenizer, records, max_length: int) -> dict[tuple, int]:
    """Non-pad input ids of each encoded sample -> its supervised targets (ours' encoding)."""
    from qwen3_lora.prompt.encoding import encode_records

    encoded, _ = encode_records(tokenizer, records, max_length)
    return {tuple(e.input_ids): supervised_targets(torch.tensor(e.labels)) for e in encoded}
