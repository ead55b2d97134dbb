"""A PEFT LoRA adapter as a llama.cpp LoRA GGUF (`llama-server --lora`, Ollama's `ADAPTER`).

Each adapted linear layer gives `<base tensor>.lora_a` (PEFT's lora_A, rank x in) and
`<base tensor>.lora_b` (lora_B, out x rank); llama.cpp adds `scale * B (A x)` with
`scale = alpha / rank`, or 1 when alpha is 0, which is how rsLoRA's and per-module scales are
carried: folded into B.
"""

from __future__ import annotations

from collections.abc import Iterator

from .architectures import ExportError, TensorSource, row_transform, tensor_name_map

# Adapters on these change the vocabulary matrices: llama.cpp's LoRA loader has no place for
# them, so such an adapter is exported merged (--format gguf).
EMBEDDING_MODULES = ("embed_tokens", "lm_head")


def check_adapter_config(config: dict) -> None:
    """Refuse adapters llama.cpp cannot apply, saying what to do instead."""
    problems = []
    if config.get("use_dora"):
        problems.append("DoRA (use_dora) has no llama.cpp LoRA form")
    if config.get("modules_to_save"):
        problems.append(f"modules_to_save {config['modules_to_save']} are full tensors")
    if config.get("bias", "none") != "none":
        problems.append(f"bias={config['bias']!r} trains biases")
    targets = config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else targets
    touched = [m for m in targets if any(e in m for e in EMBEDDING_MODULES)]
    if touched:
        problems.append(f"LoRA on {touched} changes the embeddings")
    if problems:
        raise ExportError(
            "this adapter cannot be a llama.cpp LoRA GGUF: "
            + "; ".join(problems)
            + ". Export it merged instead: --format gguf"
        )


def needs_folded_scale(config: dict) -> bool:
    """Whether the scale differs per module or from alpha/r (rsLoRA), so B carries it."""
    return bool(
        config.get("use_rslora") or config.get("alpha_pattern") or config.get("rank_pattern")
    )


def lora_tensors(
    peft_model, arch: str, fold_scale: bool, name: str = "default"
) -> Iterator[TensorSource]:
    """The lora_a / lora_b tensors of every adapted layer, named after the base tensor."""
    base = peft_model.get_base_model()
    config = base.config
    names = tensor_name_map(arch, config.num_hidden_layers)
    found = False
    for module_name, module in base.named_modules():
        if not hasattr(module, "lora_A") or name not in module.lora_A:
            continue
        found = True
        hf_name = module_name.removeprefix("base_model.model.") + ".weight"
        target = names.get_name(hf_name, try_suffixes=(".weight",))
        if target is None:
            raise ExportError(f"{hf_name}: no llama.cpp tensor for it in the {arch} architecture")
        a = module.lora_A[name].weight
        b = module.lora_B[name].weight
        scale = float(module.scaling[name]) if fold_scale else 1.0
        transform = row_transform(arch, config, hf_name)  # rows of B are the layer's output rows
        yield TensorSource(target + ".lora_a", tuple(a.shape), lambda a=a: a.detach().float())
        yield TensorSource(target + ".lora_b", tuple(b.shape), _b_loader(b, scale, transform))
    if not found:
        raise ExportError("the adapter adapts no layer: nothing to export")


def _b_loader(b, scale: float, transform):
    def load():
        t = b.detach().float() * scale
        return transform(t) if transform is not None else t

    return load


def lora_metadata(arch: str, alpha: float, name: str):
    """`add_metadata` for `gguf_file.write_gguf`: an adapter file of type lora."""

    def add(writer) -> None:
        import gguf

        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_name(name)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    return add
