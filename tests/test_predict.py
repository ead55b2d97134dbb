"""The predictor: training's rendering, deterministic greedy decoding, batching, the adapter
switch and the `predict` command."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch
from conftest import MEMORISE

from qwen3_lora.cli import main
from qwen3_lora.inference.predictor import Prediction, Predictor, PredictorError
from qwen3_lora.inference.speed import can_pack
from qwen3_lora.models.adapter import AdapterError
from qwen3_lora.prompt.encoding import IGNORE_INDEX, encode_example
from qwen3_lora.prompt.render import render_prompt

needs_packing = pytest.mark.skipif(
    not can_pack(), reason="oneDNN packs bf16 only with AVX-512 BW/VL/DQ or AVX-NE-CONVERT"
)

GENERATED = [s for s in MEMORISE if s["task"] in ("问题回答", "文件名称提取")]
CLASSIFIED = [s for s in MEMORISE if s["task"] in ("问题场景分类", "问题类型分类")]


def test_load_reads_the_base_model_from_the_adapter(tuned, tiny_model_dir):
    assert tuned.has_adapter
    assert tuned.base_model == str(tiny_model_dir)
    assert tuned.context_length == 2048
    assert tuned.tokenizer.convert_tokens_to_ids("<|im_end|>") in tuned.stop_ids


def test_prompt_ids_are_the_prompt_part_of_training_encoding(tuned, monkeypatch):
    fed = []
    original = tuned.model.generate

    def spy(**kwargs):
        for ids, mask in zip(kwargs["input_ids"], kwargs["attention_mask"], strict=True):
            fed.append(ids[mask.bool()].tolist())
        return original(**kwargs)

    monkeypatch.setattr(tuned.model, "generate", spy)
    tuned.predict("文件名称提取", [s["input"] for s in MEMORISE], max_new_tokens=2)
    for sample, ids in zip(MEMORISE, fed, strict=True):
        enc = encode_example(tuned.tokenizer, "文件名称提取", sample["input"], "x")
        prompt = [t for t, y in zip(enc.input_ids, enc.labels, strict=True) if y == IGNORE_INDEX]
        assert ids == prompt
        assert tuned.prompt_ids("extract", sample["input"]) == prompt


def test_memorised_answers_are_reproduced_by_every_decode(tuned):
    for sample in MEMORISE:
        (pred,) = tuned.predict(sample["task"], [sample["input"]], max_new_tokens=40)
        assert pred.output == sample["output"], sample
        assert pred.latency_ms > 0
    for sample in CLASSIFIED:
        (gen,) = tuned.predict(sample["task"], [sample["input"]], decode="generate")
        (score,) = tuned.predict(sample["task"], [sample["input"]], decode="score")
        assert gen.output == score.output == sample["output"]
        assert gen.probability is None and score.probability > 0.5
        assert math.isclose(sum(score.scores.values()), 1.0)


def test_score_log_likelihoods_equal_the_training_sequence_loss(tuned):
    sample = CLASSIFIED[0]
    task = tuned.registry.require(sample["task"])
    got = tuned.scorer(task.name).log_likelihoods([tuned.prompt_ids(task.name, sample["input"])])
    for k, label in enumerate(task.labels):
        enc = encode_example(tuned.tokenizer, task.name, sample["input"], label)
        with torch.no_grad():
            out = tuned.model(
                input_ids=torch.tensor([enc.input_ids]), labels=torch.tensor([enc.labels])
            )
        supervised = sum(1 for y in enc.labels if y != IGNORE_INDEX)
        # The model's loss is the mean NLL over supervised tokens.
        assert got[0, k].item() == pytest.approx(-out.loss.item() * supervised, abs=1e-4)


def test_greedy_decoding_is_deterministic(tuned, base):
    texts = [s["input"] for s in MEMORISE]
    first = tuned.predict("问题回答", texts, max_new_tokens=12)
    again = tuned.predict("问题回答", texts, max_new_tokens=12)
    assert [p.output for p in again] == [p.output for p in first]
    prompts = [render_prompt(base.tokenizer, "问题回答", t) for t in texts[:2]]
    assert base.generate(prompts, max_new_tokens=6) == base.generate(prompts, max_new_tokens=6)


def test_batched_generation_equals_one_by_one(tuned):
    # Different lengths, so the batch is left-padded; tasks mixed through generate().
    prompts = [render_prompt(tuned.tokenizer, s["task"], s["input"]) for s in MEMORISE]
    prompts.append(render_prompt(tuned.tokenizer, "问题回答", "数据清洗"))
    ids = [tuned.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    assert len({len(i) for i in ids}) > 1
    batched = tuned.generate_ids(ids, max_new_tokens=24)
    single = [tuned.generate_ids([i], max_new_tokens=24)[0] for i in ids]
    assert batched == single
    assert tuned.generate(prompts, max_new_tokens=24, batch_size=4) == [
        tuned.generate([p], max_new_tokens=24)[0] for p in prompts
    ]


def test_without_adapter_runs_the_base_weights(tuned, base):
    texts = [s["input"] for s in MEMORISE]
    with tuned.without_adapter():
        off_gen = tuned.predict("文件名称提取", texts, max_new_tokens=12)
        off_score = tuned.predict("问题场景分类", texts)
    plain_gen = base.predict("文件名称提取", texts, max_new_tokens=12)
    plain_score = base.predict("问题场景分类", texts)
    assert [p.output for p in off_gen] == [p.output for p in plain_gen]
    for a, b in zip(off_score, plain_score, strict=True):
        assert a.output == b.output
        for label, p in a.scores.items():
            assert p == pytest.approx(b.scores[label], abs=1e-5)
    # ... and the adapter is back afterwards.
    (again,) = tuned.predict("文件名称提取", [GENERATED[1]["input"]])
    assert again.output == GENERATED[1]["output"]
    with pytest.raises(PredictorError, match="no adapter"), base.without_adapter():
        pass


def test_generated_thinking_is_stripped(base, monkeypatch):
    tok = base.tokenizer
    text = "<think>\nlet me see\n</think>\n\n西安市地类图斑"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    monkeypatch.setattr(base, "generate_ids", lambda ids_, **kw: [ids] * len(ids_))
    (pred,) = base.predict("文件名称提取", ["x"])
    assert pred.output == "西安市地类图斑"
    assert base.chat([{"role": "user", "content": "hi"}], thinking=True) == (
        "let me see",
        "西安市地类图斑",
    )
    monkeypatch.setattr(
        base,
        "generate_ids",
        lambda ids_, **kw: [tok("<think>\nstill going", add_special_tokens=False)["input_ids"]],
    )
    assert base.chat([{"role": "user", "content": "hi"}], thinking=True) == ("still going", "")
    assert eot in base.stop_ids


def test_stream_yields_the_generated_text(tuned):
    sample = GENERATED[0]
    prompt = render_prompt(tuned.tokenizer, sample["task"], sample["input"])
    deltas = list(tuned.stream(prompt, max_new_tokens=40))
    assert len(deltas) > 1
    assert "".join(deltas).strip() == sample["output"]


def test_user_errors_are_predictor_errors(base, tmp_path):
    with pytest.raises(PredictorError, match="unknown task"):
        base.predict("翻译", ["x"])
    with pytest.raises(PredictorError, match="only classification"):
        base.scorer("问题回答")
    with pytest.raises(PredictorError, match="decode"):
        base.predict("问题回答", ["x"], decode="beam")
    with pytest.raises(PredictorError, match="context"):
        base.predict("问题回答", ["长" * 3000])
    with pytest.raises(AdapterError, match="does not exist"):
        Predictor.load(adapter=str(tmp_path / "missing"))
    with pytest.raises(AdapterError, match=r"neither adapter_config\.json"):
        Predictor.load(adapter=str(tmp_path))


def test_a_full_model_folder_passed_as_adapter_is_a_merged_model(tiny_model_dir, base):
    merged = Predictor.load(adapter=str(tiny_model_dir), precision="fp32")
    assert not merged.has_adapter and merged.adapter is None
    assert merged.base_model == str(tiny_model_dir)
    texts = [s["input"] for s in CLASSIFIED]
    assert [p.scores for p in merged.predict("scene", texts)] == [
        p.scores for p in base.predict("scene", texts)
    ]


def test_prediction_fields_are_the_api_contract(tuned):
    (pred,) = tuned.predict("scene", [CLASSIFIED[1]["input"]])
    assert isinstance(pred, Prediction)
    assert (pred.task, pred.input, pred.output) == (
        "问题场景分类",
        CLASSIFIED[1]["input"],
        "无关问题",
    )
    assert set(pred.scores) == {"数据平台相关问题", "通用问题", "无关问题"}


def test_cli_predict_texts_and_jsonl(memorised_adapter, tmp_path, capsys):
    adapter = str(memorised_adapter)
    sample = GENERATED[1]
    code = main(
        [
            "predict",
            "--adapter",
            adapter,
            "--precision",
            "fp32",
            "--task",
            "文件名称提取",
            sample["input"],
        ]
    )
    assert code == 0
    assert capsys.readouterr().out.strip() == sample["output"]

    source = tmp_path / "in.jsonl"
    rows = [{"id": i, "task": s["task"], "input": s["input"]} for i, s in enumerate(MEMORISE)]
    source.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    target = tmp_path / "out.jsonl"
    args = ["predict", "--adapter", adapter, "--precision", "fp32", "--input-file", str(source)]
    assert main([*args, "--output-file", str(target)]) == 0
    written = [json.loads(line) for line in target.read_text("utf-8").splitlines()]
    assert [w["id"] for w in written] == list(range(len(MEMORISE)))
    assert [w["output"] for w in written] == [s["output"] for s in MEMORISE]
    for w, s in zip(written, MEMORISE, strict=True):
        assert (w["probability"] is None) == (s in GENERATED)

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "x"}\nnot json\n', "utf-8")
    capsys.readouterr()
    assert main(["predict", "--adapter", adapter, "--input-file", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:1 [task]" in err and f"{bad}:2" in err


def test_closing_a_stream_stops_the_generation(base, monkeypatch):
    """A client that goes away must not leave the model generating to max_new_tokens."""
    steps = []
    original = base.model.forward

    def counting_forward(*args, **kwargs):
        steps.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(base.model, "forward", counting_forward)
    prompt = "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    # A random-weight model may stop at once; forbid the stop tokens so it would run 200 steps.
    monkeypatch.setattr(base, "stop_ids", [])
    pieces = base.stream(prompt, max_new_tokens=200)
    next(pieces)
    pieces.close()  # what the server does when the client disconnects
    stopped_at = len(steps)
    time.sleep(0.5)  # a generation left running would go on stepping meanwhile
    assert len(steps) == stopped_at < 50, (stopped_at, len(steps))


def _head_copies(predictor, run) -> list[str]:
    """The ops of `run()` that multiply against a batch-expanded copy of the LM head."""
    from torch.profiler import profile

    vocab = predictor.model.get_output_embeddings().weight.shape[0]
    with profile(record_shapes=True) as prof:
        run()
    return [
        f"{e.name} {e.input_shapes}"
        for e in prof.events()
        if e.name in ("aten::bmm", "aten::contiguous", "aten::clone")
        and any(len(s) == 3 and vocab in s for s in e.input_shapes if isinstance(s, list))
    ]


def test_the_lm_head_is_never_copied_with_frozen_weights(tuned):
    # PEFT freezes the base, so a strided slice of the hidden states (an int `logits_to_keep`)
    # used to send the head through bmm over a contiguous copy of the whole weight per row.
    assert not tuned.model.get_output_embeddings().weight.requires_grad
    texts = [s["input"] for s in MEMORISE]
    prompts = [render_prompt(tuned.tokenizer, s["task"], s["input"]) for s in MEMORISE]
    runs = {
        "score": lambda: tuned.predict("问题场景分类", texts, decode="score"),
        "score one": lambda: tuned.predict("问题场景分类", texts[:1], decode="score"),
        "span": lambda: tuned.predict("文件名称提取", texts, decode="span", max_new_tokens=4),
        "generate": lambda: tuned.generate(prompts, max_new_tokens=4),
        "generate one": lambda: tuned.generate(prompts[:1], max_new_tokens=4),
        "stream": lambda: "".join(tuned.stream(prompts[0], max_new_tokens=4)),
    }
    for name, run in runs.items():
        assert _head_copies(tuned, run) == [], name
        with tuned.without_adapter():
            assert _head_copies(tuned, run) == [], f"{name} without the adapter"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("scaling", [None, 3.0], ids=["alpha-over-r", "not-a-power-of-two"])
def test_the_lean_lora_forward_computes_exactly_what_peft_computes(
    memorised_adapter, precision, scaling
):
    from peft.tuners.lora.layer import Linear as LoraLinear

    predictor = Predictor.load(adapter=str(memorised_adapter), precision=precision)
    layers = [m for m in predictor.model.modules() if type(m) is LoraLinear]
    assert layers and all("forward" in m.__dict__ for m in layers)  # every one on the lean path
    for layer in layers:
        if scaling is None:  # the recipe's alpha / r: a power of two, folded into the rank-r side
            assert all(s in (0.5, 1.0, 2.0, 4.0, 8.0) for s in layer.scaling.values())
        else:  # such as rsLoRA's alpha / sqrt(r): PEFT's own order
            layer.scaling = dict.fromkeys(layer.scaling, scaling)
    ids = torch.tensor([predictor.prompt_ids(s["task"], s["input"])[:8] for s in MEMORISE[:3]])
    with torch.no_grad():
        lean = predictor.model(input_ids=ids).logits
        with predictor.without_adapter():  # disabled adapters take PEFT's own path
            base_lean = predictor.model(input_ids=ids).logits
        for layer in layers:
            del layer.forward  # back to PEFT's lora.Linear.forward
        peft = predictor.model(input_ids=ids).logits
        with predictor.without_adapter():
            base_peft = predictor.model(input_ids=ids).logits
    assert torch.equal(lean, peft)
    assert torch.equal(base_lean, base_peft)
    assert not torch.equal(lean, base_lean)


@pytest.mark.parametrize("out_features", [1024, 3072])
@pytest.mark.parametrize("rows", [1, 8, 26, 208])
def test_the_lean_lora_forward_is_exact_at_qwen3_widths_and_the_rows_inference_runs(
    rows, out_features
):
    # BLAS may pick other kernels by shape and thread count: Qwen3-0.6B's layer widths at the
    # row counts of a decode step (1, 8) and of scoring one or eight prompts (26, 208).
    from peft import LoraConfig
    from peft.tuners.lora.layer import Linear as LoraLinear

    from qwen3_lora.inference.speed import lean_lora_layers

    torch.manual_seed(0)
    config = LoraConfig(r=8, lora_alpha=32, lora_dropout=0.1)
    layer = LoraLinear(torch.nn.Linear(1024, out_features, bias=False), "default", config, 8, 32)
    torch.nn.init.normal_(layer.lora_B["default"].weight, std=0.02)  # PEFT starts B at zero
    layer.base_layer.to(torch.bfloat16)
    layer.eval()
    x = torch.randn(rows, 1024, dtype=torch.bfloat16)
    with torch.no_grad():
        peft = layer(x)
        assert lean_lora_layers(layer) == 1
        lean = layer(x)
    assert lean.dtype == torch.bfloat16
    assert torch.equal(lean, peft)


@pytest.mark.parametrize(
    ("in_features", "out_features", "rows"),
    [
        *(
            (i, o, r)
            for i, o in [(1024, 1024), (1024, 3072), (3072, 1024)]
            for r in (1, 8, 26, 208)
        ),
        (1024, 151_936, 1),  # Qwen3-0.6B's LM head at a decode step of one and of eight rows
        (1024, 151_936, 8),
    ],
)
@needs_packing
def test_packed_linear_layers_compute_exactly_what_linear_computes(in_features, out_features, rows):
    from qwen3_lora.inference.speed import PackedLinear, pack_linears

    torch.manual_seed(0)
    layer = torch.nn.Linear(in_features, out_features, bias=False, dtype=torch.bfloat16)
    x = torch.randn(2, rows, in_features, dtype=torch.bfloat16)
    with torch.no_grad():
        plain = layer(x)
        assert pack_linears(layer) == 1
        assert type(layer) is PackedLinear
        packed = layer(x)
    assert torch.equal(packed, plain)


@needs_packing
def test_a_packed_linear_follows_its_weight_and_leaves_gradients_to_linear():
    from qwen3_lora.inference.speed import pack_linears

    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 32, dtype=torch.bfloat16)
    layer.requires_grad_(False)
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    assert pack_linears(layer) == 1
    with torch.no_grad():
        before = layer(x)
        layer.weight.mul_(2)  # changed in place
        assert torch.equal(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
        layer.weight.data = torch.randn(32, 64, dtype=torch.bfloat16)  # replaced
        assert torch.equal(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
    assert not torch.equal(before, layer(x))
    grad_x = x.clone().requires_grad_()
    layer(grad_x).sum().backward()  # a call that needs gradients takes F.linear
    assert torch.equal(grad_x.grad, layer.weight.sum(0).expand_as(x))


@needs_packing
def test_a_predictors_packed_layers_give_the_unpacked_models_logits(memorised_adapter):
    from qwen3_lora.inference.speed import FoldedLinear, PackedLinear

    predictor = Predictor.load(adapter=str(memorised_adapter), precision="bf16")
    packed = [m for m in predictor.model.modules() if type(m) is PackedLinear]
    layers = predictor.model.config.num_hidden_layers
    assert len(packed) == 7 * layers + 1  # every projection and the LM head
    ids = torch.tensor([predictor.prompt_ids(s["task"], s["input"])[:8] for s in MEMORISE[:3]])
    with torch.no_grad():
        runs = [predictor.model(input_ids=ids).logits]
        with predictor.without_adapter():
            runs.append(predictor.model(input_ids=ids).logits)
        for module in packed:
            module.__class__ = FoldedLinear  # F.linear on the dense weight, as unpacked
        assert torch.equal(predictor.model(input_ids=ids).logits, runs[0])
        with predictor.without_adapter():
            assert torch.equal(predictor.model(input_ids=ids).logits, runs[1])


def test_a_cpu_whose_onednn_cannot_pack_bf16_keeps_the_plain_layers(memorised_adapter, monkeypatch):
    # Such a CPU (no AVX-512 BW/VL/DQ, no AVX-NE-CONVERT) raises in oneDNN's reorder.
    from qwen3_lora.inference import speed

    monkeypatch.setattr(speed, "can_pack", lambda: False)
    predictor = Predictor.load(adapter=str(memorised_adapter), precision="bf16")
    kinds = {type(m) for m in predictor.model.modules()}
    assert speed.PackedLinear not in kinds
    assert speed.FoldedLinear in kinds  # the LM head still multiplies as one matrix
    sample = MEMORISE[0]
    assert predictor.predict(sample["task"], [sample["input"]])[0].output
