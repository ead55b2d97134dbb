"""glibc's heap during training on CPU: large tensors reuse freed heap memory instead of fresh
pages (`ReuseFreedHeap`), and freed pages go back to the OS every few steps (`TrimFreedMemory`)."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

from transformers import TrainerCallback

# mallopt's parameters (malloc.h); it takes an int.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
C_INT_MAX = 2**31 - 1
# Where glibc's dynamic thresholds end in a process that frees large blocks (64-bit): setting
# either turns that adjustment off for good, so after training they are set to its end point.
SETTLED_MMAP_THRESHOLD = 32 << 20
log = logging.getLogger(__name__)

_SIGNATURES = {
    "mallopt": ([ctypes.c_int, ctypes.c_int], ctypes.c_int),
    "malloc_trim": ([ctypes.c_size_t], ctypes.c_int),
}


def _glibc(name: str):
    """The C library's `name` with its signature, or None where it has none (not glibc)."""
    try:
        func = getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None
    func.argtypes, func.restype = _SIGNATURES[name]
    return func


class ReuseFreedHeap(TrainerCallback):
    """While training, serve tensors up to `mmap_threshold` bytes from the heap, not from mmap.

    glibc gives every allocation above its mmap threshold (at most 32 MiB by default) fresh
    pages from mmap and unmaps them on free, so each training step's large activations and
    gradients (the LM head's rows, the MLP's) fault in every page of them again, zeroed by the
    kernel, part of the time a step spends between its matmuls. With the threshold raised,
    freed memory is reused as it is; with the trim threshold raised too, free() does not hand
    the heap's top back after each step. `TrimFreedMemory` still returns free pages every few
    steps, which keeps the peak where it was. At the end both go back to where glibc's own
    adjustment would have taken them, and the heap is trimmed once.
    """

    def __init__(self, mallopt, trim, mmap_threshold: int = 1 << 30):
        self.mallopt = mallopt
        self.trim = trim
        self.mmap_threshold = mmap_threshold

    @classmethod
    def create(cls) -> ReuseFreedHeap | None:
        """The callback, or None where the C library is not glibc (no mallopt, malloc_trim)."""
        mallopt, trim = _glibc("mallopt"), _glibc("malloc_trim")
        return cls(mallopt, trim) if mallopt and trim else None

    def _set(self, mmap_threshold: int, trim_threshold: int) -> bool:
        # mallopt returns 1 on success, 0 for a value it refuses (then nothing changed).
        return bool(
            self.mallopt(M_MMAP_THRESHOLD, mmap_threshold)
            and self.mallopt(M_TRIM_THRESHOLD, trim_threshold)
        )

    def on_train_begin(self, args, state, control, **kwargs):
        if not self._set(self.mmap_threshold, min(2 * self.mmap_threshold, C_INT_MAX)):
            log.info(
                "glibc refused a %d-byte mmap threshold: heap reuse is off", self.mmap_threshold
            )

    def on_train_end(self, args, state, control, **kwargs):
        self._set(SETTLED_MMAP_THRESHOLD, 2 * SETTLED_MMAP_THRESHOLD)
        self.trim(0)


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
        trim = _glibc("malloc_trim")
        return cls(trim, every) if trim else None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0:
            self.trim(0)
