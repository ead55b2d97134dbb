"""The one decode rule: which decoding a task gets, from its kind and the decode asked for.

- `score`: label scoring (`scoring`), for classification: the answer is always a label;
- `span`: greedy generation kept within the input's spans (`spans`), for extraction;
- `generate`: free greedy (or sampled) generation, for any task;
- `auto`: the kind's own decode.

A constrained decode applies to the kind it is made for; a task of another kind gets its own
decode, as with `auto`, so one `--decode` works over data that mixes tasks. `predict`, batched
prediction, `eval`, the router and the server all ask `decode_for`.
"""

from __future__ import annotations

from .errors import PredictorError

DECODES = ("auto", "generate", "score", "span")

# DECODE_RULE[kind][requested] -> the decode used.
DECODE_RULE: dict[str, dict[str, str]] = {
    "classification": {"auto": "score", "generate": "generate", "score": "score", "span": "score"},
    "extraction": {"auto": "span", "generate": "generate", "score": "span", "span": "span"},
    "generation": {
        "auto": "generate",
        "generate": "generate",
        "score": "generate",
        "span": "generate",
    },
}


def decode_for(kind: str, requested: str = "auto") -> str:
    """The decode a task of `kind` gets when `requested` is asked for."""
    if requested not in DECODES:
        raise PredictorError(f"decode must be one of {', '.join(DECODES)}, not {requested!r}")
    if kind not in DECODE_RULE:
        raise PredictorError(f"no decode rule for task kind {kind!r}")
    return DECODE_RULE[kind][requested]
