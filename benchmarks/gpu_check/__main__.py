"""`python -m benchmarks.gpu_check [--dry-run]`: see the package's docstring."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

import benchmarks.gpu_check as package
from benchmarks.common import (
    QWEN3_SHAPE,
    README,
    RESULTS,
    TINY,
    build_model_folder,
    build_tokenizer,
    commit,
    machine,
    matmul_peak,
    render_block,
    result_name,
    write_result,
    write_text,
)
from benchmarks.flops import lora_params
from benchmarks.gpu_check.inference import scoring
from benchmarks.gpu_check.report import gpu_markdown, readme_block
from benchmarks.gpu_check.server import server
from benchmarks.gpu_check.training import qlora, training

PARTS = {"training": training, "qlora": qlora, "scoring": scoring, "server": server}
README_BLOCK = "gpu_check"


def _context(args, workdir: Path) -> dict:
    from benchmarks.train_speed.figures import dataset_stats, write_jsonl
    from qwen3_lora.data.records import load_builtin
    from qwen3_lora.training.config import TrainConfig

    device = "cpu" if args.dry_run else "cuda"
    if args.dry_run:
        # A tiny model gains nothing from threads; on a busy CPU they wait on each other.
        torch.set_num_threads(1)
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --dry-run to check the parts on the CPU")
    tokenizer, tokenizer_info = build_tokenizer(tiny=args.dry_run)
    model = build_model_folder(tokenizer, TINY if args.dry_run else QWEN3_SHAPE, workdir / "model")
    recipe = TrainConfig()
    # The built-in train split; a dry run trains (and encodes) only its first samples.
    records = load_builtin("train")[: 32 if args.dry_run else None]
    train_file = workdir / "train.jsonl"
    write_jsonl(train_file, records)
    n, seconds = (256, 0.2) if args.dry_run else (8192, 3.0)
    return {
        "dry_run": args.dry_run,
        "device": device,
        "workdir": workdir,
        "tokenizer": tokenizer,
        "tokenizer_info": tokenizer_info,
        "model_dir": workdir / "model",
        "model": model,
        "shape": model["shape"],
        "lora_params": lora_params(model["shape"], recipe.lora_r, recipe.target_modules),
        "train_file": train_file,
        "records": records,
        "split_tokens": dataset_stats(tokenizer, records)["tokens"],
        "bf16_peak_gflops": matmul_peak(torch.bfloat16, n, seconds, device=device),
    }


def run(args) -> dict:
    began = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    report: dict = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": "python -m benchmarks.gpu_check" + (" --dry-run" if args.dry_run else ""),
        "machine": machine(),
        "commit": commit(),
    }
    try:
        ctx = _context(args, workdir)
        report.update(
            model=ctx["model"],
            tokenizer=ctx["tokenizer_info"],
            bf16_peak_gflops=ctx["bf16_peak_gflops"],
            parts={},
            part_seconds={},
        )
        for name in args.parts:
            t = time.perf_counter()
            print(f"{name} ...", flush=True)
            try:
                report["parts"][name] = PARTS[name](ctx)
            except Exception:
                report["parts"][name] = {"error": traceback.format_exc(limit=8)[-3000:]}
                print(report["parts"][name]["error"], file=sys.stderr, flush=True)
            report["part_seconds"][name] = round(time.perf_counter() - t, 1)
            print(f"{name}: {report['part_seconds'][name]} s", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report["seconds_total"] = round(time.perf_counter() - began, 1)
    return report


def _publish(report: dict, path: Path, readme: Path) -> None:
    write_text(path.parent / "GPU.md", gpu_markdown(report, path))
    render_block(README_BLOCK, readme_block(report, path), readme)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_check",
        description=package.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dry-run", action="store_true", help="every part on the CPU, tiny model")
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS))
    parser.add_argument(
        "--out", type=Path, help="where the JSON goes (default: results/; dry run: the temp folder)"
    )
    parser.add_argument("--render", type=Path, help="only rewrite GPU.md and the README block")
    parser.add_argument("--readme", type=Path, default=README)
    args = parser.parse_args(argv)
    if args.render:
        _publish(json.loads(args.render.read_text("utf-8")), args.render, args.readme)
        return 0
    report = run(args)
    # A dry run measures nothing worth keeping: its file goes to the temporary folder.
    out = args.out or (Path(tempfile.gettempdir()) if args.dry_run else RESULTS)
    path = write_result(out / result_name(f"gpu{'-dry' if args.dry_run else ''}"), report)
    if not args.dry_run and out.resolve() == RESULTS.resolve():
        _publish(report, path, args.readme)
    print(readme_block(report, path))
    print(f"wrote {path} in {report['seconds_total']:.0f} s")
    failed = [name for name, part in report["parts"].items() if "error" in part]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
