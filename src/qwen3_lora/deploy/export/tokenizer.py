"""The tokenizer in a GGUF (`tokenizer.ggml.*`): vocabulary, merges, pre-tokenizer, special
token ids and the chat template.

A byte-level BPE tokenizer (Qwen3, SmolLM2, the tiny test model) is rebuilt from its
`tokenizer.json`. Any other kind (SentencePiece models such as Gemma 3) is copied key by key
from the GGUF the base model was loaded from.
"""

from __future__ import annotations

import json
import weakref
from dataclasses import dataclass
from pathlib import Path

from .architectures import ExportError
from .gguf_file import gguf_module

# llama.cpp hard-codes each pre-tokenizer's split regex under a name (src/llama-vocab.cpp);
# its converter finds the name by hashing a test string's ids, which only knows published
# tokenizers. Matching the regex itself works for any tokenizer that uses one of them.
GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPLIT_REGEX_TO_PRE = {QWEN2_REGEX: "qwen2", LLAMA3_REGEX: "llama-bpe", GPT2_REGEX: "gpt-2"}


@dataclass(frozen=True)
class SpecialTokens:
    """The ids llama.cpp needs: end of turn (also eos: generation stops there), bos, pad."""

    end_of_turn: int
    bos: int
    pad: int | None


# A large vocabulary's tokenizer.json takes seconds to parse: once per tokenizer.
_PARSED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _backend(tokenizer) -> dict:
    if tokenizer in _PARSED:
        return _PARSED[tokenizer]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ExportError(
            f"{type(tokenizer).__name__} is not a fast tokenizer (tokenizer.json); the GGUF "
            f"export needs one"
        )
    _PARSED[tokenizer] = parsed = json.loads(backend.to_str())
    return parsed


def normalises_nfc(tokenizer) -> bool:
    """Whether the tokenizer NFC-normalises text first (Qwen's does; llama.cpp does not)."""
    return "NFC" in json.dumps(_backend(tokenizer).get("normalizer"))


def _byte_level(item: dict, use_regex: bool) -> bool:
    return (
        item.get("type") == "ByteLevel"
        and not item.get("add_prefix_space", False)
        and bool(item.get("use_regex", True)) == use_regex
    )


def is_byte_level_bpe(tokenizer) -> bool:
    backend = _backend(tokenizer)
    return (
        backend["model"]["type"] == "BPE"
        and (backend.get("decoder") or {}).get("type") == "ByteLevel"
    )


def detect_pre_tokenizer(tokenizer) -> str:
    """The `tokenizer.ggml.pre` whose llama.cpp regex splits text as this tokenizer does."""
    pre = _backend(tokenizer).get("pre_tokenizer")
    if pre and _byte_level(pre, use_regex=True):
        return "gpt-2"  # tokenizers' ByteLevel(use_regex=True) is GPT-2's regex
    items = (pre or {}).get("pretokenizers") or []
    if len(items) == 2 and items[0]["type"] == "Split" and _byte_level(items[1], False):
        regex = items[0]["pattern"].get("Regex")
        if items[0].get("behavior") == "Isolated" and regex in SPLIT_REGEX_TO_PRE:
            return SPLIT_REGEX_TO_PRE[regex]
    if (
        len(items) == 2
        and items[0]["type"] == "Digits"
        and items[0].get("individual_digits")
        and _byte_level(items[1], True)
    ):
        return "smollm"  # SmolLM / StarCoder: single digits, then GPT-2's split
    raise ExportError(
        f"no llama.cpp pre-tokenizer splits like this tokenizer's "
        f"({json.dumps(pre)[:200]}); supported: gpt-2, qwen2, llama-bpe, smollm regexes"
    )


def special_tokens(tokenizer, end_of_turn: int) -> SpecialTokens:
    """Always a bos id: without one llama.cpp's BPE vocab takes id 11 for bos (and eos)."""
    vocab = tokenizer.get_vocab()
    bos = tokenizer.bos_token_id
    if bos is None:
        bos = vocab.get("<|endoftext|>", end_of_turn)  # what Qwen3's own GGUFs use
    return SpecialTokens(end_of_turn, bos, tokenizer.pad_token_id)


def add_bpe_tokenizer(writer, tokenizer, n_vocab: int, special: SpecialTokens) -> None:
    """`tokenizer.ggml.*` for a byte-level BPE (llama.cpp's "gpt2" tokenizer model)."""
    gguf = gguf_module()
    backend = _backend(tokenizer)
    vocab = tokenizer.get_vocab()  # added tokens included
    if max(vocab.values()) >= n_vocab:
        raise ExportError(
            f"the tokenizer has ids up to {max(vocab.values())} but the embedding only "
            f"{n_vocab} rows: tokenizer and model do not belong together"
        )
    added = {t["id"]: t for t in backend["added_tokens"]}
    by_id = {i: t for t, i in vocab.items()}
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in by_id:  # embedding rows past the tokenizer (Qwen3 pads its matrix)
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(added[i]["content"])
            special_token = added[i]["special"]
            types.append(gguf.TokenType.CONTROL if special_token else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in backend["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(detect_pre_tokenizer(tokenizer))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    add_special_ids(writer, special)


def add_special_ids(writer, special: SpecialTokens) -> None:
    # The chat template writes every special token itself (training tokenises the rendered
    # text without adding any), so llama.cpp and Ollama must not add a bos or eos of their own.
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    writer.add_bos_token_id(special.bos)
    # eos and end of turn both at the turn's end: llama.cpp stops generating there
    writer.add_eos_token_id(special.end_of_turn)
    writer.add_eot_token_id(special.end_of_turn)
    if special.pad is not None:
        writer.add_pad_token_id(special.pad)


OWN_KEYS = (
    "tokenizer.chat_template",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.eot_token_id",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.padding_token_id",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.ggml.add_eos_token",
)


def copy_tokenizer(writer, source_gguf: str | Path, special: SpecialTokens) -> int:
    """Copy `tokenizer.*` from the GGUF the base came from (keeping e.g. a SentencePiece
    vocabulary with its scores as llama.cpp wrote it); returns the vocabulary size."""
    gguf = gguf_module()
    reader = gguf.GGUFReader(str(source_gguf))
    n_vocab = 0
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer.") or key in OWN_KEYS:
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        value = field.contents()
        writer.add_key_value(key, value, vtype, sub_type=sub)
        if key == "tokenizer.ggml.tokens":
            n_vocab = len(value)
    add_special_ids(writer, special)
    return n_vocab


def gguf_vocab_size(source_gguf: str | Path) -> int:
    gguf = gguf_module()
    field = gguf.GGUFReader(str(source_gguf)).fields.get("tokenizer.ggml.tokens")
    if field is None:
        raise ExportError(f"{source_gguf} holds no tokenizer.ggml.tokens to copy")
    return len(field.data)
