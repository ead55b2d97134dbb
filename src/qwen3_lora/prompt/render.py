"""The one place where prompts are rendered: training, evaluation, serving and merging use it.

The user turn is the spec's `任务: {task}\\n输入: {input}`; it goes through the tokenizer's own chat
template with Qwen3 thinking disabled, so the model sees at training time exactly the prefix it
gets at inference time.
"""

from __future__ import annotations

from typing import Any

from ..errors import UserError

QWEN3_END_OF_TURN = "<|im_end|>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


class TemplateError(UserError):
    """The tokenizer's chat template cannot be used for prompt/answer rendering."""


def user_message(task: str, text: str) -> str:
    """The user turn of a task query, in the spec's format."""
    return f"任务: {task}\n输入: {text}"


def _apply(tokenizer: Any, messages: list[dict], *, generation_prompt: bool, thinking: bool) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise TemplateError(
            "the tokenizer has no chat template; use an instruct/chat model "
            "(e.g. Qwen/Qwen3-0.6B) or set tokenizer.chat_template"
        )
    return tokenizer.apply_chat_template(
        messages,
        tokenize=False,
        add_generation_prompt=generation_prompt,
        enable_thinking=thinking,
    )


def render_chat(tokenizer: Any, messages: list[dict], *, thinking: bool = False) -> str:
    """Render a conversation ending with a user turn, ready for the assistant to answer."""
    return _apply(tokenizer, messages, generation_prompt=True, thinking=thinking)


def render_prompt(tokenizer: Any, task: str, text: str) -> str:
    """The inference prompt of a task query: everything before the assistant's answer."""
    return render_chat(tokenizer, [{"role": "user", "content": user_message(task, text)}])


def end_of_turn_token(tokenizer: Any) -> str:
    """The token that closes an assistant turn (`<|im_end|>` for Qwen3/ChatML, else eos)."""
    vocab = tokenizer.get_vocab()
    if QWEN3_END_OF_TURN in vocab:
        return QWEN3_END_OF_TURN
    if tokenizer.eos_token is None:
        raise TemplateError("the tokenizer has neither <|im_end|> nor an eos token")
    return tokenizer.eos_token


def render_example(tokenizer: Any, task: str, text: str, output: str) -> tuple[str, str]:
    """Split a training sample into (prompt, answer); answer ends with the end-of-turn token.

    The prompt is `render_prompt`'s text, so training and inference share one prefix.
    """
    prompt = render_prompt(tokenizer, task, text)
    messages = [
        {"role": "user", "content": user_message(task, text)},
        {"role": "assistant", "content": output},
    ]
    full = _apply(tokenizer, messages, generation_prompt=False, thinking=False)
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
