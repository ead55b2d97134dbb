"""Reading and validating task data: JSONL records `{"task", "input", "output"}` or alpaca JSON.

Every problem names its file, line and field; all problems of a file are collected before
anything is raised, so a user fixes a file in one pass.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .registry import TaskRegistry, builtin_data_dir, load_registry

REQUIRED_FIELDS = ("task", "input", "output")
OPTIONAL_FIELDS = ("id",)
ALPACA_FIELDS = ("instruction", "input", "output")


@dataclass(frozen=True)
class Record:
    task: str
    input: str
    output: str
    file: str = ""
    line: int = 0
    id: str | None = None

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    field: str | None
    message: str

    def __str__(self) -> str:
        field = f" [{self.field}]" if self.field else ""
        return f"{self.file}:{self.line}{field}: {self.message}"


class DataError(UserError):
    """One or more data files are invalid; `problems` lists every defect found."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        shown = "\n".join(f"  {p}" for p in problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        super().__init__(f"{len(problems)} problem(s) in the data:\n{shown}{more}")


def _check_fields(obj: dict, file: str, line: int, registry: TaskRegistry) -> list[Problem]:
    problems = []
    for key in REQUIRED_FIELDS:
        if key not in obj:
            problems.append(Problem(file, line, key, "missing field"))
        elif not isinstance(obj[key], str):
            kind = type(obj[key]).__name__
            problems.append(Problem(file, line, key, f"must be a string, got {kind}"))
        elif not obj[key].strip():
            problems.append(Problem(file, line, key, "is empty"))
    if "id" in obj and not isinstance(obj["id"], (str, int)):
        problems.append(Problem(file, line, "id", "must be a string or an integer"))
    for key in obj:
        if key not in REQUIRED_FIELDS + OPTIONAL_FIELDS:
            problems.append(
                Problem(
                    file, line, key, f"unknown field; allowed: {', '.join(REQUIRED_FIELDS)}, id"
                )
            )
    if problems:
        return problems
    task = registry.get(obj["task"])
    if task is None:
        problems.append(
            Problem(
                file,
                line,
                "task",
                f"unknown task {obj['task']!r}; known: {', '.join(registry.names)} "
                f"(register new tasks in {registry.source})",
            )
        )
    elif task.is_classification and obj["output"] not in task.labels:
        problems.append(
            Problem(
                file,
                line,
                "output",
                f"{obj['output']!r} is not a label of {task.name}; "
                f"expected one of {', '.join(task.labels)}",
            )
        )
    elif task.kind == "extraction" and obj["output"] not in obj["input"]:
        problems.append(
            Problem(file, line, "output", "an extraction answer must be a span of the input")
        )
    return problems


def _iter_objects(path: Path) -> tuple[list[tuple[int, object]], list[Problem]]:
    """Parse a .jsonl file line by line, or a .json file holding a list (alpaca style)."""
    file = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return [], [Problem(file, 0, None, f"cannot read: {exc.strerror or exc}")]
    problems: list[Problem] = []
    if path.suffix == ".json":
        try:
            doc = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            return [], [Problem(file, line, None, "not valid UTF-8; re-save the file as UTF-8")]
        except json.JSONDecodeError as exc:
            return [], [Problem(file, exc.lineno, None, f"bad JSON: {exc.msg}")]
        if not isinstance(doc, list):
            return [], [Problem(file, 1, None, "a .json data file must hold a list of records")]
        # Records of a JSON list have no lines of their own; number them 1..n.
        return list(enumerate(doc, 1)), []
    objects = []
    for number, line_bytes in enumerate(raw.split(b"\n"), 1):
        if not line_bytes.strip():
            continue
        try:
            text = line_bytes.decode("utf-8")
        except UnicodeDecodeError:
            problems.append(Problem(file, number, None, "not valid UTF-8; re-save as UTF-8"))
            continue
        try:
            objects.append((number, json.loads(text)))
        except json.JSONDecodeError as exc:
            problems.append(
                Problem(file, number, None, f"bad JSON: {exc.msg} (column {exc.colno})")
            )
    return objects, problems


def _from_alpaca(obj: dict) -> dict:
    """Map an alpaca record onto ours: `instruction` names the task."""
    mapped = {
        "task": obj.get("instruction"),
        "input": obj.get("input"),
        "output": obj.get("output"),
    }
    extra = {k: v for k, v in obj.items() if k not in ALPACA_FIELDS}
    return {**mapped, **extra}


def read_records(path: str | Path, registry: TaskRegistry) -> tuple[list[Record], list[Problem]]:
    """Read one file; return its valid records and every problem found in it."""
    path = Path(path)
    file = str(path)
    objects, problems = _iter_objects(path)
    records: list[Record] = []
    seen: dict[tuple[str, str], int] = {}
    for line, obj in objects:
        if not isinstance(obj, dict):
            problems.append(
                Problem(file, line, None, f"expected a JSON object, got {type(obj).__name__}")
            )
            continue
        if "instruction" in obj and "task" not in obj:
            obj = _from_alpaca(obj)
        found = _check_fields(obj, file, line, registry)
        if found:
            problems.extend(found)
            continue
        task = registry.require(obj["task"]).name
        key = (task, obj["input"].strip())
        if key in seen:
            problems.append(
                Problem(file, line, "input", f"duplicate of line {seen[key]} (same task and input)")
            )
            continue
        seen[key] = line
        raw_id = obj.get("id")
        records.append(
            Record(
                task=task,
                input=obj["input"],
                output=obj["output"],
                file=file,
                line=line,
                id=None if raw_id is None else str(raw_id),
            )
        )
    return records, problems


def load_records(paths: list[str | Path], registry: TaskRegistry | None = None) -> list[Record]:
    """Read several files; raise `DataError` listing every problem if any file is invalid."""
    registry = registry or load_registry()
    records, problems = [], []
    for path in paths:
        found, bad = read_records(path, registry)
        records.extend(found)
        problems.extend(bad)
    if problems:
        raise DataError(problems)
    return records


def builtin_files(split: str) -> list[Path]:
    """The built-in JSONL files of a split ("train" or "eval"), in a fixed order."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', not {split!r}")
    return sorted((builtin_data_dir() / split).glob("*.jsonl"))


def load_builtin(split: str, registry: TaskRegistry | None = None) -> list[Record]:
    """Load the built-in train or held-out eval split."""
    return load_records(builtin_files(split), registry)


def read_prediction_inputs(path: str | Path, task: str | None = None) -> list[dict]:
    """Rows `{"input": ..., "task"?: ..., "id"?: ...}` of a JSONL file; `task` fills missing tasks.

    Every defect is reported together, with file and line (`DataError`).
    """
    file = str(path)
    try:
        lines = Path(path).read_text("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError([Problem(file, 0, None, f"cannot read as UTF-8 text: {exc}")]) from exc
    rows, problems = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(Problem(file, number, None, f"bad JSON: {exc.msg}"))
            continue
        if not isinstance(obj, dict):
            problems.append(Problem(file, number, None, "expected a JSON object"))
            continue
        if not isinstance(obj.get("input"), str):
            problems.append(Problem(file, number, "input", "missing or not a string"))
            continue
        row_task = obj.get("task") or task
        if not isinstance(row_task, str):
            problems.append(Problem(file, number, "task", "missing: add it or pass --task"))
            continue
        rows.append({**obj, "task": row_task, "_line": number})
    if problems:
        raise DataError(problems)
    return rows
