"""Train/inference alignment: a memorised adapter, reloaded through plain PEFT, reproduces the
training answers when decoded greedily from the inference rendering."""

from __future__ import annotations

import torch
from conftest import MEMORISE
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from qwen3_lora.prompt.render import render_prompt


def _greedy(model, tokenizer, prompt: str) -> str:
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=40, do_sample=False)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


def test_memorised_adapter_reproduces_answers_through_plain_peft(memorised_adapter, tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(memorised_adapter)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, memorised_adapter).eval()
    for sample in MEMORISE:
        prompt = render_prompt(tokenizer, sample["task"], sample["input"])
        assert _greedy(model, tokenizer, prompt) == sample["output"], sample
