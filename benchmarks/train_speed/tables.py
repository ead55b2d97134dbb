"""Tables LATEST.md and the README share: ours against TRL, the targets of #20, inference."""

from __future__ import annotations

import statistics

from benchmarks.train_speed.figures import peak_dtype, supervised_check, util_key


def peers_table(report: dict) -> list[str]:
    """Phase 1b: ours against TRL's SFTTrainer variants, interleaved on the same samples."""
    peers, subset, peak = report["peers"], report["peer_subset"], report["matmul_peak"]
    arms = peers["arms"]
    needed = util_key(peak, "_needed")
    ours = arms["ours"]
    trl = next(f["result"] for k, f in arms.items() if k.startswith("trl"))
    versions = trl["versions"]
    lines = [
        f"Ours against (c) TRL's `SFTTrainer` + PEFT LoRA (trl {versions['trl']}, transformers "
        f"{versions['transformers']}, peft {versions['peft']}, datasets {versions['datasets']}), "
        f"the same {subset['samples']} samples ({subset['tokens']} tokens) for the same steps, "
        f"batches of 4 x 2, in separate processes taking turns one micro-batch at a time (the "
        f"first optimizer step of each excluded as warm-up). TRL: "
        f"{trl.get('precision', 'bf16')}, prompt-completion conversational data "
        f"(`completion_only_loss`), no gradient checkpointing, padded to the longest in each "
        f"batch (`trl_padding_free`: one flattened row, no padding; `trl_grouped`: "
        f"length-grouped batches)."
        + (
            " `ours_compiled` is ours with `--torch-compile on`, as a full run compiles (the "
            "interleaved run is too short for `auto`)."
            if "ours_compiled" in arms
            else ""
        ),
        "",
        f"| arm | useful tokens/s | ours / arm | {peak_dtype(peak)} util. (needed) | "
        "supervised targets | "
        "peak RSS | train loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, f in arms.items():
        ratio = ours["useful_tokens_per_s"] / f["useful_tokens_per_s"]
        lines.append(
            f"| {name}{' (best TRL)' if name == peers['best_trl'] else ''} | "
            f"{f['useful_tokens_per_s']:.1f} | {ratio:.2f}x | {f[needed]:.1%} | "
            f"{f['all_supervised_targets']} | {f['peak_rss_gb']:.2f} GB | "
            f"{f['result']['final_loss']:.4f} |"
        )
    check = supervised_check(report)
    worst = max(check["trl"].values(), key=lambda t: abs(t["vs_ours"]))
    lines += [
        "",
        "TRL supervises the `\\n` after `<|im_end|>` too (its completion is everything after "
        f"the generation prompt): {worst['supervised']} targets, {worst['less_newline']} "
        f"without that one per sample, against ours' {check['ours']} ({worst['vs_ours']:+.1%}). "
        f"Its sequences also hold that token: TRL trained "
        f"{arms[peers['best_trl']]['all_useful_tokens']} tokens where ours trained "
        f"{ours['all_useful_tokens']}, and its tokens/s count them all.",
    ]
    return lines


def issue20_table(report: dict) -> list[str]:
    shown = {
        "vs_best_trl": lambda v: f"{v:.2f}x",
        "rss_vs_best_trl": lambda v: f"{v:.2f}x",
        "same_supervised": lambda v: f"{v:.1%}",
        util_key(report["matmul_peak"], "_needed"): lambda v: f"{v:.1%}",
        "adapter_inference": lambda v: f"{v:.2f}x (worst)",
    }
    lines = ["| target (#20) | value | met |", "|---|---|---|"]
    for name, t in report["issue20_targets"].items():
        lines.append(
            f"| {t['target']} | {shown[name](t['value'])} | {'yes' if t['met'] else 'no'} |"
        )
    return lines


def inference_side_by_side(report: dict) -> list[str]:
    """Label scoring and generation, the base alone and with the adapter, batch 1 and 8."""
    base, adapter = report["inference_base"], report["inference"]
    rows = [
        ("label scoring, ms per query", "score_ms_per_query", "{:.0f}"),
        (
            f"generation of {base['new_tokens']} tokens, ms per query",
            "generate_ms_per_query",
            "{:.0f}",
        ),
        ("generation, new tokens/s", "generate_tokens_per_s", "{:.1f}"),
    ]
    lines = [
        f"Inference through `Predictor` ({base['precision']}; {base['queries']} eval queries, "
        f"prompts {base['prompt_tokens_mean']:.0f} tokens on average; the base alone and with "
        f"a LoRA adapter `train()` wrote, two instances in one process measured in turns"
        + (", which goes first alternating by round" if base.get("order") == "alternating" else "")
        + f", best of {base['rounds']} round(s); adapter / base > 1 means slower with the adapter):",
        "",
        "| | base, batch 1 | adapter, batch 1 | adapter / base | base, batch 8 | "
        "adapter, batch 8 | adapter / base |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, key, fmt in rows:
        cells = []
        for batch in (1, 8):
            b, a = base[f"{key}_b{batch}"], adapter[f"{key}_b{batch}"]
            ratio = a / b if "ms" in key else b / a
            cells += [fmt.format(b), fmt.format(a), f"{ratio:.2f}x"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines + round_spread(base, adapter)


def round_spread(base: dict, adapter: dict) -> list[str]:
    """The median and range of adapter / base over the rounds (each round measures the two back
    to back): how far one run's figures move on this machine, and the ratio of each round's pair,
    which the machine's slow drifts move less than the ratio of two best rounds taken apart.
    Empty for results without per-round times."""
    parts = []
    for label, key in (
        ("label scoring", "score_ms_per_query"),
        ("generation", "generate_ms_per_query"),
    ):
        for batch in (1, 8):
            name = f"{key}_b{batch}"
            if name not in base.get("rounds_ms", {}) or name not in adapter.get("rounds_ms", {}):
                return []
            pairs = zip(adapter["rounds_ms"][name], base["rounds_ms"][name], strict=True)
            ratios = [a / b for a, b in pairs]
            parts.append(
                f"{label} batch {batch} {statistics.median(ratios):.2f}x"
                f" ({min(ratios):.2f}-{max(ratios):.2f}x)"
            )
    return ["", "Adapter / base in each round, median (lowest-highest): " + "; ".join(parts) + "."]


def inference_table(inf: dict) -> list[str]:
    """Label scoring and generation figures of one `Predictor` (base or with the adapter)."""
    return [
        f"Inference through `Predictor` ({inf['precision']}, "
        + (
            "base + the LoRA adapter trained above"
            if inf.get("adapter")
            else "base model without adapter: the epoch was cut by its time budget"
        )
        + f"; {inf['queries']} eval queries, prompts "
        f"{inf['prompt_tokens_mean']:.0f} tokens on average):",
        "",
        "| | batch 1 | batch 8 |",
        "|---|---|---|",
        f"| label scoring, ms per query | {inf['score_ms_per_query_b1']:.0f} | "
        f"{inf['score_ms_per_query_b8']:.0f} |",
        f"| generation of {inf['new_tokens']} tokens, ms per query | "
        f"{inf['generate_ms_per_query_b1']:.0f} | {inf['generate_ms_per_query_b8']:.0f} |",
        f"| generation, new tokens/s | {inf['generate_tokens_per_s_b1']:.1f} | "
        f"{inf['generate_tokens_per_s_b8']:.1f} |",
    ]
