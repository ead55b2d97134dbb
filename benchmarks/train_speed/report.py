"""The Markdown of a run: LATEST.md (the run's tables, this host's step profiles and speed-path
ablations) and the README's benchmark blocks, all rendered from result JSON."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.common import render_block, write_text
from benchmarks.train_speed.figures import (
    peak_dtype,
    peak_gflops,
    three_epochs,
    three_epochs_needed_util,
    util_key,
)
from benchmarks.train_speed.tables import (
    inference_side_by_side,
    inference_table,
    issue20_table,
    peers_table,
)
from benchmarks.train_speed.workers import SPEC_BATCH_SIZE, SPEC_GRAD_ACCUM, SPEC_MAX_LENGTH


def _row(name, a, b, ratio=""):
    return f"| {name} | {a} | {b} | {ratio} |"


def _setting(report: dict) -> list[str]:
    """Machine, model, data and matmul peak of a run."""
    m, model, ds, peak = (
        report["machine"],
        report["model"],
        report["dataset"],
        report["matmul_peak"],
    )
    return [
        f"Machine: {m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads, "
        f"AVX-512 BF16 {'yes' if m['avx512_bf16'] else 'no'}, "
        f"OMP_WAIT_POLICY={m.get('omp_wait_policy')}), "
        f"{m['memory_gib']} GiB; torch {m['torch']}, transformers {m['transformers']}, "
        f"peft {m['peft']}. Load average at start/end: {report['load_average_start']} / "
        f"{report['load_average_end']}.",
        "",
        f"Model: Qwen3-0.6B architecture, random weights, {model['params'] / 1e6:.1f}M "
        f"parameters ({model['embedding_params'] / 1e6:.1f}M embedding, tied)"
        if model["arch"] != "tiny"
        else f"Model: tiny test model, {model['params']:,} parameters",
        f"Data: built-in train split, {ds['samples']} samples, {ds['tokens']} tokens "
        f"({ds['mean_length']} mean, {ds['max_length']} max; {report['tokenizer']['kind']}).",
        f"Matmul peak measured in this run (best of {len(peak['samples'])} measurements between "
        f"phases; the lowest was bf16 {min(x['bf16_gflops'] for x in peak['samples']):.0f}): "
        f"bf16 {peak['bf16_gflops']:.0f} GFLOP/s, fp32 {peak['fp32_gflops']:.0f} GFLOP/s.",
    ]


def _epoch_how(ours: dict) -> str:
    if ours.get("epoch", {}).get("complete"):
        return " (measured)"
    return f" ({ours['seconds_per_epoch_how'].split(':')[0]})"


def _comparison_table(report: dict) -> list[str]:
    """(a) against (b): speed, epoch time, memory, utilisation."""
    spec, ours, peak = report["spec_style"], report["ours"], report["matmul_peak"]
    dtype, util_name = peak_dtype(peak), util_key(peak)
    compiled = ours.get("epoch", {}).get("compiled", False)
    minutes, util = three_epochs(report)
    epoch_util = (
        f" (epoch: {ours['epoch'][util_name]:.1%}; 3 epochs: {util:.1%})" if "epoch" in ours else ""
    )
    return [
        "| | (a) spec-style | (b) ours | (b)/(a) |",
        "|---|---|---|---|",
        _row(
            "useful (non-pad) tokens/s",
            f"{spec['useful_tokens_per_s']:.1f}",
            f"{ours['useful_tokens_per_s']:.1f}",
            f"**{report['speedup']['pooled']:.1f}x**",
        ),
        _row(
            "seconds per epoch",
            f"{spec['seconds_per_epoch']:.0f} (projected)",
            f"{ours['seconds_per_epoch']:.0f}" + _epoch_how(ours),
            f"{spec['seconds_per_epoch'] / ours['seconds_per_epoch']:.1f}x faster",
        ),
        _row(
            "3 epochs" + (" (ours: one compile + 3 compiled epochs)" if compiled else ""),
            f"{3 * spec['seconds_per_epoch'] / 60:.1f} min",
            f"{minutes:.1f} min",
        ),
        _row(
            "peak RSS while training",
            f"{spec['peak_rss_gb']:.2f} GB",
            f"{ours['peak_rss_gb']:.2f} GB",
            f"{spec['peak_rss_gb'] / ours['peak_rss_gb']:.1f}x less",
        ),
        _row(
            f"FLOP utilisation vs {dtype} peak (4 x params x useful tokens)",
            f"{spec[util_name]:.1%}",
            f"{ours[util_name]:.1%}" + epoch_util,
        ),
        *_needed_row(report),
        *(
            [
                _row(
                    "FLOP utilisation vs fp32 peak",
                    f"{spec['util_fp32']:.1%}",
                    f"{ours['util_fp32']:.1%}",
                )
            ]
            if dtype != "fp32"
            else []
        ),
        _row(
            "same, without the embedding parameters",
            f"{spec[util_key(peak, '_nonembedding')]:.1%} ({dtype})",
            f"{ours[util_key(peak, '_nonembedding')]:.1%} ({dtype})",
        ),
    ]


def _needed_row(report: dict) -> list[str]:
    """Utilisation from the FLOPs the step needs (runs from 2026-12 on measure it)."""
    spec, ours, peak = report["spec_style"], report["ours"], report["matmul_peak"]
    key = util_key(peak, "_needed")
    if key not in ours:
        return []
    epoch = ours.get("epoch", {})
    more = ""
    if key in epoch:
        more = f" (epoch: {epoch[key]:.1%}; 3 epochs: {three_epochs_needed_util(report):.1%})"
    return [
        _row(
            f"FLOP utilisation vs {peak_dtype(peak)} peak (FLOPs the step needs, below)",
            f"{spec[key]:.1%}",
            f"{ours[key]:.1%}" + more,
        )
    ]


FLOPS_NOTE = (
    "FLOPs the step needs (`benchmarks/flops.py`): 4 x the decoder's linear weights x non-pad "
    "tokens (forward and input gradients; frozen weights need no weight gradients) + 4 x hidden "
    "x vocabulary x supervised targets (the LM head forward and backward, only where a next "
    "token is supervised) + 12 x layers x heads x head_dim x causal (query, key) pairs "
    "(QK^T and AV, forward and backward) + 6 x LoRA parameters x tokens. Supervised targets "
    "are ours' (answer and `<|im_end|>`) for (a) and (b), TRL's own labels for (c). The old "
    "figure counts 4 x all parameters x tokens: the embedding lookup as a matmul, and the LM "
    "head at every position."
)


def _comparison_note(report: dict) -> str:
    ours, subset = report["ours"], report["comparison_subset"]
    compiled = ours.get("epoch", {}).get("compiled", False)
    weights = (
        "fp32 weights and LoRA without autocast, what `auto` picks on a CPU without native bf16"
        if ours["result"].get("precision") == "fp32"
        else "bf16 frozen weights + fp32 LoRA under autocast"
    )
    text = (
        f"(a) and (b) trained the same {subset['samples']} samples for the "
        f"same number of steps, in separate processes taking turns one micro-batch at a time "
        f"(first micro-batch of each excluded as warm-up; median of per-pair ratios "
        f"{report['speedup']['median_of_pairs']:.1f}x). (a): pad to {SPEC_MAX_LENGTH}, labels = "
        f"input ids, fp32 weights, plain Trainer. (b): `qwen3_lora.train.train` with "
        f"`TrainConfig` defaults ({weights}, batch "
        f"{report.get('ours_batching', '2 x 4')} accumulation, length-grouped, LM head only at "
        f"supervised positions; (a) uses the spec's {SPEC_BATCH_SIZE} x {SPEC_GRAD_ACCUM}: the "
        "same 8 samples per optimizer step)."
    )
    if compiled:
        text += (
            f" Its epoch on the whole split compiled the decoder layers (`--torch-compile auto`; "
            f"the compile took ~{ours['epoch']['compile_seconds']:.0f} s, counted once in the "
            "3-epoch figures and left out of the epoch's tokens/s); the "
            f"{subset['samples']}-sample run is too short for auto to "
            "compile, so (b)'s interleaved figures are eager."
        )
    if util_key(report["matmul_peak"], "_needed") in ours:
        text += "\n\n" + FLOPS_NOTE
    return text


def _targets_table(report: dict) -> list[str]:
    lines = ["| target | value | met |", "|---|---|---|"]
    for name, t in report["targets"].items():
        value = t["value"]
        shown = {
            "speedup": f"{value:.1f}x",
            util_key(report["matmul_peak"]): f"{value:.1%}",
            "peak_rss_gb": f"{value:.2f} GB",
            "three_epochs_min": f"{value:.1f} min",
        }[name]
        lines.append(f"| {t['target']} | {shown} | {'yes' if t['met'] else 'no'} |")
    return lines


def markdown(report: dict) -> str:
    """The run's section of LATEST.md."""
    lines = [
        *_setting(report),
        "",
        *_comparison_table(report),
        "",
        _comparison_note(report),
        "",
        *_targets_table(report),
    ]
    if "peers" in report:
        lines += ["", *peers_table(report)]
    if report.get("issue20_targets"):
        lines += ["", *issue20_table(report)]
    if "inference_base" in report:
        lines += ["", *inference_side_by_side(report)]
    elif report.get("inference"):
        lines += ["", *inference_table(report["inference"])]
    return "\n".join(lines) + "\n"


def ablation_markdown(report: dict) -> str:
    lines = [
        "| variant | overrides | useful tokens/s | vs ours | peak RSS | train loss |",
        "|---|---|---|---|---|---|",
    ]
    for name, f in report["variants"].items():
        overrides = ", ".join(f"{k}={v}" for k, v in f["overrides"].items()) or "defaults"
        lines.append(
            f"| {name} | {overrides} | {f['useful_tokens_per_s']:.1f} | {f['vs_ours']:.2f}x | "
            f"{f['peak_rss_gb']:.2f} GB | {f['final_loss']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def step_profile_section(folder: Path, host: str) -> str:
    """This host's newest `benchmarks.step_profile` results (eager, compiled), as sections."""
    from benchmarks.step_profile import markdown as profile_markdown

    sections = []
    for suffix in ("", "-compiled"):
        found = sorted(folder.glob(f"*-{host}-step-profile{suffix}.json"), reverse=True)
        if found:
            text = profile_markdown(json.loads(found[0].read_text("utf-8")))
            sections.append("\n#" + text + f"\n(`{found[0].name}`)\n")  # heading one level down
    return "".join(sections)


def ablation_files(folder: Path, host: str) -> list[Path]:
    """The speed-path ablations recorded beside the results on this host, newest first."""
    return sorted(folder.glob(f"*-{host}-ablation-*.json"), reverse=True)


def ablations_section(folder: Path, host: str) -> str:
    """The speed-path ablations recorded beside the results on this host, newest first."""
    found = ablation_files(folder, host)
    if not found:
        return ""
    parts = [
        "\n## Speed paths of (b), one at a time\n\n",
        "Each table: `python -m benchmarks.train_speed --ablate NAME:OPTION=VALUE ...`, i.e. "
        "`train()` with `TrainConfig` defaults against the same with one option changed, "
        "interleaved one micro-batch at a time in separate processes on the same samples of "
        "the 0.6B shape (tokens/s are absolute figures of a shared, loaded machine; the "
        'ratios are the result). Newest first; "defaults" are those of the day in the file '
        "name (older tables predate later speed paths).\n",
    ]
    for path in found:
        report = json.loads(path.read_text("utf-8"))
        parts.append(
            f"\n`{path.name}` ({report['comparison_subset']['samples']} samples, load average "
            f"{report['load_average_start']} -> {report['load_average_end']}, "
            f"OMP_WAIT_POLICY={report['machine'].get('omp_wait_policy')})"
            + (f"; {report['note']}" if report.get("note") else "")
            + ":\n\n"
            + ablation_markdown(report)
        )
    return "".join(parts)


def latest_markdown(folder: Path, report: dict) -> str:
    """LATEST.md: the run's table, machine, and this host's newest speed-path ablations."""
    return (
        f"# Training speed ({report['date'][:10]}, `{report['command']}`)\n\n"
        + markdown(report)
        + step_profile_section(folder, report["machine"]["host"])
        + ablations_section(folder, report["machine"]["host"])
    )


def write_latest(folder: Path, report: dict) -> Path:
    return write_text(folder / "LATEST.md", latest_markdown(folder, report))


def _source_line(report: dict, path: Path) -> str:
    """Which run, on what, from which commit, in which file."""
    m, ds, peak = report["machine"], report["dataset"], report["matmul_peak"]
    sha = report.get("commit", {}).get("sha")
    made = (
        f"commit `{sha[:12]}`" + (" with uncommitted changes" if report["commit"]["dirty"] else "")
        if sha
        else "commit not recorded (the file predates it)"
    )
    return (
        f"Run of {report['date'][:10]} (`{report['command']}`, "
        f"{report['seconds_total'] / 60:.1f} min in all; "
        f"[{path.name}](benchmarks/results/{path.name}), {made}): {m['cpu']}, {m['cores']} "
        f"cores, {peak_dtype(peak)} matmul peak {peak_gflops(peak):.0f} GFLOP/s "
        "measured in the run; the "
        f"whole {ds['samples']}-sample train split ({ds['tokens']} tokens) for the epoch, "
        f"{report['comparison_subset']['samples']} samples interleaved."
    )


def readme_train_speed(report: dict, path: Path) -> str:
    """The README's training-speed block."""
    lines = [_source_line(report, path), "", *_comparison_table(report)]
    if "peers" in report:
        lines += ["", *peers_table(report)]
    if report.get("issue20_targets"):
        lines += ["", *issue20_table(report)]
    return "\n".join(lines)


def readme_inference(report: dict) -> str:
    """The README's inference block: base and adapter side by side where the run has both."""
    if "inference_base" in report:
        return "\n".join(inference_side_by_side(report))
    if report.get("inference"):
        return "\n".join(inference_table(report["inference"]))
    return "No inference figures in this run."


def render_readme(report: dict, path: Path, readme: Path) -> list[str]:
    """Rewrite the README's training-speed and inference blocks; the names of those found."""
    blocks = {
        "train_speed": readme_train_speed(report, path),
        "inference": readme_inference(report),
    }
    return [name for name, body in blocks.items() if render_block(name, body, readme)]
