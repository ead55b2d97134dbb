"""`train --chat-template NAME|FILE.jinja`: the built-in chat templates, reading a template file,
and the checks a template must pass before training renders with it.

The template is set on the tokenizer, which `train` saves beside the adapter (its
`chat_template.jinja`), so predict, eval, test, serve, merge and export render with it. Checks
(`template_problems`), every problem reported together:

- the turn markers are tokens of the vocabulary: each marker-like piece of the template's own
  text (`<...>`, `<|...|>`, `[INST]`) is an added token, one id that is never split into plain
  pieces, and every turn boundary holds a special token;
- a special token closes the assistant turn: the end of turn, supervised in training and the
  token generation stops at;
- what the tokenizer puts before every text (Gemma's `<bos>`) is written by the template, since
  prompts are tokenised without adding special tokens;
- the generation prompt is the start of the rendered assistant turn.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any

from .render import (
    PROBE_ANSWER,
    PROBE_USER,
    TemplateError,
    end_of_turn_token,
    render_messages,
    render_turn,
)

BUILTIN_TEMPLATES = {"qwen3": "qwen3.jinja", "chatml": "chatml.jinja", "gemma": "gemma.jinja"}
MARKER_LIKE = re.compile(r"<\|?/?[A-Za-z_][\w.-]{0,40}\|?>|\[/?[A-Z_]{2,20}\]")
_SYSTEM, _USER_2, _ANSWER_2 = "QLSYSTEMQL", "QLUSERTWOQL", "QLANSWERTWOQL"
OPTION = "--chat-template"
TEMPLATE_SUFFIXES = (".jinja", ".j2")


def builtin_template(name: str) -> str:
    """The text of a built-in template (`qwen3`, `chatml`, `gemma`)."""
    folder = resources.files("qwen3_lora") / "prompt" / "templates"
    return (folder / BUILTIN_TEMPLATES[name]).read_text("utf-8")


def spec_problem(spec: str) -> str | None:
    """Why `spec` names no template (neither a built-in name nor a readable .jinja file)."""
    if spec in BUILTIN_TEMPLATES:
        return None
    path = Path(spec).expanduser()
    if path.suffix not in TEMPLATE_SUFFIXES:
        return (
            f"chat_template {spec!r} is neither a built-in template "
            f"({', '.join(BUILTIN_TEMPLATES)}) nor a .jinja file"
        )
    if not path.is_file():
        return f"chat_template file not found: {spec}"
    return None


def read_chat_template(spec: str) -> str:
    """The jinja text of a built-in name or a .jinja file."""
    if problem := spec_problem(spec):
        raise TemplateError(problem)
    if spec in BUILTIN_TEMPLATES:
        return builtin_template(spec)
    try:
        return Path(spec).expanduser().read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TemplateError(f"cannot read the chat template {spec}: {exc}") from exc


def _ids(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _scaffolding(full: str, contents: list[str]) -> list[str] | None:
    """The template's own text between the message contents, or None if one is missing."""
    pieces = []
    for content in contents:
        head, sep, full = full.partition(content)
        if not sep:
            return None
        pieces.append(head)
    return [*pieces, full]


def _bos_prefix(tokenizer: Any) -> list[int]:
    """The ids the tokenizer puts before every text when it adds special tokens."""
    plain, added = _ids(tokenizer, "hello"), tokenizer("hello")["input_ids"]
    if len(added) > len(plain) and added[len(added) - len(plain) :] == plain:
        return added[: len(added) - len(plain)]
    return []


def template_problems(tokenizer: Any) -> list[str]:
    """Everything that keeps the tokenizer's chat template from rendering training samples."""
    problems: list[str] = []
    conversation = [
        {"role": "system", "content": _SYSTEM},
        {"role": "user", "content": PROBE_USER},
        {"role": "assistant", "content": PROBE_ANSWER},
        {"role": "user", "content": _USER_2},
        {"role": "assistant", "content": _ANSWER_2},
    ]
    try:
        full = render_messages(tokenizer, conversation, generation_prompt=False, thinking=False)
    except TemplateError as exc:
        return [str(exc)]
    pieces = _scaffolding(full, [m["content"] for m in conversation])
    if pieces is None:
        return ["the chat template drops a message's content (system, user or assistant)"]
    added = {t.content for t in tokenizer.added_tokens_decoder.values()}
    special = {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    for marker in dict.fromkeys(m for piece in pieces for m in MARKER_LIKE.findall(piece)):
        if marker not in added:
            split = tokenizer.convert_ids_to_tokens(_ids(tokenizer, marker))
            problems.append(
                f"the turn marker {marker!r} is not a special token of this tokenizer's "
                f"vocabulary: it would be tokenised as plain text ({' '.join(split)}); choose a "
                f"template whose markers the vocabulary has (the tokenizer's special tokens)"
            )
    # Between the turns (the system prompt may run into the first user turn, as Gemma's does).
    for between in pieces[2:-1]:
        if not any(i in special for i in _ids(tokenizer, between)):
            problems.append(
                f"the turn boundary {between!r} holds no special token: turns would be told "
                f"apart by plain text only"
            )
    try:
        end_of_turn_token(tokenizer)
        render_turn(tokenizer, conversation[1:3], 1)
    except TemplateError as exc:
        problems.append(str(exc))
    bos = _bos_prefix(tokenizer)
    prompt = render_messages(tokenizer, conversation[1:2], generation_prompt=True, thinking=False)
    if bos and _ids(tokenizer, prompt)[: len(bos)] != bos:
        names = "".join(tokenizer.convert_ids_to_tokens(bos))
        problems.append(
            f"the tokenizer starts every text with {names}, but the chat template does not write "
            f"it: prompts are tokenised without adding special tokens, so the model would never "
            f"see it; begin the template with {{{{ bos_token }}}}"
        )
    return list(dict.fromkeys(problems))


def use_chat_template(tokenizer: Any, spec: str | None, model: str = "the base model") -> str:
    """Set the chat template `spec` names on the tokenizer (None: keep its own) and check it;
    returns its end-of-turn token. A `TemplateError` lists every problem."""
    if spec is not None:
        tokenizer.chat_template = read_chat_template(spec)
    elif not getattr(tokenizer, "chat_template", None):
        raise TemplateError(
            f"the tokenizer of {model} has no chat template: choose one with {OPTION} NAME or "
            f"{OPTION} FILE.jinja (built-in: {', '.join(BUILTIN_TEMPLATES)}); the adapter keeps "
            f"it for predict, eval, serve, merge and export"
        )
    problems = template_problems(tokenizer)
    what = f"chat template {spec!r}" if spec else f"the chat template of {model}"
    if problems:
        raise TemplateError(
            f"{what} cannot be used with this tokenizer:\n"
            + "\n".join(f"  - {p}" for p in problems)
        )
    return end_of_turn_token(tokenizer)
