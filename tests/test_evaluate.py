"""`qwen3-lora eval`: the four report files, base vs tuned, and a base run without the adapter."""

from __future__ import annotations

import json

import pytest
from conftest import MEMORISE
from PIL import Image

from qwen3_lora.cli import main
from qwen3_lora.evaluation.report import CHART_SIZE, render_markdown, run_eval
from qwen3_lora.inference.predictor import Predictor, PredictorError

TASKS = ["问题场景分类", "问题类型分类", "问题回答", "文件名称提取"]


@pytest.fixture(scope="module")
def eval_run(memorised_adapter, memorise_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    code = main(
        [
            "eval",
            "--adapter",
            str(memorised_adapter),
            "--precision",
            "fp32",
            "--data",
            str(memorise_file),
            "--output-dir",
            str(out),
            "--compare-base",
            "--max-new-tokens",
            "24",
        ]
    )
    assert code == 0
    return out


def test_eval_writes_the_four_files(eval_run):
    names = sorted(p.name for p in eval_run.iterdir())
    assert names == ["predictions.jsonl", "report.json", "report.md", "report.png"]
    with Image.open(eval_run / "report.png") as image:
        assert image.format == "PNG"
        assert image.size == CHART_SIZE


def test_report_has_per_task_metrics_for_base_and_tuned(eval_run):
    report = json.loads((eval_run / "report.json").read_text("utf-8"))
    assert list(report["models"]) == ["base", "tuned"]
    assert report["samples"] == len(MEMORISE)
    tuned, base = report["models"]["tuned"], report["models"]["base"]
    assert list(tuned) == list(base) == TASKS
    assert tuned["问题场景分类"]["metrics"] == {"accuracy": 1.0, "macro_f1": 1.0}
    assert tuned["问题回答"]["metrics"] == {"rouge_l": 1.0, "char_f1": 1.0}
    assert tuned["文件名称提取"]["metrics"] == {"exact_match": 1.0, "char_f1": 1.0}
    assert tuned["问题类型分类"]["confusion"]["matrix"] == [[1, 0], [0, 1]]
    assert base["文件名称提取"]["metrics"]["exact_match"] == 0.0
    assert base["问题回答"]["metrics"]["rouge_l"] < 1.0

    md = (eval_run / "report.md").read_text("utf-8")
    assert "| task | n | metric | base | tuned | Δ |" in md
    for task in TASKS:
        assert f"| {task} |" in md
    assert "## 问题场景分类: confusion matrix (base)" in md
    assert "| 文件名称提取 | 1 | exact_match | 0.000 | 1.000 | +1.000 |" in md


def test_base_rows_come_from_the_base_model_without_the_adapter(eval_run, tiny_model_dir):
    rows = [json.loads(x) for x in (eval_run / "predictions.jsonl").read_text("utf-8").splitlines()]
    tuned = [r for r in rows if r["model"] == "tuned"]
    base = [r for r in rows if r["model"] == "base"]
    assert len(tuned) == len(base) == len(MEMORISE)
    assert all(r["prediction"] == r["reference"] for r in tuned)
    generated = [r for r in base if r["task"] in ("问题回答", "文件名称提取")]
    assert all(r["prediction"] != r["reference"] for r in generated)
    assert not all(r.get("correct", False) for r in base)
    # The base run equals a separately loaded base model, so no LoRA weight was active.
    plain = Predictor.load(str(tiny_model_dir), precision="fp32")
    for row in base:
        (pred,) = plain.predict(row["task"], [row["input"]], max_new_tokens=24)
        assert row["prediction"] == pred.output
        if pred.probability is not None:
            assert row["probability"] == pytest.approx(pred.probability, abs=1e-5)


def test_eval_defaults_to_the_builtin_split_and_one_model(tiny_model_dir, tmp_path):
    predictor = Predictor.load(str(tiny_model_dir), precision="fp32")
    with pytest.raises(PredictorError, match="compare-base needs an adapter"):
        run_eval(predictor, tmp_path, compare_base=True)
    result = run_eval(predictor, tmp_path, max_new_tokens=2, batch_size=16)
    assert result.report["data"] == "built-in eval split"
    assert list(result.report["models"]) == ["model"]
    assert sum(t["n"] for t in result.report["models"]["model"].values()) == 95
    assert "Δ" not in render_markdown(result.report)
    with Image.open(result.files["chart"]) as image:
        assert image.size == CHART_SIZE
