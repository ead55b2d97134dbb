"""Every speed path of our training recipe gives the loss of the plain path on a tiny model.

- LM head only at supervised positions (`labels_only`) vs the model's own full-logits loss:
  same loss and same gradients (fp32, tight tolerance).
- bf16 frozen base weights + fp32 LoRA under bf16 autocast (adapter inputs not re-cast) vs
  everything in fp32: same loss within bf16's precision (a loose tolerance, but far tighter than
  the loss's own spread).
- the chunked cross-entropy vs `F.cross_entropy` on fp32 logits: same value and gradient.
- the LoRA dropout drawn from packed random words vs `nn.Dropout`: the same distribution
  (independent Bernoulli(p) drops, kept values scaled by 1/(1-p)), same gradient rule.
- plain matmul attention for short sequences on CPU vs sdpa: same loss and gradients, with and
  without padding; long sequences and gradient-free calls still go to sdpa.
- freed heap pages handed back every few optimizer steps, not after each one.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import types

import pytest
import torch
from conftest import MEMORISE

from qwen3_lora.models.loading import load_tokenizer, resolve_precision
from qwen3_lora.prompt.encoding import PadCollator, encode_example
from qwen3_lora.training.config import TrainConfig
from qwen3_lora.training.loss import causal_lm_loss, chunked_cross_entropy
from qwen3_lora.training.speed import attention
from qwen3_lora.training.speed.dropout import PackedBitsDropout
from qwen3_lora.training.speed.memory import (
    M_MMAP_THRESHOLD,
    M_TRIM_THRESHOLD,
    ReuseFreedHeap,
    TrimFreedMemory,
)
from qwen3_lora.training.train import training_model

CPU = torch.device("cpu")


def _batch(tokenizer) -> dict[str, torch.Tensor]:
    """All MEMORISE samples in one right-padded batch: prompt masked, padding present."""
    features = [
        encode_example(tokenizer, s["task"], s["input"], s["output"]).as_features()
        for s in MEMORISE
    ]
    batch = PadCollator(tokenizer.pad_token_id)(features)
    assert (batch["attention_mask"] == 0).any(), "the batch must contain padding"
    return batch


def _model(model_dir, precision: str, attention: str = "auto"):
    config = TrainConfig(base_model=str(model_dir), lora_dropout=0.0, attention=attention)
    torch.manual_seed(0)  # LoRA A's initialisation: the same adapter in every model
    model = training_model(config, resolve_precision(precision, CPU), CPU)[0]
    # PEFT starts LoRA B at zero; give it weights so the adapter path counts in the loss.
    gen = torch.Generator().manual_seed(0)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            with torch.no_grad():
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
    return model.eval()


def _loss(model, batch, labels_only: bool, autocast: torch.dtype | None) -> torch.Tensor:
    with torch.autocast("cpu", dtype=autocast or torch.float32, enabled=autocast is not None):
        return causal_lm_loss(model, batch, labels_only=labels_only)


def _lora_grads(model) -> dict[str, torch.Tensor]:
    return {
        name: p.grad.detach().clone() for name, p in model.named_parameters() if p.requires_grad
    }


@pytest.mark.parametrize("pad_is_eos", [False, True])
def test_head_only_at_labels_equals_full_loss(tiny_model_dir, tiny_model_dir_pad_eos, pad_is_eos):
    model_dir = tiny_model_dir_pad_eos if pad_is_eos else tiny_model_dir
    tokenizer = load_tokenizer(str(model_dir))
    batch = _batch(tokenizer)
    model = _model(model_dir, "fp32")

    full = _loss(model, batch, labels_only=False, autocast=None)
    full.backward()
    full_grads = _lora_grads(model)
    model.zero_grad()
    fast = _loss(model, batch, labels_only=True, autocast=None)
    fast.backward()
    fast_grads = _lora_grads(model)

    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5)
    assert full_grads.keys() == fast_grads.keys() and full_grads
    for name, grad in full_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_bf16_base_with_fp32_lora_matches_fp32(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    batch = _batch(tokenizer)
    plain = _model(tiny_model_dir, "fp32")
    fast = _model(tiny_model_dir, "bf16")

    # The recipe: frozen base weights in bf16, trainable LoRA weights in fp32.
    dtypes = {(p.requires_grad, p.dtype) for p in fast.parameters()}
    assert dtypes == {(False, torch.bfloat16), (True, torch.float32)}
    casting = {m.cast_input_dtype_enabled for m in fast.modules() if hasattr(m, "lora_A")}
    assert casting == {False}, "under autocast the adapters take their input as it is"

    reference = _loss(plain, batch, labels_only=False, autocast=None)
    reference.backward()
    reference_grads = _lora_grads(plain)
    with plain.disable_adapter():
        without_adapter = _loss(plain, batch, labels_only=False, autocast=None)
    # bf16 keeps 8 mantissa bits; measured |difference| ~2e-4 on a loss of ~7.6.
    tolerance = 5e-3
    # Meaningful: the adapter's own share of the loss is many times the tolerance, so a bf16
    # path that lost the adapter (or its fp32 weights' contribution) would fail.
    assert abs(without_adapter.item() - reference.item()) > 5 * tolerance

    for labels_only in (False, True):
        fast.zero_grad()
        loss = _loss(fast, batch, labels_only=labels_only, autocast=torch.bfloat16)
        loss.backward()
        assert loss.dtype == torch.float32
        assert abs(loss.item() - reference.item()) < tolerance, (loss, reference)
        # The gradients that training follows point the same way (measured cosine ~0.9999).
        grads = _lora_grads(fast)
        assert all(g.dtype == torch.float32 for g in grads.values())
        flat = torch.cat([g.flatten() for g in grads.values()])
        ref = torch.cat([reference_grads[k].flatten() for k in grads])
        assert torch.nn.functional.cosine_similarity(flat, ref, dim=0) > 0.999
        assert (flat - ref).norm() < 0.05 * ref.norm()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_chunked_cross_entropy_equals_cross_entropy(dtype, chunk):
    """The loss that avoids fp32 copies of all logits: same value and same logits gradient."""
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(45, 300, generator=gen) * 4).to(dtype).requires_grad_()
    targets = torch.randint(0, 300, (45,), generator=gen)
    targets[::4] = -100  # ignored positions contribute neither loss nor gradient

    ours = chunked_cross_entropy(logits, targets, chunk)
    (ours_grad,) = torch.autograd.grad(ours * 0.3, logits)
    plain = torch.nn.functional.cross_entropy(
        logits.float(), targets, ignore_index=-100, reduction="sum"
    )
    (plain_grad,) = torch.autograd.grad(plain * 0.3, logits)

    assert ours.dtype == torch.float32 and ours_grad.dtype == dtype
    torch.testing.assert_close(ours, plain, rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(ours_grad.float(), plain_grad.float(), rtol=1e-5, atol=1e-6)
    assert ours_grad[::4].abs().sum() == 0


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_packed_bits_dropout_is_inverted_bernoulli_dropout(p):
    drop = PackedBitsDropout(p).train()
    rows, cols = 1024, 1027  # not a multiple of 4: the last word is used in part
    x = torch.rand(rows, cols) + 0.5
    x.requires_grad_()
    torch.manual_seed(0)
    out = drop(x)
    dropped = out == 0
    n = dropped.numel()
    p_eff = round(p * 32768) / 32768
    assert abs(p_eff - p) < 2e-5
    sigma = (p * (1 - p) / n) ** 0.5
    assert abs(dropped.float().mean().item() - p) < 5 * sigma
    # Each of the four 16-bit slices of a random word drops at the same rate (the top slice
    # has one bit fewer; masking every slice to 15 bits makes them alike).
    flat = dropped.flatten()
    for lane in range(4):
        rate = flat[lane::4].float().mean().item()
        assert abs(rate - p) < 5 * sigma * 2, (lane, rate)
    # Neighbours (same word) and elements a word apart are independent.
    a = flat.float() - flat.float().mean()
    for lag in (1, 4):
        corr = (a[:-lag] * a[lag:]).mean() / a.var()
        assert abs(corr.item()) < 5 / n**0.5, (lag, corr)
    # Kept values are scaled so that the expectation is unchanged.
    kept = ~dropped
    torch.testing.assert_close(out[kept], x[kept] / (1 - p_eff), rtol=1e-6, atol=0)
    out.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / (1 - p_eff), rtol=1e-6, atol=0)
    # Same generator as nn.Dropout: a seed repeats the mask, the next call draws a new one.
    torch.manual_seed(0)
    again = drop(x.detach())
    assert torch.equal(again == 0, dropped)
    assert not torch.equal(drop(x.detach()) == 0, dropped)
    assert drop.eval()(x) is x


def test_training_uses_packed_bits_dropout_on_cpu(tiny_model_dir):
    config = TrainConfig(base_model=str(tiny_model_dir), lora_dropout=0.1)
    model = training_model(config, resolve_precision("bf16", CPU), CPU)[0]
    dropouts = [d for m in model.modules() if hasattr(m, "lora_A") for d in m.lora_dropout.values()]
    assert dropouts and all(type(d) is PackedBitsDropout and d.p == 0.1 for d in dropouts)
    no_dropout = training_model(
        dataclasses.replace(config, lora_dropout=0.0), resolve_precision("bf16", CPU), CPU
    )[0]
    assert not any(isinstance(m, torch.nn.Dropout) for m in no_dropout.modules())


@pytest.fixture
def sdpa_calls(monkeypatch) -> list[int]:
    """Counts the calls that reach sdpa through the CPU training attention."""
    calls = []
    original = attention.sdpa_attention_forward

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(attention, "sdpa_attention_forward", counting)
    return calls


@pytest.mark.parametrize("padded", [True, False])
def test_plain_attention_on_cpu_equals_sdpa(tiny_model_dir, sdpa_calls, padded):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    batch = _batch(tokenizer)
    if not padded:  # one row, no padding: sdpa's mask is left out (causal only)
        length = int(batch["attention_mask"][0].sum())
        batch = {k: v[:1, :length] for k, v in batch.items()}
        assert batch["attention_mask"].all()
    reference_model = _model(tiny_model_dir, "fp32", attention="sdpa")
    model = _model(tiny_model_dir, "fp32")
    assert reference_model.config._attn_implementation == "sdpa"
    assert model.config._attn_implementation == attention.NAME

    reference = _loss(reference_model, batch, labels_only=True, autocast=None)
    reference.backward()
    loss = _loss(model, batch, labels_only=True, autocast=None)
    loss.backward()
    assert not sdpa_calls, "short sequences with gradients take the plain path"
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-5)
    expected = _lora_grads(reference_model)
    grads = _lora_grads(model)
    assert grads.keys() == expected.keys() and grads
    for name, grad in expected.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_plain_attention_leaves_long_and_gradient_free_calls_to_sdpa(
    tiny_model_dir, sdpa_calls, monkeypatch
):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    batch = _batch(tokenizer)
    model = _model(tiny_model_dir, "fp32")
    layers = model.config.num_hidden_layers
    with torch.no_grad():
        _loss(model, batch, labels_only=True, autocast=None)
    assert len(sdpa_calls) == layers
    monkeypatch.setattr(attention, "PLAIN_MAX_LENGTH", batch["input_ids"].shape[1] - 1)
    _loss(model, batch, labels_only=True, autocast=None).backward()
    assert len(sdpa_calls) == 2 * layers


def test_training_attention_choice():
    from types import SimpleNamespace

    class Model:
        def __init__(self, loaded):
            self.config = SimpleNamespace(_attn_implementation=loaded)

        def set_attn_implementation(self, name):
            self.config._attn_implementation = name

    cuda = torch.device("cuda")
    assert attention.choose_training_attention(Model("sdpa"), "auto", CPU) == attention.NAME
    assert attention.choose_training_attention(Model("sdpa"), "auto", cuda) == "sdpa"
    assert attention.choose_training_attention(Model("eager"), "auto", CPU) == "eager"
    assert attention.choose_training_attention(Model("sdpa"), "sdpa", CPU) == "sdpa"
    assert attention.choose_training_attention(Model("sdpa"), "eager", cuda) == "eager"


def test_memory_is_trimmed_every_few_optimizer_steps():
    calls = []
    trimmer = TrimFreedMemory(calls.append, every=3)
    for step in range(1, 10):
        trimmer.on_step_end(None, types.SimpleNamespace(global_step=step), None)
    assert calls == [0, 0, 0]  # after steps 3, 6 and 9
    every = TrainConfig().trim_every
    real = TrimFreedMemory.create(every)
    if real is not None:  # glibc: the real call runs and returns
        for step in range(1, every + 1):
            real.on_step_end(None, types.SimpleNamespace(global_step=step), None)
    with pytest.raises(ValueError, match="at least 1"):
        TrimFreedMemory(calls.append, every=0)
    assert "trim_every must be > 0, got 0" in TrainConfig(trim_every=0).validate()


# Page faults of 256 MiB tensors made, written and freed in turn, in a fresh interpreter (a long
# test session's fragmented heap decides where a block lands): 4 to settle, then 4 while reusing,
# then 4 after training.
_FAULTS = """
import resource, sys, torch
from qwen3_lora.training.speed.memory import ReuseFreedHeap

def faults(count):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(count):
        torch.empty(256 << 18).fill_(1.0)  # float32: 2^18 elements a MiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

reuse = ReuseFreedHeap.create()
if reuse is None:
    sys.exit(3)
reuse.on_train_begin(None, None, None)
faults(4)
reused = faults(4)
reuse.on_train_end(None, None, None)
print(reused, faults(4))
"""


def test_large_tensors_reuse_the_heap_while_training_and_not_after():
    calls = []
    fake = ReuseFreedHeap(lambda *a: calls.append(a) or 1, calls.append)
    fake.on_train_begin(None, None, None)
    fake.on_train_end(None, None, None)
    assert calls == [
        (M_MMAP_THRESHOLD, 1 << 30),
        (M_TRIM_THRESHOLD, (2 << 30) - 1),
        (M_MMAP_THRESHOLD, 32 << 20),
        (M_TRIM_THRESHOLD, 64 << 20),
        0,  # malloc_trim(0): the heap the run grew goes back at its end
    ]
    run = subprocess.run(
        [sys.executable, "-c", _FAULTS], capture_output=True, text=True, timeout=120
    )
    if run.returncode == 3:
        pytest.skip("not glibc: no mallopt")
    assert run.returncode == 0, run.stderr[-2000:]
    reused, fresh = map(int, run.stdout.split())
    # Over 32 MiB after training: mmap, each tensor's pages faulted anew; while training, at
    # most one of the four faulted its pages.
    assert fresh > 0 and reused * 4 <= fresh, (reused, fresh)


def test_the_heap_is_reused_with_compiled_layers_on_cpu_only(tiny_model_dir):
    def callbacks(**changes):
        config = TrainConfig(base_model=str(tiny_model_dir), **changes)
        speed = training_model(config, resolve_precision("fp32", CPU), CPU)[1]
        return {type(c) for c in speed.callbacks}

    assert ReuseFreedHeap in callbacks(torch_compile="on")
    assert ReuseFreedHeap not in callbacks(torch_compile="on", reuse_heap=False)
    assert ReuseFreedHeap not in callbacks(torch_compile="off")
