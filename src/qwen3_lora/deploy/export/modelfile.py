"""The Ollama Modelfile: the GGUF to load, a Go `TEMPLATE` that renders messages as the chat
template does with thinking off, the stop tokens, and greedy decoding.

Ollama does not run the Jinja template inside the GGUF; it runs the Modelfile's Go template, so
that template is generated from the turn structure found in the Jinja one (`template.chat_turns`)
and the tests render both and compare.
"""

from __future__ import annotations

import json

from .template import ChatTurns


def _literal(text: str) -> str:
    """Template text that renders as `text`: raw where Go would not read it as an action."""
    if "{{" in text or '"""' in text or "}}" in text:
        return "{{ " + json.dumps(text, ensure_ascii=False) + " }}"
    return text


def _turn(role: str, wrap: tuple[str, str]) -> str:
    return f'{{{{ if eq .Role "{role}" }}}}{_literal(wrap[0])}{{{{ .Content }}}}{_literal(wrap[1])}{{{{ end }}}}'


def ollama_template(turns: ChatTurns) -> str:
    """A Go text/template over `.Messages` that renders the conversation and the answer's start."""
    roles = [("user", turns.user), ("assistant", turns.assistant)]
    if turns.system is not None:
        roles.insert(0, ("system", turns.system))
    body = "".join(_turn(role, wrap) for role, wrap in roles)
    return f"{_literal(turns.start)}{{{{ range .Messages }}}}{body}{{{{ end }}}}{_literal(turns.generation)}"


def modelfile(
    *,
    model: str,
    template: str,
    stop: list[str],
    num_ctx: int,
    adapter: str | None = None,
) -> str:
    """The Modelfile text. `model` and `adapter` are paths relative to the Modelfile."""
    lines = [f"FROM {model}"]
    if adapter:
        lines.append(f"ADAPTER {adapter}")
    lines.append(f'TEMPLATE """{template}"""')
    lines += [f"PARAMETER stop {json.dumps(s, ensure_ascii=False)}" for s in stop]
    # Greedy like the trained model's own decoding: labels and extractions must not vary.
    lines += [
        "PARAMETER temperature 0",
        "PARAMETER top_k 1",
        "PARAMETER repeat_penalty 1",
        f"PARAMETER num_ctx {num_ctx}",
    ]
    return "\n".join(lines) + "\n"
