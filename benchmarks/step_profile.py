"""Where a training step's time goes, measured with torch.profiler.

    python -m benchmarks.step_profile            # Qwen3-0.6B's shape, ~6 min on 2 cores
    python -m benchmarks.step_profile --smoke    # tiny model + tiny tokenizer, seconds

Runs forward + backward (no optimizer step) over micro-batches of the built-in train split,
batched as `qwen3-lora train` batches them by default (pairs of samples of similar length, each
padded to its longer one), through the training code itself (`train._lora_model`,
`train.causal_lm_loss`, the run's autocast), and reports:

- the step's time split by kind of op: matmuls (`aten::mm`, `addmm`), attention (sdpa's
  kernels, or the plain attention's `bmm` and softmax), dropout masks (random numbers), and
  everything else (element-wise ops, norms, RoPE, copies, autograd bookkeeping);
- the matmuls' own throughput (the profiler's FLOP count over their time) against the matmul
  peak, measured in the same run, of the dtype the step trains in (bf16, or fp32 on a CPU
  without native bf16);
- FLOP utilisation as `benchmarks.train_speed` counts it (4 x parameters x useful tokens), and the
  utilisation the step would reach if everything but the matmuls took no time at all;
- FLOP utilisation from the FLOPs the step needs (`benchmarks.flops`), beside the old count;
- a floor: the same micro-batches' frozen-weight matmuls (forward, LM head, input gradients) run
  alone, back to back, without the profiler, and 3 epochs of the split at this floor: no
  training step on this machine can be faster than its matmuls. The FLOPs the step needs over
  the floor's time is thus a ceiling on its utilisation, here and at the other micro-batch sizes
  of `--floor-sweep`: how high utilisation can go on this CPU at these row counts.

The micro-batches are picked at evenly spaced points of the split's length distribution, so
their mix of lengths is the epoch's. Timings come from a pass without the profiler; the shares
from a second, profiled pass over the same micro-batches. Writes
benchmarks/results/<date>-<host>-step-profile.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import (
    QWEN3_SHAPE,
    RESULTS,
    TINY,
    build_model_folder,
    build_tokenizer,
    commit,
    go_offline,
    load_average,
    machine,
    matmul_peak,
    write_result,
)
from benchmarks.flops import causal_pairs, lora_params, step_flops
from benchmarks.train_speed.figures import dtype_for
from benchmarks.train_speed.pacer import sequence_lengths, supervised_targets

go_offline()

CATEGORIES = ("matmul", "attention", "dropout masks", "other")
ATTENTION_OPS = ("aten::bmm", "aten::_softmax", "aten::_softmax_backward_data")


def category(op: str) -> str:
    if op in ("aten::mm", "aten::addmm"):
        return "matmul"
    # sdpa's kernels, or the plain attention's batched matmuls and softmax (nothing else in the
    # model multiplies batches of matrices or takes a softmax).
    if "scaled_dot_product" in op or "flash_attention" in op or op in ATTENTION_OPS:
        return "attention"
    if op in ("aten::bernoulli_", "aten::random_", "aten::uniform_"):
        return "dropout masks"
    return "other"


def micro_batches(
    tokenizer, count: int, batch_size: int, max_length: int
) -> tuple[list[dict], int]:
    """`count` micro-batches of `batch_size` neighbours in length, spread over the split, and the
    split's token count."""
    from qwen3_lora.data.records import load_builtin
    from qwen3_lora.prompt.encoding import PadCollator, encode_records

    encoded, _ = encode_records(tokenizer, load_builtin("train"), max_length)
    encoded.sort(key=lambda e: len(e.input_ids))
    groups = [
        encoded[i : i + batch_size] for i in range(0, len(encoded) - batch_size + 1, batch_size)
    ]
    picks = [groups[round(i * (len(groups) - 1) / max(count - 1, 1))] for i in range(count)]
    collate = PadCollator(tokenizer.pad_token_id)
    batches = [collate([e.as_features() for e in group]) for group in picks]
    return batches, sum(len(e.input_ids) for e in encoded)


def gemm_floor(model, batches: list[dict], passes: int = 2) -> tuple[float, float]:
    """(seconds, FLOPs) of the step's big matmuls alone, back to back, for `batches`: the
    fastest of `passes` passes.

    For each micro-batch: every frozen projection's forward matmul (positions x in -> out) in
    layer order, the LM head at the supervised positions forward and backward, then every
    projection's input-gradient matmul (positions x out -> in) in reverse order, on the model's
    own weights (so they come from memory as in a step, not from cache). No LoRA, attention,
    norms, loss or autograd: a lower bound on a step's time on this machine.
    """
    from qwen3_lora.training.loss import supervised_positions

    weights = [m.base_layer.weight for m in model.modules() if hasattr(m, "base_layer")]
    head = model.get_output_embeddings().weight
    dtype = head.dtype
    widths = {n for w in weights for n in w.shape}  # every projection's in and out size
    projection_params = sum(w.numel() for w in weights)
    plans, flops = [], 0.0
    for batch in batches:
        rows = batch["input_ids"].numel()
        heads = batch["input_ids"].shape[0] * len(supervised_positions(batch["labels"]))
        inputs = {n: torch.randn(rows, n, dtype=dtype) for n in widths}
        plans.append(
            (
                inputs,
                torch.randn(heads, head.shape[1], dtype=dtype),
                torch.randn(heads, head.shape[0], dtype=dtype),
            )
        )
        flops += 4 * (rows * projection_params + heads * head.numel())

    def run(plan):
        inputs, head_in, head_grad = plan
        with torch.no_grad():
            for w in weights:
                torch.mm(inputs[w.shape[1]], w.t())
            torch.mm(head_in, head.t())
            torch.mm(head_grad, head)
            for w in reversed(weights):
                torch.mm(inputs[w.shape[0]], w)

    run(plans[0])  # warm-up
    best = float("inf")
    for _ in range(passes):  # a bound on the time: the fastest pass, not one noisy moment
        began = time.perf_counter()
        for plan in plans:
            run(plan)
        best = min(best, time.perf_counter() - began)
    return best, flops


def needed_flops(shape: dict, batches: list[dict], lora: int) -> dict[str, int]:
    """The FLOPs the micro-batches' steps need (`benchmarks.flops.step_flops`), by part."""
    return step_flops(
        shape,
        tokens=sum(int(b["attention_mask"].sum()) for b in batches),
        supervised=sum(supervised_targets(b["labels"]) for b in batches),
        pairs=sum(causal_pairs(sequence_lengths(b)) for b in batches),
        lora=lora,
    )


def floor_sweep(model, tokenizer, config, args, shape, lora, measured: dict) -> list[dict]:
    """The matmul floor at each `--floor-sweep` size, with the FLOPs those steps need;
    `measured` holds floors already timed ({size: (seconds, FLOPs)}), of the same micro-batches."""
    sweep = []
    for size in args.floor_sweep:
        batches, _ = micro_batches(tokenizer, args.micro_batches, size, config.max_length)
        seconds, flops = measured.get(size) or gemm_floor(model, batches)
        needed = needed_flops(shape, batches, lora)["total"]
        sweep.append(
            {
                "batch_size": size,
                "mean_rows": sum(b["input_ids"].numel() for b in batches) / len(batches),
                "seconds": seconds,
                "gemm_floor_gflops": flops / seconds / 1e9,
                "needed_flops": needed,
            }
        )
    return sweep


def _training_model(args, tokenizer, report: dict):
    """The model `train()` would train (LoRA, precision, speed paths), and its TrainConfig."""
    from qwen3_lora.models.loading import resolve_precision
    from qwen3_lora.training.config import TrainConfig
    from qwen3_lora.training.speed.compiled import compile_decoder_layers
    from qwen3_lora.training.train import training_model

    cpu = torch.device("cpu")
    tmp = tempfile.mkdtemp(prefix="step-profile-")
    try:
        report["model"] = build_model_folder(
            tokenizer, TINY if args.smoke else QWEN3_SHAPE, Path(tmp)
        )
        config = TrainConfig(base_model=tmp)  # the training defaults: batch size, max length
        precision = resolve_precision(config.precision, cpu)
        model = training_model(config, precision, cpu)[0].train()
        if args.compile:
            compile_decoder_layers(model)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return model, config, precision


def _profile_shares(prof) -> tuple[dict, list, float]:
    """(seconds by kind of op, ops by own time, matmul FLOPs) of a profile."""
    shares = dict.fromkeys(CATEGORIES, 0.0)
    ops = []
    matmul_flops = 0
    for event in prof.key_averages():
        self_s = event.self_cpu_time_total / 1e6
        kind = category(event.key)
        shares[kind] += self_s
        if kind == "matmul":
            matmul_flops += event.flops
        ops.append((event.key, self_s, event.count))
    ops.sort(key=lambda op: -op[1])
    return shares, ops, matmul_flops


def run(args) -> dict:
    from torch.profiler import ProfilerActivity, profile

    from qwen3_lora.training.loss import causal_lm_loss
    from qwen3_lora.training.speed.memory import ReuseFreedHeap

    tokenizer, tokenizer_info = build_tokenizer(args.smoke)
    report: dict = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load_average_start": load_average(),
        "tokenizer": tokenizer_info,
        "machine": machine(),
        "commit": commit(),
    }
    model, config, precision = _training_model(args, tokenizer, report)
    batches, split_tokens = micro_batches(
        tokenizer, args.micro_batches, args.batch_size or config.batch_size, config.max_length
    )
    dtype = precision.autocast_dtype
    # The peak of the dtype the step trains in (fp32 where bf16 is emulated), sampled between
    # the phases: one sample can catch the machine slowed by a neighbour, and every
    # utilisation figure (the ceiling too) divides by it.
    peak_dtype = dtype_for(precision.name)
    torch_dtype = torch.bfloat16 if peak_dtype == "bf16" else torch.float32
    peaks: list[float] = []

    def sample_peak() -> None:
        peaks.append(matmul_peak(torch_dtype, 2048, 0.2 if args.smoke else 2.0))

    sample_peak()

    def step(batch):
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = causal_lm_loss(model, batch)
        loss.backward()
        model.zero_grad(set_to_none=True)

    # As `train()` runs compiled layers: large tensors reuse freed heap memory (`speed.memory`).
    reuse = ReuseFreedHeap.create() if args.compile and config.reuse_heap else None
    if reuse:
        reuse.on_train_begin(None, None, None)
    began = time.perf_counter()
    for batch in batches[:2]:
        step(batch)  # warm-up: first-call allocations and kernel selection (and the compile)
    warmup_seconds = time.perf_counter() - began
    began = time.perf_counter()
    for batch in batches:
        step(batch)
    seconds = time.perf_counter() - began
    sample_peak()
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        for batch in batches:
            step(batch)
    shares, ops, matmul_flops = _profile_shares(prof)
    profiled = sum(shares.values())
    if reuse:
        reuse.on_train_end(None, None, None)
    sample_peak()
    floor_seconds, floor_flops = gemm_floor(model, batches)
    sample_peak()

    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    counted = 4 * report["model"]["params"] * tokens
    shape = report["model"]["shape"]
    lora = lora_params(shape, config.lora_r, config.target_modules)
    needed = needed_flops(shape, batches, lora)
    # The run's own size is already timed: `micro_batches` picks the same ones again.
    own = {int(batches[0]["input_ids"].shape[0]): (floor_seconds, floor_flops)}
    sweep = floor_sweep(model, tokenizer, config, args, shape, lora, own)
    sample_peak()
    peak = max(peaks)
    for entry in sweep:
        entry["util_ceiling_needed"] = entry["needed_flops"] / entry["seconds"] / (peak * 1e9)
    matmul_s = shares["matmul"] / profiled * seconds
    report.update(
        compiled=bool(args.compile),
        reuse_heap=bool(reuse),
        precision=precision.name,
        warmup_seconds=warmup_seconds,
        micro_batches=len(batches),
        batch_size=int(batches[0]["input_ids"].shape[0]),
        useful_tokens=tokens,
        positions=sum(b["input_ids"].numel() for b in batches),
        seconds=seconds,
        tokens_per_s=tokens / seconds,
        peak_dtype=peak_dtype,
        **{f"{peak_dtype}_peak_gflops": peak},
        peak_samples_gflops=peaks,
        shares={k: v / profiled for k, v in shares.items()},
        top_ops=[{"op": k, "share": s / profiled, "calls": n} for k, s, n in ops[:15]],
        matmul_gflops=matmul_flops / shares["matmul"] / 1e9,
        matmul_flops_vs_counted=matmul_flops / counted,
        **{
            f"util_{peak_dtype}": counted / seconds / (peak * 1e9),
            f"util_{peak_dtype}_if_only_matmuls": counted / matmul_s / (peak * 1e9),
            f"util_{peak_dtype}_needed": needed["total"] / seconds / (peak * 1e9),
            # No step of these micro-batches beats the floor: a bound on its utilisation.
            f"util_{peak_dtype}_ceiling_needed": needed["total"] / floor_seconds / (peak * 1e9),
        },
        flops_needed=needed,
        floor_sweep=sweep,
        gemm_floor_seconds=floor_seconds,
        gemm_floor_gflops=floor_flops / floor_seconds / 1e9,
        gemm_floor_share_of_step=floor_seconds / seconds,
        split_tokens=split_tokens,
        three_epochs_minutes=3 * split_tokens * seconds / tokens / 60,
        three_epochs_gemm_floor_minutes=3 * split_tokens * floor_seconds / tokens / 60,
        load_average_end=load_average(),
    )
    return report


def floor_rows(r: dict, d: str) -> list[str]:
    rows = [
        f"| the step's frozen-weight matmuls alone, back to back (floor) | "
        f"{r['gemm_floor_seconds']:.2f} s, {r['gemm_floor_share_of_step']:.0%} of the step, "
        f"{r['gemm_floor_gflops']:.0f} GFLOP/s |",
        f"| 3 epochs of the split ({r['split_tokens']} tokens): at this step's speed / "
        f"matmul floor | {r['three_epochs_minutes']:.1f} / "
        f"{r['three_epochs_gemm_floor_minutes']:.1f} min |",
    ]
    if f"util_{d}_ceiling_needed" in r:
        rows.append(
            "| utilisation ceiling: FLOPs the step needs / the floor's time | "
            f"{r[f'util_{d}_ceiling_needed']:.1%} |"
        )
    return rows


def sweep_table(r: dict, d: str) -> list[str]:
    """The floor at other micro-batch sizes (profiles before the sweep have none)."""
    if not r.get("floor_sweep"):
        return []
    return [
        "",
        f"The floor of {r['micro_batches']} micro-batches of each size (spread over the split's "
        "lengths as the profiled ones), and the ceiling it sets on utilisation (FLOPs those steps "
        f"need / the floor's time, vs the {d} peak):",
        "",
        "| samples per micro-batch | rows (mean) | floor GFLOP/s | utilisation ceiling |",
        "|---|---|---|---|",
        *(
            f"| {s['batch_size']} | {s['mean_rows']:.0f} | {s['gemm_floor_gflops']:.0f} | "
            f"{s['util_ceiling_needed']:.1%} |"
            for s in r["floor_sweep"]
        ),
    ]


def markdown(r: dict) -> str:
    d = r.get("peak_dtype", "bf16")  # profiles before it was recorded were all bf16
    peak = r[f"{d}_peak_gflops"]
    lines = [
        f"# Where a training step's time goes ({r['date'][:10]}, `python -m benchmarks.step_profile`)",
        "",
        f"{r['model']['arch']}, {r['model']['params'] / 1e6:.1f}M parameters; {r['threads']} torch "
        f"threads, OMP_WAIT_POLICY={r['omp_wait_policy']}; {r['micro_batches']} micro-batches "
        f"of {r.get('batch_size', 2)} samples of the "
        f"built-in train split ({r['useful_tokens']} useful tokens in {r['positions']} positions), "
        f"forward + backward in {r['seconds']:.2f} s ({r['tokens_per_s']:.1f} useful tokens/s)"
        + (
            f", decoder layers compiled (warm-up with the compile: {r['warmup_seconds']:.0f} s)"
            + (", freed heap memory reused as in training" if r.get("reuse_heap") else "")
            + "; "
            if r.get("compiled")
            else "; "
        )
        + f"{d} matmul peak {peak:.0f} GFLOP/s"
        + (
            f" (best of {len(r['peak_samples_gflops'])} samples between the phases; the lowest "
            f"{min(r['peak_samples_gflops']):.0f})"
            if r.get("peak_samples_gflops")
            else ""
        )
        + ". Load average "
        f"{r['load_average_start']} -> {r['load_average_end']}.",
        "",
        "| kind of op | share of the step |",
        "|---|---|",
        *(f"| {k} | {v:.1%} |" for k, v in r["shares"].items()),
        "",
        "| figure | value |",
        "|---|---|",
        f"| matmuls' own throughput | {r['matmul_gflops']:.0f} GFLOP/s "
        f"({r['matmul_gflops'] / peak:.1%} of peak) |",
        f"| matmul FLOPs done / 4 x params x tokens | {r['matmul_flops_vs_counted']:.2f} |",
        f"| FLOP utilisation (4 x params x tokens) | {r[f'util_{d}']:.1%} |",
        f"| same if all but the matmuls took no time | {r[f'util_{d}_if_only_matmuls']:.1%} |",
        *(
            [f"| FLOP utilisation (FLOPs the step needs) | {r[f'util_{d}_needed']:.1%} |"]
            if f"util_{d}_needed" in r
            else []
        ),
        *(floor_rows(r, d) if "gemm_floor_seconds" in r else []),
        *sweep_table(r, d),
        "",
        "Top ops by own time: "
        + ", ".join(f"{o['op']} {o['share']:.1%}" for o in r["top_ops"][:8])
        + ".",
    ]
    return "\n".join(lines) + "\n"


def sizes(text: str) -> list[int]:
    """`--floor-sweep`'s value: comma-separated positive sample counts, or none at all."""
    try:
        found = [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        found = [0]
    if any(n < 1 for n in found):
        raise argparse.ArgumentTypeError(
            f"expected positive whole numbers separated by commas (such as 4,8,16), got {text!r}"
        )
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.step_profile", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny model + tokenizer (seconds)")
    parser.add_argument("--micro-batches", type=int, default=16)
    parser.add_argument(
        "--batch-size", type=int, help="samples per micro-batch (default: training's, 2)"
    )
    parser.add_argument(
        "--compile", action="store_true", help="compile the decoder layers (qwen3_lora.compiled)"
    )
    parser.add_argument(
        "--floor-sweep",
        type=sizes,
        default=[4, 8, 16],
        metavar="N,N,...",
        help="micro-batch sizes to time the matmul floor at (default 4,8,16; '' for none)",
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = ("-smoke" if args.smoke else "") + (f"-b{args.batch_size}" if args.batch_size else "")
    suffix += "-compiled" if args.compile else ""
    path = args.out / f"{report['date'][:10]}-{report['host']}-step-profile{suffix}.json"
    write_result(path, report)
    print(markdown(report))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
