"""`qwen3-lora export`: the GGUF read back by transformers gives the merged model's logits, the
embedded template and the Modelfile's Go template render the training prompt, the metadata
llama.cpp needs is there, and the LoRA GGUF, errors and files are right. (A real llama.cpp:
test_export_llamacpp.py.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import MEMORISE
from go_template import GO_PROGRAM, ollama_messages, render_go_template

from qwen3_lora.cli import main
from qwen3_lora.deploy.export import ExportError, export
from qwen3_lora.deploy.export.architectures import gguf_architecture
from qwen3_lora.deploy.export.gguf_file import read_metadata
from qwen3_lora.deploy.export.lora import check_adapter_config
from qwen3_lora.deploy.export.modelfile import ollama_template
from qwen3_lora.deploy.export.template import THINKING_OFF, chat_turns, thinking_off_template
from qwen3_lora.inference.predictor import Predictor
from qwen3_lora.prompt.render import render_chat, render_prompt, user_message

# Max |logit difference| from the merged fp32 model, read back by transformers: f32 is the
# same numbers; f16 and bf16 round each weight to 11 and 8 significant bits.
TOLERANCE = {"f32": 1e-5, "f16": 0.01, "bf16": 0.05}


@pytest.fixture(scope="module")
def merged(memorised_adapter):
    from qwen3_lora.deploy.merge import merge_in_memory

    return merge_in_memory(memorised_adapter)


def read_back(folder, merged):
    """The exported model.gguf through transformers' GGUF loader (dequantised to fp32)."""
    from transformers import AutoModelForCausalLM

    # transformers' GGUF loader ignores qwen3.attention.key_length: give it the real config.
    return AutoModelForCausalLM.from_pretrained(
        folder, gguf_file="model.gguf", dtype=torch.float32, config=merged.model.config
    ).eval()


def prompt_batch(tokenizer) -> torch.Tensor:
    sample = MEMORISE[0]
    text = render_prompt(tokenizer, sample["task"], sample["input"])
    return tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids


@pytest.mark.parametrize("outtype", ["f32", "f16", "bf16"])
def test_read_back_logits_equal_the_merged_models(exported, merged, outtype):
    model = read_back(exported(outtype), merged)
    ids = prompt_batch(merged.tokenizer)
    with torch.no_grad():
        diff = (model(ids).logits - merged.model(ids).logits).abs().max().item()
    print(f"{outtype} max logit diff {diff:.6f}")
    assert diff <= TOLERANCE[outtype], diff


def test_q8_0_gives_the_merged_models_greedy_answers(exported, merged):
    ours = Predictor(read_back(exported("q8_0"), merged), merged.tokenizer)
    reference = Predictor(merged.model, merged.tokenizer)
    for sample in MEMORISE:
        args = (sample["task"], [sample["input"]])
        got = ours.predict(*args, decode="generate", max_new_tokens=40)[0].output
        assert got == reference.predict(*args, decode="generate", max_new_tokens=40)[0].output
        assert got == sample["output"]


def test_metadata_is_what_llama_cpp_needs(exported, merged):
    meta = read_metadata(exported("q8_0") / "model.gguf")
    tok = merged.tokenizer
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    assert meta["general.architecture"] == "qwen3"
    assert meta["general.type"] == "model"
    assert meta["tokenizer.ggml.model"] == "gpt2"
    assert meta["tokenizer.ggml.pre"] == "gpt-2"  # the tiny BPE splits with GPT-2's regex
    assert meta["tokenizer.ggml.eos_token_id"] == meta["tokenizer.ggml.eot_token_id"] == eot
    assert meta["tokenizer.ggml.bos_token_id"] == tok.convert_tokens_to_ids("<|endoftext|>")
    assert meta["tokenizer.ggml.padding_token_id"] == tok.pad_token_id
    assert meta["tokenizer.ggml.add_bos_token"] is False
    assert meta["tokenizer.chat_template"] == THINKING_OFF + tok.chat_template
    assert meta["qwen3.attention.key_length"] == merged.model.config.head_dim
    tensors = meta["tensors"]
    assert "output.weight" not in tensors  # tied: llama.cpp reuses token_embd
    assert tensors["blk.0.attn_q.weight"][0] == "Q8_0"
    assert tensors["blk.0.attn_norm.weight"][0] == "F32"
    assert tensors["token_embd.weight"][1] == [64, len(tok)]


def test_export_folder_holds_exactly_the_files_and_says_how_to_run(exported, memorised_adapter):
    folder = exported("q8_0")
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["model.gguf", "Modelfile", "README.md", "export_config.json"]
    )
    readme = (folder / "README.md").read_text("utf-8")
    for text in ("llama-server -m model.gguf", "ollama create", "/v1/chat/completions"):
        assert text in readme
    for task in ("问题场景分类", "问题类型分类", "问题回答", "文件名称提取"):
        assert f"任务: {task}\\n输入: " in readme
    # a quantized GGUF: how to keep a llama.cpp with ggml's AMX kernels from crashing on it
    assert "--no-repack" in readme and "llama.cpp#20824" in readme
    modelfile = (folder / "Modelfile").read_text("utf-8")
    assert modelfile.startswith("FROM ./model.gguf\n")
    for line in ('PARAMETER stop "<|im_end|>"', "PARAMETER temperature 0", "PARAMETER top_k 1"):
        assert line in modelfile
    # num_ctx is the training max length, read from train_config.yaml beside the adapter
    assert "PARAMETER num_ctx 512" in modelfile
    record = json.loads((folder / "export_config.json").read_text("utf-8"))
    assert record["outtype"] == "q8_0" and str(memorised_adapter) in record["origin"]


def modelfile_template(folder) -> str:
    text = (folder / "Modelfile").read_text("utf-8")
    return text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]


def test_modelfile_template_renders_render_prompts_text(exported, merged):
    template = modelfile_template(exported("q8_0"))
    for sample in MEMORISE:
        message = {"role": "user", "content": user_message(sample["task"], sample["input"])}
        got = render_go_template(template, ollama_messages([message]))
        assert got == render_prompt(merged.tokenizer, sample["task"], sample["input"])


# Chat templates besides the tiny Qwen3 one: ChatML, and Gemma's (system folded into the
# first user turn, a bos token written by the template, `model` as the assistant's role).
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
GEMMA = (
    "{{ bos_token }}{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}"
    "{%- set loop_messages = messages[1:] -%}{%- else -%}{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}{%- endif -%}{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)
CONVERSATIONS = [
    [{"role": "user", "content": user_message("问题类型分类", "怎么发布地图服务")}],
    [
        {"role": "system", "content": "你是数据平台助手。"},
        {"role": "user", "content": user_message("问题回答", "数据清洗流程")},
    ],
    [
        {"role": "user", "content": "第一问"},
        {"role": "assistant", "content": "第一答"},
        {"role": "user", "content": user_message("文件名称提取", "西安市地类图斑 {{ 发服务 }}")},
    ],
]


@pytest.fixture(scope="module")
def tokenizers(merged):
    """The adapter's tokenizer with its own template, ChatML and Gemma's."""
    import copy

    out = {"qwen3": merged.tokenizer}
    for name, template in (("chatml", CHATML), ("gemma", GEMMA)):
        tok = copy.deepcopy(merged.tokenizer)
        tok.add_special_tokens(
            {
                "bos_token": "<bos>",
                "additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"],
            }
        )
        tok.chat_template = template
        out[name] = tok
    return out


@pytest.mark.parametrize("name", ["qwen3", "chatml", "gemma"])
def test_thinking_off_template_and_ollama_template_render_as_training(tokenizers, name):
    tok = tokenizers[name]
    template = thinking_off_template(tok)  # raises unless it renders render_prompt's text
    turns = chat_turns(tok, template)
    go = ollama_template(turns)
    assert (turns.system is None) == (name == "gemma")
    for conversation in CONVERSATIONS:
        if turns.system is None and conversation[0]["role"] == "system":
            continue
        got = render_go_template(go, ollama_messages(conversation))
        assert got == render_chat(tok, conversation)
        forced = tok.apply_chat_template(
            conversation,
            chat_template=template,
            tokenize=False,
            add_generation_prompt=True,
            enable_thinking=True,  # what llama-server may pass: the template ignores it
        )
        assert forced == got


def test_real_go_renders_the_ollama_templates_as_ours(tokenizers, tmp_path):
    # Ollama renders a Modelfile's template with Go's text/template: the real engine, where
    # there is one (run.sh --test installs Debian's golang-go; CI requires it).
    if shutil.which("go") is None:
        if os.environ.get("QWEN3_LORA_REQUIRE_GO") == "1":
            pytest.fail("QWEN3_LORA_REQUIRE_GO=1 but there is no go on PATH", pytrace=False)
        pytest.skip("no Go toolchain to cross-check with")
    (tmp_path / "main.go").write_text(GO_PROGRAM, "utf-8")
    for name, tok in tokenizers.items():
        go = ollama_template(chat_turns(tok, thinking_off_template(tok)))
        cases = [ollama_messages(c) for c in CONVERSATIONS]
        payload = json.dumps({"Template": go, "Cases": cases}, ensure_ascii=False)
        done = subprocess.run(
            ["go", "run", "main.go"],
            input=payload,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env={
                "GOCACHE": str(tmp_path / "cache"),
                "HOME": str(tmp_path),
                "PATH": "/usr/bin:/bin",
            },
            check=True,
        )
        assert json.loads(done.stdout) == [render_go_template(go, c) for c in cases], name


def test_lora_gguf_holds_peft_matrices_under_base_tensor_names(exported, memorised_adapter):
    from safetensors.torch import load_file

    folder = exported("f32", "gguf-lora", "f32")
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [
            *("adapter.gguf", "base.gguf", "chat_template.jinja"),
            *("Modelfile", "README.md", "export_config.json"),
        ]
    )
    assert "--no-repack" not in (folder / "README.md").read_text("utf-8")  # nothing quantized
    meta = read_metadata(folder / "adapter.gguf")
    config = json.loads((memorised_adapter / "adapter_config.json").read_text())
    assert meta["general.type"] == "adapter" and meta["adapter.type"] == "lora"
    assert meta["adapter.lora.alpha"] == config["lora_alpha"]
    weights = load_file(memorised_adapter / "adapter_model.safetensors")
    n_layers = sum(k.endswith("lora_A.weight") for k in weights)
    assert len(meta["tensors"]) == 2 * n_layers
    a = weights["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
    assert meta["tensors"]["blk.0.attn_q.weight.lora_a"] == ("F32", list(a.shape[::-1]))
    modelfile = (folder / "Modelfile").read_text("utf-8")
    assert "FROM ./base.gguf\nADAPTER ./adapter.gguf\n" in modelfile


def test_adapters_llama_cpp_cannot_apply_are_refused_with_the_way_out():
    for bad in (
        {"use_dora": True},
        {"modules_to_save": ["lm_head"]},
        {"target_modules": ["embed_tokens"]},
    ):
        with pytest.raises(ExportError, match="--format gguf"):
            check_adapter_config({"target_modules": ["q_proj"], **bad})


def test_an_unsupported_architecture_names_the_supported_ones():
    class Config:
        model_type = "mistral"

    with pytest.raises(ExportError, match="gemma3_text, llama, qwen3"):
        gguf_architecture(Config())


def test_k_quants_without_llama_cpp_say_what_to_install(monkeypatch, memorised_adapter, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_llama_cpp(name, *args, **kwargs):
        if name == "llama_cpp":
            raise ImportError("no llama_cpp")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_llama_cpp)
    monkeypatch.setenv("PATH", str(tmp_path))  # no llama-quantize either
    with pytest.raises(ExportError, match=r"pip install 'qwen3-lora\[llamacpp\]'.*llama-quantize"):
        export(adapter=memorised_adapter, output=tmp_path / "out", outtype="q4_k_m")
    assert not (tmp_path / "out").exists()  # refused before loading or writing anything


def test_cli_export_and_its_errors(memorised_adapter, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["export", "--adapter", str(memorised_adapter), "--output", str(out)]
    assert main([*argv, "--outtype", "q4_0"]) == 0
    said = capsys.readouterr().out
    assert "exported qwen3 (gguf, q4_0)" in said and "model.gguf" in said
    assert not [p.name for p in out.iterdir() if p.name.startswith(".tmp-")]
    # gguf-lora takes no K-quant: one message, exit 2, no traceback
    assert main([*argv, "--format", "gguf-lora", "--outtype", "q4_k_m"]) == 2
    assert "--outtype for --format gguf-lora must be one of" in capsys.readouterr().err


def test_a_failed_write_leaves_the_previous_file(exported, monkeypatch, memorised_adapter):
    from qwen3_lora.deploy.export import writer
    from qwen3_lora.files import OutputError

    folder = exported("f16")
    before = (folder / "model.gguf").read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(writer, "write_gguf", broken)
    with pytest.raises(OutputError, match="disk full"):
        export(adapter=memorised_adapter, output=folder, outtype="f16")
    assert (folder / "model.gguf").read_bytes() == before
    assert not [p for p in folder.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_llama_and_gemma3_read_back_with_the_same_logits(tiny_arch_folder, tmp_path, kind):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tiny_arch_folder(kind)
    result = export(model=folder, output=tmp_path, outtype="f32")
    assert result.architecture == kind
    tok = AutoTokenizer.from_pretrained(folder)
    ids = prompt_batch(tok)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    # The weights from the GGUF; the config from the folder, as transformers' GGUF reader
    # drops Gemma 3's per-layer attention types.
    back = AutoModelForCausalLM.from_pretrained(
        tmp_path, gguf_file="model.gguf", dtype=torch.float32, config=model.config
    ).eval()
    with torch.no_grad():
        assert torch.allclose(back(ids).logits, model(ids).logits, atol=1e-4)


# vLLM's documented LoRA limits, from vllm-project/vllm (main): vllm/config/lora.py
# (`MaxLoRARanks`: the values --max-lora-rank takes), vllm/lora/peft_helper.py (`_validate_features`
# and `validate_legal`: no modules_to_save, no DoRA, bias "none", r <= max_lora_rank) and
# vllm/model_executor/models/qwen3.py (`packed_modules_mapping`: q/k/v -> qkv_proj,
# gate/up -> gate_up_proj, beside o_proj and down_proj).
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
VLLM_QWEN3_LORA_MODULES = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj"}
VLLM_QWEN3_LORA_MODULES |= {"down_proj"}


def vllm_problems(config: dict) -> list[str]:
    problems = []
    if config["r"] not in VLLM_MAX_LORA_RANKS:
        problems.append(f"rank {config['r']} is not a --max-lora-rank value")
    if config.get("modules_to_save"):
        problems.append("modules_to_save")
    if config.get("use_dora"):
        problems.append("DoRA")
    if config.get("bias", "none") != "none":
        problems.append("bias")
    targets = config["target_modules"]
    targets = {targets} if isinstance(targets, str) else set(targets)
    if not targets <= VLLM_QWEN3_LORA_MODULES:
        problems.append(f"target modules {sorted(targets - VLLM_QWEN3_LORA_MODULES)}")
    return problems


def test_our_adapter_config_meets_vllms_lora_limits(memorised_adapter):
    import yaml

    from qwen3_lora.training.config import TrainConfig

    saved = json.loads((memorised_adapter / "adapter_config.json").read_text())
    assert vllm_problems(saved) == []
    # what `train` writes with its defaults and with the shipped recipe
    recipe_file = Path(__file__).parent.parent / "configs" / "qwen3-0.6b-lora.yaml"
    recipe = yaml.safe_load(recipe_file.read_text("utf-8"))
    for config in (
        TrainConfig(),
        TrainConfig(**{k: recipe[k] for k in ("lora_r", "target_modules")}),
    ):
        as_peft = {"r": config.lora_r, "target_modules": list(config.target_modules)}
        assert vllm_problems(as_peft) == []
    assert vllm_problems({"r": 12, "target_modules": ["embed_tokens"], "use_dora": True}) == [
        "rank 12 is not a --max-lora-rank value",
        "DoRA",
        "target modules ['embed_tokens']",
    ]
