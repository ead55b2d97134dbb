"""Returning freed heap memory to the OS during training on CPU (glibc `malloc_trim`)."""

from __future__ import annotations

import ctypes
import ctypes.util

from transformers import TrainerCallback


class TrimFreedMemory(TrainerCallback):
    """Every `every` optimizer steps, hand the free pages of glibc's heaps back to the OS.

    Batches of varying length free and allocate activations of varying size; glibc keeps the
    freed chunks (fragmented heap, raised mmap threshold), so the resident size creeps up over an
    epoch. `malloc_trim(0)` releases whole free pages anywhere in the heaps; the pages that the
    next step touches again must be faulted back in, which is why it does not run after every
    step (`TrainConfig.trim_every`).
    """

    def __init__(self, trim, every: int):
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        self.trim = trim
        self.every = every

    @classmethod
    def create(cls, every: int) -> TrimFreedMemory | None:
        """The callback, or None where the C library has no malloc_trim (not glibc)."""
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            trim = libc.malloc_trim
        except (OSError, AttributeError):
            return None
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
        return cls(trim, every)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0:
            self.trim(0)
