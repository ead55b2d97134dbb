"""The router: every branch of scene → type → answer / file name, and `qwen3-lora route`."""

from __future__ import annotations

import json

import pytest
from conftest import MEMORISE

from qwen3_lora.cli import main
from qwen3_lora.data.registry import load_registry
from qwen3_lora.inference.predictor import Prediction, PredictorError
from qwen3_lora.inference.router import route


class ScriptedPredictor:
    """Answers each task with a fixed output; records which tasks were asked."""

    def __init__(self, answers: dict[str, str]):
        self.registry = load_registry()
        self.answers = answers
        self.asked: list[tuple[str, str]] = []

    def predict(self, task, texts, *, decode="auto", max_new_tokens=128):
        self.asked.append((task, decode))
        spec = self.registry.require(task)
        output = self.answers[task]
        if not spec.is_classification:
            return [Prediction(task, t, output) for t in texts]
        return [Prediction(task, t, output, 0.75, scripted_scores(spec, output)) for t in texts]


def scripted_scores(spec, best: str) -> dict[str, float]:
    """0.75 for the scripted label, the rest shared by the others, in registry order."""
    rest = 0.25 / (len(spec.labels) - 1)
    return {label: 0.75 if label == best else rest for label in spec.labels}


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        (
            {
                "问题场景分类": "数据平台相关问题",
                "问题类型分类": "问题回答",
                "问题回答": "先配置清洗规则。",
            },
            {"action": "answer", "answer": "先配置清洗规则。", "file_name": None},
        ),
        (
            {
                "问题场景分类": "数据平台相关问题",
                "问题类型分类": "任务处理",
                "文件名称提取": "西安市地类图斑",
            },
            {"action": "task", "answer": None, "file_name": "西安市地类图斑"},
        ),
        ({"问题场景分类": "通用问题"}, {"action": "general", "type": None, "answer": None}),
        ({"问题场景分类": "无关问题"}, {"action": "reject", "type": None, "file_name": None}),
    ],
)
def test_every_branch(answers, expected):
    predictor = ScriptedPredictor(answers)
    result = route(predictor, "输入")
    assert result["input"] == "输入"
    registry = predictor.registry
    scene = answers["问题场景分类"]
    assert result["scene"] == {
        "label": scene,
        "probability": 0.75,
        "scores": scripted_scores(registry.require("问题场景分类"), scene),
    }
    assert list(result["scene"]["scores"]) == list(registry.require("问题场景分类").labels)
    for key, value in expected.items():
        assert result[key] == value
    if result["action"] in ("answer", "task"):
        kind = answers["问题类型分类"]
        assert result["type"] == {
            "label": kind,
            "probability": 0.75,
            "scores": scripted_scores(registry.require("问题类型分类"), kind),
        }
    # Classification steps are scored; the free-text step generates.
    asked = dict(predictor.asked)
    assert asked["问题场景分类"] == "score"
    assert [t for t, _ in predictor.asked] == list(answers)
    json.dumps(result, ensure_ascii=False)  # JSON-ready


def test_empty_file_name_is_null():
    predictor = ScriptedPredictor(
        {"问题场景分类": "数据平台相关问题", "问题类型分类": "任务处理", "文件名称提取": ""}
    )
    assert route(predictor, "x")["file_name"] is None


def test_a_registry_without_the_router_tasks_is_a_clear_error(tmp_path):
    predictor = ScriptedPredictor({})
    registry = tmp_path / "tasks.yaml"
    registry.write_text(
        "tasks:\n  - {name: 情感, id: senti, kind: classification, labels: [正面, 负面]}\n", "utf-8"
    )
    predictor.registry = load_registry(registry)
    with pytest.raises(PredictorError, match="the router needs task '问题场景分类'"):
        route(predictor, "x")


def test_cli_route_with_the_memorised_adapter(memorised_adapter, capsys):
    unrelated = MEMORISE[1]["input"]  # memorised as 无关问题
    code = main(
        ["route", "--adapter", str(memorised_adapter), "--precision", "fp32", "--jsonl", unrelated]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["input"] == unrelated
    assert result["scene"]["label"] == "无关问题"
    assert 0.5 < result["scene"]["probability"] <= 1.0
    scores = result["scene"]["scores"]  # every label's probability, summing to one
    assert list(scores) == ["数据平台相关问题", "通用问题", "无关问题"]
    assert scores["无关问题"] == result["scene"]["probability"]
    assert sum(scores.values()) == pytest.approx(1.0, abs=1e-5)
    assert result["action"] == "reject"
    assert result["type"] is None and result["answer"] is None and result["file_name"] is None
