"""The task registry: which tasks exist, what kind each is and, for classifiers, its label set."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from ..errors import UserError

KINDS = ("classification", "extraction", "generation")


class RegistryError(UserError):
    """A task registry file is malformed."""


@dataclass(frozen=True)
class Task:
    name: str
    id: str
    kind: str
    labels: tuple[str, ...] = field(default=())
    description: str = ""

    @property
    def is_classification(self) -> bool:
        return self.kind == "classification"


@dataclass(frozen=True)
class TaskRegistry:
    tasks: tuple[Task, ...]
    source: str = "<builtin>"

    def get(self, name: str) -> Task | None:
        """Look a task up by its (Chinese) name or its short id."""
        for task in self.tasks:
            if name in (task.name, task.id):
                return task
        return None

    def require(self, name: str) -> Task:
        task = self.get(name)
        if task is None:
            known = ", ".join(f"{t.name} ({t.id})" for t in self.tasks)
            raise KeyError(f"unknown task {name!r}; known tasks: {known}")
        return task

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]


def builtin_data_dir() -> Path:
    """The folder of the built-in dataset shipped inside the package."""
    return Path(str(resources.files("qwen3_lora") / "data" / "builtin"))


def load_registry(path: str | Path | None = None) -> TaskRegistry:
    """Load a registry YAML file; the built-in one when `path` is None."""
    path = Path(path) if path else builtin_data_dir() / "tasks.yaml"
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise RegistryError(f"{path}: cannot read the task registry: {exc}") from exc
    entries = doc.get("tasks") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise RegistryError(f"{path}: expected a top-level 'tasks:' list")
    problems, tasks, seen = [], [], set()
    for i, entry in enumerate(entries, 1):
        where = f"{path}: task #{i}"
        if not isinstance(entry, dict):
            problems.append(f"{where}: expected a mapping")
            continue
        name, task_id, kind = entry.get("name"), entry.get("id"), entry.get("kind")
        labels = entry.get("labels") or []
        if not isinstance(name, str) or not name.strip():
            problems.append(f"{where}: field 'name' must be a non-empty string")
        if not isinstance(task_id, str) or not task_id.strip():
            problems.append(f"{where}: field 'id' must be a non-empty string")
        if kind not in KINDS:
            problems.append(
                f"{where}: field 'kind' must be one of {', '.join(KINDS)}, got {kind!r}"
            )
        if kind == "classification" and (
            not isinstance(labels, list)
            or len(labels) < 2
            or not all(isinstance(x, str) and x for x in labels)
        ):
            problems.append(f"{where}: a classification task needs 'labels': 2+ non-empty strings")
        for key in (name, task_id):
            if key in seen:
                problems.append(f"{where}: {key!r} is used by another task")
            seen.add(key)
        if not problems:
            tasks.append(
                Task(
                    name=name,
                    id=task_id,
                    kind=kind,
                    labels=tuple(labels),
                    description=entry.get("description", ""),
                )
            )
    if problems:
        raise RegistryError("\n".join(problems))
    return TaskRegistry(tuple(tasks), source=str(path))
