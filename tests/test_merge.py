"""`qwen3-lora merge`: the merged folder is a plain transformers model that computes exactly what
base + adapter computed, with tied embeddings kept tied (or untied correctly), safetensors only."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from conftest import MEMORISE
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from qwen3_lora.cli import main
from qwen3_lora.deploy.merge import merge_adapter
from qwen3_lora.models.adapter import AdapterError
from qwen3_lora.prompt.render import render_prompt


def _prompts(tokenizer) -> torch.Tensor:
    texts = [render_prompt(tokenizer, s["task"], s["input"]) for s in MEMORISE]
    enc = tokenizer(texts, add_special_tokens=False, return_tensors="pt", padding=True)
    return enc.input_ids, enc.attention_mask


def _logits(model, ids, mask) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


def _greedy(model, tokenizer, prompt: str) -> str:
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=40, do_sample=False)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


def _weight_keys(folder) -> set[str]:
    keys: set[str] = set()
    for path in folder.glob("*.safetensors"):
        with safe_open(str(path), "pt") as fh:
            keys |= set(fh.keys())
    return keys


def _peft_reference(base_dir, adapter_dir):
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT's tied-embedding notice for the edge-case adapters
        return PeftModel.from_pretrained(base, adapter_dir).eval()


@pytest.fixture(scope="module")
def merged_dir(tmp_path_factory, memorised_adapter):
    out = tmp_path_factory.mktemp("merged") / "qwen3-tiny-merged"
    assert main(["merge", "--adapter", str(memorised_adapter), "--output", str(out)]) == 0
    return out


def test_merge_cli_writes_a_plain_safetensors_model_folder(merged_dir, tiny_model_dir):
    names = {p.name for p in merged_dir.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "README.md"} <= names
    assert {"tokenizer.json", "tokenizer_config.json"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl"))]
    assert "adapter_config.json" not in names and "adapter_model.safetensors" not in names
    # Same tensors as the base: no LoRA leftovers, the tied lm_head neither duplicated nor lost.
    assert _weight_keys(merged_dir) == _weight_keys(tiny_model_dir)
    assert not any("lora" in k for k in _weight_keys(merged_dir))
    config = json.loads((merged_dir / "config.json").read_text())
    assert config["tie_word_embeddings"] is True
    assert config["dtype"] == "float32"

    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(tiny_model_dir).chat_template
    gen = json.loads((merged_dir / "generation_config.json").read_text())
    eos = gen["eos_token_id"] if isinstance(gen["eos_token_id"], list) else [gen["eos_token_id"]]
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in eos
    card = (merged_dir / "README.md").read_text()
    assert "任务: 问题场景分类\n输入: 数据清洗流程是什么？" in card
    assert "enable_thinking=False" in card


def test_merged_logits_and_greedy_outputs_equal_base_plus_adapter(
    merged_dir, memorised_adapter, tiny_model_dir
):
    reference = _peft_reference(tiny_model_dir, memorised_adapter)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    assert merged.lm_head.weight.data_ptr() == merged.model.embed_tokens.weight.data_ptr()
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    ids, mask = _prompts(tokenizer)
    torch.testing.assert_close(
        _logits(merged, ids, mask), _logits(reference, ids, mask), atol=1e-5, rtol=1e-5
    )
    for sample in MEMORISE:
        prompt = render_prompt(tokenizer, sample["task"], sample["input"])
        assert _greedy(merged, tokenizer, prompt) == sample["output"], sample
        assert _greedy(reference, tokenizer, prompt) == sample["output"], sample


def _random_adapter(tmp_path, base_dir, **lora) -> str:
    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, task_type="CAUSAL_LM", **lora)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(base, config)
    with torch.no_grad():  # a trained modules_to_save copy differs from the base module
        for name, param in model.named_parameters():
            if "modules_to_save" in name:
                param.add_(0.05 * torch.randn_like(param))
    out = tmp_path / "adapter"
    model.save_pretrained(out)
    return str(out)


@pytest.mark.parametrize(
    "lora",
    [
        {"target_modules": ["q_proj", "embed_tokens"]},
        {"target_modules": ["v_proj", "lm_head"]},
        {"target_modules": ["q_proj"], "modules_to_save": ["lm_head"]},
    ],
    ids=["lora-on-embed_tokens", "lora-on-lm_head", "lm_head-in-modules_to_save"],
)
def test_adapter_touching_tied_embeddings_is_merged_untied(tmp_path, tiny_model_dir, lora):
    adapter = _random_adapter(tmp_path, tiny_model_dir, **lora)
    result = merge_adapter(adapter, tmp_path / "merged")
    assert result.tie_word_embeddings is False
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert merged.config.tie_word_embeddings is False
    assert merged.lm_head.weight.data_ptr() != merged.model.embed_tokens.weight.data_ptr()
    keys = _weight_keys(tmp_path / "merged")
    assert {"lm_head.weight", "model.embed_tokens.weight"} <= keys

    reference = _peft_reference(tiny_model_dir, adapter)
    ids, mask = _prompts(AutoTokenizer.from_pretrained(tiny_model_dir))
    torch.testing.assert_close(
        _logits(merged, ids, mask), _logits(reference, ids, mask), atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("dtype", ["bf16", "base"])
def test_merge_writes_weights_in_the_asked_dtype(tmp_path, tiny_model_dir, dtype):
    base = tiny_model_dir
    if dtype == "base":  # a bf16 base, like the published Qwen3-0.6B
        base = tmp_path / "bf16-base"
        AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).save_pretrained(
            base
        )
        AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(base)
    adapter = _random_adapter(tmp_path, base, target_modules=["q_proj", "v_proj"])
    merge_adapter(adapter, tmp_path / "merged", dtype=dtype)
    with safe_open(str(tmp_path / "merged" / "model.safetensors"), "pt") as fh:
        names = list(fh.keys())
        assert {fh.get_tensor(k).dtype for k in names} == {torch.bfloat16}


def test_merge_refuses_a_folder_without_adapter_config(tmp_path, capsys):
    with pytest.raises(AdapterError, match=r"adapter_config\.json"):
        merge_adapter(tmp_path, tmp_path / "out")
    assert main(["merge", "--adapter", str(tmp_path), "--output", str(tmp_path / "o")]) == 2
    assert "adapter_config.json" in capsys.readouterr().err


def test_merged_model_serves_the_memorised_answers(merged_dir):
    """`serve --model <merged>`: the plain folder answers every task like base + adapter."""
    from fastapi.testclient import TestClient

    from qwen3_lora.deploy.serve import ServeConfig, create_app, load_predictor

    config = ServeConfig(model=str(merged_dir), precision="fp32")
    assert not config.validate()
    with TestClient(create_app(load_predictor(config), config)) as client:
        for sample in MEMORISE:
            body = client.post(f"/v1/tasks/{sample['task']}", json={"input": sample["input"]})
            assert body.status_code == 200, body.text
            assert body.json().get("label", body.json().get("answer")) == sample["output"]
