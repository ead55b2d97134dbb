"""The benchmark's phases, in the order a run goes through them, and the ablation run."""

from __future__ import annotations

import datetime as dt
import importlib.util
import math
import random
import shutil
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import (
    GB,
    QWEN3_SHAPE,
    TINY,
    build_model_folder,
    build_tokenizer,
    command_line,
    commit,
    load_average,
    machine,
)
from benchmarks.flops import lora_params
from benchmarks.train_speed import figures
from benchmarks.train_speed.driver import Run, Worker


def _header(args, mode: str) -> dict:
    return {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "mode": mode,
        "machine": machine(),
        "commit": commit(),
        "load_average_start": load_average(),
    }


def _prepare(args, report: dict, workdir: Path) -> tuple[Path, Path]:
    """Tokenizer, data stats, the comparison subset's file and the model folder."""
    from qwen3_lora.data.records import load_builtin

    tokenizer, report["tokenizer"] = build_tokenizer(args.smoke)
    records = load_builtin("train")
    report["dataset"] = figures.dataset_stats(tokenizer, records)
    subset = random.Random(args.seed).sample(records, args.samples)
    subset_file = workdir / "subset.jsonl"
    figures.write_jsonl(subset_file, subset)
    report["comparison_subset"] = figures.dataset_stats(tokenizer, subset)
    model_dir = workdir / "model"
    t = time.perf_counter()
    report["model"] = build_model_folder(tokenizer, TINY if args.smoke else QWEN3_SHAPE, model_dir)
    report["model"]["build_seconds"] = round(time.perf_counter() - t, 1)
    report["model"]["lora_params"] = _lora_params(report["model"]["shape"])
    return model_dir, subset_file, tokenizer


def _lora_params(shape: dict) -> int:
    from qwen3_lora.training.config import TrainConfig

    recipe = TrainConfig()
    return lora_params(shape, recipe.lora_r, recipe.target_modules)


def _phase_interleaved(bench: Run, common: dict, subset_file: Path, workdir: Path) -> list:
    """Phase 1: (a) and (b) on the same samples, one micro-batch each in turn."""
    print(f"phase 1: spec-style vs ours on {bench.args.samples} samples, interleaved", flush=True)
    workers = [
        Worker(
            name,
            name,
            {**common, "data": str(subset_file), "output_dir": str(workdir / out), "every": 1},
            workdir,
        )
        for name, out in (("spec", "a"), ("ours", "b"))
    ]
    bench.interleave_and_close(workers)
    bench.measure_peak("after phase 1")
    return workers


def _peer_arms(args) -> list[tuple[str, str, dict]]:
    """(name, worker kind, options) of phase 1b: ours (eager, and compiled as a full run
    compiles it) and every TRL variant."""
    from benchmarks.train_speed.trl_arm import VARIANTS

    arms = [("ours", "ours", {})]
    if not args.smoke:  # a tiny model's compile costs more than its whole run
        arms.append(("ours_compiled", "ours", {"overrides": {"torch_compile": "on"}}))
    return arms + [(name, "trl", {"variant": name}) for name in VARIANTS]


def _phase_peers(bench: Run, common: dict, report: dict, workdir: Path, tokenizer) -> dict:
    """Phase 1b: ours against TRL's SFTTrainer variants on the same samples, interleaved."""
    from qwen3_lora.data.records import load_builtin

    args = bench.args
    subset = random.Random(args.seed + 1).sample(load_builtin("train"), args.trl_samples)
    subset_file = workdir / "peer-subset.jsonl"
    figures.write_jsonl(subset_file, subset)
    report["peer_subset"] = figures.dataset_stats(tokenizer, subset)
    arms = _peer_arms(args)
    print(
        f"phase 1b: ours vs TRL on {args.trl_samples} samples: {[a[0] for a in arms]}", flush=True
    )
    workers = [
        Worker(
            name,
            kind,
            {
                **common,
                **extra,
                "data": str(subset_file),
                "output_dir": str(workdir / name),
                "every": 1,
            },
            workdir,
        )
        for name, kind, extra in arms
    ]
    bench.interleave_and_close(workers)
    bench.measure_peak("after phase 1b")
    return {"workers": workers, "samples": len(subset)}


def _phase_epoch(bench: Run, common: dict, report: dict, workdir: Path, batch: int) -> dict:
    """Phase 2: ours on the built-in train split, one epoch or as much as the budget allows."""
    budget = bench.args.epoch_budget
    print(
        f"phase 2: ours, one epoch of the built-in train split (time budget {budget:.0f} s)",
        flush=True,
    )
    micro_per_epoch = math.ceil(report["dataset"]["samples"] / batch)
    every = max(1, math.ceil(micro_per_epoch / 8))
    worker = Worker(
        "epoch", "ours", {**common, "output_dir": str(workdir / "epoch"), "every": every}, workdir
    )
    try:
        worker.receive()
        spent = 0.0
        while not worker.finished and spent < budget:
            msg = worker.go()
            spent += msg["seconds"]
            print(
                f"  epoch: micro-batch {msg['micro']:>3}/{micro_per_epoch}, "
                f"{msg['tokens'] / msg['seconds']:.1f} useful tokens/s",
                flush=True,
            )
            if not worker.finished:
                bench.measure_peak(f"epoch micro-batch {msg['micro']}")
    finally:
        worker.close()
    epoch = figures.epoch_figures(
        worker, report["model"], report["dataset"]["tokens"], micro_per_epoch
    )
    bench.measure_peak("after phase 2")
    return epoch


def _phase_inference(args, common: dict, workdir: Path, adapter: Path) -> tuple[dict, dict]:
    """Phase 3: inference through Predictor, the base alone and with an adapter `train()`
    wrote, in one process, taking turns measurement by measurement."""
    print("phase 3: inference (label scoring, generation), base and with the adapter", flush=True)
    opts = {
        **common,
        "adapter": str(adapter),
        "queries": 8,
        "new_tokens": 4 if args.smoke else 16,
        "rounds": 1 if args.smoke else args.inference_rounds,
    }
    worker = Worker("infer", "infer", opts, workdir)
    try:
        worker.receive()
        worker.conn.send("go")
        worker.receive()
        result = worker.done["result"]
        for figures_ in result.values():
            figures_["peak_rss_gb"] = worker.done["lifetime_peak_rss"] / GB
        return result["adapter"], result["base"]
    finally:
        worker.close()


def _summarise(report: dict, bench: Run, workers: list, epoch: dict | None, peers) -> None:
    peak = {
        "bf16_gflops": max(p["bf16_gflops"] for p in bench.peaks),
        "fp32_gflops": max(p["fp32_gflops"] for p in bench.peaks),
        "dtype": figures.dtype_for(workers[1].done["result"]["precision"]),
    }
    report["matmul_peak"] = {**peak, "samples": bench.peaks, "how": "best of n^3 matmuls"}
    spec = figures.pipeline_figures(workers[0], report["model"], peak)
    ours = figures.pipeline_figures(workers[1], report["model"], peak)
    figures.epoch_time(report, spec, ours, epoch, peak)
    report["spec_style"] = spec
    report["ours"] = ours
    report["speedup"] = figures.speedup(spec, ours)
    report["targets"] = figures.targets(report)
    if peers:
        report["peers"] = figures.peer_figures(peers["workers"], report["model"], peak)
    report["issue20_targets"] = figures.issue20_targets(report)


def run(args) -> dict:
    """Every phase of a benchmark run; returns the report."""
    from qwen3_lora.training.config import TrainConfig

    started = time.perf_counter()
    report = _header(args, args.mode)
    report["command"] = command_line("benchmarks.train_speed", args.argv)
    report["skipped_phases"] = args.skipped
    if args.threads:
        torch.set_num_threads(args.threads)
    workdir = Path(tempfile.mkdtemp(prefix="train-speed-"))
    try:
        print(f"tokenizer, model and data in {workdir}", flush=True)
        model_dir, subset_file, tokenizer = _prepare(args, report, workdir)
        defaults = TrainConfig()
        report["ours_batching"] = f"{defaults.batch_size} x {defaults.grad_accum}"
        print(f"model: {report['model']}", flush=True)
        common = {"model_dir": str(model_dir), "threads": args.threads}
        bench = Run(args)
        bench.measure_peak("start")
        workers = _phase_interleaved(bench, common, subset_file, workdir)
        peers = None
        if not args.no_trl and importlib.util.find_spec("trl") is None:
            report["peers_skipped"] = "trl is not installed: pip install -e '.[bench]'"
            print(f"phase 1b skipped: {report['peers_skipped']}", flush=True)
        elif not args.no_trl:
            peers = _phase_peers(bench, common, report, workdir, tokenizer)
        epoch = None
        if not args.no_epoch:
            epoch = _phase_epoch(bench, common, report, workdir, defaults.batch_size)
        if not args.no_inference:
            # The epoch's adapter when it ran to the end; else the one phase 1's (b) wrote.
            adapter = workdir / ("epoch" if epoch and epoch["complete"] else "b")
            report["inference"], report["inference_base"] = _phase_inference(
                args, common, workdir, adapter
            )
        _summarise(report, bench, workers, epoch, peers)
        report["load_average_end"] = load_average()
        report["seconds_total"] = round(time.perf_counter() - started, 1)
        if args.keep:
            report["logs"] = str(workdir)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return report


def parse_variant(text: str) -> tuple[str, dict]:
    """`name:key=value,...` -> (name, TrainConfig overrides).

    `threads=N` sets the worker's torch threads; UPPER_CASE keys are environment variables.
    """
    import yaml

    name, _, pairs = text.partition(":")
    overrides = {}
    for pair in filter(None, pairs.split(",")):
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--ablate {text!r}: expected key=value, got {pair!r}")
        overrides[key.strip()] = yaml.safe_load(value)
    return name, overrides


def _ablation_workers(args, model_dir: Path, subset_file: Path, workdir: Path) -> list:
    workers = []
    for name, overrides in [("ours", {}), *map(parse_variant, args.ablate)]:
        threads = overrides.pop("threads", args.threads)
        env = {k: str(overrides.pop(k)) for k in list(overrides) if k.isupper()}
        opts = {
            "env": env,
            "model_dir": str(model_dir),
            "threads": threads,
            "data": str(subset_file),
            "output_dir": str(workdir / name),
            "every": 1,
            "overrides": overrides,
        }
        workers.append(Worker(name, "spec" if name == "spec" else "ours", opts, workdir))
    return workers


def ablate(args) -> dict:
    """Ours with its defaults against variants of its config, interleaved on the same samples."""
    from qwen3_lora.data.records import load_builtin

    report = _header(args, "ablation")
    workdir = Path(tempfile.mkdtemp(prefix="train-speed-ablate-"))
    try:
        tokenizer, report["tokenizer"] = build_tokenizer(args.smoke)
        records = random.Random(args.seed).sample(load_builtin("train"), args.samples)
        subset_file = workdir / "subset.jsonl"
        figures.write_jsonl(subset_file, records)
        report["comparison_subset"] = figures.dataset_stats(tokenizer, records)
        model_dir = workdir / "model"
        arch = TINY if args.smoke else QWEN3_SHAPE
        report["model"] = build_model_folder(tokenizer, arch, model_dir)
        report["model"]["lora_params"] = _lora_params(report["model"]["shape"])
        workers = _ablation_workers(args, model_dir, subset_file, workdir)
        Run(args).interleave_and_close(workers)
        base = None
        report["variants"] = {}
        for w, (_, overrides) in zip(
            workers, [("ours", {}), *map(parse_variant, args.ablate)], strict=True
        ):
            timed = [x for x in w.windows if not x.get("final")][1:]
            f = figures.throughput(timed)
            f["overrides"] = overrides
            f["peak_rss_gb"] = max(x["rss"][1] for x in w.windows) / GB
            f["final_loss"] = w.done["result"]["final_loss"]
            base = base or f["useful_tokens_per_s"]
            f["vs_ours"] = f["useful_tokens_per_s"] / base
            report["variants"][w.name] = f
        report["load_average_end"] = load_average()
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return report
