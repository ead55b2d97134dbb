"""OUT/README.md: what the export folder holds and how to run it with llama-server and Ollama,
with the request a client sends for each task."""

from __future__ import annotations

import json
from dataclasses import dataclass

from ...data.registry import TaskRegistry
from ...prompt.render import user_message

EXAMPLE_INPUTS = {
    "classification": "怎么发布地图服务",
    "generation": "数据清洗流程",
    "extraction": "我有一批西安市地类图斑的数据，怎么进行发服务",
}
ANSWERS = {"generation": "free text", "extraction": "a span of the input"}


@dataclass(frozen=True)
class ReadmeFacts:
    """What the README says about one export."""

    name: str  # the Ollama model name suggested
    origin: str  # "The LoRA adapter X merged into Y", ...
    outtype: str
    model_file: str  # the GGUF llama-server loads with -m
    num_ctx: int
    num_ctx_trained: bool  # num_ctx is the training max length
    stop: list[str]
    nfc: bool  # the tokenizer NFC-normalises text and llama.cpp does not
    system_turns: bool  # the Ollama template renders system messages
    think_block: bool  # the generation prompt ends with an empty think block
    adapter_file: str | None = None  # gguf-lora: the LoRA GGUF
    base_written: bool = True
    base_name: str = ""
    template_file: str | None = None
    quantized: bool = False  # a GGUF written is quantized (q8_0, q4_k_m, ...)


def _files(facts: ReadmeFacts) -> list[str]:
    if facts.adapter_file is None:
        return [
            f"- `{facts.model_file}`: the model ({facts.outtype}), its tokenizer and chat template",
            "- `Modelfile`: for `ollama create`",
        ]
    base = (
        "the base model, its tokenizer and chat template"
        if facts.base_written
        else f"not written: add `--base-outtype f16` to write it, or use a llama.cpp GGUF of "
        f"`{facts.base_name}` under this name"
    )
    return [
        f"- `{facts.adapter_file}`: the LoRA adapter ({facts.outtype}) as a llama.cpp LoRA GGUF",
        f"- `{facts.model_file}`: {base}",
        f"- `{facts.template_file}`: the chat template, thinking off, for a base GGUF from "
        f"elsewhere (`--chat-template-file`)",
        "- `Modelfile`: for `ollama create`",
    ]


def _task_rows(registry: TaskRegistry) -> str:
    rows = []
    for task in registry.tasks:
        content = user_message(task.name, EXAMPLE_INPUTS.get(task.kind, "数据清洗流程"))
        answer = " / ".join(task.labels) if task.labels else ANSWERS.get(task.kind, "text")
        shown = json.dumps(content, ensure_ascii=False)
        rows.append(f"| {task.name} (`{task.id}`) | {task.kind} | `{shown}` | {answer} |")
    return "\n".join(rows)


def _curl(registry: TaskRegistry) -> str:
    task = registry.tasks[0]
    content = user_message(task.name, EXAMPLE_INPUTS.get(task.kind, "数据清洗流程"))
    body = {"messages": [{"role": "user", "content": content}], "temperature": 0}
    body["max_tokens"] = 64
    return (
        "curl http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \\\n"
        f"  -d '{json.dumps(body, ensure_ascii=False)}'"
    )


def _notes(facts: ReadmeFacts) -> list[str]:
    notes = []
    if facts.nfc:
        notes.append(
            "- The tokenizer NFC-normalises text and llama.cpp does not: send NFC text "
            "(Python: `unicodedata.normalize('NFC', text)`), or decomposed accents tokenise "
            "differently from training."
        )
    if not facts.system_turns:
        notes.append(
            "- The Ollama template renders user and assistant turns only: this chat template "
            "has no system turn of its own."
        )
    if facts.think_block:
        notes.append(
            "- llama-server parses the empty think block the prompt ends with as the start of "
            "the answer and returns `content` with its newlines in front: strip the content "
            "(as qwen3-lora does)."
        )
    if facts.quantized:
        notes.append(
            "- On an Intel CPU with AMX (Sapphire Rapids and later), llama.cpp builds that "
            "compile in ggml's AMX kernels (a native build there) crash on quantized GGUFs "
            "(ggml-org/llama.cpp#20824): start llama-server with `--no-repack`, or build "
            "llama.cpp (or llama-cpp-python) with `-DCMAKE_C_FLAGS=-mno-amx-int8 "
            "-DCMAKE_CXX_FLAGS=-mno-amx-int8`."
        )
    if facts.adapter_file:
        notes.append(
            "- Ollama accepts the `ADAPTER` line, but recent Ollama engines are reported to fail "
            "at run time with LoRA adapters: for Ollama, export merged (`--format gguf`) and "
            "use that Modelfile."
        )
    return notes or ["- None."]


def _llama_server(facts: ReadmeFacts) -> str:
    command = f"llama-server -m {facts.model_file}"
    if facts.adapter_file:
        command += f" --lora {facts.adapter_file}"
    command += " --jinja"
    if facts.adapter_file and not facts.base_written:
        command += f" --chat-template-file {facts.template_file}"
    return command + f" -c {facts.num_ctx} --port 8080"


def export_readme(facts: ReadmeFacts, registry: TaskRegistry) -> str:
    """The README.md of an export folder."""
    lora = f', lora_path="{facts.adapter_file}"' if facts.adapter_file else ""
    stop = ", ".join(f"`{s}`" for s in facts.stop)
    ctx = "the training maximum length" if facts.num_ctx_trained else "no training record found"
    return f"""# {facts.name}

{facts.origin}, exported for llama.cpp and Ollama.

{chr(10).join(_files(facts))}

Every prompt is one user turn `任务: {{task}}\\n输入: {{input}}`, rendered by the embedded chat
template with thinking **off** whatever the runtime asks (the template fixes
`enable_thinking = false`), so a deployed prompt is token for token the trained one. Answers end
with {stop}; decode greedily (temperature 0).

## llama.cpp

```sh
{_llama_server(facts)}
```

`--jinja` renders the embedded template. From Python (llama-cpp-python):
`Llama(model_path="{facts.model_file}"{lora}).create_chat_completion(messages=..., temperature=0)`.

## Ollama

```sh
ollama create {facts.name} -f Modelfile
ollama run {facts.name} "$(printf '任务: 问题类型分类\\n输入: 怎么发布地图服务')"
```

The Modelfile's `TEMPLATE` renders messages as the chat template does, and sets the stop
tokens, temperature 0, top_k 1, repeat_penalty 1 and num_ctx {facts.num_ctx} ({ctx}).

## The tasks

A client sends one user message per query, `content` = `任务: <task name>\\n输入: <text>`:

| task | kind | message content | answer |
| --- | --- | --- | --- |
{_task_rows(registry)}

```sh
{_curl(registry)}
```

The answer is `choices[0].message.content`. Ollama's OpenAI endpoint takes the same body at
`http://127.0.0.1:11434/v1/chat/completions` with `"model": "{facts.name}"`.

## Notes

{chr(10).join(_notes(facts))}
"""
