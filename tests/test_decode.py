"""The one decode rule: (task kind, requested decode) -> the decode used, pinned as a table, and
the same rule through every caller (predict, batched predict, eval)."""

from __future__ import annotations

import json

import pytest
from conftest import MEMORISE

from qwen3_lora.data.records import Record
from qwen3_lora.evaluation.report import evaluate_records
from qwen3_lora.inference.batch import predict_rows
from qwen3_lora.inference.decode import DECODES, decode_for
from qwen3_lora.inference.errors import PredictorError

EXPECTED = {
    # kind:           auto        generate     score       span
    "classification": ("score", "generate", "score", "score"),
    "extraction": ("span", "generate", "span", "span"),
    "generation": ("generate", "generate", "generate", "generate"),
}


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_the_decode_table(kind):
    assert DECODES == ("auto", "generate", "score", "span")
    assert tuple(decode_for(kind, requested) for requested in DECODES) == EXPECTED[kind]


def test_unknown_decodes_and_kinds_are_errors():
    with pytest.raises(PredictorError, match="decode must be one of"):
        decode_for("classification", "beam")
    with pytest.raises(PredictorError, match="no decode rule"):
        decode_for("ranking", "auto")


class Recorder:
    """Wraps a predictor and records which decode each task's generation or scoring took."""

    def __init__(self, predictor, monkeypatch):
        self.inner = predictor
        self.used: dict[str, set[str]] = {}
        original_scorer, original_generate = predictor.scorer, predictor.generate_ids
        current: list[str] = []

        def scorer(task):
            self.used.setdefault(current[-1], set()).add("score")
            return original_scorer(task)

        def generate_ids(ids, **kwargs):
            way = "span" if kwargs.get("spans_of") is not None else "generate"
            self.used.setdefault(current[-1], set()).add(way)
            return original_generate(ids, **kwargs)

        original_predict = predictor.predict

        def predict(task, texts, **kwargs):
            current.append(predictor.task_spec(task).kind)
            return original_predict(task, texts, **kwargs)

        monkeypatch.setattr(predictor, "scorer", scorer)
        monkeypatch.setattr(predictor, "generate_ids", generate_ids)
        monkeypatch.setattr(predictor, "predict", predict)


@pytest.mark.parametrize("requested", DECODES)
def test_predict_batched_predict_and_eval_follow_the_table(tuned, monkeypatch, requested):
    rows = [{"task": s["task"], "input": s["input"]} for s in MEMORISE]
    records = [
        Record(s["task"], s["input"], s["output"], "m.jsonl", i) for i, s in enumerate(MEMORISE, 1)
    ]
    expected = {kind: {EXPECTED[kind][DECODES.index(requested)]} for kind in EXPECTED}
    for run in (
        lambda: predict_rows(tuned, rows, decode=requested, max_new_tokens=4),
        lambda: evaluate_records(tuned, records, "tuned", decode=requested, max_new_tokens=4),
        lambda: [
            tuned.predict(s["task"], [s["input"]], decode=requested, max_new_tokens=4)
            for s in MEMORISE
        ],
    ):
        with monkeypatch.context() as patch:
            recorder = Recorder(tuned, patch)
            run()
            assert recorder.used == expected, json.dumps(
                {k: sorted(v) for k, v in recorder.used.items()}
            )
