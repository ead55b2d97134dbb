"""End-to-end training through the CLI: files written, weights changed, metrics finite, the saved
config reproduces the run, resume matches an uninterrupted run, bad sources fail cleanly."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import TrainerCallback

from qwen3_lora.cli import main
from qwen3_lora.training.config import TrainConfig
from qwen3_lora.training.train import train

EXPECTED_FILES = {
    "adapter_config.json",
    "adapter_model.safetensors",
    "chat_template.jinja",
    "tokenizer.json",
    "tokenizer_config.json",
    "train_config.yaml",
    "metrics.jsonl",
    "progress.json",
    "README.md",
    "checkpoints",
    "logs",
}


def _progress(folder) -> dict:
    return json.loads((folder / "progress.json").read_text())


def _losses(folder) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, tiny_model_dir):
    out = tmp_path_factory.mktemp("cli") / "adapter"
    argv = [
        "train",
        "--base_model",
        str(tiny_model_dir),
        "--output-dir",
        str(out),
        "--max_length",
        "256",
        "--max-steps",
        "4",
        "--save-steps",
        "2",
        "--seed",
        "7",
    ]
    assert main(argv) == 0
    return out


def test_cli_train_writes_exactly_the_expected_files(cli_run):
    assert {p.name for p in cli_run.iterdir()} == EXPECTED_FILES
    assert sorted(p.name for p in (cli_run / "checkpoints").iterdir()) == [
        "checkpoint-2",
        "checkpoint-4",
    ]
    assert list((cli_run / "logs").glob("events.out.tfevents.*"))
    assert not list(cli_run.rglob("*.bin")) or all(
        p.name == "training_args.bin" for p in cli_run.rglob("*.bin")
    )


def test_lora_weights_changed_and_metrics_are_finite(cli_run):
    weights = load_file(cli_run / "adapter_model.safetensors")
    lora_b = [t for name, t in weights.items() if "lora_B" in name]
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b)  # B starts at zero
    losses = _losses(cli_run)
    assert [s for s, _ in losses] == [1, 2, 3, 4]
    assert all(math.isfinite(v) for _, v in losses)
    rows = [json.loads(line) for line in (cli_run / "metrics.jsonl").read_text().splitlines()]
    assert any("eval_loss" in r and math.isfinite(r["eval_loss"]) for r in rows)
    assert all(r["tokens_per_s"] > 0 for r in rows if "loss" in r)
    adapter = json.loads((cli_run / "adapter_config.json").read_text())
    assert adapter["r"] == 8 and adapter["lora_alpha"] == 32
    assert set(adapter["target_modules"]) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }


def test_saved_config_reproduces_the_run(cli_run, tmp_path):
    saved = yaml.safe_load((cli_run / "train_config.yaml").read_text())
    assert saved["max_length"] == 256 and saved["seed"] == 7 and saved["warmup_ratio"] == 0.1
    again = tmp_path / "again"
    assert (
        main(["train", "--config", str(cli_run / "train_config.yaml"), "--output-dir", str(again)])
        == 0
    )
    first, second = _losses(cli_run), _losses(again)
    assert [s for s, _ in first] == [s for s, _ in second]
    for (_, a), (_, b) in zip(first, second, strict=True):
        assert a == pytest.approx(b, rel=1e-4)
    w1 = load_file(cli_run / "adapter_model.safetensors")
    w2 = load_file(again / "adapter_model.safetensors")
    assert all(torch.allclose(w1[k], w2[k], atol=1e-5) for k in w1)


class _Interrupt(TrainerCallback):
    def __init__(self, at_step: int):
        self.at_step = at_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.global_step == self.at_step and "loss" in (logs or {}):
            raise KeyboardInterrupt


def test_resume_gives_the_same_losses_as_an_uninterrupted_run(tmp_path, tiny_model_dir):
    def config(out, resume=False):
        return TrainConfig(
            base_model=str(tiny_model_dir),
            output_dir=str(out),
            max_steps=6,
            save_steps=2,
            grad_accum=2,
            eval_each_epoch=False,
            resume=resume,
            report_to=["none"],
            seed=3,
        )

    train(config(tmp_path / "full"))
    with pytest.raises(KeyboardInterrupt):
        train(config(tmp_path / "cut"), callbacks=[_Interrupt(at_step=3)])
    # Step 3 was logged before the interruption but is past the last checkpoint (step 2).
    assert [s for s, _ in _losses(tmp_path / "cut")] == [1, 2, 3]
    # progress.json follows the optimizer steps, with the Trainer's planned total.
    cut = _progress(tmp_path / "cut")
    assert (cut["status"], cut["step"], cut["max_steps"]) == ("running", 3, 6)
    train(config(tmp_path / "cut", resume=True))
    done = _progress(tmp_path / "cut")
    assert (done["status"], done["step"], done["max_steps"]) == ("done", 6, 6)
    assert done["updated"] >= done["started"]
    full, resumed = _losses(tmp_path / "full"), _losses(tmp_path / "cut")
    assert [s for s, _ in resumed] == [1, 2, 3, 4, 5, 6]
    for (_, a), (_, b) in zip(full, resumed, strict=True):
        assert a == pytest.approx(b, rel=1e-3)


def test_cli_override_beats_config_file_and_errors_are_listed(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lora_r: 4\nlearning_rate: -1\nwarmup_ratio: 2\n")
    assert main(["train", "--config", str(cfg), "--base-model", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "learning_rate must be > 0" in err and "warmup_ratio must be in [0, 1)" in err
    cfg.write_text("lora_rank: 4\n")
    assert main(["train", "--config", str(cfg)]) == 2
    assert "unknown option(s) lora_rank" in capsys.readouterr().err


def test_missing_weights_give_a_clear_message_not_a_traceback(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    # Both at once: each is mostly a process start-up, one core's work.
    command = [sys.executable, "-m", "qwen3_lora", "train", "--output-dir", str(tmp_path / "o")]
    procs = [
        subprocess.Popen(
            [*command, "--base-model", source],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for source in ("Qwen/Qwen3-0.6B", str(tmp_path / "no-such-folder"))
    ]
    try:
        for proc in procs:
            _, stderr = proc.communicate(timeout=120)
            assert proc.returncode == 2, stderr
            assert "Traceback" not in stderr
            assert "huggingface-cli download Qwen/Qwen3-0.6B" in stderr
            assert "--base-model" in stderr
    finally:  # a timeout or a failed assertion leaves no CLI running (as subprocess.run would)
        for proc in procs:
            proc.kill()
            proc.wait()


def test_unsupported_setups_fail_with_a_clear_message(tmp_path, tiny_model_dir, capsys):
    base = ["train", "--base-model", str(tiny_model_dir), "--output-dir", str(tmp_path / "o")]
    assert main([*base, "--quantization", "4bit"]) == 2
    assert "CUDA" in capsys.readouterr().err
    assert main([*base, "--precision", "fp16"]) == 2
    assert "fp16 is unusably slow on CPU" in capsys.readouterr().err


def test_modelscope_hub_ids_go_through_snapshot_download(monkeypatch, tiny_model_dir):
    import types

    from qwen3_lora.models.source import resolve_model_source

    calls = []
    fake = types.ModuleType("modelscope")
    fake.snapshot_download = lambda name: calls.append(name) or str(tiny_model_dir)
    monkeypatch.setitem(sys.modules, "modelscope", fake)
    source = resolve_model_source("Qwen/Qwen3-0.6B", hub="modelscope")
    assert calls == ["Qwen/Qwen3-0.6B"] and source.path == str(tiny_model_dir)


def test_checkpoints_never_look_the_base_model_up_on_the_hub(tmp_path, monkeypatch, recwarn):
    # PEFT asks the hub whether the base model's vocabulary changed unless told the embeddings
    # are not saved; `tiny` (like any hub id) has no local config.json to answer it.
    import peft.utils.save_and_load as peft_saving

    def no_hub(repo_id, filename, **kwargs):
        raise AssertionError(f"looked up {filename} of {repo_id} on the hub")

    monkeypatch.setattr(peft_saving, "check_file_exists_on_hf_hub", no_hub)
    out = tmp_path / "adapter"
    config = TrainConfig(
        base_model="tiny", output_dir=str(out), max_steps=2, save_steps=1, report_to="none"
    )
    assert config.report_to == ["none"]  # one name, as TrainingArguments takes it, is a list of one
    train(config)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "checkpoint-1",
        "checkpoint-2",
    ]
    assert not [w for w in recwarn if "config file" in str(w.message)]
    saved = load_file(out / "checkpoints" / "checkpoint-2" / "adapter_model.safetensors")
    assert saved and not [k for k in saved if "embed_tokens" in k or "lm_head" in k]


@pytest.mark.parametrize("native", [True, False])
def test_bf16_asked_for_on_a_cpu_that_emulates_it_warns(monkeypatch, caplog, native):
    from qwen3_lora.models import loading

    monkeypatch.setattr(loading, "cpu_supports_bf16", lambda: native)
    with caplog.at_level("WARNING", logger=loading.__name__):
        assert loading.resolve_precision("bf16", torch.device("cpu")).name == "bf16"
        assert loading.resolve_precision("auto", torch.device("cpu")).name == (
            "bf16" if native else "fp32"
        )
    assert ("emulated" in caplog.text) is not native
