"""`qwen3-lora eval`: score a model on held-out data, per task, and write the reports.

Decoding is deterministic and follows `inference.decode`: label scoring for classification,
greedy generation kept within the input's spans for extraction, greedy generation for the other
tasks; `decode="generate"` makes every task free greedy generation. With `compare_base` the same data
is run with the adapter switched off (PEFT's `disable_adapter()`), so base and tuned numbers
come from one set of base weights, side by side.

Files written to the output folder: report.json, report.md, predictions.jsonl, report.png.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ..data.records import Sample, load_builtin, load_records
from ..files import atomic_path, atomic_write_text, output_folder
from ..inference.errors import PredictorError
from ..inference.predictor import Predictor
from ..prompt.encoding import sample_prompt
from .metrics import confusion_matrix, sample_metrics, task_metrics

REPORT_JSON, REPORT_MD, PREDICTIONS, CHART = (
    "report.json",
    "report.md",
    "predictions.jsonl",
    "report.png",
)
CHART_SIZE = (1000, 500)  # pixels: figsize (10, 5) at 100 dpi
log = logging.getLogger(__name__)


@dataclass
class ModelRun:
    """One model's results: per-task metrics and per-sample predictions."""

    name: str
    tasks: dict[str, dict] = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class EvalResult:
    report: dict
    output_dir: Path
    files: dict[str, Path]
    runs: list[ModelRun]


def _by_task(records: list[Sample], predictor: Predictor) -> dict[str, list[Sample]]:
    grouped: dict[str, list[Sample]] = defaultdict(list)
    for record in records:
        grouped[record.task].append(record)
    order = [t for t in predictor.registry.names if t in grouped]
    return {task: grouped[task] for task in order}


def evaluate_records(
    predictor: Predictor,
    records: list[Sample],
    name: str,
    *,
    decode: str = "auto",
    max_new_tokens: int = 128,
    batch_size: int = 8,
) -> ModelRun:
    """Predict every record with the predictor as it stands and compute per-task metrics."""
    run = ModelRun(name)
    began = time.perf_counter()
    for task, group in _by_task(records, predictor).items():
        spec = predictor.registry.require(task)
        predictions = predictor.predict(
            task,
            [r.input for r in group],
            decode=decode,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            prompts=[sample_prompt(predictor.tokenizer, r) for r in group],
        )
        outputs = [p.output for p in predictions]
        references = [r.output for r in group]
        entry = {
            "kind": spec.kind,
            "id": spec.id,
            "n": len(group),
            "metrics": task_metrics(spec.kind, outputs, references, spec.labels),
        }
        if spec.is_classification:
            entry["confusion"] = confusion_matrix(outputs, references, spec.labels)
        run.tasks[task] = entry
        for record, pred in zip(group, predictions, strict=True):
            run.rows.append(
                {
                    "model": name,
                    "task": task,
                    "id": record.id,
                    "where": record.where,
                    "input": record.input,
                    "reference": record.output,
                    "prediction": pred.output,
                    "probability": pred.probability,
                    **sample_metrics(spec.kind, pred.output, record.output),
                    "latency_ms": pred.latency_ms,
                }
            )
        log.info("%s %s: %s", name, task, _format_metrics(entry["metrics"]))
    run.seconds = time.perf_counter() - began
    return run


def _format_metrics(metrics: dict) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in metrics.items())


def run_eval(
    predictor: Predictor,
    output_dir: str | Path,
    *,
    data: list[str | Path] | None = None,
    compare_base: bool = False,
    decode: str = "auto",
    max_new_tokens: int = 128,
    batch_size: int = 8,
) -> EvalResult:
    """Evaluate on `data` (default: the built-in eval split) and write the four report files."""
    records = (
        load_records(list(data), predictor.registry)
        if data
        else load_builtin("eval", predictor.registry)
    )
    if not records:
        raise PredictorError("no evaluation records: the data files are empty")
    if untasked := sum(r.task is None for r in records):
        log.warning(
            "%d conversation(s) without a task are not evaluated: give each a `task` field to "
            "score it by that task's metric",
            untasked,
        )
        records = [r for r in records if r.task is not None]
        if not records:
            raise PredictorError(
                "no evaluation records: every conversation lacks a `task` field, which says "
                "how its last answer is scored"
            )
    if compare_base and not predictor.has_adapter:
        raise PredictorError("--compare-base needs an adapter (--adapter DIR) to compare against")
    settings = {"decode": decode, "max_new_tokens": max_new_tokens, "batch_size": batch_size}
    runs = []
    if compare_base:
        with predictor.without_adapter():
            runs.append(evaluate_records(predictor, records, "base", **settings))
    runs.append(
        evaluate_records(
            predictor, records, "tuned" if predictor.has_adapter else "model", **settings
        )
    )
    report = {
        "base_model": predictor.base_model,
        "adapter": predictor.adapter,
        "precision": predictor.precision,
        "data": [str(p) for p in data] if data else "built-in eval split",
        "samples": len(records),
        "decode": decode,
        "max_new_tokens": max_new_tokens,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "models": {run.name: run.tasks for run in runs},
        "seconds": {run.name: round(run.seconds, 3) for run in runs},
    }
    out = output_folder(output_dir, "--output-dir")
    files = {
        "json": out / REPORT_JSON,
        "markdown": out / REPORT_MD,
        "predictions": out / PREDICTIONS,
        "chart": out / CHART,
    }
    # Each report replaces its previous version whole (temporary name + rename).
    atomic_write_text(files["json"], json.dumps(report, ensure_ascii=False, indent=2))
    atomic_write_text(files["markdown"], render_markdown(report))
    rows = (json.dumps(row, ensure_ascii=False) + "\n" for run in runs for row in run.rows)
    atomic_write_text(files["predictions"], "".join(rows))
    draw_chart(report, files["chart"])
    return EvalResult(report, out, files, runs)


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def render_markdown(report: dict) -> str:
    """report.md: a metric table with one column per model, then the confusion matrices."""
    models = list(report["models"])
    adapter = f" + adapter `{report['adapter']}`" if report["adapter"] else ""
    lines = [
        "# Evaluation report",
        "",
        f"- model: `{report['base_model']}`{adapter} ({report['precision']})",
        f"- data: {report['data']} ({report['samples']} samples)",
        f"- decode: {report['decode']} (unless `generate`: classification by label scoring, "
        f"extraction greedy within the input's spans; greedy generation otherwise, at most "
        f"{report['max_new_tokens']} new tokens)",
        "- texts are compared after full-width→half-width and stripping surrounding "
        "whitespace/punctuation",
        "",
        "| task | n | metric | " + " | ".join(models) + (" | Δ |" if len(models) == 2 else " |"),
        "|---|---|---|" + "---|" * len(models) + ("---|" if len(models) == 2 else ""),
    ]
    first = report["models"][models[0]]
    for task, entry in first.items():
        for metric in entry["metrics"]:
            values = [
                report["models"][m].get(task, {}).get("metrics", {}).get(metric) for m in models
            ]
            cells = [_cell(v) for v in values]
            if len(models) == 2:
                delta = None if None in values else values[1] - values[0]
                cells.append("–" if delta is None else f"{delta:+.3f}")
            lines.append(f"| {task} | {entry['n']} | {metric} | " + " | ".join(cells) + " |")
    lines += ["", "Seconds: " + ", ".join(f"{m} {s}" for m, s in report["seconds"].items()), ""]
    for model in models:
        for task, entry in report["models"][model].items():
            if "confusion" not in entry:
                continue
            conf = entry["confusion"]
            lines += [
                f"## {task}: confusion matrix ({model})",
                "",
                "| reference \\ prediction | " + " | ".join(conf["columns"]) + " |",
                "|---|" + "---|" * len(conf["columns"]),
            ]
            for name, row in zip(conf["rows"], conf["matrix"], strict=True):
                lines.append(f"| {name} | " + " | ".join(str(c) for c in row) + " |")
            lines.append("")
    return "\n".join(lines)


def draw_chart(report: dict, path: Path) -> None:
    """Grouped bars: one group per (task, metric), one bar per model (base vs tuned)."""
    # Figure + savefig use the Agg canvas directly: no pyplot state, no display needed.
    from matplotlib.figure import Figure

    models = list(report["models"])
    first = report["models"][models[0]]
    # Task ids, not the Chinese names: the default font has no CJK glyphs.
    groups = [(task, metric) for task, e in first.items() for metric in e["metrics"]]
    names = [f"{first[t]['id']}\n{m}" for t, m in groups]
    fig = Figure(figsize=(CHART_SIZE[0] / 100, CHART_SIZE[1] / 100), dpi=100)
    ax = fig.subplots()
    width = 0.8 / len(models)
    colors = {"base": "#9e9e9e", "tuned": "#1f77b4", "model": "#1f77b4"}
    for i, model in enumerate(models):
        values = [
            report["models"][model].get(t, {}).get("metrics", {}).get(m, 0.0) for t, m in groups
        ]
        xs = [g + (i - (len(models) - 1) / 2) * width for g in range(len(groups))]
        bars = ax.bar(xs, values, width, label=model, color=colors.get(model))
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.set_xticks(range(len(groups)), names, fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("score")
    ax.set_title(f"Evaluation on {report['samples']} samples")
    ax.legend(loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
