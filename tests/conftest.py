"""Shared fixtures: tiny Qwen3 models built locally (never downloaded) and a memorised adapter."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# Nothing in the test session may reach a hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def import_llama_cpp():
    """llama_cpp for a test module that needs it: the module is skipped where it is not
    installed, except under QWEN3_LORA_REQUIRE_LLAMACPP=1 (CI), where that fails the run. A
    build with ggml's AMX kernels fails the run with what to do: those kernels crash on
    quantized GGUFs (ggml-org/llama.cpp#20824), which would take the whole session down."""
    try:
        import llama_cpp
    except ImportError as exc:
        if os.environ.get("QWEN3_LORA_REQUIRE_LLAMACPP") == "1":
            pytest.fail(
                f"QWEN3_LORA_REQUIRE_LLAMACPP=1 but llama_cpp is missing: {exc}", pytrace=False
            )
        pytest.skip(
            "needs llama-cpp-python: pip install 'qwen3-lora[llamacpp]'", allow_module_level=True
        )
    if b"AMX_INT8 = 1" in llama_cpp.llama_print_system_info():
        pytest.fail(
            "this llama-cpp-python build has ggml's AMX kernels, which crash on quantized GGUFs "
            "(ggml-org/llama.cpp#20824): rebuild it without them (`bash run.sh --test` does so)",
            pytrace=False,
        )
    return llama_cpp


# A handful of samples covering every task, which the memorised adapter must reproduce.
MEMORISE = [
    {"task": "问题场景分类", "input": "数据清洗流程是什么？", "output": "数据平台相关问题"},
    {"task": "问题场景分类", "input": "今天中午吃什么好", "output": "无关问题"},
    {"task": "问题类型分类", "input": "帮我把西安市地类图斑发布成服务", "output": "任务处理"},
    {"task": "问题类型分类", "input": "怎么发布地图服务", "output": "问题回答"},
    {
        "task": "问题回答",
        "input": "数据清洗流程",
        "output": "先配置清洗规则，再配置清洗方案，最后启动清洗任务。",
    },
    {
        "task": "文件名称提取",
        "input": "我有一批西安市地类图斑的数据，怎么进行发服务",
        "output": "西安市地类图斑",
    },
]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer random-weight Qwen3 with tied embeddings; pad (<|endoftext|>) != eos (<|im_end|>)."""
    from qwen3_lora.models.tiny import build_tiny_folder

    return build_tiny_folder(tmp_path_factory.mktemp("tiny-qwen3"))


@pytest.fixture(scope="session")
def tiny_model_dir_pad_eos(tmp_path_factory) -> Path:
    """The same tiny model whose tokenizer pads with the end-of-turn token (pad == eos)."""
    from qwen3_lora.models.tiny import build_tiny_folder

    return build_tiny_folder(tmp_path_factory.mktemp("tiny-qwen3-pad-eos"), pad_is_eos=True)


@pytest.fixture(scope="session")
def memorise_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "memorise.jsonl"
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in MEMORISE), encoding="utf-8"
    )
    return path


def memorise_config(base: Path, out: Path, memorise_file: Path, **changes):
    """The TrainConfig that makes the tiny model reproduce every MEMORISE answer: trained and
    evaluated on those samples alone, fp32, a constant high learning rate, no dropout."""
    from qwen3_lora.training.config import TrainConfig

    options = dict(
        base_model=str(base),
        output_dir=str(out),
        data=[str(memorise_file)],
        builtin_data=False,
        eval_data=[str(memorise_file)],
        eval_each_epoch=False,
        epochs=60,
        batch_size=6,
        grad_accum=1,
        learning_rate=1e-2,
        lora_r=16,
        lora_alpha=32,
        lora_dropout=0.0,
        warmup_ratio=0.0,
        lr_scheduler="constant",
        precision="fp32",
        save_steps=1000,
        save_total_limit=1,
        report_to=["none"],
        logging_steps=10,
    )
    return TrainConfig(**(options | changes))


@pytest.fixture(scope="session")
def memorised_adapter(tmp_path_factory, tiny_model_dir, memorise_file) -> Path:
    """A LoRA adapter trained on MEMORISE until the tiny model reproduces every answer."""
    from qwen3_lora.training.train import train

    out = tmp_path_factory.mktemp("memorised")
    train(memorise_config(tiny_model_dir, out, memorise_file))
    return out


@pytest.fixture(scope="session")
def tuned(memorised_adapter):
    """A Predictor over the tiny base + the memorised adapter (fp32: tiny models are sensitive)."""
    from qwen3_lora.inference.predictor import Predictor

    return Predictor.load(adapter=str(memorised_adapter), precision="fp32")


@pytest.fixture(scope="session")
def base(tiny_model_dir):
    """A Predictor over the tiny base model alone."""
    from qwen3_lora.inference.predictor import Predictor

    return Predictor.load(str(tiny_model_dir), precision="fp32")


@pytest.fixture(scope="session")
def exported(tmp_path_factory, memorised_adapter):
    """`export` of the memorised adapter, once per (outtype, format, base_outtype): its folder."""
    from qwen3_lora.deploy.export import export

    done: dict[tuple, Path] = {}

    def get(outtype: str = "f32", format: str = "gguf", base_outtype: str | None = None) -> Path:
        key = (outtype, format, base_outtype)
        if key not in done:
            out = tmp_path_factory.mktemp(f"export-{format}-{outtype}")
            export(
                adapter=memorised_adapter,
                output=out,
                format=format,
                outtype=outtype,
                base_outtype=base_outtype,
            )
            done[key] = out
        return done[key]

    return get


@pytest.fixture(scope="session")
def tiny_arch_folder(tmp_path_factory, tiny_model_dir):
    """A 2-layer random `llama` or `gemma3_text` model with the tiny tokenizer, in a folder.

    Weights are drawn wider than the usual init so greedy decoding varies; Gemma 3's norms are
    randomised (its `1 + w` form must survive the export) and its sliding window is shorter
    than a prompt.
    """
    import torch
    from transformers import AutoTokenizer

    done: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind in done:
            return done[kind]
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

        from qwen3_lora.models.tiny import ARCHITECTURES, TINY_NAME

        tok = AutoTokenizer.from_pretrained(tiny_model_dir)
        shape = dict(
            vocab_size=len(tok),
            **ARCHITECTURES[TINY_NAME],
            bos_token_id=None,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        if kind == "llama":
            model = LlamaForCausalLM(LlamaConfig(tie_word_embeddings=True, **shape))
        else:
            config = Gemma3TextConfig(
                query_pre_attn_scalar=16,
                sliding_window=8,
                layer_types=["sliding_attention", "full_attention"],
                **shape,
            )
            model = Gemma3ForCausalLM(config)
        generator = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.ndim == 2:
                    p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
                elif kind == "gemma3" and name.endswith("norm.weight"):
                    p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
        folder = tmp_path_factory.mktemp(f"tiny-{kind}")
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        done[kind] = folder
        return folder

    return get


GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]


def _gemma_style_vocabulary() -> list[str]:
    """Gemma's layout, small: its special tokens, the 256 byte tokens, then one token per
    character of the built-in data and the prompt scaffolding (a space spelled "▁")."""
    from qwen3_lora.models.tiny import _corpus

    chars = sorted({c for text in [*_corpus(), "user\nmodel\n"] for c in text})
    return [*GEMMA_SPECIALS, *(f"<0x{b:02X}>" for b in range(256))] + [
        "▁" if c == " " else c for c in chars
    ]


@pytest.fixture(scope="session")
def tiny_gemma3_gguf(tmp_path_factory) -> Path:
    """A 2-layer random Gemma 3 as one GGUF file, standing in for Gemma-3-270M's: a SentencePiece
    vocabulary (`tokenizer.ggml.model` llama, Gemma's special tokens, byte fallback, no merges)
    that transformers reads as a `GemmaTokenizer`, and no chat template."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from qwen3_lora.deploy.export.architectures import add_hyperparameters, model_tensors
    from qwen3_lora.deploy.export.gguf_file import gguf_module, write_gguf
    from qwen3_lora.models.tiny import ARCHITECTURES, TINY_NAME

    gguf = gguf_module()
    tokens = _gemma_style_vocabulary()
    ids = {t: i for i, t in enumerate(tokens)}
    types = [
        gguf.TokenType.CONTROL
        if t in GEMMA_SPECIALS
        else gguf.TokenType.BYTE
        if t.startswith("<0x")
        else gguf.TokenType.NORMAL
        for t in tokens
    ]
    config = Gemma3TextConfig(
        vocab_size=len(tokens),
        **ARCHITECTURES[TINY_NAME],
        query_pre_attn_scalar=16,
        sliding_window=64,
        layer_types=["sliding_attention", "full_attention"],
        pad_token_id=ids["<pad>"],
        bos_token_id=ids["<bos>"],
        eos_token_id=ids["<eos>"],
    )
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(config)

    def metadata(writer) -> None:
        writer.add_name("tiny-gemma3")
        add_hyperparameters(writer, config, "gemma3")
        writer.add_tokenizer_model("llama")
        writer.add_token_list(tokens)
        writer.add_token_scores([0.0] * len(tokens))
        writer.add_token_types(types)
        writer.add_bos_token_id(ids["<bos>"])
        writer.add_eos_token_id(ids["<eos>"])
        writer.add_unk_token_id(ids["<unk>"])
        writer.add_pad_token_id(ids["<pad>"])

    path = tmp_path_factory.mktemp("tiny-gemma3") / "tiny-gemma3.gguf"
    write_gguf(path, "gemma3", metadata, model_tensors(model, "gemma3", len(tokens)), "f32")
    return path
