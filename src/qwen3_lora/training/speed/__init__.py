"""The speed paths of LoRA training, behind one call that `train()` makes: `speed_up`.

- `attention`: plain matmul attention for short sequences while training on CPU (sdpa's CPU
  backward is slow there);
- `dropout`: LoRA dropout masks that are cheaper to draw on CPU than `nn.Dropout`'s;
- `compiled`: the decoder layers compiled once with dynamic shapes, where a run is long enough
  to repay the compile;
- `memory`: on CPU, large tensors reuse freed heap memory (compiled layers), and freed heap
  pages go back to the OS every few optimizer steps.

Each keeps the loss and every gradient equal to the plain path's (tests/test_speed_paths.py,
tests/test_compiled.py); what each buys is measured in benchmarks/results/LATEST.md.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from transformers import TrainerCallback

from .attention import choose_training_attention
from .compiled import choose_compile, compile_decoder_layers, is_compiled
from .dropout import HashDropoutSeeds, use_packed_bits_dropout
from .memory import ReuseFreedHeap, TrimFreedMemory

__all__ = ["HashDropoutSeeds", "SpeedPaths", "is_compiled", "speed_up"]
log = logging.getLogger(__name__)


@dataclass
class SpeedPaths:
    """What `speed_up` switched on, and the callbacks the Trainer must run for it."""

    attention: str
    compile_reason: str
    callbacks: list[TrainerCallback] = field(default_factory=list)


def speed_up(model, config, device: torch.device, *, train_flops: float, world_size: int):
    """Apply the speed paths that `config` and the run call for to a PEFT LoRA model."""
    attention = choose_training_attention(model, config.attention, device)
    log.info("attention while training: %s", attention)
    if device.type == "cpu" and config.lora_dropout > 0:
        use_packed_bits_dropout(model)
    wanted, why = choose_compile(
        config.torch_compile,
        device,
        train_flops=train_flops,
        gradient_checkpointing=config.gradient_checkpointing,
        quantized=bool(config.quantization),
        world_size=world_size,
    )
    if wanted:
        layers = compile_decoder_layers(model)
        log.info(
            "compiled decoder layers (%d, dynamic shapes; compiling on the first step): %s",
            layers,
            why,
        )
    else:
        log.info("decoder layers not compiled: %s", why)
    paths = SpeedPaths(attention, why)
    if wanted and config.reuse_heap and device.type == "cpu" and (reuse := ReuseFreedHeap.create()):
        paths.callbacks.append(reuse)
    if (
        config.trim_memory
        and device.type == "cpu"
        and (trimmer := TrimFreedMemory.create(config.trim_every))
    ):
        paths.callbacks.append(trimmer)
    return paths
