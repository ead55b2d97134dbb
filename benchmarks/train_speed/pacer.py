"""The worker side of the pacing: a Trainer callback that times training in windows of
micro-batches and waits for the driver between windows."""

from __future__ import annotations

import time

from transformers import TrainerCallback

from benchmarks.common import reset_peak_rss, rss_bytes

_STARTED = time.perf_counter()


def since_start() -> float:
    """Seconds since this process imported the benchmark (its start-up cost)."""
    return round(time.perf_counter() - _STARTED, 2)


class Pacer(TrainerCallback):
    """A Trainer callback that times the training in windows of micro-batches.

    After every `every` micro-batches it reports the window and blocks until the driver says
    go; the wait is not timed. Useful tokens are counted by a forward pre-hook on the trained
    model: the attention-mask sum, i.e. non-pad tokens.
    """

    def __init__(self, conn, every: int):
        self.conn = conn
        self.every = every
        self.micro = 0
        self.started = 0.0
        self._zero()

    def _zero(self) -> None:
        self.tokens = self.positions = 0

    def _count(self, module, args, kwargs):
        if not module.training or kwargs.get("input_ids") is None:
            return
        ids, mask = kwargs["input_ids"], kwargs.get("attention_mask")
        self.positions += ids.numel()
        self.tokens += int(mask.sum()) if mask is not None else ids.numel()

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
