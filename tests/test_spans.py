"""Span-constrained extraction: answers are pieces of the input, chosen by the model."""

from __future__ import annotations

import torch
from conftest import MEMORISE

from qwen3_lora.inference.spans import SpanLogitsProcessor, token_bytes
from qwen3_lora.models.tiny import build_tokenizer

TEXTS = [
    "我有一批西安市地类图斑的数据，怎么进行发服务",
    "把那个盐城市海岸线_2021.shp转到WGS84经纬度",
    "请问 Shanghai roads 2024 怎么入库",
]


def test_token_bytes_rebuild_the_text_byte_for_byte():
    tokenizer = build_tokenizer()
    table = token_bytes(tokenizer)
    assert len(table) == len(tokenizer)
    for text in TEXTS:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert b"".join(table[i] for i in ids) == text.encode("utf-8")
    # Special tokens never stand for text.
    assert all(table[i] is None for i in tokenizer.all_special_ids)
    assert table[tokenizer.convert_tokens_to_ids("<|im_end|>")] is None


def test_constrained_greedy_decoding_stays_inside_the_source():
    tokenizer = build_tokenizer()
    table = token_bytes(tokenizer)
    stop = tokenizer.convert_tokens_to_ids("<|im_end|>")
    gen = torch.Generator().manual_seed(0)
    width = 3  # prompt tokens before the answer
    processor = SpanLogitsProcessor(table, TEXTS, width, [stop])
    ids = torch.zeros((len(TEXTS), width), dtype=torch.long)
    finished = [False] * len(TEXTS)
    for _ in range(30):
        scores = torch.randn(len(TEXTS), len(tokenizer), generator=gen)
        scores[:, stop] -= 3  # a random model that stops now and then
        allowed = processor(ids, scores.clone())
        if ids.shape[1] == width:
            # The first token may not end the answer: it must start a span.
            assert torch.isinf(allowed[:, stop]).all()
        nxt = allowed.argmax(-1)
        nxt = torch.where(torch.tensor(finished), torch.tensor(stop), nxt)
        finished = [f or int(t) == stop for f, t in zip(finished, nxt, strict=True)]
        ids = torch.cat([ids, nxt[:, None]], dim=1)
    for row, text in enumerate(TEXTS):
        answer = ids[row, width:].tolist()
        answer = answer[: answer.index(stop)] if stop in answer else answer
        got = b"".join(table[t] for t in answer)
        assert got and got in text.encode("utf-8"), (text, got)
        if stop in ids[row].tolist():
            got.decode("utf-8")  # stopped only on whole characters
    # Unconstrained, the same scores leave the source at once.
    free = torch.randn(len(TEXTS), len(tokenizer), generator=gen).argmax(-1)
    assert any(
        table[int(t)] is None or table[int(t)] not in s.encode()
        for t, s in zip(free, TEXTS, strict=True)
    )


def test_extraction_decodes_within_the_input_by_default(base, tuned):
    texts = [s["input"] for s in MEMORISE]
    free = base.predict("文件名称提取", texts, decode="generate", max_new_tokens=8)
    spans = base.predict("文件名称提取", texts, max_new_tokens=8)
    # A random-weight model answers with anything (this one: nothing at all, it stops at once);
    # constrained, with non-empty pieces of the input.
    assert not all(p.output and p.output in t for p, t in zip(free, texts, strict=True))
    for pred, text in zip(spans, texts, strict=True):
        assert pred.output and pred.output in text, (text, pred.output)
    # A trained adapter's answer is a span already, and the constraint leaves it as it is.
    sample = next(s for s in MEMORISE if s["task"] == "文件名称提取")
    (pred,) = tuned.predict("文件名称提取", [sample["input"]], max_new_tokens=20)
    assert pred.output == sample["output"]
