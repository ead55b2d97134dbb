"""Returning freed heap memory to the OS between optimizer steps on CPU (glibc `malloc_trim`)."""

from __future__ import annotations

import ctypes
import ctypes.util

from transformers import TrainerCallback


class TrimFreedMemory(TrainerCallback):
    """After each optimizer step, hand the free pages of glibc's heaps back to the OS.

    Batches of varying length free and allocate activations of varying size; glibc keeps the
    freed chunks (fragmented heap, raised mmap threshold), so the resident size creeps up over an
    epoch. `malloc_trim(0)` releases whole free pages anywhere in the heaps; the pages that the
    next step touches again must be faulted back in, so it trades a little speed for a lower
    peak (measured by `benchmarks.train_speed --ablate`; benchmarks/results/LATEST.md).
    """

    def __init__(self, trim):
        self.trim = trim

    @classmethod
    def create(cls) -> TrimFreedMemory | None:
        """The callback, or None where the C library has no malloc_trim (not glibc)."""
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            trim = libc.malloc_trim
        except (OSError, AttributeError):
            return None
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
        return cls(trim)

    def on_step_end(self, args, state, control, **kwargs):
        self.trim(0)
