"""One parse of a GGUF file per model load through transformers.

To load a model from a GGUF, transformers parses the file three times: for the config, for the
tokenizer and for the weights. Each `load_gguf_checkpoint` makes a new `gguf.GGUFReader`, whose
pure-Python parse walks every string of the vocabulary. Its weight-name map also builds gguf's
`TensorNameMap` for the architecture once per module of the model, hundreds of times for one
model. Both dominate the load of a small GGUF model.

Once `share_gguf_reads()` has run, `gguf.GGUFReader` hands out the reader of the file parsed
last while that file is unchanged (same inode, size and modification time; read-only mode
only). A changed or replaced file is parsed again. `gguf.get_tensor_name_map` is built once per
(architecture, layers). The readers are read-only views of the file, so the config, tokenizer
and tensors are the ones a fresh parse gives (tests/test_gguf.py). `load_base_model` calls
`forget_gguf_reads()` once the weights are in, so the file's mapping does not outlive the load.
"""

from __future__ import annotations

import functools
import os
import threading

__all__ = ["forget_gguf_reads", "share_gguf_reads"]

_lock = threading.Lock()
_kept: dict[tuple, object] = {}  # the one reader kept: file identity -> reader
_parse = None  # gguf's own GGUFReader, once installed


def share_gguf_reads() -> None:
    """Make gguf's reader and name map shared as the module docstring says (idempotent)."""
    global _parse
    try:
        import gguf
    except ImportError:
        return  # transformers' load then says the gguf package is missing
    with _lock:
        if _parse is not None:
            return
        _parse = gguf.GGUFReader
        gguf.GGUFReader = _shared_reader
        gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(gguf.get_tensor_name_map)


def forget_gguf_reads() -> None:
    """Drop the reader kept (and with it the file's mapping)."""
    with _lock:
        _kept.clear()


def _shared_reader(path, mode: str = "r"):
    if mode != "r":
        return _parse(path, mode)
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    with _lock:
        reader = _kept.get(key)
    if reader is None:
        reader = _parse(path, mode)
        with _lock:
            _kept.clear()
            _kept[key] = reader
    return reader
