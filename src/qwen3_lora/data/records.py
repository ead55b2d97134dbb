"""Reading and validating training data, in four shapes that one file may mix line by line:

- task records `{"task", "input", "output"}` (and `id`);
- alpaca records `{"instruction", "input", "output"}`: `instruction` names the task;
- OpenAI chat `{"messages": [{"role", "content"}, ...]}`: an optional `system` message first,
  then user and assistant turns alternating, ending with the assistant; an optional `task` (a
  registered task, the last exchange being its input and answer) and `id`;
- sharegpt `{"conversations": [{"from", "value"}, ...], "system"?}` with `human` and `gpt` turns.

A task record becomes a `Record`, a chat a `Conversation`. Every problem names its file, line
and field (`messages[2].role`); all problems of a file are collected before anything is raised,
so a user fixes a file in one pass.
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
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"system": "system", "human": "user", "gpt": "assistant"}
CHAT = "chat"  # how a conversation without a task is counted


class _Located:
    """A sample read from `file` at `line`."""

    file: str
    line: int

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Record(_Located):
    task: str
    input: str
    output: str
    file: str = ""
    line: int = 0
    id: str | None = None

    @property
    def group(self) -> str:
        """What the sample is counted under in statistics: its task."""
        return self.task


@dataclass(frozen=True)
class Conversation(_Located):
    """A chat sample: (role, content) turns, system/user/assistant, ending with the assistant."""

    turns: tuple[tuple[str, str], ...]
    task: str | None = None
    file: str = ""
    line: int = 0
    id: str | None = None

    @property
    def messages(self) -> list[dict]:
        return [{"role": role, "content": content} for role, content in self.turns]

    @property
    def input(self) -> str:
        """The last user turn: a task's input when the conversation has a task."""
        return next(c for r, c in reversed(self.turns) if r == "user")

    @property
    def output(self) -> str:
        """The last assistant turn: a task's answer when the conversation has a task."""
        return self.turns[-1][1]

    @property
    def group(self) -> str:
        """Its task, or `chat` for a conversation without one."""
        return self.task or CHAT


Sample = Record | Conversation


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
    return _check_task(obj["task"], obj["input"], obj["output"], (file, line), "output", registry)


def _check_task(
    name: str, text: str, output: str, at: tuple[str, int], output_field: str, registry
) -> list[Problem]:
    """A known task, and an answer its kind allows (a label; a span of the input)."""
    task = registry.get(name)
    if task is None:
        known = ", ".join(registry.names)
        message = f"unknown task {name!r}; known: {known} (register new tasks in {registry.source})"
        return [Problem(*at, "task", message)]
    if task.is_classification and output not in task.labels:
        message = (
            f"{output!r} is not a label of {task.name}; expected one of {', '.join(task.labels)}"
        )
        return [Problem(*at, output_field, message)]
    if task.kind == "extraction" and output not in text:
        return [Problem(*at, output_field, "an extraction answer must be a span of the input")]
    return []


@dataclass(frozen=True)
class ChatFormat:
    """Where a chat format keeps its turns and what its roles are called."""

    name: str
    turns: str  # the list field
    role: str
    content: str
    roles: dict[str, str]  # the format's role name -> system, user or assistant
    fields: tuple[str, ...]  # allowed top-level fields


MESSAGES = ChatFormat(
    "messages", "messages", "role", "content", {r: r for r in ROLES}, ("messages", "task", "id")
)
SHAREGPT = ChatFormat(
    "sharegpt",
    "conversations",
    "from",
    "value",
    SHAREGPT_ROLES,
    ("conversations", "system", "task", "id"),
)


def _check_turn_items(items: list, fmt: ChatFormat, at: tuple[str, int]):
    """Each turn's own fields; returns ([(role, content, field prefix)], problems)."""
    turns, problems = [], []
    for i, item in enumerate(items):
        where = f"{fmt.turns}[{i}]"
        if not isinstance(item, dict):
            kind = type(item).__name__
            problems.append(Problem(*at, where, f"expected a JSON object, got {kind}"))
            continue
        for key in item:
            if key not in (fmt.role, fmt.content):
                allowed = f"{fmt.role}, {fmt.content}"
                problems.append(
                    Problem(*at, f"{where}.{key}", f"unknown field; allowed: {allowed}")
                )
        role, content = item.get(fmt.role), item.get(fmt.content)
        if fmt.role not in item:
            problems.append(Problem(*at, f"{where}.{fmt.role}", "missing field"))
        elif role not in fmt.roles:
            known = ", ".join(fmt.roles)
            problems.append(
                Problem(*at, f"{where}.{fmt.role}", f"unknown role {role!r}; expected {known}")
            )
        if fmt.content not in item:
            problems.append(Problem(*at, f"{where}.{fmt.content}", "missing field"))
        elif not isinstance(content, str):
            kind = type(content).__name__
            problems.append(Problem(*at, f"{where}.{fmt.content}", f"must be a string, got {kind}"))
        elif not content.strip():
            problems.append(Problem(*at, f"{where}.{fmt.content}", "is empty"))
        turns.append((fmt.roles.get(role), content, where))
    return turns, problems


def _check_turn_order(turns: list, fmt: ChatFormat, at: tuple[str, int]) -> list[Problem]:
    """An optional system turn first, then user and assistant alternating, ending with one."""
    names = {v: k for k, v in fmt.roles.items()}
    expected = "user"
    for i, (role, _, where) in enumerate(turns):
        if role == "system":
            if i == 0:
                continue
            return [Problem(*at, f"{where}.{fmt.role}", "a system turn may only come first")]
        if role != expected:
            return [
                Problem(
                    *at,
                    f"{where}.{fmt.role}",
                    f"{names[role]} where a {names[expected]} turn belongs: after an optional "
                    f"system turn, {names['user']} and {names['assistant']} turns alternate",
                )
            ]
        expected = "assistant" if role == "user" else "user"
    if not turns or turns[-1][0] != "assistant":
        return [
            Problem(
                *at,
                fmt.turns,
                f"the last turn must be the answer to learn ({names['assistant']}), not a "
                f"{names['user']} turn",
            )
        ]
    return []


def _conversation(obj: dict, fmt: ChatFormat, at: tuple[str, int], registry):
    """(a Conversation, []) or (None, every problem of the object)."""
    problems = [
        Problem(*at, key, f"unknown field; allowed in {fmt.name} data: {', '.join(fmt.fields)}")
        for key in obj
        if key not in fmt.fields
    ]
    items = obj[fmt.turns]
    if not isinstance(items, list):
        message = f"must be a list of {{{fmt.role}, {fmt.content}}} objects"
        return None, [*problems, Problem(*at, fmt.turns, message)]
    if not items:
        return None, [*problems, Problem(*at, fmt.turns, "is empty")]
    turns, found = _check_turn_items(items, fmt, at)
    problems += found
    system = obj.get("system")
    if system is not None and not isinstance(system, str):
        problems.append(Problem(*at, "system", "must be a string"))
    elif system and system.strip():
        if turns and turns[0][0] == "system":
            problems.append(Problem(*at, "system", f"a second system prompt ({fmt.turns}[0])"))
        turns = [("system", system, "system"), *turns]
    task = obj.get("task")
    if "task" in obj and not isinstance(task, str):
        problems.append(Problem(*at, "task", "must be a string"))
    if "id" in obj and not isinstance(obj["id"], (str, int)):
        problems.append(Problem(*at, "id", "must be a string or an integer"))
    if problems:
        return None, problems
    problems = _check_turn_order(turns, fmt, at)
    if not problems and isinstance(task, str):
        last = f"{turns[-1][2]}.{fmt.content}" if turns[-1][2] != "system" else fmt.turns
        user = next(c for r, c, _ in reversed(turns) if r == "user")
        problems = _check_task(task, user, turns[-1][1], at, last, registry)
    if problems:
        return None, problems
    raw_id = obj.get("id")
    conversation = Conversation(
        turns=tuple((role, content) for role, content, _ in turns),
        task=None if task is None else registry.require(task).name,
        file=at[0],
        line=at[1],
        id=None if raw_id is None else str(raw_id),
    )
    return conversation, []


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


def read_records(path: str | Path, registry: TaskRegistry) -> tuple[list[Sample], list[Problem]]:
    """Read one file; return its valid records and conversations and every problem found in it."""
    path = Path(path)
    file = str(path)
    objects, problems = _iter_objects(path)
    records: list[Sample] = []
    seen: dict[tuple, int] = {}
    for line, obj in objects:
        if not isinstance(obj, dict):
            problems.append(
                Problem(file, line, None, f"expected a JSON object, got {type(obj).__name__}")
            )
            continue
        fmt = MESSAGES if "messages" in obj else SHAREGPT if "conversations" in obj else None
        if fmt is not None:
            conversation, found = _conversation(obj, fmt, (file, line), registry)
            if found:
                problems.extend(found)
                continue
            key = ("chat", conversation.turns)
            if key in seen:
                message = f"duplicate of line {seen[key]} (same conversation)"
                problems.append(Problem(file, line, fmt.turns, message))
                continue
            seen[key] = line
            records.append(conversation)
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


def load_records(paths: list[str | Path], registry: TaskRegistry | None = None) -> list[Sample]:
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
