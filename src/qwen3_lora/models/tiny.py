"""Build Qwen3 models with random weights and a locally trained tokenizer: no download.

`tiny` is a 2-layer model for tests and the offline smoke run; `qwen3-0.6b-shape` has the real
Qwen3-0.6B architecture (596M parameters) for benchmarks.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..data.records import builtin_files
from ..files import cache_dir

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
TINY_NAME = "tiny"

ARCHITECTURES = {
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=2048,
    ),
    # The published Qwen3-0.6B config (the vocabulary size is the tokenizer's).
    "qwen3-0.6b-shape": dict(
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=40960,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
    ),
}


def chat_template() -> str:
    """The tiny tokenizer's chat template: the built-in `qwen3`."""
    from ..prompt.chat_templates import builtin_template

    return builtin_template("qwen3")


def _corpus() -> list[str]:
    """Text the tiny BPE is trained on: the built-in data plus the prompt scaffolding."""
    texts = ["任务: 问题场景分类\n输入: ", "<think>\n\n</think>\n\n", "user\n", "assistant\n"]
    for split in ("train", "eval"):
        for path in builtin_files(split):
            for line in path.read_text("utf-8").splitlines():
                if line.strip():
                    obj = json.loads(line)
                    texts.append(f"任务: {obj['task']}\n输入: {obj['input']}\n{obj['output']}")
    return texts


def build_tokenizer(vocab_size: int = 2048, pad_is_eos: bool = False, with_template: bool = True):
    """A byte-level BPE tokenizer with Qwen3's special tokens and (unless `with_template` is
    false, as for a base model that ships none) a Qwen3-style chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|im_end|>" if pad_is_eos else "<|endoftext|>",
        chat_template=chat_template() if with_template else None,
    )


def build_model(tokenizer, arch: str = "tiny", seed: int = 0, dtype=torch.float32):
    """A randomly initialised Qwen3ForCausalLM of the named architecture."""
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=eot,
        bos_token_id=None,
        **ARCHITECTURES[arch],
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config).to(dtype)
    model.generation_config = GenerationConfig(
        eos_token_id=[eot, tokenizer.convert_tokens_to_ids("<|endoftext|>")],
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    return model


def build_tiny_folder(
    folder: str | Path, seed: int = 0, pad_is_eos: bool = False, with_template: bool = True
) -> Path:
    """Write a tiny Qwen3 (safetensors) and its tokenizer to `folder`; return the folder."""
    folder = Path(folder)
    tokenizer = build_tokenizer(pad_is_eos=pad_is_eos, with_template=with_template)
    model = build_model(tokenizer, "tiny", seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_cache_folder() -> Path:
    """Where `--base-model tiny` is built once and reused."""
    return cache_dir() / "tiny-qwen3"


def ensure_tiny_folder() -> Path:
    folder = tiny_cache_folder()
    if not (folder / "model.safetensors").exists():
        build_tiny_folder(folder)
    return folder
