"""The chat template a GGUF carries, and the turn structure the Ollama template is built from.

The model was trained on prompts rendered with thinking off, so the embedded template is the
tokenizer's own chat template with `enable_thinking` fixed to false before anything else runs:
whatever a runtime passes (llama-cpp-python passes nothing; llama-server may pass
`enable_thinking=true` to templates that react to it), the prompt is the trained one. Templates
without a thinking switch (ChatML, Gemma) are unchanged by the line.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...prompt.render import render_prompt, user_message
from .architectures import ExportError

THINKING_OFF = "{%- set enable_thinking = false -%}\n"
# Sentinel contents: plain ASCII that no template rewrites.
_SYSTEM, _USER_1, _ANSWER, _USER_2 = "QLSYSTEMQL", "QLUSER1QL", "QLANSWERQL", "QLUSER2QL"
PROBE_TASK, PROBE_INPUT = "问题类型分类", "怎么发布地图服务"


def thinking_off_template(tokenizer) -> str:
    """The tokenizer's chat template with thinking forced off; checked against render_prompt."""
    template = getattr(tokenizer, "chat_template", None)
    if not template or not isinstance(template, str):
        raise ExportError(
            "the tokenizer saved with the model has no chat template (or several); the GGUF "
            "needs the one the model was trained with"
        )
    fixed = template if template.startswith(THINKING_OFF) else THINKING_OFF + template
    want = render_prompt(tokenizer, PROBE_TASK, PROBE_INPUT)
    messages = [{"role": "user", "content": user_message(PROBE_TASK, PROBE_INPUT)}]
    for thinking in (None, True, False):
        extra = {} if thinking is None else {"enable_thinking": thinking}
        got = _render(tokenizer, fixed, messages, True, **extra)
        if got != want:
            raise ExportError(
                "the chat template with thinking forced off does not render the training "
                f"prompt (enable_thinking={thinking}):\nwant {want!r}\ngot  {got!r}"
            )
    return fixed


def _render(tokenizer, template: str, messages: list[dict], generation: bool, **extra) -> str:
    return tokenizer.apply_chat_template(
        messages,
        chat_template=template,
        tokenize=False,
        add_generation_prompt=generation,
        **extra,
    )


@dataclass(frozen=True)
class ChatTurns:
    """The literal text a chat template puts around each turn's content, with thinking off."""

    start: str  # once, before the first turn (e.g. a bos token)
    user: tuple[str, str]
    assistant: tuple[str, str]
    system: tuple[str, str] | None  # None: the template has no turn of its own for it
    generation: str  # what opens the assistant's answer


def _split(text: str, *parts: str) -> list[str]:
    """`text` cut at each sentinel in turn: the pieces between them."""
    pieces = []
    for part in parts:
        head, sep, text = text.partition(part)
        if not sep:
            raise ExportError(f"the chat template drops a message's content ({part})")
        pieces.append(head)
    return [*pieces, text]


def _common_suffix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return a[len(a) - n :]


def chat_turns(tokenizer, template: str) -> ChatTurns:
    """Find each turn's wrapping by rendering sentinel conversations through `template`."""
    user_1 = {"role": "user", "content": _USER_1}
    one = _render(tokenizer, template, [user_1], False)
    start_user, user_end = _split(one, _USER_1)
    conversation = [user_1, {"role": "assistant", "content": _ANSWER}]
    conversation.append({"role": "user", "content": _USER_2})
    first, between, after, last = _split(
        _render(tokenizer, template, conversation, False), _USER_1, _ANSWER, _USER_2
    )
    user_start = _common_suffix(start_user, after)
    if first != start_user or last != user_end or not between.startswith(user_end):
        raise ExportError("the chat template's turns are not plain text around each message")
    assistant = (between[len(user_end) :], after[: len(after) - len(user_start)])
    opened = _render(tokenizer, template, [user_1], True)
    if not opened.startswith(one):
        raise ExportError("the chat template's generation prompt changes the turns before it")
    start = start_user[: len(start_user) - len(user_start)]
    return ChatTurns(
        start,
        (user_start, user_end),
        assistant,
        _system_turn(tokenizer, template, start, one),
        opened[len(one) :],
    )


def _system_turn(tokenizer, template, start: str, one: str) -> tuple[str, str] | None:
    """(before, after) a system message's content, when it is a turn of its own."""
    messages = [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": _USER_1}]
    try:
        text = _render(tokenizer, template, messages, False)
    except Exception:  # a template may refuse system messages outright
        return None
    head, sep, rest = text.partition(_SYSTEM)
    tail = one[len(start) :]
    if not sep or not head.startswith(start) or not rest.endswith(tail):
        return None
    between = rest[: len(rest) - len(tail)]
    return head[len(start) :], between
