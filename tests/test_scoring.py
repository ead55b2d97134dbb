"""Label scoring: training's label tokens, exact log-likelihoods, a valid label every time."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from qwen3_lora.data.registry import load_registry
from qwen3_lora.inference.predictor import prompt_ids
from qwen3_lora.inference.scoring import LabelScorer, LabelTrie, label_answer_ids
from qwen3_lora.prompt.encoding import IGNORE_INDEX, encode_example

# A label set with a shared prefix: the first two share the token of 数据平台相关问题.
SHARED = ["数据平台相关问题", "数据平台相关问题吗", "通用问题", "无关问题"]
TEXTS = ["你好", "入库的时候字段映射要怎么设置", "我有一批西安市地类图斑的数据，怎么进行发服务"]


@pytest.fixture(scope="module", params=["pad_differs", "pad_is_eos"])
def tiny(request, tiny_model_dir, tiny_model_dir_pad_eos):
    folder = tiny_model_dir if request.param == "pad_differs" else tiny_model_dir_pad_eos
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, tokenizer


def brute_force(model, tokenizer, task: str, text: str, label: str) -> float:
    """Sum of log p over the supervised tokens of the full training sequence."""
    enc = encode_example(tokenizer, task, text, label)
    with torch.no_grad():
        logits = model(torch.tensor([enc.input_ids])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return sum(
        logprobs[i - 1, tok].item()
        for i, (tok, y) in enumerate(zip(enc.input_ids, enc.labels, strict=True))
        if y != IGNORE_INDEX
    )


def test_label_tokens_are_the_supervised_answer_tokens(tiny):
    _, tokenizer = tiny
    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for task in load_registry().tasks:
        for label in task.labels:
            ids = label_answer_ids(tokenizer, task.name, label)
            for text in TEXTS:
                enc = encode_example(tokenizer, task.name, text, label)
                supervised = [t for t, y in zip(enc.input_ids, enc.labels, strict=True) if y >= 0]
                assert ids == supervised
            assert ids[-1] == eot


def test_trie_shares_prefixes():
    trie = LabelTrie.build([[5, 7, 2], [5, 2], [9, 2]])
    assert trie.tokens == (5, 7, 2, 2, 9, 2)
    assert trie.parents == (-1, 0, 1, 0, -1, 4)
    assert trie.paths == ((0, 1, 2), (0, 3), (4, 5))
    assert trie.inner == (0, 1, 4)  # the leaves (end-of-turn tokens) are never fed
    with pytest.raises(ValueError, match="same answer tokens"):
        LabelTrie.build([[1, 2], [1, 2]])


def test_log_likelihoods_equal_brute_force(tiny):
    model, tokenizer = tiny
    task = "问题场景分类"
    want = torch.tensor(
        [[brute_force(model, tokenizer, task, t, lab) for lab in SHARED] for t in TEXTS]
    )
    for method in ("tree", "rows"):
        scorer = LabelScorer(model, tokenizer, task, SHARED, method=method)
        assert len(scorer.trie.tokens) < sum(len(ids) for ids in scorer.label_ids)
        # Prompts of different lengths in one batch: padding must not leak into the scores.
        got = scorer.log_likelihoods([prompt_ids(tokenizer, task, t) for t in TEXTS])
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5, msg=method)


def test_tree_scoring_under_eager_attention(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    scorer = LabelScorer(model, tokenizer, "问题场景分类", SHARED)
    assert scorer.method == "tree"
    got = scorer.log_likelihoods([prompt_ids(tokenizer, "问题场景分类", t) for t in TEXTS])
    want = [
        [brute_force(model, tokenizer, "问题场景分类", t, lab) for lab in SHARED] for t in TEXTS
    ]
    torch.testing.assert_close(got, torch.tensor(want), atol=1e-4, rtol=1e-5)


def test_score_is_always_a_label_with_probabilities_summing_to_one(tiny):
    model, tokenizer = tiny
    for task in load_registry().tasks:
        if not task.is_classification:
            continue
        scorer = LabelScorer(model, tokenizer, task.name, task.labels)
        texts = [*TEXTS, "", "？？？", "ＡＢＣ　１２３"]
        for text, result in zip(
            texts, scorer.score([prompt_ids(tokenizer, task.name, t) for t in texts]), strict=True
        ):
            assert result.label in task.labels, text
            assert set(result.probabilities) == set(task.labels)
            assert math.isclose(sum(result.probabilities.values()), 1.0, abs_tol=1e-9)
            assert result.probability == max(result.probabilities.values())
            assert result.probabilities[result.label] == result.probability


def test_scorer_rejects_bad_arguments(tiny):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match="2\\+ labels"):
        LabelScorer(model, tokenizer, "问题场景分类", ["只有一个"])
    with pytest.raises(ValueError, match="method"):
        LabelScorer(model, tokenizer, "问题场景分类", SHARED, method="beam")


def test_benchmark_smoke(capsys):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "label_scoring.py"
    spec = importlib.util.spec_from_file_location("label_scoring_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--smoke", "--per-task", "1"]) == 0
    out = capsys.readouterr().out
    assert "tiny test tokenizer" in out
    assert "faster than generating the label" in out
