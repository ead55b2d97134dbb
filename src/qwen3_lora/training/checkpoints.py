"""Resuming: which checkpoint of a run is complete, and the metrics logged after it.

A checkpoint counts as complete once `CheckpointMarker` has written `checkpoint_complete.json`
into it, after every process finished its part of the save and the files are on disk. The
Trainer writes checkpoint files in place, so a kill during a save leaves a folder that looks
complete but holds a truncated file; its marker is missing, and `--resume` takes an older one.
"""

from __future__ import annotations

import json
import logging
import re
import zipfile
from pathlib import Path

import torch
from transformers import TrainerCallback

from ..files import atomic_write_text, fsync_tree
from ..models.loading import damaged_safetensors

CHECKPOINT_DIR = "checkpoints"
COMPLETE_MARKER = "checkpoint_complete.json"
TRAINER_STATE = "trainer_state.json"
log = logging.getLogger(__name__)


class CheckpointMarker(TrainerCallback):
    """After the Trainer saved checkpoint-N, mark it complete: wait until every process wrote its
    files (each writes its own rng state), fsync them, and list them with their sizes."""

    def on_save(self, args, state, control, **kwargs):
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()  # every process has written its rng state
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            fsync_tree(folder)
            files = {
                str(p.relative_to(folder)): p.stat().st_size
                for p in sorted(folder.rglob("*"))
                if p.is_file() and p.name != COMPLETE_MARKER
            }
            marker = {"step": state.global_step, "files": files}
            atomic_write_text(folder / COMPLETE_MARKER, json.dumps(marker, indent=1) + "\n")


def checkpoints_in(folder: Path) -> list[Path]:
    """The checkpoint-N folders in `folder`, lowest step first."""
    found = []
    for path in folder.glob("checkpoint-*"):
        m = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if m and path.is_dir():
            found.append((int(m.group(1)), path))
    return [path for _, path in sorted(found)]


def _unmarked_problem(path: Path) -> str | None:
    """For a run from before markers: every file the Trainer writes is there and opens. A
    truncation shows: a safetensors header must cover its file exactly, and a torch.save file is
    a zip archive whose directory is at its end."""
    for name in ("optimizer.pt", "scheduler.pt"):
        if not (path / name).is_file():
            return f"no {name}"
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        return "no *.safetensors weights"
    for p in weights:
        if why := damaged_safetensors(p):
            return f"{p.name} is damaged: {why}"
    for p in [*path.glob("*.pt"), *path.glob("*.pth")]:
        try:
            with zipfile.ZipFile(p) as zf:
                zf.namelist()
        except (OSError, zipfile.BadZipFile) as exc:
            return f"{p.name} is damaged: {exc}"
    return None


def checkpoint_problem(path: Path, markers_in_use: bool = True) -> str | None:
    """Why checkpoint folder `path` cannot be resumed from, or None when it is complete.

    `markers_in_use`: the run marks its checkpoints, so one without a marker is incomplete.
    Otherwise (a run from before markers) its files are checked one by one."""
    marker_path = path / COMPLETE_MARKER
    if not marker_path.is_file():
        if markers_in_use:
            return f"no {COMPLETE_MARKER}: its save did not finish"
        files = {}
    else:
        try:
            files = dict(json.loads(marker_path.read_text("utf-8"))["files"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return f"unreadable {COMPLETE_MARKER}: {exc}"
    for name, size in files.items():
        try:
            actual = (path / name).stat().st_size
        except OSError:
            return f"{name} is missing"
        if actual != size:
            return f"{name} has {actual} bytes; {size} were written"
    try:
        json.loads((path / TRAINER_STATE).read_text("utf-8"))["global_step"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{TRAINER_STATE} is unreadable: {exc}"
    return None if files else _unmarked_problem(path)


def last_complete_checkpoint(folder: Path) -> Path | None:
    """The highest-step checkpoint that was saved completely; incomplete ones are skipped."""
    found = checkpoints_in(folder)
    markers_in_use = any((path / COMPLETE_MARKER).is_file() for path in found)
    for path in reversed(found):
        problem = checkpoint_problem(path, markers_in_use)
        if problem is None:
            return path
        log.warning("--resume: skipping %s: %s", path, problem)
    return None


def trim_metrics(path: Path, step: int) -> None:
    """Drop metrics logged after the checkpoint we resume from; they will be logged again. A
    line that does not parse (the run was killed while appending it) is dropped too."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text("utf-8", errors="replace").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            log.warning("%s: dropping an incomplete line: %.80s", path, line)
    atomic_write_text(path, "".join(line + "\n" for line in keep))
