"""Damaged files and wrong arguments end in one `error: ...` message naming what, where and what
to do, with exit code 2; never a traceback (an exception escaping `main` fails these tests)."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest

from qwen3_lora.cli import main

PREDICT = ["predict", "--task", "问题场景分类", "你好", "--precision", "fp32"]


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2, argv
    err = capsys.readouterr().err  # progress bars may come first
    assert err.count("error: ") == 1 and "Traceback" not in err, err
    return err[err.index("error: ") :]


def _copy(source: Path, folder: Path) -> Path:
    shutil.copytree(source, folder)
    return folder


def _cut(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a save or copy cut off


@pytest.fixture(scope="module")
def narrower_base(tmp_path_factory, tiny_model_dir) -> Path:
    """A base model of another size (hidden 32, not 64) with the same tokenizer."""
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    folder = tmp_path_factory.mktemp("narrow")
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = Qwen3Config(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    Qwen3ForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_truncated_adapter_in_predict_merge_and_serve(capsys, tmp_path, memorised_adapter):
    adapter = _copy(memorised_adapter, tmp_path / "truncated")
    _cut(adapter / "adapter_model.safetensors")
    for argv in (
        [*PREDICT, "--adapter", str(adapter)],
        ["merge", "--adapter", str(adapter), "--output", str(tmp_path / "merged")],
        ["serve", "--adapter", str(adapter), "--precision", "fp32"],
    ):
        err = _error(capsys, argv)
        assert "adapter_model.safetensors is damaged or incomplete" in err, argv
        assert "--resume" in err
    assert not (tmp_path / "merged").exists()


def test_adapter_folder_problems(capsys, tmp_path, memorised_adapter, tiny_model_dir):
    no_weights = _copy(memorised_adapter, tmp_path / "no-weights")
    (no_weights / "adapter_model.safetensors").unlink()
    err = _error(capsys, [*PREDICT, "--adapter", str(no_weights)])
    assert "holds no adapter_model.safetensors" in err

    bad_config = _copy(memorised_adapter, tmp_path / "bad-config")
    (bad_config / "adapter_config.json").write_text("{oops")
    base = ["--base-model", str(tiny_model_dir)]  # the base is known: the config is still read
    err = _error(capsys, [*PREDICT, "--adapter", str(bad_config), *base])
    assert "cannot read the adapter config" in err and "damaged" in err

    bad_tokenizer = _copy(memorised_adapter, tmp_path / "bad-tokenizer")
    _cut(bad_tokenizer / "tokenizer.json")
    err = _error(capsys, [*PREDICT, "--adapter", str(bad_tokenizer)])
    assert f"cannot load the tokenizer saved in {bad_tokenizer}" in err


def test_adapter_on_a_base_of_another_size(
    capsys, memorised_adapter, narrower_base, tiny_model_dir
):
    argv = [*PREDICT, "--adapter", str(memorised_adapter), "--base-model", str(narrower_base)]
    err = _error(capsys, argv)
    assert f"does not fit the base model {narrower_base}" in err
    assert "LoRA weight shape(s) differ, e.g. base_model.model." in err
    assert f"It was trained on {tiny_model_dir}: pass that base with --base-model" in err
    assert err.count("size mismatch") == 0 and len(err.splitlines()) == 2


def test_damaged_base_model_files(capsys, tmp_path, tiny_model_dir):
    broken_config = _copy(tiny_model_dir, tmp_path / "broken-config")
    (broken_config / "config.json").write_text("{not json")
    err = _error(capsys, [*PREDICT, "--base-model", str(broken_config)])
    assert f"cannot load the model folder {broken_config}" in err and "look damaged" in err
    assert "fetched from the hub" not in err and "huggingface-cli download" not in err

    truncated = _copy(tiny_model_dir, tmp_path / "truncated-weights")
    _cut(truncated / "model.safetensors")
    err = _error(capsys, [*PREDICT, "--base-model", str(truncated)])
    assert "model.safetensors is damaged or incomplete" in err


def test_train_argument_errors(capsys, tmp_path, tiny_model_dir):
    train = ["train", "--base-model", str(tiny_model_dir)]
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    err = _error(capsys, [*train, "--output-dir", str(a_file)])
    assert "is a file, not a folder" in err
    err = _error(capsys, [*train, "--output-dir", str(a_file / "out")])
    assert f"cannot write {a_file / 'out'}" in err

    out = ["--output-dir", str(tmp_path / "out")]
    for name, text in (("empty.jsonl", ""), ("blank.jsonl", "\n  \n")):
        (tmp_path / name).write_text(text)
        err = _error(capsys, [*train, *out, "--data", str(tmp_path / name), "--no-builtin-data"])
        assert f"no training records in {tmp_path / name}" in err
    err = _error(capsys, [*train, *out, "--data", str(tmp_path)])
    assert "is a folder" in err and "file not found" not in err


def test_a_fresh_run_into_an_earlier_runs_checkpoints_is_refused(capsys, tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    (out / "checkpoints" / "checkpoint-4").mkdir(parents=True)
    err = _error(capsys, ["train", "--base-model", str(tiny_model_dir), "--output-dir", str(out)])
    assert "holds checkpoints of an earlier run (checkpoint-4): pass --resume" in err
    assert "choose a new --output-dir" in err
    assert (out / "checkpoints" / "checkpoint-4").is_dir()  # nothing moved or deleted


def test_config_file_problems_are_reported_together(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lora_rank: 4\nlearning_rate: fast\nlora_r: -1\n")
    err = _error(capsys, ["train", "--config", str(cfg)])
    assert f"unknown option(s) lora_rank in {cfg}" in err
    assert "learning_rate must be float, got 'fast'" in err
    assert "lora_r must be > 0, got -1" in err


def test_outputs_that_cannot_be_written(capsys, tmp_path, memorised_adapter):
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    adapter = ["--adapter", str(memorised_adapter)]
    err = _error(capsys, ["merge", *adapter, "--output", str(a_file)])
    assert f"--output {a_file} is a file" in err
    err = _error(capsys, ["merge", *adapter, "--output", str(a_file / "merged")])
    assert f"cannot write {a_file / 'merged'}: {a_file} is a file, not a folder" in err
    err = _error(capsys, [*PREDICT, *adapter, "--output-file", str(a_file / "out.jsonl")])
    assert f"cannot write {a_file / 'out.jsonl'}: {a_file} is a file, not a folder" in err
    err = _error(capsys, [*PREDICT, *adapter, "--output-file", str(tmp_path)])
    assert "is a folder; name a file" in err
    err = _error(capsys, ["eval", *adapter, "--precision", "fp32", "--output-dir", str(a_file)])
    assert f"--output-dir {a_file} is a file" in err


def test_loading_an_adapter_warns_nothing_about_peft_internals(memorised_adapter):
    from qwen3_lora.inference.predictor import Predictor

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Predictor.load(adapter=str(memorised_adapter), precision="fp32")
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]
