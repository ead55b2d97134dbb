"""Span-constrained generation for extraction tasks: the answer is a piece of the input.

An extraction answer (文件名称提取: "我有一批西安市地类图斑的数据，怎么进行发服务" -> "西安市地类图斑")
is a contiguous span of the user's text. Greedy decoding under this constraint picks, at every
step, the likeliest token that keeps the answer so far a substring of the input, and may stop
(end of turn) once the answer is non-empty and ends on a whole character. The model still
chooses where the span starts and ends; it can no longer drift into words that are not in the
input, a label of another task, or a near-copy with one character changed.

Works on bytes, so byte-level BPE tokens that carry part of a UTF-8 character (common for
Chinese in English-first vocabularies) combine as they would in the text.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import torch
from transformers import LogitsProcessor

from ..models.qwen_tokenizer import bytes_to_unicode


@cache
def _unicode_to_byte() -> dict[str, int]:
    """The inverse of GPT-2's byte -> printable character map used by byte-level BPE."""
    return {ch: b for b, ch in bytes_to_unicode().items()}


def _is_byte_level(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    return decoder is not None and "ByteLevel" in type(decoder).__name__ + repr(decoder)


def token_bytes(tokenizer: Any) -> list[bytes | None]:
    """The bytes each token id stands for in text; None for special tokens."""
    size = len(tokenizer)
    special = set(tokenizer.all_special_ids)
    special.update(getattr(tokenizer, "added_tokens_decoder", {}))
    pieces = tokenizer.convert_ids_to_tokens(list(range(size)))
    table: list[bytes | None] = []
    if _is_byte_level(tokenizer):
        to_byte = _unicode_to_byte()
        for i, piece in enumerate(pieces):
            if i in special or piece is None or any(ch not in to_byte for ch in piece):
                table.append(None)
            else:
                table.append(bytes(to_byte[ch] for ch in piece))
        return table
    # SentencePiece-style vocabularies: "▁" is a space, "<0xNN>" a single byte.
    for i, piece in enumerate(pieces):
        if i in special or piece is None:
            table.append(None)
        elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            table.append(bytes([int(piece[3:5], 16)]))
        else:
            table.append(piece.replace("▁", " ").encode("utf-8"))
    return table


class SpanLogitsProcessor(LogitsProcessor):
    """Allow only tokens that keep each row's new text a substring of that row's source."""

    def __init__(
        self, table: list[bytes | None], sources: list[str], prompt_width: int, stop_ids: list[int]
    ):
        self.table = table
        self.sources = [s.encode("utf-8") for s in sources]
        self.width = prompt_width
        self.stop_ids = list(stop_ids)
        # Tokens that occur anywhere in a source: the only ones that can ever be allowed.
        self.candidates = [
            [t for t, piece in enumerate(table) if piece and piece in source]
            for source in self.sources
        ]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        mask = torch.full_like(scores, float("-inf"))
        for row, ids in enumerate(input_ids[:, self.width :].tolist()):
            if any(t in self.stop_ids or self.table[t] is None for t in ids):
                mask[row] = 0  # finished (or padding): generate ignores this row from now on
                continue
            so_far = b"".join(self.table[t] for t in ids)
            source = self.sources[row]
            allowed = [t for t in self.candidates[row] if so_far + self.table[t] in source]
            if not so_far:  # the first token must start a character of the source
                allowed = [t for t in allowed if _starts_a_character(self.table[t])]
            if (so_far and _whole_characters(so_far)) or not allowed:
                allowed += self.stop_ids
            mask[row, allowed] = 0
        return scores + mask


def _starts_a_character(data: bytes) -> bool:
    """Not a UTF-8 continuation byte: a substring of valid text starting here starts a character."""
    return (data[0] & 0xC0) != 0x80


def _whole_characters(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
