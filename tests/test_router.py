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
        prob = 0.75 if spec.is_classification else None
        return [Prediction(task, t, output, prob) for t in texts]


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
    assert result["scene"] == {"label": answers["问题场景分类"], "probability": 0.75}
    for key, value in expected.items():
        assert result[key] == value
    if result["action"] in ("answer", "task"):
        assert result["type"] == {"label": answers["问题类型分类"], "probability": 0.75}
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
    assert result["action"] == "reject"
    assert result["type"] is None and result["answer"] is None and result["file_name"] is None
