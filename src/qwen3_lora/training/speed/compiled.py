"""Compiled decoder layers for LoRA training: fused element-wise work, one compile for any length.

In eager mode about half of a CPU training step of the Qwen3-0.6B shape is spent outside the
matmuls, in thousands of small element-wise ops (norms, RoPE, SwiGLU, LoRA scaling and dropout,
dtype casts), each a separate pass over memory (`benchmarks.step_profile`). inductor fuses them
into a few loops. Compiling the way the Trainer's `torch_compile` does (the whole model, static
shapes) recompiles for every new sequence length, which costs more than it saves over an
epoch of the built-in split. Here:

- each decoder layer's forward is compiled with dynamic shapes: all layers share one graph
  (module parameters are graph inputs), and every length and batch size reuses it;
- the first layer's input requires a gradient like every other layer's (one graph, not two:
  the cost is the first layer's input gradient, a small part of a step);
- the attention mask is always built (transformers leaves it out when no row is padded, which
  would be a second graph);
- LoRA dropout draws its mask from a counter-based hash (`HashDropout`) that inductor fuses into
  the adapter input's loop (torch's generator inside a compiled graph is slower than eager);
- the compiled forward runs only while training with gradients, on batches of more than one
  sample: evaluation, generation and an epoch's odd last sample run the same layers eagerly;
- the forward/backward partition is made under an activation-memory budget
  (`ACTIVATION_MEMORY_BUDGET`): backward recomputes the cheap element-wise work (norms, dropout
  masks, SwiGLU) instead of keeping its outputs, so a layer keeps about half the bytes per token
  for backward, at no measured cost in speed.

`choose_compile` decides: `auto` compiles on CPU (with a C++ compiler, no gradient checkpointing,
one process) when a run is long enough to repay the compile time.
"""

from __future__ import annotations

import logging
import shutil

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from .attention import NAME as PLAIN_ATTENTION
from .attention import short_plain_attention
from .dropout import HashDropout, PackedBitsDropout, swap_lora_dropout, use_hash_dropout

log = logging.getLogger(__name__)

COMPILED_ATTENTION = "qwen3_lora_cpu_train_compiled"
# auto compiles a run of at least this many training FLOPs (4 x parameters x tokens x epochs):
# a run of a few minutes on a 2-core CPU, long enough for the compiled layers to save more time
# than a cold compile (no inductor cache on disk yet) costs. Compile times and what the
# compiled layers save: benchmarks/results/LATEST.md.
AUTO_MIN_FLOPS = 5e13
# torch._functorch's activation_memory_budget for the compiled layers (1.0: its default
# partition). At 0.5 backward recomputes the masked LoRA inputs and most norm and SwiGLU outputs
# (element-wise work, no matmul) instead of keeping them: about half the activation memory, at
# no measured cost in speed (benchmarks/results/LATEST.md).
ACTIVATION_MEMORY_BUDGET = 0.5


def _full_sdpa_mask(*args, **kwargs):
    # sdpa_mask returns None for a batch without padding (sdpa then uses is_causal); a compiled
    # layer would need a second graph for that case, so the causal mask is always built.
    kwargs["allow_is_causal_skip"] = False
    return sdpa_mask(*args, **kwargs)


AttentionInterface.register(COMPILED_ATTENTION, short_plain_attention)
AttentionMaskInterface.register(COMPILED_ATTENTION, _full_sdpa_mask)


def cpp_compiler() -> str | None:
    """The C++ compiler inductor would use on CPU, or None when there is none."""
    for name in ("g++", "c++", "clang++", "cl"):
        if path := shutil.which(name):
            return path
    return None


def choose_compile(
    choice: str,
    device: torch.device,
    *,
    train_flops: float,
    gradient_checkpointing: bool,
    quantized: bool,
    world_size: int,
) -> tuple[bool, str]:
    """Whether to compile the decoder layers, and why (for the log).

    `on` compiles wherever it can; `off` never; `auto` on CPU only, when a C++ compiler is found
    and the run is projected to do at least `AUTO_MIN_FLOPS` of training work.
    """
    if choice == "off":
        return False, "off"
    if gradient_checkpointing:
        return False, "not with gradient checkpointing (recomputed forwards redraw dropout)"
    if quantized:
        return False, "not with a quantized base"
    if world_size > 1:
        return False, "not with more than one process"
    if device.type == "cpu" and cpp_compiler() is None:
        return False, "no C++ compiler (g++, clang++) found for inductor on CPU"
    if choice == "on":
        return True, "on"
    if device.type != "cpu":
        return False, f"auto: compiled layers are measured on CPU only, not {device.type}"
    if train_flops < AUTO_MIN_FLOPS:
        return False, (
            f"auto: a short run ({train_flops:.1e} training FLOPs < {AUTO_MIN_FLOPS:.0e}) would "
            "not repay the compile time"
        )
    return True, f"auto: {train_flops:.1e} training FLOPs"


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks of a (PEFT-wrapped) causal LM."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def is_compiled(model: torch.nn.Module) -> bool:
    """Whether `compile_decoder_layers` has compiled this model's layers."""
    return any("forward" in vars(layer) for layer in decoder_layers(model))


def compile_decoder_layers(model: torch.nn.Module) -> int:
    """Compile each decoder layer's forward for training (see the module docstring); returns
    how many layers. Call on the PEFT model, after LoRA is attached.

    If inductor cannot compile (a broken C++ toolchain, an op it does not support), the first
    step says why in a warning and the whole run goes on eagerly, with eager dropout.
    """
    from torch._dynamo.exc import TorchDynamoException
    from torch._inductor.exc import CppCompileError, InvalidCxxCompiler

    layers = decoder_layers(model)
    if not layers:
        raise ValueError("no decoder layers found to compile")
    if model.config._attn_implementation == PLAIN_ATTENTION:
        model.set_attn_implementation(COMPILED_ATTENTION)
    use_hash_dropout(model)
    # Layer 0 then gets an input that requires a gradient, as all the others do.
    model.enable_input_require_grads()
    failed: list[Exception] = []

    def give_up(error: Exception) -> None:
        failed.append(error)
        first_line = (str(error).strip().splitlines() or [""])[0][:300]
        log.warning(
            "compiling the decoder layers failed (%s: %s); training goes on without compiling "
            "(--torch-compile off skips the attempt)",
            type(error).__name__,
            first_line,
        )
        device = next(model.parameters()).device
        swap_lora_dropout(model, PackedBitsDropout if device.type == "cpu" else torch.nn.Dropout)
        for layer in layers:
            del layer.forward  # back to the class's own forward

    for layer in layers:
        eager = layer.forward
        compiled = torch.compile(eager, dynamic=True)
        dropouts = [m for m in layer.modules() if isinstance(m, HashDropout)]

        def forward(
            hidden_states,
            *args,
            _layer=layer,
            _eager=eager,
            _compiled=compiled,
            _dropouts=dropouts,
            **kw,
        ):
            # A batch of one sample (an epoch's odd last one) runs eagerly: dynamic shapes still
            # specialise sizes of 1, so it would compile a second graph.
            if (
                not failed
                and _layer.training
                and torch.is_grad_enabled()
                and 1 not in hidden_states.shape
            ):
                try:
                    # The partition is made at the first call (the compile); the budget is part
                    # of the compile cache's key, so every call sets it the same way.
                    with torch._functorch.config.patch(
                        activation_memory_budget=ACTIVATION_MEMORY_BUDGET
                    ):
                        out = _compiled(hidden_states, *args, **kw)
                    for dropout in _dropouts:
                        if dropout.p:
                            dropout.advance()  # the graph only reads the seeds
                    return out
                except (TorchDynamoException, CppCompileError, InvalidCxxCompiler) as error:
                    give_up(error)
            return _eager(hidden_states, *args, **kw)

        layer.forward = forward
    return len(layers)
