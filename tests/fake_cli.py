"""A stand-in for `python -m qwen3_lora train|eval` in the console's job tests: the flags the
console builds, and the files the real commands write, in a fraction of a second per step.

train: progress.json with the planned total (as the trainer writes it), metrics.jsonl one line
per step, each written in two halves so readers meet half-written lines, an eval loss every few
steps, then adapter_config.json. eval: report.json and predictions.jsonl (`sample_report`).
Special base models: `fake/fail` (a CLI error, exit 2), `fake/crash` (a traceback),
`fake/stubborn` (ignores SIGTERM). Seconds per step: $FAKE_STEP_S (default 0.2).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

STEP_S = float(os.environ.get("FAKE_STEP_S", "0.2"))
STEPS_PER_EPOCH = 4


def _write_json(path: Path, value: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, ensure_ascii=False), "utf-8")
    os.replace(tmp, path)


def train(args) -> int:
    if args.base_model == "fake/fail":
        print("error: cannot load 'fake/fail': not a local folder, no hub here", file=sys.stderr)
        return 2
    if args.base_model == "fake/crash":
        raise RuntimeError("CUDA out of memory (fake)")
    if args.base_model == "fake/stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    out = Path(args.output_dir)
    total = args.max_steps if args.max_steps > 0 else math.ceil(STEPS_PER_EPOCH * args.epochs)
    print(f"train: {STEPS_PER_EPOCH} optimizer steps per epoch", file=sys.stderr, flush=True)
    started = time.time()
    _write_json(out / "progress.json", {"step": 0, "max_steps": total, "started": started})
    with (out / "metrics.jsonl").open("w", encoding="utf-8") as fh:
        for step in range(1, total + 1):
            time.sleep(STEP_S)
            loss = round(3.0 * math.exp(-step / 6) + 0.2, 4)
            line = json.dumps({"step": step, "loss": loss, "tokens_per_s": 1234.5})
            fh.write(line[: len(line) // 2])
            fh.flush()
            time.sleep(STEP_S / 4)
            fh.write(line[len(line) // 2 :] + "\n")
            if step % 3 == 0 or step == total:
                fh.write(json.dumps({"step": step, "eval_loss": loss + 0.3}) + "\n")
            fh.flush()
            _write_json(
                out / "progress.json", {"step": step, "max_steps": total, "started": started}
            )
            print(f"{step}/{total} [loss {loss}]", end="\r", file=sys.stderr, flush=True)
    (out / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "x"}))
    print(f"\ndone: {total} optimizer steps; adapter in {out}", flush=True)
    return 0


def evaluate(args) -> int:
    out = Path(args.output_dir)
    time.sleep(STEP_S)
    report = sample_report(args.adapter, compare=args.compare_base)
    for model, tasks in report["models"].items():
        for task in tasks:
            print(f"INFO {model} {task}: accuracy 0.900", file=sys.stderr, flush=True)
    (out / "report.json").write_text(json.dumps(report, ensure_ascii=False), "utf-8")
    rows = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in sample_predictions())
    (out / "predictions.jsonl").write_text(rows, "utf-8")
    return 0


def sample_report(adapter: str | None = "runs/a", compare: bool = True) -> dict:
    """A report.json as `qwen3-lora eval --compare-base` writes it, with known numbers."""

    def tasks(good: bool) -> dict:
        scene = [[4, 0, 0], [1, 2, 0], [0, 0, 3]] if good else [[2, 1, 1], [1, 1, 1], [1, 1, 1]]
        labels = ["数据平台相关问题", "通用问题", "无关问题"]
        return {
            "问题场景分类": {
                "kind": "classification",
                "id": "scene",
                "n": 10,
                "metrics": {"accuracy": 0.9 if good else 0.4, "macro_f1": 0.88 if good else 0.3},
                "confusion": {"rows": labels, "columns": labels, "matrix": scene},
            },
            "文件名称提取": {
                "kind": "extraction",
                "id": "extract",
                "n": 4,
                "metrics": {"exact_match": 0.75 if good else 0.25},
            },
        }

    models = {"base": tasks(False), "tuned": tasks(True)} if compare else {"tuned": tasks(True)}
    return {
        "base_model": "Qwen/Qwen3-0.6B",
        "adapter": adapter,
        "precision": "fp32",
        "data": "built-in eval split",
        "samples": 14,
        "created": "2026-12-01T12:00:00",
        "models": models,
    }


def sample_predictions() -> list[dict]:
    def row(model, task, text, ref, pred, **score):
        base = {"model": model, "task": task, "input": text, "reference": ref, "prediction": pred}
        return {**base, **score}

    return [
        row(
            "tuned",
            "问题场景分类",
            "数据清洗流程",
            "数据平台相关问题",
            "数据平台相关问题",
            correct=True,
        ),
        row(
            "tuned",
            "问题场景分类",
            "天气<script>alert(1)</script>",
            "通用问题",
            "数据平台相关问题",
            correct=False,
        ),
        row(
            "tuned",
            "文件名称提取",
            "把西安市地类图斑发布成服务",
            "西安市地类图斑",
            "西安市",
            exact_match=0.0,
        ),
        row("tuned", "文件名称提取", "发布北京道路数据", "北京道路", "北京道路", exact_match=1.0),
        row(
            "base",
            "问题场景分类",
            "怎么发布地图服务",
            "数据平台相关问题",
            "通用问题",
            correct=False,
        ),
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fake-qwen3-lora")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train")
    t.add_argument("--base-model", required=True)
    t.add_argument("--output-dir", required=True)
    t.add_argument("--epochs", type=float, default=3.0)
    t.add_argument("--max-steps", type=int, default=-1)
    t.add_argument("--learning-rate", type=float, default=2e-4)
    for flag in ("--lora-r", "--lora-alpha", "--batch-size", "--grad-accum"):
        t.add_argument(flag, type=int)
    t.add_argument("--data", nargs="+")
    t.add_argument("--eval-data", nargs="+")
    t.add_argument("--builtin-data", action=argparse.BooleanOptionalAction)
    t.add_argument("--chat-template")
    e = sub.add_parser("eval")
    e.add_argument("--adapter", required=True)
    e.add_argument("--output-dir", required=True)
    e.add_argument("--data", nargs="+")
    e.add_argument("--compare-base", action="store_true")
    e.add_argument("--base-model")
    e.add_argument("--max-new-tokens", type=int)
    args = parser.parse_args(argv)
    return train(args) if args.command == "train" else evaluate(args)


if __name__ == "__main__":
    sys.exit(main())
