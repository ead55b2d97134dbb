"""LoRA dropout on CPU: the same independent Bernoulli(p) drops as `nn.Dropout`, cheaper masks.

`PackedBitsDropout` for eager steps (masks from packed random words), `HashDropout` for compiled
ones (masks from an integer hash that inductor fuses into the adapter input's loop). Both are
swapped in for PEFT's `nn.Dropout` by `use_packed_bits_dropout` / `use_hash_dropout`; CUDA keeps
`nn.Dropout`. tests/test_speed_paths.py and tests/test_compiled.py check their statistics.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback

log = logging.getLogger(__name__)


class PackedBitsDropout(torch.nn.Dropout):
    """Inverted dropout that draws its mask from 64-bit random words, four elements per word.

    On CPU, `nn.Dropout` asks the generator for one number per element, a visible share of a
    step's time with LoRA on seven modules (benchmarks/results/LATEST.md). Here each element
    keeps a 15-bit slice of a random word and is dropped when the slice is below
    round(p * 2^15): every element is an independent Bernoulli draw with p rounded to 1/32768
    (0.1 -> 0.100006), the kept ones scaled by 1 / (1 - that p), so the expectation is
    unchanged. Same generator and
    seed as `nn.Dropout`; identity in eval mode. One random word serves four elements, so the
    mask is several times cheaper to draw.
    """

    SLICE = 1 << 15

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        threshold = round(self.p * self.SLICE)
        n = x.numel()
        words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_()
        # int64 random_ draws from [0, 2^63): the top slice has 15 random bits, the others 16.
        slices = words.view(torch.int16)[:n].view(x.shape).bitwise_and_(self.SLICE - 1)
        keep = slices >= threshold
        return torch.where(keep, x * (self.SLICE / (self.SLICE - threshold)), 0)


def use_packed_bits_dropout(model: torch.nn.Module) -> int:
    """Swap the LoRA layers' dropout for `PackedBitsDropout`; returns how many."""
    return swap_lora_dropout(model, PackedBitsDropout)


_M32 = 0xFFFFFFFF


def as_int32(word):
    """The int32 value whose two's complement bits are the 32-bit word `word` (in [0, 2^32)):
    for a Python int or element-wise on an int64 tensor (cast it to int32 after)."""
    return word - ((word >> 31) << 32)


def _shr(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of 32-bit words held in int32 (torch's `>>` is arithmetic)."""
    return (x >> k) & ((1 << (32 - k)) - 1)


def hash32(x: torch.Tensor) -> torch.Tensor:
    """Chris Wellons' `lowbias32` integer hash, element-wise on 32-bit words held in int32.

    int32 lanes rather than int64 ones holding words in [0, 2^32): twice as many words per
    vector register and a native 32-bit multiply, where int64 needs a slower, wider multiply and
    a split of the constant above 2^31 to stay exact. The words are those of lowbias32 on
    unsigned 32-bit integers: products wrap mod 2^32 (torch's CPU kernels and inductor's C++
    multiply two's complement words; tests/test_compiled.py checks the hash against a
    plain-integer reference, eager and compiled, tail loops included).
    """
    x = x ^ _shr(x, 16)
    x = x * as_int32(0x7FEB352D)
    x = x ^ _shr(x, 15)
    x = x * as_int32(0x846CA68B)
    return x ^ _shr(x, 16)


class HashDropout(torch.nn.Dropout):
    """Inverted dropout whose mask is a hash of (element index, a per-module call counter).

    Element i of call n is kept when hash32(hash32(i) ^ seed_n) >= round(p * 2^32), seed_n =
    (seed_0 + n) mod 2^32, seed_0 drawn from torch's generator when the module is made (so
    `set_seed` makes runs repeat): a Bernoulli(p) draw per element, p rounded to 1/2^32, kept
    values scaled by 1 / (1 - p). The mask is int32 arithmetic and one comparison, which
    inductor fuses into one vectorised loop and can recompute in backward instead of storing;
    its CPU code for torch's random numbers is several times slower. In eager mode it is
    slower than `PackedBitsDropout`: use it in compiled graphs. Not for gradient
    checkpointing (a recomputed forward would draw the next call's mask). Checkpoints keep the
    seeds (`HashDropoutSeeds`), so a resumed run draws the uninterrupted run's masks. Identity in
    eval mode.
    """

    def __init__(self, p: float = 0.5):
        super().__init__(p)
        seed = torch.randint(0, 1 << 32, (), dtype=torch.int64)
        self.register_buffer("seed", seed, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        seed = self.seed
        if not torch.compiler.is_compiling():
            self.advance()
        if x.numel() > 1 << 31:
            raise ValueError(
                f"HashDropout indexes elements with int32: an input of {x.numel():,} elements "
                "is over 2^31; train with smaller micro-batches or without torch_compile"
            )
        index = torch.arange(x.numel(), dtype=torch.int32, device=x.device).view(x.shape)
        # The seed, a word in [0, 2^32) kept in int64 (checkpoints hold it so), as int32 bits.
        seed = as_int32(seed).to(torch.int32)
        threshold = round(self.p * (1 << 32))
        # h >= t on unsigned words is the signed comparison with both sign bits flipped.
        keep = (hash32(hash32(index) ^ seed) ^ as_int32(1 << 31)) >= as_int32(threshold ^ (1 << 31))
        # Scale after masking: the Python float scale is applied in fp32 and rounded once (a
        # bf16 copy of 1 / (1 - p) would bias every kept value).
        return (x * keep.to(x.dtype)) * ((1 << 32) / ((1 << 32) - threshold))

    def advance(self) -> None:
        """Move to the next call's seed: a new tensor, never an in-place update of the old one.

        A compiled graph's backward may recompute the mask from the seed it was given instead
        of keeping the mask; mutating that tensor in place made backward use the next call's
        mask (wrong input gradients; tests/test_compiled.py). Inside a compiled graph the seed
        is only read: `qwen3_lora.compiled` advances each layer's dropouts after the call.
        """
        self.seed = (self.seed + 1) & _M32


def use_hash_dropout(model: torch.nn.Module) -> int:
    """Swap the LoRA layers' dropout for `HashDropout`; returns how many."""
    return swap_lora_dropout(model, HashDropout)


def swap_lora_dropout(model: torch.nn.Module, kind: type[torch.nn.Dropout]) -> int:
    """Make every LoRA dropout (p > 0) of `model` a `kind`; returns how many changed."""
    swapped = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, torch.nn.ModuleDict):
            continue
        for name, dropout in dropouts.items():
            if isinstance(dropout, torch.nn.Dropout) and type(dropout) is not kind and dropout.p:
                device = next(module.parameters()).device
                dropouts[name] = kind(dropout.p).to(device)
                swapped += 1
    return swapped


SEEDS_FILE = "hash_dropout_seeds.safetensors"


class HashDropoutSeeds(TrainerCallback):
    """Each checkpoint keeps every `HashDropout`'s seed, and a run resumed from it starts from
    them: its masks are the uninterrupted run's. Made by `attach`; it must run before
    `CheckpointMarker`, so that a checkpoint marked complete holds the seeds too."""

    def __init__(self, dropouts: dict[str, HashDropout]):
        self.dropouts = dropouts

    @classmethod
    def attach(cls, model: torch.nn.Module, resume_from: Path | None) -> HashDropoutSeeds | None:
        """The callback for a model with `HashDropout`s (None without), their seeds first set
        to those of `resume_from`, the checkpoint a run resumes from."""
        dropouts = {n: m for n, m in model.named_modules() if isinstance(m, HashDropout)}
        if not dropouts:
            return None
        seeds = cls(dropouts)
        if resume_from is not None:
            seeds.restore(Path(resume_from))
        return seeds

    def restore(self, checkpoint: Path) -> None:
        path = checkpoint / SEEDS_FILE
        if not path.is_file():
            # A checkpoint of a run that trained eagerly, or from before seeds were kept.
            log.warning(
                "%s holds no dropout seeds: the masks from here on differ from an "
                "uninterrupted run's (same rate, other draws)",
                checkpoint,
            )
            return
        saved = load_file(path)
        for name, dropout in self.dropouts.items():
            if name in saved:
                dropout.seed = saved[name].reshape(()).to(dropout.seed.device)
        unmatched = len(self.dropouts.keys() ^ saved.keys())
        if unmatched:
            log.warning(
                "%s: %d dropout seed(s) match no module of this model (or no seed was saved "
                "for them); those layers draw masks other than the uninterrupted run's",
                path,
                unmatched,
            )

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            seeds = {n: d.seed.detach().reshape(1).cpu() for n, d in self.dropouts.items()}
            # In place: a kill mid-write leaves the checkpoint unmarked, and resume skips it.
            save_file(seeds, str(folder / SEEDS_FILE))
