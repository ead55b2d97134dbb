"""GPU.md and the README's GPU block, rendered from a gpu_check result file."""

from __future__ import annotations

from pathlib import Path


def _fmt(value, spec: str, missing: str = "–") -> str:
    return missing if value is None else format(value, spec)


def _flops(gflops: float) -> str:
    return f"{gflops / 1000:.0f} TFLOP/s" if gflops >= 10_000 else f"{gflops:.0f} GFLOP/s"


def _training_rows(report: dict) -> list[str]:
    part = report["parts"].get("training", {})
    if "runs" not in part:
        return [f"Training: {part.get('error', 'not run')}"]
    lines = [
        "| training (bf16, one epoch of the built-in split) | useful tokens/s | s per epoch | "
        "util. (FLOPs needed) vs bf16 peak | peak GPU memory | loss |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in part["runs"].items():
        lines.append(
            f"| {name} ({r['batching']}) | {r['useful_tokens_per_s']:.0f} | "
            f"{_fmt(r['seconds_per_epoch'], '.1f')} | {r['util_bf16_needed']:.1%} | "
            f"{_fmt(r['peak_gpu_memory_gb'], '.2f')} GB | {_fmt(r['final_loss'], '.4f')} |"
        )
    q = report["parts"].get("qlora", {})
    if "useful_tokens_per_s" in q:
        lines.append(
            f"| QLoRA, {q['quantization']}, {q['optimizer_steps']} steps | "
            f"{q['useful_tokens_per_s']:.0f} | – | {q['util_bf16_needed']:.1%} | "
            f"{_fmt(q['peak_gpu_memory_gb'], '.2f')} GB | {_fmt(q['final_loss'], '.4f')} |"
        )
    elif q:
        lines.append(f"| QLoRA | {q.get('error', 'not run')} | | | | |")
    return lines


def _scoring_rows(report: dict) -> list[str]:
    part = report["parts"].get("scoring", {})
    if "per_batch" not in part:
        return [f"Label scoring: {part.get('error', 'not run')}"]
    lines = [
        f"| label scoring vs generating the label ({part['precision']}, median of "
        f"{part['rounds']} rounds) | ms per query, scoring | generating | ratio |",
        "|---|---|---|---|",
    ]
    for batch, b in part["per_batch"].items():
        lines.append(
            f"| batch {batch} ({b['queries']} queries) | {b['score_ms_per_query']:.1f} | "
            f"{b['generate_ms_per_query']:.1f} | {b['speedup']:.2f}x |"
        )
    met = "met" if part["meets_min_speedup"] else "not met"
    return [*lines, "", f"Target: scoring >= {part['min_speedup']:g}x faster at both: {met}."]


def _server_line(report: dict) -> str:
    part = report["parts"].get("server", {})
    if "task" not in part:
        return f"Server: {part.get('error', 'not run')}"
    task, chat = part["task"], part["chat"]
    return (
        f"Server (`qwen3-lora serve {part['serving']}`, up in {part['startup_seconds']:.1f} s): "
        f"`POST /v1/tasks/scene` {task['status']} in {task['ms']:.0f} ms "
        f"(label {task['answer'].get('label')!r}), a chat completion {chat['status']} in "
        f"{chat['ms']:.0f} ms: {'ok' if part['ok'] else '**failed**'}."
    )


def readme_block(report: dict, path: Path) -> str:
    m = report["machine"]
    sha = report["commit"]["sha"] or "unknown"
    lines = [
        f"[{path.name}](benchmarks/results/{path.name}) (`{report['command']}`, "
        f"{report['seconds_total']:.0f} s in all, commit `{sha[:12]}`"
        + (" with uncommitted changes" if report["commit"]["dirty"] else "")
        + f"): {m.get('gpu', m['cpu'])}, torch {m['torch']}"
        + (f", CUDA {m['cuda']}" if m.get("cuda") else "")
        + f"; {report['model']['arch']}, bf16 matmul peak {_flops(report['bf16_peak_gflops'])} "
        "measured in the run.",
        "",
        *_training_rows(report),
        "",
        *_scoring_rows(report),
        "",
        _server_line(report),
    ]
    return "\n".join(lines)


def gpu_markdown(report: dict, path: Path) -> str:
    timings = ", ".join(f"{k} {v:.0f} s" for k, v in report["part_seconds"].items())
    return (
        f"# GPU check ({report['date'][:10]})\n\n"
        + readme_block(report, path)
        + f"\n\nTime per part: {timings}.\n"
    )
