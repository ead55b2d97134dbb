"""`qwen3-lora export`: a trained adapter (merged) or a model folder as GGUF for llama.cpp and
Ollama, or the adapter alone as a llama.cpp LoRA GGUF.

    export(adapter="outputs/run", output="out/", outtype="q8_0")
    # out/model.gguf, out/Modelfile, out/README.md, out/export_config.json

The GGUF carries the merged weights, the architecture's metadata (`architectures`), the
tokenizer (`tokenizer`) and the chat template with thinking forced off (`template`); the
Modelfile's Go template is generated from the same turns (`modelfile`). Every file is written
under a temporary name and renamed into place (`files.atomic_path`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from ...data.registry import load_registry
from ...files import atomic_path, atomic_write_text
from ...models.adapter import AdapterFolder, stop_token_ids
from .architectures import ExportError, gguf_architecture
from .gguf_file import FLOAT_OUTTYPES, KQUANT_OUTTYPES, OUTTYPES, gguf_module, write_gguf
from .lora import check_adapter_config, lora_metadata, lora_tensors, needs_folded_scale
from .modelfile import modelfile, ollama_template
from .quantize import find_quantizer
from .readme import ReadmeFacts, export_readme
from .sources import Loaded, context_for_ollama, load_base_for, load_merged
from .template import chat_turns, thinking_off_template
from .tokenizer import normalises_nfc
from .writer import ModelFacts, write_model

__all__ = ["FORMATS", "LORA_OUTTYPES", "OUTTYPES", "ExportError", "ExportResult", "export"]
log = logging.getLogger(__name__)

FORMATS = ("gguf", "gguf-lora")
LORA_OUTTYPES = ("f32", "f16", "bf16", "q8_0")
DEFAULT_OUTTYPE = {"gguf": "f16", "gguf-lora": "f32"}
MODEL_FILE, ADAPTER_FILE, BASE_FILE = "model.gguf", "adapter.gguf", "base.gguf"
TEMPLATE_FILE, EXPORT_CONFIG = "chat_template.jinja", "export_config.json"


@dataclass
class ExportResult:
    output_dir: Path
    files: list[str]
    architecture: str
    outtype: str
    record: dict = field(default_factory=dict)  # what export_config.json says


def _check_arguments(adapter, model, fmt: str, outtype: str, base_outtype) -> None:
    if (adapter is None) == (model is None):
        raise ExportError("give exactly one of --adapter (a trained adapter) or --model (a folder)")
    if fmt not in FORMATS:
        raise ExportError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    allowed = LORA_OUTTYPES if fmt == "gguf-lora" else OUTTYPES
    if outtype not in allowed:
        raise ExportError(
            f"--outtype for --format {fmt} must be one of {', '.join(allowed)}, not {outtype!r}"
        )
    if fmt == "gguf-lora" and adapter is None:
        raise ExportError("--format gguf-lora exports an adapter: pass --adapter")
    if base_outtype is not None and (fmt != "gguf-lora" or base_outtype not in OUTTYPES):
        raise ExportError(
            f"--base-outtype goes with --format gguf-lora and is one of {', '.join(OUTTYPES)}"
        )
    # What is missing is said before a model is loaded, not after.
    gguf_module()
    for kind in (outtype, base_outtype):
        if kind in KQUANT_OUTTYPES:
            find_quantizer(kind)


def _prepare_output(output) -> Path:
    out = Path(output).expanduser()
    if out.exists() and not out.is_dir():
        raise ExportError(f"--output {out} is a file; give a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def export(
    *,
    adapter: str | Path | None = None,
    model: str | Path | None = None,
    output: str | Path,
    format: str = "gguf",
    outtype: str | None = None,
    base_outtype: str | None = None,
    base_model: str | None = None,
    hub: str = "huggingface",
    trust_remote_code: bool = False,
    tasks: str | None = None,
    name: str | None = None,
) -> ExportResult:
    """Export to `output`: model.gguf (format gguf), or adapter.gguf and, with `base_outtype`,
    base.gguf (format gguf-lora); with a Modelfile, a README.md and export_config.json."""
    outtype = outtype or DEFAULT_OUTTYPE.get(format, "f16")
    _check_arguments(adapter, model, format, outtype, base_outtype)
    out = _prepare_output(output)
    name = name or out.resolve().name
    if format == "gguf":
        loaded = load_merged(adapter, model, base_model, hub, trust_remote_code)
        return _export_model(loaded, out, outtype, name, tasks, model)
    folder = AdapterFolder.read(adapter)
    check_adapter_config(folder.config)
    loaded = load_base_for(folder, base_model, hub, trust_remote_code)
    return _export_lora(loaded, out, outtype, base_outtype, name, tasks)


def model_facts(loaded: Loaded) -> ModelFacts:
    """Architecture, thinking-off chat template, its turns and the stop tokens of a model."""
    tokenizer = loaded.tokenizer
    template = thinking_off_template(tokenizer)
    # The end of turn first (llama.cpp's eos and eot), then the generation config's other ids.
    configured = getattr(loaded.model.generation_config, "eos_token_id", None)
    stops = stop_token_ids(tokenizer)
    stops += [i for i in stop_token_ids(tokenizer, configured) if i not in stops]
    return ModelFacts(
        arch=gguf_architecture(loaded.model.config),
        template=template,
        turns=chat_turns(tokenizer, template),
        stop_ids=stops,
        stop=[tokenizer.convert_ids_to_tokens(i) for i in stops],
        source_gguf=loaded.source_gguf,
    )


def _write_guides(out: Path, loaded: Loaded, facts: ModelFacts, readme: dict, tasks, model):
    """Write the Modelfile and README.md; returns what export_config.json records of them."""
    num_ctx, trained = context_for_ollama(loaded, model)
    adapter_file = readme.get("adapter_file")
    text = modelfile(
        model=f"./{readme['model_file']}",
        adapter=f"./{adapter_file}" if adapter_file else None,
        template=ollama_template(facts.turns),
        stop=facts.stop,
        num_ctx=num_ctx,
    )
    atomic_write_text(out / "Modelfile", text)
    about = ReadmeFacts(
        origin=loaded.origin,
        num_ctx=num_ctx,
        num_ctx_trained=trained,
        stop=facts.stop,
        nfc=normalises_nfc(loaded.tokenizer),
        system_turns=facts.turns.system is not None,
        think_block="</think>" in facts.turns.generation,
        **readme,
    )
    atomic_write_text(out / "README.md", export_readme(about, load_registry(tasks)))
    record = {"origin": loaded.origin, "architecture": facts.arch, "num_ctx": num_ctx}
    record["stop"] = facts.stop
    return record


def _save_record(out: Path, record: dict) -> None:
    text = json.dumps(record, ensure_ascii=False, indent=2, default=str) + "\n"
    atomic_write_text(out / EXPORT_CONFIG, text)


def _quantized(outtype: str | None) -> bool:
    return outtype is not None and outtype not in FLOAT_OUTTYPES


def _export_model(loaded: Loaded, out: Path, outtype: str, name: str, tasks, model):
    facts = model_facts(loaded)
    summary = write_model(out / MODEL_FILE, loaded.model, loaded.tokenizer, facts, outtype, name)
    readme = {"name": name, "outtype": outtype, "model_file": MODEL_FILE}
    readme["quantized"] = _quantized(outtype)
    record = {"format": "gguf", "outtype": outtype}
    record |= _write_guides(out, loaded, facts, readme, tasks, model)
    record[MODEL_FILE] = summary
    _save_record(out, record)
    log.info("exported %s (%s, %s) -> %s", loaded.origin, facts.arch, outtype, out)
    files = [MODEL_FILE, "Modelfile", "README.md", EXPORT_CONFIG]
    return ExportResult(out, files, facts.arch, outtype, record)


def _export_lora(loaded: Loaded, out: Path, outtype: str, base_outtype, name: str, tasks):
    from peft import PeftModel

    facts = model_facts(loaded)
    folder = loaded.adapter
    record = {"format": "gguf-lora", "outtype": outtype}
    files = []
    if base_outtype is not None:  # before PEFT wraps the base's layers in place
        record[BASE_FILE] = write_model(
            out / BASE_FILE, loaded.model, loaded.tokenizer, facts, base_outtype, f"{name}-base"
        )
        files.append(BASE_FILE)
    peft_model = PeftModel.from_pretrained(loaded.model, str(folder.path), is_trainable=False)
    fold = needs_folded_scale(folder.config)
    alpha = 0.0 if fold else float(folder.config.get("lora_alpha", 8))
    tensors = list(lora_tensors(peft_model, facts.arch, fold))
    with atomic_path(out / ADAPTER_FILE) as tmp:
        metadata = lora_metadata(facts.arch, alpha, f"{name} adapter")
        record[ADAPTER_FILE] = write_gguf(tmp, facts.arch, metadata, tensors, outtype)
    record |= {"lora_alpha": alpha, "scale_folded": fold}
    atomic_write_text(out / TEMPLATE_FILE, facts.template)
    readme = {"name": name, "outtype": outtype, "model_file": BASE_FILE}
    readme |= {"adapter_file": ADAPTER_FILE, "base_written": base_outtype is not None}
    readme |= {"base_name": loaded.source.name, "template_file": TEMPLATE_FILE}
    readme["quantized"] = _quantized(outtype) or _quantized(base_outtype)
    record |= _write_guides(out, loaded, facts, readme, tasks, None)
    _save_record(out, record)
    log.info("exported %s (%s LoRA, %s) -> %s", folder.path, facts.arch, outtype, out)
    files += [ADAPTER_FILE, TEMPLATE_FILE, "Modelfile", "README.md", EXPORT_CONFIG]
    return ExportResult(out, files, facts.arch, outtype, record)
