"""The console's job forms and how a submitted form becomes command-line arguments.

`TRAIN_FORM` is the one list of the training form's fields; a field appears only when
`TrainConfig` has it (so a flag added to `qwen3-lora train` later shows up by adding its name
here), with the config's type, default and help text. `EVAL_FORM` mirrors `qwen3-lora eval`.

Nothing a client sends reaches a shell or becomes an option: each value is checked against its
field's kind (a number in range, true/false, a workspace path resolved inside the workspace and
passed absolute, a hub id matching a strict pattern, a built-in template name, one of a choice
field's values) and placed after its own flag in an argv list. Every problem of a request is
reported together.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any

from ....models.adapter import ADAPTER_CONFIG
from ....prompt.chat_templates import BUILTIN_TEMPLATES, TEMPLATE_SUFFIXES
from ....training.config import TrainConfig, field_type_names
from ..errors import ApiError
from .workspace import DATA_SUFFIXES, Workspace, WorkspaceError

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
TEMPLATE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_TEXT = 1024
MAX_FILES = 64


class FieldsError(ApiError):
    """A job request with invalid fields; `problems` lists every one."""

    def __init__(self, problems: list[str]):
        super().__init__(
            400,
            "invalid job fields: " + "; ".join(problems),
            param="fields",
            code="invalid_fields",
            problems=problems,
        )


@dataclass(frozen=True)
class FormField:
    """One form field. `kind`: model, files, template, choice, bool, number, adapter,
    new_folder."""

    name: str
    kind: str
    lo: float | None = None
    hi: float | None = None
    allow: tuple = ()  # values accepted outside [lo, hi], e.g. -1 for "no limit"
    choices: tuple = ()  # a choice field's values (TrainConfig's)
    required: bool = False
    type: str = "str"  # bool, int, float, str, list
    default: Any = None
    help: str = ""

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def schema(self) -> dict:
        """What the page needs to draw the field."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v not in (None, ())}


TRAIN_FORM = (
    FormField("base_model", "model", required=True),
    FormField("data", "files"),
    FormField("builtin_data", "bool"),
    FormField("eval_data", "files"),
    FormField("chat_template", "template"),
    FormField("loss_on", "choice"),
    FormField("epochs", "number", 0.01, 100),
    FormField("max_steps", "number", 1, 1_000_000, allow=(-1,)),
    FormField("learning_rate", "number", 1e-8, 1.0),
    FormField("lora_r", "number", 1, 512),
    FormField("lora_alpha", "number", 1, 4096),
    FormField("batch_size", "number", 1, 256),
    FormField("grad_accum", "number", 1, 1024),
    FormField("output_dir", "new_folder", required=True),
)

EVAL_FORM = (
    FormField("adapter", "adapter", required=True, help="a finished training run"),
    FormField("data", "files", type="list", default=[], help="default: the built-in eval split"),
    FormField("compare_base", "bool", type="bool", default=False, help="also run the base model"),
    FormField("base_model", "model", help="default: the one the adapter names"),
    FormField("max_new_tokens", "number", 1, 4096, type="int", default=128),
    FormField("output_dir", "new_folder", required=True, help="where the reports go"),
)


def train_form() -> tuple[FormField, ...]:
    """`TRAIN_FORM`'s fields that `TrainConfig` has, with its types, defaults and help."""
    config = {f.name: f for f in dataclasses.fields(TrainConfig)}
    types = field_type_names()
    out = []
    for field in TRAIN_FORM:
        known = config.get(field.name)
        if known is None:
            continue
        default = known.default_factory() if callable(known.default_factory) else known.default
        out.append(
            dataclasses.replace(
                field,
                type=types[field.name],
                default=default,
                help=known.metadata.get("help", ""),
                choices=tuple(known.metadata.get("choices", ())),
            )
        )
    return tuple(out)


FORMS = {"train": train_form, "eval": lambda: EVAL_FORM}


@dataclass
class JobSpec:
    """A validated form: the values as sent (paths workspace-relative) and the argv tail."""

    kind: str
    fields: dict[str, Any]
    args: list[str]
    output_dir: str  # workspace-relative

    @property
    def planned_steps(self) -> int | None:
        steps = self.fields.get("max_steps")
        return steps if isinstance(steps, int) and steps > 0 else None


class _Checker:
    """Checks one request's values field by field, collecting every problem."""

    def __init__(self, ws: Workspace, allowed_models: tuple[str, ...]):
        self.ws = ws
        self.allowed_models = allowed_models
        self.problems: list[str] = []

    def number(self, f: FormField, value: Any) -> int | float | None:
        integer = f.type == "int"
        ok = isinstance(value, int) if integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok or not math.isfinite(value):
            self.problems.append(f"{f.name} must be {'an integer' if integer else 'a number'}")
            return None
        if value not in f.allow and not f.lo <= value <= f.hi:
            extra = f" (or {', '.join(map(str, f.allow))})" if f.allow else ""
            self.problems.append(f"{f.name} must be in [{f.lo:g}, {f.hi:g}]{extra}, got {value}")
            return None
        return value

    def path(self, f: FormField, raw: Any, check) -> str | None:
        """`check(raw)` -> the absolute path for argv; its WorkspaceError becomes a problem."""
        if not isinstance(raw, str) or not raw.strip() or len(raw) > MAX_TEXT:
            self.problems.append(f"{f.name}: give a workspace path (at most {MAX_TEXT} characters)")
            return None
        try:
            return str(check(raw.strip()))
        except WorkspaceError as exc:
            self.problems.append(f"{f.name}: {exc.message}")
            return None

    def files(self, f: FormField, value: Any) -> list[str] | None:
        if not isinstance(value, list) or len(value) > MAX_FILES:
            self.problems.append(f"{f.name} must be a list of at most {MAX_FILES} workspace files")
            return None
        paths = [self.path(f, v, lambda r: self.ws.file(r, DATA_SUFFIXES)) for v in value]
        return None if None in paths else paths

    def model(self, f: FormField, value: Any) -> str | None:
        """One the server allows by name, a workspace folder or .gguf file, 'tiny' or a hub id."""
        if not isinstance(value, str) or not value.strip() or len(value) > MAX_TEXT:
            self.problems.append(f"{f.name}: give a model folder in the workspace or a hub id")
            return None
        value = value.strip()
        if value in self.allowed_models:
            return value
        try:
            path = self.ws.resolve(value)
        except WorkspaceError as exc:
            if exc.code == "not_found" and (value == "tiny" or HUB_ID.match(value)):
                return value  # the built-in smoke model or a hub id, passed as a plain value
            self.problems.append(f"{f.name}: {value!r} is neither a workspace model nor a hub id")
            return None
        if not (path.is_dir() or path.name.endswith(".gguf")):
            self.problems.append(f"{f.name}: {value!r} must be a model folder or a .gguf file")
            return None
        return str(path)

    def template(self, f: FormField, value: Any) -> str | None:
        """A built-in template name, or a .jinja file in the workspace."""
        named = isinstance(value, str) and not value.endswith(TEMPLATE_SUFFIXES)
        if named and value in BUILTIN_TEMPLATES:
            return value
        if named and TEMPLATE_NAME.match(value):
            known = ", ".join(BUILTIN_TEMPLATES)
            self.problems.append(f"{f.name}: {value!r} is not a built-in template ({known})")
            return None
        return self.path(f, value, lambda r: self.ws.file(r, TEMPLATE_SUFFIXES))

    def choice(self, f: FormField, value: Any) -> str | None:
        if value not in f.choices:
            self.problems.append(f"{f.name} must be one of {', '.join(f.choices)}")
            return None
        return value

    def adapter(self, f: FormField, value: Any) -> str | None:
        def check(raw):
            folder = self.ws.folder(raw)
            if not (folder / ADAPTER_CONFIG).is_file() and not (folder / "config.json").is_file():
                raise WorkspaceError(
                    400, f"{raw!r} holds no {ADAPTER_CONFIG}: not a finished run", "not_adapter"
                )
            return folder

        return self.path(f, value, check)


def _argv_value(f: FormField, value: Any) -> list[str]:
    """The flag and value(s) of one checked field; [] when it adds nothing."""
    if f.kind == "choice" and value == f.default:
        return []
    if f.type == "bool":
        if value == f.default:
            return []
        return [f.flag if value else "--no-" + f.flag[2:]]
    if isinstance(value, list):
        return [f.flag, *value] if value else []
    if isinstance(value, float):
        return [f.flag, format(value, ".10g")]
    return [f.flag, str(value)]


def parse_job(kind: str, raw: Any, ws: Workspace, allowed_models: tuple[str, ...] = ()) -> JobSpec:
    """Check a submitted form; 400 `invalid_fields` lists every problem."""
    form = FORMS[kind]()
    if not isinstance(raw, dict):
        raise FieldsError(["fields must be a JSON object"])
    c = _Checker(ws, tuple(m for m in allowed_models if m))
    by_name = {f.name: f for f in form}
    unknown = sorted(set(raw) - set(by_name))
    if unknown:
        c.problems.append(f"unknown field(s): {', '.join(unknown)}")
    fields: dict[str, Any] = {}
    args: list[str] = []
    for f in form:
        value = raw.get(f.name)
        if value is None or value == "" or value == []:
            if f.required:
                c.problems.append(f"{f.name} is required")
            continue
        if f.kind == "bool":
            if not isinstance(value, bool):
                c.problems.append(f"{f.name} must be true or false")
                continue
            checked = value
        elif f.kind == "number":
            checked = c.number(f, value)
        elif f.kind == "files":
            checked = c.files(f, value)
        elif f.kind == "new_folder":
            checked = c.path(f, value, ws.new_folder)
        else:  # model, template, choice, adapter
            checked = getattr(c, f.kind)(f, value)
        if checked is None:
            continue
        fields[f.name] = value.strip() if isinstance(value, str) else value
        args += _argv_value(f, checked)
    if fields.get("builtin_data") is False and not fields.get("data") and "data" in by_name:
        c.problems.append("data: give at least one file when builtin_data is false")
    if c.problems:
        raise FieldsError(c.problems)
    output_dir = ws.relative(ws.resolve(fields["output_dir"], must_exist=False))
    return JobSpec(kind, fields, args, output_dir)
