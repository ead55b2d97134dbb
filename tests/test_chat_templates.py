"""`train --chat-template`: a base whose tokenizer has no chat template trains with a built-in one,
the adapter keeps it (plain PEFT + transformers reload renders and answers the same; Predictor,
merge and export use it), and a template whose turn markers are not special tokens of the
vocabulary is refused."""

from __future__ import annotations

import pytest
import torch
import yaml
from conftest import MEMORISE, memorise_config
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from qwen3_lora.cli import main
from qwen3_lora.deploy.export import export
from qwen3_lora.deploy.export.gguf_file import read_metadata
from qwen3_lora.deploy.export.template import THINKING_OFF
from qwen3_lora.deploy.merge import merge_in_memory
from qwen3_lora.inference.predictor import Predictor
from qwen3_lora.models.adapter import stop_token_ids
from qwen3_lora.prompt.chat_templates import (
    builtin_template,
    template_problems,
    use_chat_template,
)
from qwen3_lora.prompt.render import TemplateError, end_of_turn_token, render_prompt
from qwen3_lora.training.config import ConfigError, build_config
from qwen3_lora.training.train import train

GEMMA_MARKERS = ["<bos>", "<start_of_turn>", "<end_of_turn>"]


@pytest.fixture(scope="module")
def no_template_dir(tmp_path_factory):
    """The tiny model with a tokenizer that ships no chat template, like a base model's."""
    from qwen3_lora.models.tiny import build_tiny_folder

    folder = build_tiny_folder(tmp_path_factory.mktemp("tiny-no-template"), with_template=False)
    assert AutoTokenizer.from_pretrained(folder).chat_template is None
    return folder


@pytest.fixture(scope="module")
def chatml_adapter(tmp_path_factory, no_template_dir, memorise_file):
    out = tmp_path_factory.mktemp("chatml") / "adapter"
    # 30 epochs memorise all six here; 40 for a margin (60 cost 1.5x as long).
    config = memorise_config(no_template_dir, out, memorise_file, chat_template="chatml", epochs=40)
    train(config)
    return out


def _tokenizer(folder, markers: list[str] = ()):
    tok = AutoTokenizer.from_pretrained(folder)
    if markers:
        tok.add_special_tokens({"bos_token": "<bos>", "additional_special_tokens": markers[1:]})
    return tok


def test_no_template_base_trains_with_chatml_and_reloads_through_plain_peft(
    chatml_adapter, no_template_dir
):
    saved = yaml.safe_load((chatml_adapter / "train_config.yaml").read_text())
    assert saved["chat_template"] == "chatml"
    tokenizer = AutoTokenizer.from_pretrained(chatml_adapter)
    assert tokenizer.chat_template == builtin_template("chatml")
    base = AutoModelForCausalLM.from_pretrained(no_template_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, chatml_adapter).eval()
    start, end = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    for sample in MEMORISE:
        prompt = render_prompt(tokenizer, sample["task"], sample["input"])
        assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")  # ChatML, no think block
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
        assert ids[0].tolist().count(start) == 2 and ids[0].tolist().count(end) == 1
        out = model.generate(ids, max_new_tokens=40, do_sample=False)
        assert out[0, -1].item() == end  # stopped at the end of turn
        answer = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()
        assert answer == sample["output"], sample


def test_every_command_renders_with_the_saved_template(chatml_adapter, tmp_path):
    predictor = Predictor.load(adapter=str(chatml_adapter), precision="fp32")
    assert predictor.tokenizer.chat_template == builtin_template("chatml")
    assert predictor.stop_ids[0] == predictor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    for sample in MEMORISE:
        (got,) = predictor.predict(sample["task"], [sample["input"]], max_new_tokens=40)
        assert got.output == sample["output"]
    merged = merge_in_memory(chatml_adapter)
    assert merged.tokenizer.chat_template == builtin_template("chatml")
    export(adapter=chatml_adapter, output=tmp_path / "gguf", outtype="f32")
    meta = read_metadata(tmp_path / "gguf" / "model.gguf")
    assert meta["tokenizer.chat_template"] == THINKING_OFF + builtin_template("chatml")
    assert meta["tokenizer.ggml.eos_token_id"] == predictor.stop_ids[0]  # <|im_end|>


def test_a_base_without_template_needs_the_option(capsys, no_template_dir, tmp_path):
    argv = ["train", "--base-model", str(no_template_dir), "--output-dir", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "has no chat template" in err and "--chat-template" in err
    assert "qwen3, chatml, gemma" in err and "Traceback" not in err
    with pytest.raises(ConfigError, match="neither a built-in template"):
        build_config({}, {"chat_template": "llama9"})
    with pytest.raises(ConfigError, match="chat_template file not found"):
        build_config({}, {"chat_template": str(tmp_path / "missing.jinja")})


def test_markers_that_are_not_special_tokens_are_refused(capsys, tiny_model_dir, tmp_path):
    tok = _tokenizer(tiny_model_dir)
    with pytest.raises(TemplateError) as err:
        use_chat_template(tok, "gemma")
    message = str(err.value)
    assert "'<start_of_turn>' is not a special token" in message
    assert "'<end_of_turn>' is not a special token" in message
    assert "no special token closes the assistant turn" in message
    # The same through the CLI: one clear error line before any model is loaded.
    argv = ["train", "--base-model", str(tiny_model_dir), "--chat-template", "gemma"]
    assert main([*argv, "--output-dir", str(tmp_path / "o")]) == 2
    assert "chat template 'gemma' cannot be used" in capsys.readouterr().err

    plain = tmp_path / "plain.jinja"  # turns told apart by plain text only
    plain.write_text(
        "{% for m in messages %}### {{ m.role }}:\n{{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}### assistant:\n{% endif %}"
    )
    with pytest.raises(TemplateError) as err:
        use_chat_template(tok, str(plain))
    assert "turn boundary" in str(err.value) and "no special token closes" in str(err.value)


def test_a_bos_the_template_does_not_write_is_refused(tiny_model_dir):
    from tokenizers.processors import TemplateProcessing

    tok = _tokenizer(tiny_model_dir, GEMMA_MARKERS)
    bos = tok.convert_tokens_to_ids("<bos>")
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", bos)]
    )
    assert tok("hello")["input_ids"][0] == bos
    tok.chat_template = builtin_template("chatml")
    (problem,) = template_problems(tok)
    assert "starts every text with <bos>" in problem and "bos_token" in problem
    tok.chat_template = builtin_template("gemma")  # writes {{ bos_token }} itself
    assert template_problems(tok) == []


@pytest.mark.parametrize(
    ("name", "prompt_end", "eot"),
    [
        ("qwen3", "<|im_start|>assistant\n<think>\n\n</think>\n\n", "<|im_end|>"),
        ("chatml", "<|im_end|>\n<|im_start|>assistant\n", "<|im_end|>"),
        ("gemma", "<end_of_turn>\n<start_of_turn>model\n", "<end_of_turn>"),
    ],
)
def test_builtin_templates_table(tiny_model_dir, name, prompt_end, eot):
    tok = _tokenizer(tiny_model_dir, GEMMA_MARKERS if name == "gemma" else [])
    assert use_chat_template(tok, name) == eot == end_of_turn_token(tok)
    prompt = render_prompt(tok, "问题场景分类", "数据清洗流程是什么？")
    assert prompt.endswith(prompt_end)
    assert prompt.startswith("<bos><start_of_turn>user\n" if name == "gemma" else "<|im_start|>")
    # The end of turn is a stop token, first after the model's own eos ids.
    assert tok.convert_tokens_to_ids(eot) in stop_token_ids(tok)
