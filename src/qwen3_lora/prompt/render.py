"""The one place where prompts are rendered: training, evaluation, serving and merging use it.

The user turn of a task query is the spec's `任务: {task}\\n输入: {input}`; it goes through the
tokenizer's chat template (the base model's own, or the one `train --chat-template` chose and
saved with the adapter) with Qwen3 thinking disabled, so the model sees at training time exactly
the prefix it gets at inference time. A conversation (`messages` data) is rendered by the same
template, one assistant turn at a time (`render_turn`).
"""

from __future__ import annotations

import weakref
from typing import Any

from ..errors import UserError

QWEN3_END_OF_TURN = "<|im_end|>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
# Sentinel contents for probing a template: plain ASCII that no template rewrites.
PROBE_USER, PROBE_ANSWER = "QLUSERQL", "QLANSWERQL"
_end_of_turn_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class TemplateError(UserError):
    """The tokenizer's chat template cannot be used for prompt/answer rendering."""


def user_message(task: str, text: str) -> str:
    """The user turn of a task query, in the spec's format."""
    return f"任务: {task}\n输入: {text}"


def render_messages(
    tokenizer: Any, messages: list[dict], *, generation_prompt: bool, thinking: bool = False
) -> str:
    """The chat template applied to `messages` (with the generation prompt or not)."""
    if not getattr(tokenizer, "chat_template", None):
        raise TemplateError(
            "the tokenizer has no chat template: train with --chat-template NAME|FILE.jinja "
            "(built-in: qwen3, chatml, gemma; the adapter keeps it), or use a model that ships one "
            "(e.g. Qwen/Qwen3-0.6B)"
        )
    try:
        return tokenizer.apply_chat_template(
            messages,
            tokenize=False,
            add_generation_prompt=generation_prompt,
            enable_thinking=thinking,
        )
    except Exception as exc:  # jinja2's TemplateError, or the template's own raise_exception
        if type(exc).__module__.split(".")[0] != "jinja2":
            raise
        roles = ", ".join(m.get("role", "?") for m in messages)
        raise TemplateError(
            f"the chat template cannot render this conversation ({roles}): {exc}"
        ) from exc


def render_chat(tokenizer: Any, messages: list[dict], *, thinking: bool = False) -> str:
    """Render a conversation ending with a user turn, ready for the assistant to answer."""
    return render_messages(tokenizer, messages, generation_prompt=True, thinking=thinking)


def render_prompt(tokenizer: Any, task: str, text: str) -> str:
    """The inference prompt of a task query: everything before the assistant's answer."""
    return render_chat(tokenizer, [{"role": "user", "content": user_message(task, text)}])


def _infer_end_of_turn(tokenizer: Any) -> str:
    """The first special token the template writes after an assistant turn's content."""
    probe = [
        {"role": "user", "content": PROBE_USER},
        {"role": "assistant", "content": PROBE_ANSWER},
    ]
    full = render_messages(tokenizer, probe, generation_prompt=False, thinking=False)
    at = full.rfind(PROBE_ANSWER)
    if at < 0:
        raise TemplateError("the chat template drops the assistant's answer from its turn")
    tail = full[at + len(PROBE_ANSWER) :]
    special = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
    for token in tokenizer.convert_ids_to_tokens(ids):
        if token in special:
            return token
    raise TemplateError(
        f"no special token closes the assistant turn: after the answer the chat template writes "
        f"{tail!r}, none of it a special token of the vocabulary, so the model could not learn "
        f"where an answer ends nor stop there; end each turn with one (e.g. <|im_end|>)"
    )


def end_of_turn_token(tokenizer: Any) -> str:
    """The token that closes an assistant turn: the first special token the chat template writes
    after the answer (`<|im_end|>` for Qwen3/ChatML, `<end_of_turn>` for Gemma); without a
    template, `<|im_end|>` where the vocabulary has it, else eos."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        if QWEN3_END_OF_TURN in tokenizer.get_vocab():
            return QWEN3_END_OF_TURN
        if tokenizer.eos_token is None:
            raise TemplateError("the tokenizer has neither a chat template nor an eos token")
        return tokenizer.eos_token
    cached = _end_of_turn_cache.get(tokenizer)
    if cached and cached[0] == template:
        return cached[1]
    token = _infer_end_of_turn(tokenizer)
    _end_of_turn_cache[tokenizer] = (template, token)
    return token


def render_turn(tokenizer: Any, messages: list[dict], k: int) -> tuple[str, str]:
    """(prompt, answer) of the assistant message `messages[k]` rendered as the last turn.

    The prompt is `render_chat(messages[:k])`, the text inference would give the model; the
    answer is what follows it, up to and including the end-of-turn token.
    """
    prompt = render_chat(tokenizer, messages[:k])
    full = render_messages(tokenizer, messages[: k + 1], generation_prompt=False, thinking=False)
    if not full.startswith(prompt):
        raise TemplateError(
            "the chat template renders the assistant turn differently from the generation "
            "prompt, so training and inference prefixes would differ:\n"
            f"prompt: {prompt!r}\nfull:   {full!r}"
        )
    answer = full[len(prompt) :]
    eot = end_of_turn_token(tokenizer)
    cut = answer.find(eot)
    if cut < 0:
        raise TemplateError(f"the rendered assistant turn has no end-of-turn token {eot!r}")
    return prompt, answer[: cut + len(eot)]


def render_example(tokenizer: Any, task: str, text: str, output: str) -> tuple[str, str]:
    """Split a training sample into (prompt, answer); answer ends with the end-of-turn token.

    The prompt is `render_prompt`'s text, so training and inference share one prefix.
    """
    messages = [
        {"role": "user", "content": user_message(task, text)},
        {"role": "assistant", "content": output},
    ]
    return render_turn(tokenizer, messages, 1)


def strip_thinking(text: str) -> str:
    """Drop a `<think>...</think>` block (empty or not) from generated text."""
    if THINK_CLOSE in text:
        text = text.split(THINK_CLOSE, 1)[1]
    elif text.lstrip().startswith(THINK_OPEN):
        return ""  # thinking never finished: there is no answer
    return text.strip()


def split_thinking(text: str) -> tuple[str, str]:
    """(thinking, answer) of a generated text; thinking is "" when there is none."""
    if THINK_CLOSE not in text:
        return "", text.strip()
    head, answer = text.split(THINK_CLOSE, 1)
    return head.replace(THINK_OPEN, "").strip(), answer.strip()
