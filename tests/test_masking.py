"""Label masking is exact: loss covers the answer and its end-of-turn token, nothing else."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from qwen3_lora.prompt.encoding import IGNORE_INDEX, PadCollator, encode_example
from qwen3_lora.prompt.render import render_example, render_prompt

SAMPLES = [
    ("文件名称提取", "我有一批西安市地类图斑的数据，怎么进行发服务", "西安市地类图斑"),
    ("问题场景分类", "数据清洗流程是什么？", "数据平台相关问题"),
    ("问题回答", "数据清洗流程", "需要先配置清洗规则，再配置清洗方案，最后启动任务即可。"),
]


@pytest.fixture(params=["pad_ne_eos", "pad_eq_eos"])
def tokenizer(request, tiny_model_dir, tiny_model_dir_pad_eos):
    folder = tiny_model_dir if request.param == "pad_ne_eos" else tiny_model_dir_pad_eos
    tok = AutoTokenizer.from_pretrained(folder)
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    assert (tok.pad_token_id == eot) == (request.param == "pad_eq_eos")
    return tok


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize(("task", "text", "output"), SAMPLES)
def test_labels_are_answer_and_end_of_turn_only(tokenizer, task, text, output):
    enc = encode_example(tokenizer, task, text, output)
    prompt_ids = _ids(tokenizer, render_prompt(tokenizer, task, text))
    answer_ids = [*_ids(tokenizer, output), tokenizer.convert_tokens_to_ids("<|im_end|>")]
    assert enc.input_ids == prompt_ids + answer_ids
    assert enc.labels == [IGNORE_INDEX] * len(prompt_ids) + answer_ids
    # The prompt is Qwen3's non-thinking generation prefix.
    assert render_prompt(tokenizer, task, text).endswith(
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    assert f"任务: {task}\n输入: {text}" in render_prompt(tokenizer, task, text)


def test_collator_pads_without_touching_labels(tokenizer):
    encoded = [encode_example(tokenizer, *s) for s in SAMPLES]
    batch = PadCollator(tokenizer.pad_token_id)([e.as_features() for e in encoded])
    width = max(len(e.input_ids) for e in encoded)
    assert batch["input_ids"].shape == (len(SAMPLES), width)
    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for row, enc in enumerate(encoded):
        n = len(enc.input_ids)
        assert batch["labels"][row, :n].tolist() == enc.labels
        assert batch["labels"][row, n:].eq(IGNORE_INDEX).all()
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (width - n)
        # The end-of-turn token is supervised even when the pad token has the same id.
        last = max(i for i, x in enumerate(enc.labels) if x != IGNORE_INDEX)
        assert batch["labels"][row, last].item() == eot


def test_render_example_prompt_is_the_inference_prompt(tokenizer):
    prompt, answer = render_example(tokenizer, *SAMPLES[0])
    assert prompt == render_prompt(tokenizer, *SAMPLES[0][:2])
    assert answer == SAMPLES[0][2] + "<|im_end|>"
