"""`qwen3-lora merge`: fold a LoRA adapter into its base model and write a plain transformers folder.

The merge is computed in fp32 on the CPU and the result cast to the requested dtype once, so a
bf16 base loses no precision to an intermediate rounding. Tied embeddings (Qwen3-0.6B ties
`lm_head` to `embed_tokens`) stay tied unless the adapter changed one side only; then the two are
untied before merging, so each keeps exactly the weights its forward pass used with the adapter.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.registry import load_registry
from ..errors import UserError
from ..files import check_writable, staged_folder
from ..models.adapter import AdapterFolder, ModelToLoad, stop_token_ids
from ..models.loading import load_base_model
from ..models.source import ModelSource
from ..prompt.render import end_of_turn_token, render_prompt

log = logging.getLogger(__name__)

MERGE_CONFIG = "merge_config.json"
MERGE_DTYPES = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "base": None,  # whatever the base model's config.json says
}


class MergeError(UserError):
    """The adapter cannot be merged as asked; the message says what to change."""


@dataclass
class MergeResult:
    output_dir: Path
    base_model: str
    dtype: str
    tie_word_embeddings: bool
    files: list[str]


def _output_dtype(name: str, source: ModelSource, trust_remote_code: bool) -> torch.dtype:
    if name not in MERGE_DTYPES:
        raise MergeError(f"--dtype must be one of {', '.join(MERGE_DTYPES)}, not {name!r}")
    dtype = MERGE_DTYPES[name]
    if dtype is not None:
        return dtype
    from transformers import AutoConfig

    # Read before loading: loading in fp32 rewrites the in-memory config's dtype.
    config = AutoConfig.from_pretrained(
        source.path, trust_remote_code=trust_remote_code, **source.kwargs()
    )
    declared = getattr(config, "dtype", None) or "float32"
    if isinstance(declared, torch.dtype):
        return declared
    return getattr(torch, str(declared).removeprefix("torch."), torch.float32)


def _shares_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _untie_embeddings(peft_model) -> bool:
    """Give the output side its own copy of every parameter it shares with the input embedding.

    With tied weights, a LoRA (or `modules_to_save`) on `embed_tokens` changes only the embedding
    lookup at run time: `lm_head` keeps reading the untouched shared matrix (and vice versa).
    Merging into the shared matrix would silently apply the delta to both sides; a copy keeps the
    merge equal to what the adapter computed. Returns whether anything was untied.
    """
    model = peft_model.get_base_model()
    embed_params = list(model.get_input_embeddings().parameters())
    head = model.get_output_embeddings()
    if head is None:
        return False
    untied = False
    for module in head.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            if any(_shares_storage(param, e) for e in embed_params):
                clone = torch.nn.Parameter(param.detach().clone(), requires_grad=False)
                setattr(module, name, clone)
                untied = True
    return untied


def _touches_embeddings(peft_model) -> list[str]:
    """Names of adapter modules wrapping the input or output embedding."""
    model = peft_model.get_base_model()
    touched = []
    for label, module in (
        ("input embedding", model.get_input_embeddings()),
        ("output embedding (lm_head)", model.get_output_embeddings()),
    ):
        if module is not None and (
            hasattr(module, "base_layer") or hasattr(module, "original_module")
        ):
            touched.append(label)
    return touched


def _set_tie(model, tied: bool) -> None:
    model.config.tie_word_embeddings = tied
    text_config = model.config.get_text_config()
    if text_config is not model.config:
        text_config.tie_word_embeddings = tied


def _retie_if_equal(model) -> bool:
    """After the merge: tie the two sides again when they ended up identical; report the state."""
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    if head is None:
        return False
    if _shares_storage(head.weight, embed):
        return True
    if head.weight.shape == embed.shape and torch.equal(head.weight, embed):
        head.weight = embed
        return True
    return False


def _ensure_end_of_turn_eos(model, tokenizer) -> list[int]:
    """Make generation stop at the end of an assistant turn (`<|im_end|>`) as well as at eos."""
    gen = model.generation_config
    eos = stop_token_ids(tokenizer, gen.eos_token_id)
    gen.eos_token_id = eos[0] if len(eos) == 1 else eos
    if gen.pad_token_id is None and tokenizer.pad_token_id is not None:
        gen.pad_token_id = tokenizer.pad_token_id
    return eos


def model_card(
    *, name: str, base_model: str, adapter: str, dtype: str, tokenizer, tasks: str | None
) -> str:
    """A short README: provenance, the prompt format, the tasks and how to run the model."""
    registry = load_registry(tasks)
    example = registry.tasks[0]
    prompt = render_prompt(tokenizer, example.name, "数据清洗流程是什么？")
    rows = "\n".join(
        f"| {t.name} | `{t.id}` | {t.kind} | {', '.join(t.labels) or '-'} |" for t in registry.tasks
    )
    return f"""---
base_model: {base_model}
library_name: transformers
pipeline_tag: text-generation
tags: [qwen3, lora, merged, qwen3-lora]
---

# {name}

A data-platform assistant: the LoRA adapter `{adapter}` merged into `{base_model}`
(weights in {dtype}). It loads with plain `transformers.AutoModelForCausalLM`; no PEFT needed.

## Prompt format

Every task is a single user turn `任务: {{task}}\\n输入: {{input}}`, rendered with the bundled
chat template with thinking **disabled** (`enable_thinking=False`). The model answers with the
bare label / answer and ends the turn with `{end_of_turn_token(tokenizer)}`, which
`generation_config.json` lists as an eos token, so generation stops there. Example prompt:

```text
{prompt}```

## Tasks

| name | id | kind | labels |
| --- | --- | --- | --- |
{rows}

## Usage

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tok = AutoTokenizer.from_pretrained("{name}")
model = AutoModelForCausalLM.from_pretrained("{name}")
messages = [{{"role": "user", "content": "任务: {example.name}\\n输入: 数据清洗流程是什么？"}}]
prompt = tok.apply_chat_template(
    messages, tokenize=False, add_generation_prompt=True, enable_thinking=False
)
ids = tok(prompt, add_special_tokens=False, return_tensors="pt").input_ids
out = model.generate(ids, max_new_tokens=64, do_sample=False)
print(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip())
```

Or serve it: `qwen3-lora serve --model {name}`.
"""


@dataclass
class MergedModel:
    """An adapter folded into its base, in memory: the model, its tokenizer, how it was made."""

    model: torch.nn.Module
    tokenizer: object
    base_model: str
    adapter: Path
    tied: bool
    eos: list[int]


def merge_in_memory(
    adapter: str | Path,
    *,
    base_model: str | None = None,
    dtype: str = "fp32",
    hub: str = "huggingface",
    trust_remote_code: bool = False,
) -> MergedModel:
    """Merge `adapter` into its base model on the CPU (in fp32, then cast to `dtype` once)."""
    folder = AdapterFolder.read(adapter)
    source = folder.base_source(base_model, hub)
    out_dtype = _output_dtype(dtype, source, trust_remote_code)
    cpu = torch.device("cpu")
    # The tokenizer first: the model's load then reuses a GGUF file's parse (gguf_reads).
    tokenizer = ModelToLoad(source, folder).load_tokenizer(trust_remote_code)
    model = load_base_model(source, torch.float32, trust_remote_code=trust_remote_code, device=cpu)
    base_tied = bool(getattr(model.config.get_text_config(), "tie_word_embeddings", False))

    with warnings.catch_warnings():
        # PEFT warns about adapters on tied embeddings; `_untie_embeddings` handles that case.
        warnings.filterwarnings("ignore", message=r".*tie_word_embeddings.*")
        peft_model = folder.attach(model, source.name)
    touched = _touches_embeddings(peft_model)
    if base_tied and touched:
        untied = _untie_embeddings(peft_model)
        log.info("the adapter changes the %s: untied the embeddings before merging", touched)
        if untied:
            _set_tie(peft_model.get_base_model(), False)
    merged = peft_model.merge_and_unload(safe_merge=True)
    tied = _retie_if_equal(merged) if base_tied else False
    _set_tie(merged, tied)
    if base_tied and not tied:
        log.warning(
            "the adapter changed the %s only: the merged model has untied input/output "
            "embeddings (tie_word_embeddings=false), %s larger on disk",
            " and ".join(touched),
            f"{merged.get_input_embeddings().weight.numel():,} parameters",
        )
    merged = merged.to(out_dtype)
    eos = _ensure_end_of_turn_eos(merged, tokenizer)
    return MergedModel(merged, tokenizer, source.name, folder.path, tied, eos)


def merge_adapter(
    adapter: str | Path,
    output: str | Path,
    *,
    base_model: str | None = None,
    dtype: str = "fp32",
    hub: str = "huggingface",
    trust_remote_code: bool = False,
    tasks: str | None = None,
) -> MergeResult:
    """Merge `adapter` into its base model and write a plain transformers folder to `output`.

    The folder is written under a temporary name beside `output` and renamed to it at the end,
    so a killed merge leaves no `output` that looks complete."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise MergeError(f"--output {output} is a file; choose a new folder")
    if output.exists() and any(output.iterdir()):
        raise MergeError(f"output folder {output} is not empty; choose a new --output folder")
    check_writable(output)
    merged = merge_in_memory(
        adapter, base_model=base_model, dtype=dtype, hub=hub, trust_remote_code=trust_remote_code
    )
    dtype_name = str(merged.model.dtype).removeprefix("torch.")
    record = {
        "adapter": str(merged.adapter),
        "base_model": merged.base_model,
        "dtype": dtype_name,
        "merge_dtype": "float32",
        "tie_word_embeddings": merged.tied,
        "eos_token_id": merged.eos,
    }
    card = model_card(
        name=output.name,
        base_model=merged.base_model,
        adapter=str(merged.adapter),
        dtype=dtype_name,
        tokenizer=merged.tokenizer,
        tasks=tasks,
    )
    with staged_folder(output) as stage:
        merged.model.save_pretrained(stage)
        merged.tokenizer.save_pretrained(stage)
        (stage / "README.md").write_text(card, encoding="utf-8")
        (stage / MERGE_CONFIG).write_text(
            json.dumps(record, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
        )
        pickled = sorted(p.name for p in stage.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
        if pickled:
            raise MergeError(f"pickled weight files were written for {output}: {pickled}")
    files = sorted(p.name for p in output.iterdir())
    log.info("merged %s into %s (%s) -> %s", merged.adapter, merged.base_model, dtype_name, output)
    return MergeResult(output, merged.base_model, dtype_name, merged.tied, files)
