"""What the Reports tab reads from the workspace: evaluation reports (`qwen3-lora eval`'s
report.json + predictions.jsonl) and training runs (metrics.jsonl + progress.json of
`qwen3-lora train`), polled by byte offset while a run writes."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

from ....evaluation.report import PREDICTIONS, REPORT_JSON
from ....models.adapter import ADAPTER_CONFIG
from ....training.outputs import METRICS_FILE, PROGRESS_FILE
from .workspace import Workspace, WorkspaceError

MAX_METRICS_BYTES = 4 << 20  # one metrics read returns at most this much of the file
# A run's and a report's own files, never offered as training data.
OWN_FILES = frozenset({REPORT_JSON, PREDICTIONS, METRICS_FILE, PROGRESS_FILE, ADAPTER_CONFIG})


def read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise WorkspaceError(404, f"{path.name} does not exist", "not_found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WorkspaceError(422, f"{path.name}: cannot read as JSON: {exc}", "bad_file") from None
    if not isinstance(value, dict):
        raise WorkspaceError(422, f"{path.name}: expected a JSON object", "bad_file")
    return value


def iter_jsonl(path: Path) -> Iterator[dict]:
    """The JSON objects of a JSONL file; blank, broken or non-object lines are skipped."""
    with path.open("rb") as fh:
        for line in fh:
            try:
                obj = json.loads(line)
            except (ValueError, UnicodeDecodeError):
                continue
            if isinstance(obj, dict):
                yield obj


def is_miss(row: dict) -> bool:
    """A wrong prediction: classification `correct` false, extraction `exact_match` 0."""
    if row.get("correct") is False:
        return True
    em = row.get("exact_match")
    return isinstance(em, (int, float)) and not isinstance(em, bool) and em == 0


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def list_reports(ws: Workspace) -> list[dict]:
    """One summary per folder holding a report.json, newest first."""
    out = []
    for folder in ws.folders_with(REPORT_JSON):
        try:
            report = read_json(folder / REPORT_JSON)
        except WorkspaceError as exc:
            out.append({"path": ws.relative(folder), "error": exc.message})
            continue
        models = report.get("models") if isinstance(report.get("models"), dict) else {}
        out.append(
            {
                "path": ws.relative(folder),
                "created": report.get("created"),
                "base_model": report.get("base_model"),
                "adapter": report.get("adapter"),
                "samples": report.get("samples"),
                "models": list(models),
                "mtime": _mtime(folder / REPORT_JSON),
            }
        )
    out.sort(key=lambda r: r.get("mtime") or 0, reverse=True)
    return out


def read_report(ws: Workspace, raw: str) -> dict:
    """A report folder's report.json, plus how many misses each model made per task."""
    folder = ws.folder(raw)
    path = ws.inner_file(folder, REPORT_JSON)
    if path is None:
        raise WorkspaceError(404, f"{raw!r} holds no {REPORT_JSON}", "not_found")
    counts: dict[str, dict[str, int]] = {}
    predictions = ws.inner_file(folder, PREDICTIONS)
    for row in iter_jsonl(predictions) if predictions else ():
        if is_miss(row):
            by_model = counts.setdefault(str(row.get("model")), {})
            task = str(row.get("task"))
            by_model[task] = by_model.get(task, 0) + 1
    return {"path": ws.relative(folder), "report": read_json(path), "misses": counts}


def read_misses(
    ws: Workspace,
    raw: str,
    *,
    model: str | None = None,
    task: str | None = None,
    offset: int = 0,
    limit: int = 100,
) -> dict:
    """A report's wrong predictions, filtered by model and task, one page at a time."""
    predictions = ws.inner_file(ws.folder(raw), PREDICTIONS)
    rows, total = [], 0
    for row in iter_jsonl(predictions) if predictions else ():
        if not is_miss(row) or model not in (None, row.get("model")):
            continue
        if task not in (None, row.get("task")):
            continue
        if offset <= total < offset + limit:
            rows.append(row)
        total += 1
    return {"data": rows, "total": total}


def read_progress(ws: Workspace, folder: Path) -> dict | None:
    """A run folder's progress.json (rewritten by the trainer each step), or None."""
    path = folder / PROGRESS_FILE
    try:
        if not ws.inside(path.resolve(strict=True)):
            return None
        value = json.loads(path.read_text("utf-8"))
    except (OSError, RuntimeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def read_metrics(path: Path, offset: int = 0) -> dict:
    """The complete JSON lines of a metrics.jsonl from byte `offset`.

    Returns `rows`, the `offset` to ask from next time (just past the last complete line: a
    half-written last line waits for the next read), `size`, `bad` (complete lines that are not
    JSON objects), `partial` (a half-written tail was left) and `reset` (the file is shorter
    than `offset`: it was rewritten, as a resume does; rows are read from the start and the
    client drops what it had).
    """
    result = {"rows": [], "offset": 0, "size": 0, "bad": 0, "partial": False, "reset": False}
    try:
        st = path.stat()
    except FileNotFoundError:
        result["reset"] = offset > 0
        return result
    if not stat.S_ISREG(st.st_mode):
        return result
    offset = max(0, int(offset))
    if offset > st.st_size:
        offset, result["reset"] = 0, True
    with path.open("rb") as fh:
        fh.seek(offset)
        chunk = fh.read(MAX_METRICS_BYTES)
    complete = chunk[: chunk.rfind(b"\n") + 1]
    result["partial"] = len(complete) < len(chunk) and offset + len(chunk) >= st.st_size
    rows, bad = [], 0
    for line in complete.splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            obj = None
        if isinstance(obj, dict):
            rows.append(obj)
        else:
            bad += 1
    result.update(rows=rows, offset=offset + len(complete), size=st.st_size, bad=bad)
    return result


def list_runs(ws: Workspace) -> list[dict]:
    """One summary per folder holding a metrics.jsonl, newest first."""
    out = []
    for folder in ws.folders_with(METRICS_FILE):
        rows = read_metrics(folder / METRICS_FILE)["rows"]
        losses = [r["loss"] for r in rows if isinstance(r.get("loss"), (int, float))]
        evals = [r["eval_loss"] for r in rows if isinstance(r.get("eval_loss"), (int, float))]
        out.append(
            {
                "path": ws.relative(folder),
                "steps": max((int(r.get("step") or 0) for r in rows), default=0),
                "last_loss": losses[-1] if losses else None,
                "last_eval_loss": evals[-1] if evals else None,
                "finished": (folder / ADAPTER_CONFIG).is_file(),
                "progress": read_progress(ws, folder),
                "mtime": _mtime(folder / METRICS_FILE),
            }
        )
    out.sort(key=lambda r: r.get("mtime") or 0, reverse=True)
    return out


def run_metrics(ws: Workspace, raw: str, offset: int = 0) -> dict:
    """A run folder's metrics rows from byte `offset` (`read_metrics`), and where it stands."""
    folder = ws.folder(raw)
    path = folder / METRICS_FILE
    if path.exists() and not ws.inside(path.resolve()):
        raise WorkspaceError(403, f"{raw!r}: {METRICS_FILE} points outside", "outside_workspace")
    result = read_metrics(path, offset)
    result["path"] = ws.relative(folder)
    result["finished"] = (folder / ADAPTER_CONFIG).is_file()
    result["progress"] = read_progress(ws, folder)
    return result
