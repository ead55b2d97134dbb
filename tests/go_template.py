"""A small interpreter of the Go text/template subset Ollama's templates use, for the tests:
text, `{{ pipeline }}`, `{{- ... -}}` trimming, if / else if / else / end, range (with
`$i, $v :=`) / else / end, `$x := ...`, the functions eq ne and or not len slice index, fields
(.A.B, $.A, $x.A), and string, integer and boolean literals.

It is checked against real Go (`go run`) in test_export.py where a Go toolchain exists.
"""

from __future__ import annotations

import json
import re
from typing import Any

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)


def _lex(src: str) -> list[tuple[str, str]]:
    """[('text', s) | ('action', s)], trim markers applied to the neighbouring text."""
    items: list[list] = []
    pos = 0
    for m in _ACTION.finditer(src):
        items.append(["text", src[pos : m.start()]])
        items.append(["action", m.group(2).strip(), bool(m.group(1)), bool(m.group(3))])
        pos = m.end()
    items.append(["text", src[pos:]])
    for i, item in enumerate(items):
        if item[0] == "action":
            if item[2]:
                items[i - 1][1] = items[i - 1][1].rstrip(" \t\r\n")
            if item[3]:
                items[i + 1][1] = items[i + 1][1].lstrip(" \t\r\n")
    return [(it[0], it[1]) for it in items if not (it[0] == "text" and it[1] == "")]


def _parse(tokens, i=0):
    """(nodes, index of the stopping action, its text)."""
    nodes = []
    while i < len(tokens):
        kind, s = tokens[i]
        if kind == "text":
            nodes.append(("text", s))
            i += 1
            continue
        word = s.split(None, 1)[0] if s else ""
        if word in ("end", "else"):
            return nodes, i, s
        if word == "if":
            node, i = _parse_if(tokens, i, s[2:].strip())
            nodes.append(node)
        elif word == "range":
            body, j, stop = _parse(tokens, i + 1)
            otherwise = []
            if stop == "else":
                otherwise, j, stop = _parse(tokens, j + 1)
            nodes.append(("range", s[5:].strip(), body, otherwise))
            i = j + 1
        elif word.startswith("/*"):
            i += 1
        else:
            nodes.append(("action", s))
            i += 1
    return nodes, i, None


def _parse_if(tokens, i, cond):
    branches = []
    body, j, s = _parse(tokens, i + 1)
    branches.append((cond, body))
    while s is not None and s.startswith("else"):
        rest = s[4:].strip()
        body, j, next_s = _parse(tokens, j + 1)
        branches.append((rest[3:].strip() if rest.startswith("if ") else None, body))
        s = next_s
    return ("if", branches), j + 1


def _split_args(expr: str) -> list[str]:
    out, depth, cur, quoted = [], 0, "", False
    for ch in expr:
        if quoted:
            cur += ch
            if ch == '"' and not cur.endswith('\\"'):
                quoted = False
            continue
        if ch == '"':
            quoted = True
            cur += ch
        elif ch in "()":
            depth += 1 if ch == "(" else -1
            cur += ch
        elif ch.isspace() and depth == 0:
            if cur:
                out.append(cur)
            cur = ""
        else:
            cur += ch
    if cur:
        out.append(cur)
    return out


def _truth(v) -> bool:
    return not (v is None or v is False or v == 0 or v == "" or (hasattr(v, "__len__") and not v))


def _field(obj, name):
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


class _Env:
    def __init__(self, root, dot, variables=None):
        self.root, self.dot = root, dot
        self.vars = dict(variables or {"$": root})

    def child(self, dot):
        return _Env(self.root, dot, self.vars)

    def term(self, t: str):
        if t.startswith("(") and t.endswith(")"):
            return self.pipe(t[1:-1])
        if t.startswith('"'):
            return json.loads(t)  # Go's interpreted strings share JSON's escapes here
        if re.fullmatch(r"-?\d+", t):
            return int(t)
        if t in ("true", "false"):
            return t == "true"
        if t == ".":
            return self.dot
        if t.startswith("."):
            value = self.dot
            for part in t[1:].split("."):
                value = _field(value, part)
            return value
        if t.startswith("$"):
            head, *rest = t.split(".")
            value = self.vars[head]
            for part in rest:
                value = _field(value, part)
            return value
        raise ValueError(f"unknown term {t!r}")

    def pipe(self, expr: str):
        m = re.match(r"^(\$\w+)\s*:?=\s*(.*)$", expr, re.S)
        if m:
            self.vars[m.group(1)] = self.pipe(m.group(2))
            return ""
        fn, *rest = _split_args(expr)
        if fn in ("and", "or"):  # short-circuit, returning the deciding value as Go does
            value = None
            for t in rest:
                value = self.term(t)
                if (fn == "and") != _truth(value):
                    return value
            return value
        funcs = {
            "eq": lambda a, *b: any(a == x for x in b),
            "ne": lambda a, b: a != b,
            "not": lambda a: not _truth(a),
            "len": len,
            "slice": lambda a, i=0, j=None: a[i:j],
            "index": _index,
        }
        if fn in funcs:
            return funcs[fn](*[self.term(t) for t in rest])
        if rest:
            raise ValueError(f"unknown function {fn!r}")
        return self.term(fn)


def _index(a, *ix):
    for i in ix:
        a = a[i]
    return a


def _render(nodes, env: _Env, out: list[str]) -> None:
    for node in nodes:
        kind = node[0]
        if kind == "text":
            out.append(node[1])
        elif kind == "action":
            value = env.pipe(node[1])
            out.append(
                ""
                if value is None
                else str(value).lower()
                if isinstance(value, bool)
                else str(value)
            )
        elif kind == "if":
            for cond, body in node[1]:
                if cond is None or _truth(env.pipe(cond)):
                    _render(body, env, out)
                    break
        elif kind == "range":
            m = re.match(r"^(\$\w+)\s*(?:,\s*(\$\w+))?\s*:=\s*(.*)$", node[1])
            names, expr = ((m.group(1), m.group(2)), m.group(3)) if m else ((None, None), node[1])
            items = env.pipe(expr) or []
            if not items:
                _render(node[3], env, out)
            for i, item in enumerate(items):
                inner = env.child(item)
                if names[1]:
                    inner.vars[names[0]], inner.vars[names[1]] = i, item
                elif names[0]:
                    inner.vars[names[0]] = item
                _render(node[2], inner, out)


def render_go_template(src: str, data: dict[str, Any]) -> str:
    nodes, _, _ = _parse(_lex(src))
    out: list[str] = []
    _render(nodes, _Env(data, data), out)
    return "".join(out)


def ollama_messages(messages: list[dict]) -> dict:
    """The data Ollama hands a template: `.Messages` with Role and Content."""
    return {"Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages]}


# Real Go text/template for the cross-check: reads {"Template", "Cases"} JSON on stdin.
GO_PROGRAM = """package main

import (
	"bytes"
	"encoding/json"
	"os"
	"text/template"
)

type Message struct {
	Role    string
	Content string
}

type Values struct {
	Messages []Message
}

type Input struct {
	Template string
	Cases    []Values
}

func main() {
	var in Input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		panic(err)
	}
	t := template.Must(template.New("t").Parse(in.Template))
	out := []string{}
	for _, c := range in.Cases {
		var b bytes.Buffer
		if err := t.Execute(&b, c); err != nil {
			panic(err)
		}
		out = append(out, b.String())
	}
	json.NewEncoder(os.Stdout).Encode(out)
}
"""
