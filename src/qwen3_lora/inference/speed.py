"""Inference speed paths for a model with frozen weights (a PEFT adapter over its base, or a
model merged in memory), behind one call that the Predictor makes: `speed_up`.

- `FoldedLinear`: the LM head multiplies its rows as one matrix. `torch.matmul` folds a 3D input
  into one `mm` only when the leading strides allow a view or the weight requires grad
  (pytorch/pytorch#186148). A head fed a strided slice of the hidden states (an int
  `logits_to_keep`: the prefill's last column in `generate`, the label columns in scoring) with
  frozen weights fails both, and matmul falls back to `bmm` over the weight expanded to
  (batch, hidden, vocab) and made contiguous: a copy of Qwen3's whole 151,936 x 1024 head per
  row of the batch, on every call. A base model loaded alone escapes only because its weights
  still require grad.

It computes exactly what `nn.Linear` computes (tests/test_predict.py).

- `PackedLinear`: on CPU, a bf16 linear layer (the decoder's projections and the LM head)
  multiplies on a copy of its weight packed once into oneDNN's blocked layout. `F.linear` hands
  oneDNN the weight in torch's row-major layout and oneDNN reorders it on every call: at the one
  to eight rows of a decode step that reorder, one more pass over every weight of the model per
  token, is a large share of the step. The packed matmul is the same oneDNN kernel on the
  same values, so its outputs are `F.linear`'s bit for bit (tests/test_predict.py). The dense
  weight stays (the embedding shares the LM head's, and merging or exporting read them), so the
  packed copies cost one more copy of those weights in memory; a layer whose weight was replaced
  or changed in place since it was packed packs it again (a change made through `weight.data`
  bumps no version counter and is not seen), and calls that need gradients, or an input of
  another dtype, take `F.linear`. On a CPU whose oneDNN cannot pack bf16 (`can_pack`) the
  layers stay as they are.

- `lean_lora_forward`: the forward of a PEFT LoRA linear layer in the one state inference uses
  (one plain LoRA adapter active, not merged, no dropout), computing exactly what PEFT's
  `lora.Linear.forward` computes without its per-call bookkeeping (argument checks, the adapter
  loop, four sub-module calls) and with fewer passes over the layer's output. PEFT makes three
  fp32 tensors as wide as the output (B's product, its scaled copy, the sum with the base's
  output) and a cast back; at the widths of an MLP those passes over memory, not the rank-r
  matmuls, are what an adapter adds. With a power-of-two scaling (PEFT's default alpha / r with
  both powers of two; it commutes with rounding) one GEMM does all three: it adds the scaled
  product of B to an fp32 copy of the base output (`addmm_`, beta = 1), which is cast back in
  place. BLAS completes the rank-r sum before it scales it and adds the output (tested against
  PEFT), so the values are PEFT's. Any other scaling keeps PEFT's order, in place. The rank-r
  projection runs before the base layer's matmul rather than after it: that matmul streams the
  layer's whole weight through the caches, and every op after it starts cold. A model
  has one such layer per target module and layer (196 in Qwen3-0.6B), each called at every
  forward. In any other state (adapters disabled for the base model, merged, several active, a
  LoRA variant, training) the layer runs PEFT's own forward.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "FoldedLinear",
    "PackedLinear",
    "fold_output_head",
    "lean_lora_layers",
    "pack_linears",
    "speed_up",
]


class FoldedLinear(torch.nn.Linear):
    """A linear layer that multiplies its input as one (rows, features) matrix."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        rows = input.reshape(-1, input.shape[-1])
        out = self._multiply(rows)
        return out.view(*input.shape[:-1], out.shape[-1])

    def _multiply(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(rows, self.weight, self.bias)


class PackedLinear(FoldedLinear):
    """A `FoldedLinear` that multiplies on its weight packed for oneDNN (see the module
    docstring); made by `pack_linears`."""

    def _multiply(self, rows: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if (
            rows.dtype != weight.dtype
            or not rows.is_cpu
            or (torch.is_grad_enabled() and (rows.requires_grad or weight.requires_grad))
        ):
            return super()._multiply(rows)  # the packed matmul is CPU-only, without a backward
        if self.packed_from != (weight.data_ptr(), weight._version):
            self._pack()  # the weight changed since it was packed
        return torch.ops.mkldnn._linear_pointwise(rows, self.packed, self.bias, "none", [], "")

    def _pack(self) -> None:
        weight = self.weight.detach()  # shares the parameter's version counter
        # The hint is oneDNN's guess at the rows to come; results do not depend on it.
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, 8)
        self.packed_from = (weight.data_ptr(), weight._version)


def can_pack() -> bool:
    """Whether oneDNN can pack bf16 weights here: a torch build with mkldnn, on a CPU with the
    instructions oneDNN's bf16 path needs (AVX-512 BW, VL and DQ, or AVX-NE-CONVERT). Elsewhere
    (many laptops, older servers) packing raises, and `F.linear` falls back to torch's own bf16
    GEMM, which the layers then keep."""
    ops = torch.ops.mkldnn
    if not (torch.backends.mkldnn.is_available() and hasattr(ops, "_reorder_linear_weight")):
        return False
    supported = getattr(ops, "_is_mkldnn_bf16_supported", None)
    return bool(supported is not None and supported())


def pack_linears(model) -> int:
    """Make the model's bf16 CPU `nn.Linear` and `FoldedLinear` layers `PackedLinear`s, in place
    (idempotent; adapter matrices, kept in fp32, are left alone). Returns how many."""
    if not can_pack():
        return 0
    changed = 0
    with torch.no_grad():
        for module in model.modules():
            if type(module) not in (torch.nn.Linear, FoldedLinear):
                continue
            weight = module.weight
            if weight.dtype != torch.bfloat16 or weight.device.type != "cpu":
                continue
            module.__class__ = PackedLinear
            module._pack()
            changed += 1
    return changed


def fold_output_head(model) -> int:
    """Make the `nn.Linear` layers of the model's output head `FoldedLinear`s, in place (same
    weights, tying and state dict; inside a PEFT wrapper of the head too). Returns how many."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if not isinstance(head, torch.nn.Module):
        return 0
    changed = 0
    for module in head.modules():
        if type(module) is torch.nn.Linear:
            module.__class__ = FoldedLinear
            changed += 1
    return changed


def lean_lora_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """PEFT's `lora.Linear.forward` for one active plain adapter (see the module docstring)."""
    active = self.active_adapters
    if (
        args
        or kwargs
        or self.training
        or self.disable_adapters
        or self.merged_adapters
        or len(active) != 1
        or active[0] in self.lora_variant
        or active[0] not in self.lora_A
        or not getattr(self, "cast_input_dtype_enabled", True)
    ):
        return type(self).forward(self, x, *args, **kwargs)
    name = active[0]
    a = self.lora_A[name].weight
    b = self.lora_B[name].weight
    scaling = self.scaling[name]
    rows = x.reshape(-1, x.shape[-1])
    # Before the base matmul, which leaves the caches cold (the module docstring).
    down = torch.nn.functional.linear(rows.to(a.dtype), a)
    result = self.base_layer.forward(rows)
    if not _is_power_of_two(scaling):
        # In place, the sum is computed in the promoted dtype and cast to the result's: PEFT's
        # `(result + lora).to(result.dtype)`.
        result.add_(torch.nn.functional.linear(down, b).mul_(scaling))
    else:
        # BLAS sums B's product, scales it (alpha) and adds it to a copy of the result in the
        # rank-r side's dtype (beta = 1): PEFT's three steps in one GEMM, with no tensor of the
        # product alone.
        total = result.to(down.dtype)
        total.addmm_(down, b.t(), alpha=scaling)
        if total is not result:
            result.copy_(total)
    return result.view(*x.shape[:-1], result.shape[-1])


def _is_power_of_two(value: float) -> bool:
    return value > 0 and math.frexp(value)[0] == 0.5


def lean_lora_layers(model) -> int:
    """Give the model's PEFT LoRA linear layers `lean_lora_forward`, in place (idempotent).
    Returns how many. Only layers whose base is a plain `nn.Linear`, whose LoRA matrices are
    plain bias-free linears and whose dropout is a no-op in eval mode qualify."""
    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:
        return 0
    changed = 0
    for module in model.modules():
        if type(module) is not LoraLinear or type(module.base_layer) not in (
            torch.nn.Linear,
            FoldedLinear,
            PackedLinear,
        ):
            continue
        parts = [*module.lora_A.values(), *module.lora_B.values()]
        dropouts = module.lora_dropout.values()
        if any(type(p) is not torch.nn.Linear or p.bias is not None for p in parts) or any(
            type(d) not in (torch.nn.Identity, torch.nn.Dropout) for d in dropouts
        ):
            continue
        if module.__dict__.get("forward") is None:
            module.forward = lean_lora_forward.__get__(module)
        changed += 1
    return changed


def speed_up(model) -> None:
    """The speed paths, in place, for a model about to answer queries (idempotent)."""
    fold_output_head(model)
    pack_linears(model)
    lean_lora_layers(model)
