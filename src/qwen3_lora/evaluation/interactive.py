"""`qwen3-lora test` (suite | interactive | eval | all) and `qwen3-lora chat`.

The REPLs read from a `Console`: readline's `input()` (with history) on a terminal, plain
streams otherwise, so tests drive them with `io.StringIO`. `quit`, `exit` and `退出` leave;
Ctrl-C at the prompt or end of input leaves cleanly, Ctrl-C during an answer cancels it.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from ..data.records import Sample, load_builtin, load_records
from ..files import cache_dir
from ..inference.predictor import Prediction, Predictor
from ..inference.router import route
from ..prompt.encoding import sample_prompt

QUIT_WORDS = frozenset({"quit", "exit", "退出", ":q", ":quit"})
MODES = ("suite", "interactive", "eval", "all")
HISTORY_FILE = "repl_history"


def _history_path() -> Path:
    return cache_dir() / HISTORY_FILE


class Console:
    """Where a REPL reads lines and writes text."""

    def __init__(self, stdin: TextIO | None = None, stdout: TextIO | None = None):
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.stdout
        self.readline = None
        if self.stdin is sys.stdin and self.stdin.isatty():
            try:
                import readline
            except ImportError:  # not on every platform; plain input() still works
                readline = None
            if readline is not None:
                self.readline = readline
                with contextlib.suppress(OSError):
                    readline.read_history_file(_history_path())

    def write(self, text: str = "") -> None:
        self.stdout.write(text + "\n")
        self.stdout.flush()

    def read(self, prompt: str) -> str | None:
        """One line without its newline; None at end of input or on Ctrl-C."""
        try:
            if self.stdin is sys.stdin and self.stdin.isatty():
                return input(prompt)
            self.stdout.write(prompt)
            self.stdout.flush()
            line = self.stdin.readline()
        except (EOFError, KeyboardInterrupt):
            self.write()
            return None
        return line.rstrip("\r\n") if line else None

    def close(self) -> None:
        if self.readline is not None:
            path = _history_path()
            with contextlib.suppress(OSError):
                path.parent.mkdir(parents=True, exist_ok=True)
                self.readline.set_history_length(1000)
                self.readline.write_history_file(path)


@contextlib.contextmanager
def _model(predictor: Predictor, base: bool) -> Iterator[Predictor]:
    if base:
        with predictor.without_adapter():
            yield predictor
    else:
        yield predictor


def _answer_text(p: Prediction) -> str:
    if p.probability is None:
        return p.output
    return f"{p.output} (p={p.probability:.3f})"


def sample_records(predictor: Predictor, per_task: int, data: list[str] | None = None):
    """The first `per_task` records of every task from `data` (default: the built-in eval split)."""
    records = (
        load_records(data, predictor.registry) if data else load_builtin("eval", predictor.registry)
    )
    chosen: dict[str, list[Sample]] = {}
    for record in records:
        if record.task is None:
            continue
        bucket = chosen.setdefault(record.task, [])
        if len(bucket) < per_task:
            bucket.append(record)
    return [r for task in predictor.registry.names for r in chosen.get(task, [])]


def run_suite(
    predictor: Predictor,
    console: Console | None = None,
    *,
    per_task: int = 3,
    data: list[str] | None = None,
    max_new_tokens: int = 128,
) -> list[dict]:
    """A few fixed examples of every task: base vs fine-tuned answers with timings."""
    console = console or Console()
    models = ["base", "tuned"] if predictor.has_adapter else ["model"]
    rows, current = [], None
    for record in sample_records(predictor, per_task, data):
        if record.task != current:
            current = record.task
            spec = predictor.registry.require(current)
            console.write(f"\n== {spec.name} ({spec.id}, {spec.kind}) ==")
        console.write(f"- {record.input}")
        console.write(f"    {'reference':<9}: {record.output}")
        row = {"task": record.task, "input": record.input, "reference": record.output}
        for name in models:
            with _model(predictor, name == "base"):
                prompt = sample_prompt(predictor.tokenizer, record)
                pred = predictor.predict(
                    record.task, [record.input], max_new_tokens=max_new_tokens, prompts=[prompt]
                )
            p = pred[0]
            mark = "✓" if p.output.strip() == record.output.strip() else "✗"
            console.write(f"    {name:<9}: {_answer_text(p)}  [{p.latency_ms:.1f} ms] {mark}")
            row[name] = {"output": p.output, "probability": p.probability, "ms": p.latency_ms}
        rows.append(row)
    return rows


def _help(predictor: Predictor) -> str:
    tasks = "\n".join(
        f"  :{i} or :task {t.id}  {t.name} ({t.kind})"
        for i, t in enumerate(predictor.registry.tasks, 1)
    )
    base = (
        "\n  :base          switch between the base model and the adapter" * predictor.has_adapter
    )
    return (
        "Type a message. Commands:\n"
        "  :router        the full pipeline (scene → type → answer / file name)\n"
        f"{tasks}{base}\n"
        "  :help          this text\n"
        "  quit, exit, 退出 (or Ctrl-D) to leave"
    )


def _choose(predictor: Predictor, command: str) -> str | None:
    """The task (or "router") that a `:command` names; None when it names nothing."""
    word = re.sub(r"^:(task\s+)?", "", command).strip()
    if word in ("router", "r", "0"):
        return "router"
    if word.isdigit() and 1 <= int(word) <= len(predictor.registry.tasks):
        return predictor.registry.tasks[int(word) - 1].name
    spec = predictor.registry.get(word)
    return spec.name if spec else None


def repl(predictor: Predictor, console: Console | None = None, *, max_new_tokens: int = 256) -> int:
    """The interactive mode: ask one task or the router, line by line."""
    console = console or Console()
    mode, base = "router", False
    console.write(_help(predictor))
    try:
        while True:
            tag = f"{mode}{' | base' if base else ''}"
            line = console.read(f"[{tag}]> ")
            if line is None:
                break
            line = line.strip()
            if not line:
                continue
            if line.lower() in QUIT_WORDS:
                break
            if line.startswith(":"):
                if line == ":help":
                    console.write(_help(predictor))
                elif line == ":base" and predictor.has_adapter:
                    base = not base
                    console.write("now answering with the " + ("base model" if base else "adapter"))
                elif (choice := _choose(predictor, line)) is not None:
                    mode = choice
                    console.write(f"now: {mode}")
                else:
                    console.write(f"unknown command {line!r}; :help lists them")
                continue
            try:
                with _model(predictor, base):
                    if mode == "router":
                        result = route(predictor, line, max_new_tokens=max_new_tokens)
                        console.write(json.dumps(result, ensure_ascii=False, indent=2))
                    else:
                        (p,) = predictor.predict(mode, [line], max_new_tokens=max_new_tokens)
                        console.write(f"{_answer_text(p)}  [{p.latency_ms:.1f} ms]")
            except KeyboardInterrupt:
                console.write("(interrupted)")
    finally:
        console.close()
    console.write("bye")
    return 0


def run_test(
    predictor: Predictor,
    mode: str,
    *,
    console: Console | None = None,
    output_dir: str | Path = "runs/eval",
    data: list[str] | None = None,
    per_task: int = 3,
    max_new_tokens: int = 128,
    batch_size: int = 8,
) -> int:
    """The spec's test modes; `all` runs suite, eval, then interactive."""
    from .report import render_markdown, run_eval

    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    console = console or Console()
    if mode in ("suite", "all"):
        run_suite(predictor, console, per_task=per_task, data=data, max_new_tokens=max_new_tokens)
    if mode in ("eval", "all"):
        result = run_eval(
            predictor,
            output_dir,
            data=data,
            compare_base=predictor.has_adapter,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
        )
        console.write("\n" + render_markdown(result.report))
        console.write(f"reports written to {result.output_dir}")
    if mode in ("interactive", "all"):
        return repl(predictor, console, max_new_tokens=max_new_tokens)
    return 0


def chat(
    predictor: Predictor,
    console: Console | None = None,
    *,
    message: str | None = None,
    thinking: bool = False,
    max_new_tokens: int = 1024,
    temperature: float = 0.0,
    top_p: float = 1.0,
) -> int:
    """Plain chat with the loaded model: one `message`, or a multi-turn REPL."""
    console = console or Console()

    def answer(history: list[dict]) -> str:
        began = time.perf_counter()
        thought, reply = predictor.chat(
            history,
            thinking=thinking,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
        )
        if thinking:
            console.write("[thinking]\n" + (thought or "(none)") + "\n[answer]")
        console.write(reply)
        console.write(f"[{(time.perf_counter() - began) * 1000:.0f} ms]")
        return reply

    if message is not None:
        answer([{"role": "user", "content": message}])
        return 0
    console.write("chat with the model; :reset forgets the conversation; quit, exit, 退出 leave")
    history: list[dict] = []
    try:
        while True:
            line = console.read("you> ")
            if line is None or line.strip().lower() in QUIT_WORDS:
                break
            if not line.strip():
                continue
            if line.strip() == ":reset":
                history = []
                console.write("(conversation cleared)")
                continue
            history.append({"role": "user", "content": line})
            try:
                history.append({"role": "assistant", "content": answer(history)})
            except KeyboardInterrupt:
                history.pop()
                console.write("(interrupted)")
    finally:
        console.close()
    console.write("bye")
    return 0
