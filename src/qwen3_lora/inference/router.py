"""The assistant's pipeline: scene → type → answer the question or extract the file name.

    问题场景分类 ─ 数据平台相关问题 → 问题类型分类 ─ 问题回答 → 问题回答 (action "answer")
               │                               └ 任务处理 → 文件名称提取 (action "task")
               ├ 通用问题 → action "general"
               └ 无关问题 → action "reject"

Both classification steps use label scoring, so each carries its label's probability and
`scores`, every label's probability (a softmax over the task's labels, in registry order).
"""

from __future__ import annotations

import time

from .errors import PredictorError
from .predictor import Predictor

SCENE_TASK, TYPE_TASK, QA_TASK, EXTRACT_TASK = (
    "问题场景分类",
    "问题类型分类",
    "问题回答",
    "文件名称提取",
)
PLATFORM, GENERAL = "数据平台相关问题", "通用问题"
ASK, DO = "问题回答", "任务处理"


def _check_registry(predictor: Predictor) -> None:
    needed = {SCENE_TASK: (PLATFORM, GENERAL), TYPE_TASK: (ASK, DO), QA_TASK: (), EXTRACT_TASK: ()}
    for task, labels in needed.items():
        spec = predictor.registry.get(task)
        missing = [label for label in labels if spec is None or label not in spec.labels]
        if spec is None or missing:
            raise PredictorError(
                f"the router needs task {task!r}"
                + (f" with labels {', '.join(labels)}" if labels else "")
                + f"; the registry {predictor.registry.source} does not provide it"
            )


def _classified(prediction) -> dict:
    return {
        "label": prediction.output,
        "probability": prediction.probability,
        "scores": prediction.scores,
    }


def route(predictor: Predictor, text: str, *, max_new_tokens: int = 256) -> dict:
    """Run the pipeline on one user message; one JSON-ready dict with every step's result."""
    _check_registry(predictor)
    began = time.perf_counter()
    result: dict = {
        "input": text,
        "scene": None,
        "type": None,
        "answer": None,
        "file_name": None,
        "action": None,
    }
    scene = predictor.predict(SCENE_TASK, [text], decode="score")[0]
    result["scene"] = _classified(scene)
    if scene.output != PLATFORM:
        result["action"] = "general" if scene.output == GENERAL else "reject"
    else:
        kind = predictor.predict(TYPE_TASK, [text], decode="score")[0]
        result["type"] = _classified(kind)
        if kind.output == DO:
            name = predictor.predict(EXTRACT_TASK, [text], max_new_tokens=max_new_tokens)[0]
            result["file_name"] = name.output or None
            result["action"] = "task"
        else:
            answer = predictor.predict(QA_TASK, [text], max_new_tokens=max_new_tokens)[0]
            result["answer"] = answer.output
            result["action"] = "answer"
    result["latency_ms"] = round((time.perf_counter() - began) * 1000, 3)
    return result
