"""Crash safety: writes replace files whole (`qwen3_lora.files`), `--resume` skips checkpoints
whose save was cut off and tolerates a half-written metrics line, and a training killed with
SIGKILL again and again (inside checkpoint saves, inside the final save, at a random moment)
ends, after `--resume`, with the adapter an uninterrupted run writes.

The random moment is drawn from a seed the test prints on failure; QWEN3_LORA_KILL_SEED=N
replays it."""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.forkserver
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from qwen3_lora.cli import main
from qwen3_lora.data.records import load_builtin
from qwen3_lora.files import (
    TEMP_PREFIX,
    atomic_write_text,
    remove_leftovers,
    staged_files,
    staged_folder,
)
from qwen3_lora.models.adapter import quiet_peft_wrapping
from qwen3_lora.training.checkpoints import (
    COMPLETE_MARKER,
    last_complete_checkpoint,
    trim_metrics,
)
from qwen3_lora.training.config import TrainConfig
from qwen3_lora.training.speed.dropout import SEEDS_FILE, use_hash_dropout
from qwen3_lora.training.train import train


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _cut_and_die(path) -> None:
    # The file exists but holds only its first half: the process died while writing it.
    os.truncate(path, os.path.getsize(path) // 2)
    _die()


def _arm(plan: str) -> None:
    """Make this process die as `plan` says: `kind:argument`."""
    kind, _, arg = plan.partition(":")
    if kind == "timer":  # a random moment: loading, a training step, a save
        timer = threading.Timer(float(arg), _die)
        timer.daemon = True  # a run that ends first is not waited for
        timer.start()
    elif kind == "torch.save":  # inside a checkpoint: optimizer.pt, scheduler.pt, rng_state.pth
        real_save = torch.save

        def save(obj, f, *a, **k):
            real_save(obj, f, *a, **k)
            if str(f).endswith(arg):
                _cut_and_die(f)

        torch.save = save
    elif kind == "trainer_state":  # a checkpoint's last file, trainer_state.json
        from transformers.trainer_callback import TrainerState

        real_json = TrainerState.save_to_json

        def save_to_json(self, path):
            real_json(self, path)
            if path.endswith(arg):
                _cut_and_die(path)

        TrainerState.save_to_json = save_to_json
    elif kind == "adapter":  # the final adapter_model.safetensors, outside checkpoints
        import peft.peft_model as pm

        real_file = pm.safe_save_file

        def safe_save_file(tensors, filename, *a, **k):
            real_file(tensors, filename, *a, **k)
            if "checkpoint-" not in str(filename):
                _cut_and_die(filename)

        pm.safe_save_file = safe_save_file


def _killed_run(plan: str, argv: list[str], log: str) -> None:
    """A child process: its output goes to `log`; it arms `plan`, then runs the CLI."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    _arm(plan)
    sys.exit(main(argv))


def _forkserver():
    # Children fork from one server that imported torch, transformers and PEFT once: a fresh
    # interpreter per killed run spent most of this test's time importing them.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["qwen3_lora.cli", "qwen3_lora.training.train", __name__])
    return ctx


STEPS = 6


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    rows: dict[str, list] = {}
    for r in load_builtin("train"):
        group = rows.setdefault(r.task, [])
        if len(group) < 6:
            group.append({"task": r.task, "input": r.input, "output": r.output})
    path = tmp_path_factory.mktemp("crash") / "small.jsonl"
    path.write_text(
        "".join(json.dumps(x, ensure_ascii=False) + "\n" for g in rows.values() for x in g),
        encoding="utf-8",
    )
    return path


def _options(base: Path, data: Path, out: Path) -> dict:
    return dict(
        base_model=str(base),
        output_dir=str(out),
        data=[str(data)],
        builtin_data=False,
        eval_each_epoch=False,
        max_steps=STEPS,
        save_steps=1,  # a checkpoint after every step: many saves to be killed in
        save_total_limit=2,
        batch_size=4,
        grad_accum=2,
        lora_dropout=0.0,
        precision="fp32",
        torch_compile="off",
        report_to=["none"],
        seed=11,
    )


def _argv(options: dict) -> list[str]:
    argv = ["train", "--resume"]
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv


def _run_until_killed(ctx, options: dict, plan: str, log: Path) -> int:
    proc = ctx.Process(target=_killed_run, args=(plan, _argv(options), str(log)))
    proc.start()
    proc.join(300)
    if proc.exitcode is None:
        proc.kill()
    output = log.read_text("utf-8", errors="replace")
    assert proc.exitcode is not None and "Traceback" not in output, (plan, output[-3000:])
    return proc.exitcode


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model_dir, small_data) -> Path:
    """The run's folder when nothing kills it, every step's checkpoint kept."""
    full = tmp_path_factory.mktemp("uninterrupted")
    train(TrainConfig(**{**_options(tiny_model_dir, small_data, full), "save_total_limit": None}))
    return full


def _logged_steps(out: Path) -> list[int]:
    """The optimizer steps whose loss metrics.jsonl holds, in order."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if "loss" in r]


def _max_diff(got: dict, expected: dict) -> float:
    assert got.keys() == expected.keys()
    return max((got[k] - expected[k]).abs().max().item() for k in got)


def test_resume_inside_a_later_epoch_gives_the_uninterrupted_adapter(
    tmp_path, tiny_model_dir, small_data, uninterrupted
):
    # Three steps an epoch: checkpoint-4 is one step into the second. Resumed there, the run
    # must draw the second epoch's order as the uninterrupted run did, before the checkpoint's
    # RNG state is restored. fp32 on one machine repeats bit for bit.
    out = tmp_path / "cut"
    shutil.copytree(
        uninterrupted / "checkpoints" / "checkpoint-4", out / "checkpoints" / "checkpoint-4"
    )
    train(TrainConfig(**{**_options(tiny_model_dir, small_data, out), "resume": True}))
    got = load_file(out / "adapter_model.safetensors")
    assert _max_diff(got, load_file(uninterrupted / "adapter_model.safetensors")) == 0.0
    assert _logged_steps(out) == [5, 6]


def test_resume_draws_the_hash_dropout_masks_of_the_uninterrupted_run(
    tmp_path, tiny_model_dir, small_data, monkeypatch, caplog
):
    # Compiled layers' dropout (`HashDropout`) draws its masks from per-layer seeds, not from
    # torch's generator, whose state the checkpoint keeps: the checkpoint must keep the seeds.
    # HashDropout runs eagerly too, the same masks without the compile.
    monkeypatch.setattr("qwen3_lora.training.speed.use_packed_bits_dropout", use_hash_dropout)
    options = {**_options(tiny_model_dir, small_data, tmp_path), "lora_dropout": 0.3}

    def run(name: str, resume_at: int | None = None, keep_seeds: bool = True) -> dict:
        out = tmp_path / name
        if resume_at is not None:
            checkpoint = f"checkpoints/checkpoint-{resume_at}"
            shutil.copytree(tmp_path / "full" / checkpoint, out / checkpoint)
            if not keep_seeds:  # a checkpoint from before the seeds were kept
                (out / checkpoint / SEEDS_FILE).unlink()
                marker = out / checkpoint / COMPLETE_MARKER
                listed = json.loads(marker.read_text())
                del listed["files"][SEEDS_FILE]
                marker.write_text(json.dumps(listed))
        train(
            TrainConfig(
                **{**options, "output_dir": str(out), "save_total_limit": None},
                resume=resume_at is not None,
            )
        )
        return load_file(out / "adapter_model.safetensors")

    expected = run("full")
    assert (tmp_path / "full" / "checkpoints" / "checkpoint-3" / SEEDS_FILE).is_file()
    assert _max_diff(run("resumed", resume_at=3), expected) == 0.0
    # Without the seeds the run goes on with other masks (and says so): the check can fail.
    with caplog.at_level("WARNING", logger="qwen3_lora.training.speed.dropout"):
        other = run("seedless", resume_at=3, keep_seeds=False)
    assert _max_diff(other, expected) > 0
    assert "holds no dropout seeds" in caplog.text


def test_sigkill_at_any_moment_then_resume_gives_the_uninterrupted_adapter(
    tmp_path, tiny_model_dir, small_data, uninterrupted
):
    ctx = _forkserver()
    multiprocessing.forkserver.ensure_running()
    expected = load_file(uninterrupted / "adapter_model.safetensors")

    out = tmp_path / "cut"
    options = _options(tiny_model_dir, small_data, out)
    checkpoints = out / "checkpoints"
    # Not the module `random`: training seeds it (set_seed), and every run drew the same moment.
    seed = int(os.environ.get("QWEN3_LORA_KILL_SEED", random.SystemRandom().randrange(10**6)))
    plans = {
        # checkpoint-1: adapter written, optimizer.pt half
        "torch.save:optimizer.pt": lambda: (
            not (checkpoints / "checkpoint-1" / COMPLETE_MARKER).exists()
        ),
        # checkpoint-3: every file but the last, trainer_state.json, whole
        "trainer_state:checkpoint-3/trainer_state.json": lambda: (
            (checkpoints / "checkpoint-2" / COMPLETE_MARKER).exists()
            and not (checkpoints / "checkpoint-3" / COMPLETE_MARKER).exists()
        ),
        f"timer:{random.Random(seed).uniform(0.0, 6.0):.2f}": None,  # anywhere, or not at all
        # training done, the final adapter_model.safetensors half written
        "adapter": lambda: list(out.glob(f"{TEMP_PREFIX}stage*")),
    }
    codes = []
    for i, (plan, killed_there) in enumerate(plans.items()):
        codes.append(_run_until_killed(ctx, options, plan, tmp_path / f"run-{i}.log"))
        if killed_there is not None:
            assert codes[-1] == -signal.SIGKILL and killed_there(), (plan, codes)
    # A kill while appending a metrics line leaves half a line; resume must cope.
    with (out / "metrics.jsonl").open("a", encoding="utf-8") as fh:
        fh.write('{"step": 9, "lo')

    train(TrainConfig(**{**options, "resume": True}))  # to the end, uninterrupted
    worst = _max_diff(load_file(out / "adapter_model.safetensors"), expected)
    # Bit for bit, as an uninterrupted rerun is: one optimizer step moves a weight by up to the
    # learning rate, so a tolerance would pass a resume that trained on the wrong samples.
    assert worst == 0.0, f"seed {seed}, exit codes {codes}: max |diff| {worst}"
    assert _logged_steps(out) == list(range(1, STEPS + 1)), seed
    assert not list(out.rglob(f"{TEMP_PREFIX}*")), "leftover temporary files"
    for checkpoint in checkpoints.iterdir():
        assert (checkpoint / COMPLETE_MARKER).is_file(), checkpoint


def _checkpoint(folder: Path, step: int, marker: bool = True) -> Path:
    from safetensors.torch import save_file

    ckpt = folder / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    save_file({"w": torch.zeros(8)}, str(ckpt / "adapter_model.safetensors"))
    torch.save({"state": {}}, ckpt / "optimizer.pt")
    torch.save({"last_epoch": step}, ckpt / "scheduler.pt")
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if marker:
        files = {p.name: p.stat().st_size for p in ckpt.iterdir()}
        (ckpt / COMPLETE_MARKER).write_text(json.dumps({"step": step, "files": files}))
    return ckpt


def _cut(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def test_resume_skips_a_checkpoint_cut_off_mid_save(tmp_path):
    folder = tmp_path / "checkpoints"
    _checkpoint(folder, 2)
    four = _checkpoint(folder, 4)
    assert last_complete_checkpoint(folder) == four
    # Killed while trainer_state.json was written: the file exists, but is cut off.
    (four / "trainer_state.json").write_text('{"global_st')
    assert last_complete_checkpoint(folder) == folder / "checkpoint-2"
    # A save that died before its marker; its files may all look whole.
    _checkpoint(folder, 6, marker=False)
    assert last_complete_checkpoint(folder) == folder / "checkpoint-2"
    (folder / "checkpoint-2" / "scheduler.pt").write_bytes(b"")  # size no longer as marked
    assert last_complete_checkpoint(folder) is None


def test_resume_checks_the_files_of_checkpoints_from_before_markers(tmp_path):
    folder = tmp_path / "checkpoints"
    _checkpoint(folder, 2, marker=False)
    four = _checkpoint(folder, 4, marker=False)
    assert last_complete_checkpoint(folder) == four
    _cut(four / "optimizer.pt")  # a zip archive without its directory
    assert last_complete_checkpoint(folder) == folder / "checkpoint-2"
    _cut(folder / "checkpoint-2" / "adapter_model.safetensors")
    assert last_complete_checkpoint(folder) is None


def test_trim_metrics_drops_a_half_written_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    trim_metrics(path, 2)
    assert path.read_text() == '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n'


def test_a_killed_write_leaves_the_previous_file_whole(tmp_path):
    target = tmp_path / "train_config.yaml"
    atomic_write_text(target, "version: 1\n")
    child = textwrap.dedent(
        f"""
        import os, signal
        from qwen3_lora import files
        # Die after the new content is written but before it is renamed into place.
        os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)
        files.atomic_write_text({str(target)!r}, "version: 2\\n" * 100000)
        """
    )
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert target.read_text() == "version: 1\n"
    leftovers = list(tmp_path.glob(f"{TEMP_PREFIX}*"))
    assert len(leftovers) == 1  # the dead write's temporary file, hidden
    remove_leftovers(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["train_config.yaml"]


def test_an_interrupted_adapter_save_keeps_the_previous_adapter(
    tmp_path, monkeypatch, tiny_model_dir
):
    import peft.peft_model as pm
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    with quiet_peft_wrapping():
        model = get_peft_model(
            AutoModelForCausalLM.from_pretrained(tiny_model_dir),
            LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False),
        )
    out = tmp_path / "adapter"
    with staged_files(out) as stage:
        model.save_pretrained(stage)
    before = load_file(out / "adapter_model.safetensors")
    real = pm.safe_save_file

    def half_then_interrupted(tensors, filename, *a, **k):
        real(tensors, filename, *a, **k)
        os.truncate(filename, os.path.getsize(filename) // 2)
        raise KeyboardInterrupt

    monkeypatch.setattr(pm, "safe_save_file", half_then_interrupted)
    for p in model.parameters():
        p.data.add_(1.0)
    with pytest.raises(KeyboardInterrupt), staged_files(out) as stage:
        model.save_pretrained(stage)
    after = load_file(out / "adapter_model.safetensors")  # opens: not the half-written one
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not list(out.glob(f"{TEMP_PREFIX}*"))


def test_an_interrupted_folder_write_leaves_no_folder(tmp_path):
    merged = tmp_path / "merged"
    with pytest.raises(KeyboardInterrupt), staged_folder(merged) as stage:
        (stage / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with staged_folder(merged) as stage:
        (stage / "config.json").write_text("{}")
    assert [p.name for p in tmp_path.iterdir()] == ["merged"]
    assert [p.name for p in merged.iterdir()] == ["config.json"]
