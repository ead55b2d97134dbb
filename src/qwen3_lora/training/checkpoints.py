"""Resuming: which checkpoint of a run is complete, and the metrics logged after it."""

from __future__ import annotations

import json
import re
from pathlib import Path

CHECKPOINT_DIR = "checkpoints"


def last_complete_checkpoint(folder: Path) -> Path | None:
    """The highest-step checkpoint whose trainer state was written (it is written last)."""
    found = []
    for path in folder.glob("checkpoint-*"):
        m = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if m and (path / "trainer_state.json").is_file():
            found.append((int(m.group(1)), path))
    return max(found)[1] if found else None


def trim_metrics(path: Path, step: int) -> None:
    """Drop metrics logged after the checkpoint we resume from; they will be logged again."""
    if not path.exists():
        return
    keep = [
        line for line in path.read_text("utf-8").splitlines() if json.loads(line)["step"] <= step
    ]
    path.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
