"""Compiled decoder layers (`qwen3_lora.compiled`): same training as eager, one graph, a fair
dropout, and a policy that compiles only where it pays.

The two compiling tests share one compile of a tiny model's layer (through inductor's cache);
the hash test compiles one small function; everything else runs eagerly in milliseconds.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import MEMORISE

from qwen3_lora.training.config import ConfigError, TrainConfig, build_config
from qwen3_lora.training.speed import compiled
from qwen3_lora.training.speed.compiled import AUTO_MIN_FLOPS, choose_compile
from qwen3_lora.training.speed.dropout import (
    HashDropout,
    PackedBitsDropout,
    as_int32,
    hash32,
    use_hash_dropout,
)
from qwen3_lora.training.train import TrainerCallback, train

CPU = torch.device("cpu")
# An attention input and the MLP's output, two of the seven default targets: each LoRA site adds
# dropout and two matmuls to the layer graph inductor writes C++ for, and a cold compile (no
# inductor cache: every CI machine) pays for each in Python codegen time.
TARGETS = ["q_proj", "down_proj"]


def _lowbias32(x: int) -> int:
    """The reference hash in plain Python integers."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def _hash_words(hash_fn, values: list[int]) -> list[int]:
    words = torch.tensor([as_int32(v) for v in values], dtype=torch.int32)
    return [v & 0xFFFFFFFF for v in hash_fn(words).tolist()]


def test_hash32_equals_the_reference_over_the_whole_32_bit_range():
    values = [0, 1, 2, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF, 123456789, 0xDEADBEEF]
    # 1009 in all, a prime: vectorised loops run their scalar tail too.
    values += torch.randint(
        0, 1 << 32, (1000,), generator=torch.Generator().manual_seed(0)
    ).tolist()
    expected = [_lowbias32(v) for v in values]
    assert _hash_words(hash32, values) == expected
    # Inductor's C++ (vector loop and scalar tail) wraps the products as torch's kernels do.
    assert _hash_words(torch.compile(hash32, fullgraph=True), values) == expected


def test_hash_dropout_keeps_exactly_the_elements_its_definition_keeps():
    # Element i of a call with seed s is kept when lowbias32(lowbias32(i) ^ s) >= round(p 2^32),
    # compared as unsigned words; seeds on both sides of 2^31.
    p = 0.3
    threshold = round(p * 2**32)
    for seed in (5, 0x9E3779B9):
        drop = HashDropout(p).train()
        drop.seed = torch.tensor(seed, dtype=torch.int64)
        kept = (drop(torch.ones(7, 149)) != 0).flatten().tolist()
        expected = [_lowbias32(_lowbias32(i) ^ seed) >= threshold for i in range(7 * 149)]
        assert kept == expected


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_hash_dropout_is_inverted_bernoulli_dropout(p):
    torch.manual_seed(0)
    drop, other = HashDropout(p).train(), HashDropout(p).train()
    x = (torch.rand(1024, 1027) + 0.5).requires_grad_()
    out = drop(x)
    dropped = out == 0
    n = dropped.numel()
    p_eff = round(p * 2**32) / 2**32
    sigma = (p * (1 - p) / n) ** 0.5
    assert abs(dropped.float().mean().item() - p) < 5 * sigma

    def corr(a: torch.Tensor, b: torch.Tensor) -> float:
        a, b = a.flatten().float(), b.flatten().float()
        return ((a - a.mean()) * (b - b.mean())).mean().item() / (a.std() * b.std()).item()

    # Neighbours in a row and in a column, the next call, and another module: independent.
    flat = dropped.flatten()
    assert abs(corr(flat[:-1], flat[1:])) < 5 / n**0.5
    assert abs(corr(dropped[:-1], dropped[1:])) < 5 / n**0.5
    assert abs(corr(drop(x.detach()) == 0, dropped)) < 5 / n**0.5
    assert abs(corr(other(x.detach()) == 0, dropped)) < 5 / n**0.5
    # Kept values are scaled so that the expectation is unchanged; the gradient is the mask.
    kept = ~dropped
    torch.testing.assert_close(out[kept], x[kept] / (1 - p_eff), rtol=1e-6, atol=0)
    out.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / (1 - p_eff), rtol=1e-6, atol=0)
    # In bf16 each kept value is x / (1 - p) rounded once (no bf16-rounded scale: no bias).
    half = x.detach().bfloat16()
    out_half = drop(half)
    kept_half = out_half != 0
    expected = (half[kept_half].float() / (1 - p_eff)).bfloat16()
    assert torch.equal(out_half[kept_half], expected)
    # Seeds come from torch's generator: the same seed repeats the masks.
    torch.manual_seed(0)
    again = HashDropout(p).train()
    assert torch.equal(again(x.detach()) == 0, dropped)
    assert again.eval()(x) is x


def test_choose_compile():
    def choose(choice="auto", device=CPU, flops=AUTO_MIN_FLOPS, **kw):
        options = dict(gradient_checkpointing=False, quantized=False, world_size=1) | kw
        return choose_compile(choice, device, train_flops=flops, **options)[0]

    assert choose() and choose("on", flops=1.0)
    assert not choose(flops=AUTO_MIN_FLOPS / 2)  # too short to repay the compile
    assert not choose("off")
    assert not choose(device=torch.device("cuda"))  # auto: measured on CPU only
    assert not choose("on", gradient_checkpointing=True)
    assert not choose("on", quantized=True)
    assert not choose("on", world_size=2)


def test_no_cpp_compiler_means_no_compile(monkeypatch):
    monkeypatch.setattr(compiled.shutil, "which", lambda name: None)
    wanted, why = choose_compile(
        "on",
        CPU,
        train_flops=1e20,
        gradient_checkpointing=False,
        quantized=False,
        world_size=1,
    )
    assert not wanted and "C++ compiler" in why


def test_torch_compile_option_takes_old_booleans_and_rejects_others():
    assert build_config({"torch_compile": True}, {}).torch_compile == "on"
    assert build_config({"torch_compile": False}, {}).torch_compile == "off"
    with pytest.raises(ConfigError, match="torch_compile must be one of auto, on, off"):
        build_config({"torch_compile": "yes"}, {})


def _losses(folder) -> list[float]:
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def test_compiled_layers_give_eager_gradients(tiny_model_dir):
    """Every LoRA gradient of a compiled forward + backward equals eager's with the same hash
    dropout masks, over two calls (the seeds advance alike). Backward may recompute a mask from
    its seed: an in-place seed update once gave it the next call's mask (input gradients 50%
    off while the loss, the weight gradient nearest the loss and the adapters stayed close)."""
    import copy

    from qwen3_lora.models.loading import resolve_precision
    from qwen3_lora.training.loss import causal_lm_loss
    from qwen3_lora.training.speed.compiled import compile_decoder_layers
    from qwen3_lora.training.train import training_model

    torch.manual_seed(0)
    config = TrainConfig(base_model=str(tiny_model_dir), precision="fp32", target_modules=TARGETS)
    eager = training_model(config, resolve_precision("fp32", CPU), CPU)[0].train()
    for module in eager.modules():
        if hasattr(module, "lora_B"):
            for lora_b in module.lora_B.values():  # non-zero, so every gradient is non-zero
                torch.nn.init.normal_(lora_b.weight, std=0.1)
    use_hash_dropout(eager)
    other = copy.deepcopy(eager)
    torch._dynamo.reset()
    compile_decoder_layers(other)
    ids = torch.randint(10, 200, (2, 12), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[:, :5] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    for _ in range(2):
        for model in (eager, other):
            model.zero_grad()
            causal_lm_loss(model, batch).backward()
        for (name, mine), (_, theirs) in zip(
            other.named_parameters(), eager.named_parameters(), strict=True
        ):
            if theirs.grad is not None:
                gap = ((mine.grad - theirs.grad).norm() / theirs.grad.norm()).item()
                assert gap < 1e-4, name
    seeds = [
        m.seed.item() for model in (eager, other) for m in model.modules() if hasattr(m, "seed")
    ]
    assert seeds[: len(seeds) // 2] == seeds[len(seeds) // 2 :]


def test_compiled_training_equals_eager_with_one_graph(tmp_path, tiny_model_dir, monkeypatch):
    """Same losses and adapter as eager training with the same (hash) dropout masks; one graph
    for every batch length; evaluation (no gradients) runs the layers eagerly."""
    from safetensors.torch import load_file
    from torch._dynamo.utils import counters

    data = tmp_path / "data.jsonl"
    # 12 samples: 6 micro-batches of different lengths.
    samples = [*MEMORISE, *({**s, "input": s["input"] + "，谢谢"} for s in MEMORISE)]
    data.write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples), "utf-8")
    heldout = tmp_path / "heldout.jsonl"
    held = [{**s, "input": "请问" + s["input"]} for s in MEMORISE[:3]]
    heldout.write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in held), "utf-8")

    def run(name: str, torch_compile: str):
        config = TrainConfig(
            base_model=str(tiny_model_dir),
            output_dir=str(tmp_path / name),
            data=[str(data)],
            builtin_data=False,
            eval_data=[str(heldout)],
            epochs=1,
            batch_size=2,
            grad_accum=1,
            learning_rate=1e-2,
            precision="fp32",
            target_modules=TARGETS,
            torch_compile=torch_compile,
            report_to=["none"],
            seed=5,
        )
        train(config)
        return _losses(tmp_path / name), load_file(tmp_path / name / "adapter_model.safetensors")

    # The eager reference draws the same hash-dropout masks, swapped in where compiling would.
    with monkeypatch.context() as patch:
        patch.setattr("qwen3_lora.training.speed.use_packed_bits_dropout", use_hash_dropout)
        eager_losses, eager_adapter = run("eager", "off")
    torch._dynamo.reset()
    counters.clear()
    compiled_losses, compiled_adapter = run("compiled", "on")

    assert counters["stats"]["unique_graphs"] == 1
    assert len(compiled_losses) == 6
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-5)
    assert compiled_losses[-1] < compiled_losses[0]  # it trained
    assert compiled_adapter.keys() == eager_adapter.keys()
    assert not any("seed" in key for key in compiled_adapter)  # dropout state is not saved
    keys = sorted(eager_adapter)
    ours = torch.cat([compiled_adapter[k].flatten() for k in keys])
    theirs = torch.cat([eager_adapter[k].flatten() for k in keys])
    gap = ((ours - theirs).norm() / theirs.norm()).item()
    # 4e-7 here. It was 0.03 while backward used the next call's dropout masks (that bug passed a
    # 0.08 bound meant for rounding); other masks in both passes give 0.19.
    assert gap < 1e-4


def test_a_failing_compile_warns_and_training_goes_on_eagerly(
    tmp_path, tiny_model_dir, monkeypatch, caplog
):
    from torch._inductor.exc import InvalidCxxCompiler

    def broken_compile(fn, **kwargs):
        def call(*args, **kw):
            raise InvalidCxxCompiler()

        return call

    monkeypatch.setattr(compiled.torch, "compile", broken_compile)
    seen: dict = {}

    class Inspect(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kwargs):
            seen["dropouts"] = {
                type(d)
                for m in model.modules()
                if hasattr(m, "lora_A")
                for d in m.lora_dropout.values()
            }

    config = TrainConfig(
        base_model=str(tiny_model_dir),
        output_dir=str(tmp_path / "run"),
        max_steps=2,
        torch_compile="on",
        eval_each_epoch=False,
        report_to=["none"],
    )
    with caplog.at_level("WARNING", logger="qwen3_lora.compiled"):
        result = train(config, callbacks=[Inspect()])
    assert "compiling the decoder layers failed (InvalidCxxCompiler" in caplog.text
    assert caplog.text.count("compiling the decoder layers failed") == 1
    assert not result.compiled and result.optimizer_steps == 2
    assert all(loss == loss for loss in _losses(tmp_path / "run"))  # finite, not NaN
    assert seen["dropouts"] == {PackedBitsDropout}
