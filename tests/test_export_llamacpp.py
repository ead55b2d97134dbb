"""The exported GGUFs in a real llama.cpp (llama-cpp-python): it loads them, tokenises and
renders the chat template as training did, answers every memorised sample as our Predictor
does, and the LoRA GGUF on the base GGUF answers as the merged GGUF.

Skipped when llama_cpp is not importable (pip install 'qwen3-lora[llamacpp]'), unless
QWEN3_LORA_REQUIRE_LLAMACPP=1 (CI), where a missing llama_cpp fails the run (`import_llama_cpp`).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import MEMORISE, import_llama_cpp

from qwen3_lora.inference.predictor import prompt_ids
from qwen3_lora.prompt.render import render_prompt, user_message

# ggml's OpenMP threads spin while idle by default, which starves a shared CPU.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
llama_cpp = import_llama_cpp()
MAX_TOKENS = 40


def load(path, lora=None, logits_all=False):
    kwargs = {"lora_path": str(lora)} if lora else {}
    return llama_cpp.Llama(
        model_path=str(path),
        n_ctx=512,
        n_threads=2,
        n_threads_batch=2,
        logits_all=logits_all,
        verbose=False,
        seed=0,
        **kwargs,
    )


def messages(sample) -> list[dict]:
    return [{"role": "user", "content": user_message(sample["task"], sample["input"])}]


def chat_answer(llm, sample) -> str:
    """The runtime's own path: its chat template handling, temperature 0, stop at end of turn."""
    reply = llm.create_chat_completion(
        messages=messages(sample), temperature=0.0, top_k=1, max_tokens=MAX_TOKENS
    )
    return reply["choices"][0]["message"]["content"].strip()


def greedy_ids(llm, ids: list[int]) -> list[int]:
    out = []
    for token in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
        out.append(token)
        if token == llm.token_eos() or len(out) >= MAX_TOKENS:
            break
    return out


@pytest.fixture(scope="module")
def f16_llm(exported):
    llm = load(exported("f16") / "model.gguf")
    yield llm
    llm.close()


def test_llama_cpp_loads_our_gguf_and_tokenises_as_training(f16_llm, tuned):
    tok = tuned.tokenizer
    assert f16_llm.token_eos() == tok.convert_tokens_to_ids("<|im_end|>")
    assert f16_llm.metadata["general.architecture"] == "qwen3"
    for sample in MEMORISE:
        text = render_prompt(tok, sample["task"], sample["input"])
        ids = f16_llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        assert ids == prompt_ids(tok, sample["task"], sample["input"])


def test_its_chat_template_rendering_gives_render_prompts_ids(f16_llm, tuned):
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    llm = f16_llm
    formatter = Jinja2ChatFormatter(
        template=llm.metadata["tokenizer.chat_template"],
        eos_token=llm._model.token_get_text(llm.token_eos()),
        bos_token=llm._model.token_get_text(llm.token_bos()),
    )
    for sample in MEMORISE:
        want = prompt_ids(tuned.tokenizer, sample["task"], sample["input"])
        for extra in ({}, {"enable_thinking": True}):
            prompt = formatter(messages=messages(sample), **extra).prompt
            assert llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True) == want


@pytest.mark.parametrize("outtype", ["f16", "q8_0"])
def test_greedy_answers_equal_our_predictors_for_every_sample(exported, tuned, outtype):
    llm = load(exported(outtype) / "model.gguf")
    try:
        for sample in MEMORISE:
            ours = tuned.predict(sample["task"], [sample["input"]])[0].output
            assert chat_answer(llm, sample) == ours, sample
    finally:
        llm.close()


def test_lora_gguf_on_the_base_gguf_answers_as_the_merged_gguf(exported, tuned):
    lora = exported("f32", "gguf-lora", "f32")
    merged = load(exported("f32") / "model.gguf", logits_all=True)
    on_base = load(lora / "base.gguf", lora=lora / "adapter.gguf", logits_all=True)
    try:
        for sample in MEMORISE:
            ids = prompt_ids(tuned.tokenizer, sample["task"], sample["input"])
            assert greedy_ids(on_base, ids) == greedy_ids(merged, ids)
            scores = []
            for llm in (on_base, merged):
                llm.reset()
                llm.eval(ids)
                scores.append(np.array(llm.scores[: len(ids)]))
            assert np.abs(scores[0] - scores[1]).max() < 0.01
    finally:
        merged.close()
        on_base.close()
    base_alone = load(lora / "base.gguf")
    try:  # the adapter matters: without it the answers differ
        answers = [chat_answer(base_alone, sample) for sample in MEMORISE]
        assert answers != [s["output"] for s in MEMORISE]
    finally:
        base_alone.close()


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_llama_and_gemma3_logits_in_llama_cpp_equal_transformers(tiny_arch_folder, tmp_path, kind):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qwen3_lora.deploy.export import export

    folder = tiny_arch_folder(kind)
    export(model=folder, output=tmp_path, outtype="f32")
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    # a prompt longer than Gemma's sliding window, so the window is exercised
    ids = prompt_ids(tok, MEMORISE[4]["task"], MEMORISE[4]["input"])
    assert len(ids) > model.config.get_text_config().__dict__.get("sliding_window", 0)
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits[0].numpy()
    llm = load(tmp_path / "model.gguf", logits_all=True)
    try:
        llm.eval(ids)
        got = np.array(llm.scores[: len(ids)])
    finally:
        llm.close()
    # llama.cpp keeps its KV cache in f16: f32 weights still differ in the last digits
    assert np.abs(got - want).max() < 0.05
    assert (got.argmax(-1) == want.argmax(-1)).all()


def test_k_quant_export_through_llama_cpp(memorised_adapter, tmp_path, tuned):
    from qwen3_lora.deploy.export import export
    from qwen3_lora.deploy.export.gguf_file import read_metadata

    result = export(adapter=memorised_adapter, output=tmp_path, outtype="q4_k_m")
    assert result.record["model.gguf"]["quantizer"] == "llama-cpp-python"
    meta = read_metadata(tmp_path / "model.gguf")
    assert meta["general.file_type"] == int(llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M)
    assert meta["tokenizer.chat_template"].startswith("{%- set enable_thinking = false -%}")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    llm = load(tmp_path / "model.gguf")
    try:
        ids = prompt_ids(tuned.tokenizer, MEMORISE[0]["task"], MEMORISE[0]["input"])
        assert greedy_ids(llm, ids)  # loads and generates; tiny rows fall back to other types
    finally:
        llm.close()


TEXTS = [
    "把 2024年 嘉兴市遥感影像（WMTS）切片，   3 个 空格 and English words, it's OK?",
    "多行\n输入\n\n  缩进   \t制表符 结尾空格  ",
    "数字 1234567 3.14 ０１２ 全角！？ 😀🚀 emoji",
]


def test_qwen3_vocabulary_tokenises_as_transformers_in_llama_cpp(tmp_path):
    """Qwen3's real vocabulary (rows padded to Qwen3-0.6B's 151,936): llama.cpp splits with
    the qwen2 pre-tokenizer exactly as transformers does."""
    from qwen3_lora.deploy.export import export
    from qwen3_lora.models.qwen_tokenizer import QWEN3_EMBEDDING_ROWS, load_qwen3_tokenizer
    from qwen3_lora.models.tiny import build_model

    tok = load_qwen3_tokenizer()
    model = build_model(tok, "tiny")
    model.resize_token_embeddings(QWEN3_EMBEDDING_ROWS, mean_resizing=False)
    model.save_pretrained(tmp_path / "hf")
    tok.save_pretrained(tmp_path / "hf")
    export(model=tmp_path / "hf", output=tmp_path / "out", outtype="q8_0")
    llm = load(tmp_path / "out" / "model.gguf")
    try:
        assert llm.metadata["tokenizer.ggml.pre"] == "qwen2"
        assert llm.n_vocab() == QWEN3_EMBEDDING_ROWS
        for text in [*TEXTS, render_prompt(tok, "问题类型分类", TEXTS[0])]:
            want = tok(text, add_special_tokens=False)["input_ids"]
            assert llm.tokenize(text.encode("utf-8"), add_bos=False, special=True) == want
    finally:
        llm.close()


def test_a_gguf_base_exports_again_with_its_tokenizer_copied(
    tiny_arch_folder, tmp_path, monkeypatch
):
    """A base loaded from a GGUF whose tokenizer the exporter does not rebuild (SentencePiece,
    as Gemma's) keeps the source GGUF's tokenizer keys: here a tiny llama exported once, read
    back from its GGUF, and exported again with the copy forced."""
    from qwen3_lora.deploy.export import export, writer

    export(model=tiny_arch_folder("llama"), output=tmp_path / "first", outtype="f32")
    source = tmp_path / "first" / "model.gguf"
    monkeypatch.setattr(writer, "is_byte_level_bpe", lambda tokenizer: False)
    copied = []
    real_copy = writer.copy_tokenizer
    monkeypatch.setattr(writer, "copy_tokenizer", lambda *a: copied.append(a[1]) or real_copy(*a))
    result = export(model=source, output=tmp_path / "again", outtype="f32")
    assert result.architecture == "llama" and copied == [source]
    first, again = (
        load(source, logits_all=True),
        load(tmp_path / "again" / "model.gguf", logits_all=True),
    )
    try:
        assert (
            again.metadata["tokenizer.chat_template"] == first.metadata["tokenizer.chat_template"]
        )
        for text in TEXTS:
            ids = first.tokenize(text.encode("utf-8"), add_bos=False, special=True)
            assert again.tokenize(text.encode("utf-8"), add_bos=False, special=True) == ids
        for llm in (first, again):
            llm.eval(ids)
        n = len(ids)
        assert np.abs(np.array(first.scores[:n]) - np.array(again.scores[:n])).max() < 1e-3
    finally:
        first.close()
        again.close()


def test_a_llama_cpp_build_with_ggmls_amx_kernels_fails_the_run_saying_what_to_do(monkeypatch):
    info = llama_cpp.llama_print_system_info()
    monkeypatch.setattr(llama_cpp, "llama_print_system_info", lambda: info + b"AMX_INT8 = 1 | ")
    with pytest.raises(pytest.fail.Exception, match=r"llama.cpp#20824.*run.sh --test"):
        import_llama_cpp()
