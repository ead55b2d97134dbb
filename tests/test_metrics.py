"""Metrics against hand-computed values: normalisation, empty strings, Chinese punctuation."""

from __future__ import annotations

import pytest

from qwen3_lora.evaluation.metrics import (
    INVALID,
    accuracy,
    char_f1,
    confusion_matrix,
    exact_match,
    lcs_length,
    macro_f1,
    normalize_text,
    rouge_l,
    sample_metrics,
    task_metrics,
    to_half_width,
)

SCENE = ["数据平台相关问题", "通用问题", "无关问题"]


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("  “西安市地类图斑”。 ", "西安市地类图斑"),
        ("ＧＤＢ１２３\u3000", "GDB123"),
        ("（数据）", "数据"),  # full-width parentheses become ASCII, then are stripped
        ("a，b", "a,b"),  # inner punctuation stays (as its half-width form)
        ("《2023年曲靖市三调图斑.gdb》！", "2023年曲靖市三调图斑.gdb"),
        ("。！？、", ""),
        ("", ""),
    ],
)
def test_normalize_text(raw, normalised):
    assert normalize_text(raw) == normalised


def test_to_half_width_only_touches_full_width_ascii():
    assert to_half_width("Ａｚ０～！\u3000中文，。") == "Az0~! 中文,。"


def test_exact_match():
    assert exact_match("西安市地类图斑。", "西安市地类图斑") == 1.0
    assert exact_match("ＡＢＣ", " ABC ") == 1.0
    assert exact_match("西安市", "西安市地类图斑") == 0.0
    assert exact_match("", "") == 1.0
    assert exact_match("", "西安") == 0.0


def test_char_f1():
    # 5 predicted chars, all in the 7 reference chars: P=1, R=5/7, F1=10/12.
    assert char_f1("西安市图斑", "西安市地类图斑") == pytest.approx(10 / 12)
    # Multiset overlap: one 啊 of three. P=1/3, R=1 -> F1=0.5.
    assert char_f1("啊啊啊", "啊") == pytest.approx(0.5)
    assert char_f1("ａｂ ｃ", "abc") == 1.0  # full width and inner spaces do not count
    assert char_f1("", "") == 1.0
    assert char_f1("，", "") == 1.0  # only punctuation: empty after normalisation
    assert char_f1("", "西安") == 0.0
    assert char_f1("东北", "西安") == 0.0


def test_rouge_l_is_order_aware_where_char_f1_is_not():
    assert lcs_length("abcd", "acbd") == 3
    assert rouge_l("abcd", "acbd") == pytest.approx(0.75)
    # LCS 4 of 4 predicted and 6 reference chars: P=1, R=2/3, F1=0.8.
    assert rouge_l("清洗规则", "配置清洗规则") == pytest.approx(0.8)
    assert rouge_l("规则清洗", "清洗规则") == pytest.approx(0.5)
    assert char_f1("规则清洗", "清洗规则") == 1.0
    assert rouge_l("先配置清洗规则。", "先配置清洗规则") == 1.0
    assert rouge_l("", "") == 1.0
    assert rouge_l("", "规则") == 0.0


def test_accuracy():
    assert accuracy(
        ["通用问题", "无关问题。", "通用问题"], ["通用问题", "无关问题", "无关问题"]
    ) == (pytest.approx(2 / 3))
    assert accuracy([], []) == 0.0


def test_macro_f1_and_confusion_matrix():
    references = ["数据平台相关问题", "数据平台相关问题", "通用问题", "无关问题"]
    predictions = ["数据平台相关问题", "通用问题", "通用问题。", "随便说说"]
    # 数据平台相关问题: P=1, R=1/2 -> 2/3; 通用问题: P=1/2, R=1 -> 2/3; 无关问题: 0.
    assert macro_f1(predictions, references, SCENE) == pytest.approx(4 / 9)
    conf = confusion_matrix(predictions, references, SCENE)
    assert conf["rows"] == SCENE
    assert conf["columns"] == [*SCENE, INVALID]
    assert conf["matrix"] == [[1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]]
    # A label absent from both sides is left out of the mean.
    assert macro_f1(["通用问题", "无关问题"], ["通用问题", "无关问题"], SCENE) == 1.0
    assert confusion_matrix(["通用问题"], ["通用问题"], SCENE)["columns"] == SCENE


def test_task_and_sample_metrics_by_kind():
    assert task_metrics("classification", ["通用问题"], ["通用问题"], SCENE) == {
        "accuracy": 1.0,
        "macro_f1": 1.0,
    }
    assert task_metrics("extraction", ["西安市图斑", "ＡＢ"], ["西安市地类图斑", "AB"]) == {
        "exact_match": 0.5,
        "char_f1": pytest.approx((10 / 12 + 1) / 2),
    }
    assert task_metrics("generation", ["规则清洗"], ["清洗规则"]) == {
        "rouge_l": 0.5,
        "char_f1": 1.0,
    }
    assert sample_metrics("classification", "通用问题！", "通用问题") == {"correct": True}
    assert sample_metrics("extraction", "", "") == {"exact_match": 1.0, "char_f1": 1.0}
