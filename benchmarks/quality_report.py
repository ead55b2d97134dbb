"""The quality benchmark's summary figures (training metrics, misses) and its Markdown
(quality.md, QUALITY.md), rendered from quality.json."""

from __future__ import annotations

import json
from pathlib import Path

MISSES_SHOWN = 8  # per task in the markdown; quality.json keeps them all


def read_metrics(path: Path) -> list[dict]:
    lines = path.read_text("utf-8").splitlines() if path.is_file() else []
    return [json.loads(line) for line in lines if line.strip()]


def train_summary(metrics: list[dict]) -> dict:
    losses = [m for m in metrics if "loss" in m]
    # The first logged step includes start-up work; its speed is not representative.
    speeds = sorted(m["tokens_per_s"] for m in losses[1:] if m.get("tokens_per_s"))
    return {
        "first_loss": losses[0]["loss"] if losses else None,
        "last_loss": losses[-1]["loss"] if losses else None,
        "eval_loss_by_epoch": [
            {"epoch": m["epoch"], "eval_loss": round(m["eval_loss"], 4)}
            for m in metrics
            if "eval_loss" in m
        ],
        "tokens_per_s_median": speeds[len(speeds) // 2] if speeds else None,
    }


def misses(rows: list[dict]) -> dict[str, list[dict]]:
    """The tuned model's wrong answers per task (QA: every answer, worst char-F1 first)."""
    found: dict[str, list[dict]] = {}
    for row in rows:
        if "correct" in row:
            wrong = not row["correct"]
        elif "exact_match" in row:
            wrong = row["exact_match"] < 1.0
        else:
            wrong = True
        if wrong:
            keep = ("input", "reference", "prediction", "probability", "char_f1")
            item = {k: row[k] for k in keep if row.get(k) is not None}
            found.setdefault(row["task"], []).append(item)
    for items in found.values():
        _order(items)
    return found


def _order(items: list[dict]) -> list[dict]:
    """Generated answers (no label probability) worst char-F1 first; labels as they came."""
    if items and items[0].get("probability") is None:
        items.sort(key=lambda r: r.get("char_f1", 0.0))
    return items


def check_targets(models: dict, targets: list) -> list[dict]:
    """Each (task, metric, target) against base and tuned; \"base+X\" means beat base by X."""
    rows = []
    for task, metric, target in targets:
        base = models.get("base", {}).get(task, {}).get("metrics", {}).get(metric)
        tuned = models.get("tuned", {}).get(task, {}).get("metrics", {}).get(metric)
        if isinstance(target, str):
            needed = None if base is None else base + float(target.removeprefix("base+"))
        else:
            needed = target
        met = None if tuned is None or needed is None else tuned >= needed - 1e-9
        rows.append(
            {
                "task": task,
                "metric": metric,
                "target": target,
                "needed": needed,
                "base": base,
                "tuned": tuned,
                "met": met,
            }
        )
    return rows


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min ({seconds:.0f} s)"


def _clip(text: str, limit: int = 60) -> str:
    text = text.replace("\n", " ").replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _goal(target) -> str:
    if isinstance(target, str):
        return f"≥ base + {target.removeprefix('base+')}"
    return f"≥ {target:.2f}"


def _header(summary: dict) -> list[str]:
    """Model, machine, command, wall time, recipe, decoding."""
    report, t, recipe, model = (
        summary["eval_report"],
        summary["timings_s"],
        summary["recipe"],
        summary["model"],
    )
    length = (
        f"max_steps {recipe['max_steps']}"
        if recipe["max_steps"] > 0
        else f"{recipe['epochs']:g} epochs"
    )
    if summary.get("split") == "dev":
        data = summary["data"]
        split = (
            f"Dev split (carved out of the train split: {data['dev_fraction']:.0%} of each "
            f"task, seed {data['dev_seed']}; the held-out split untouched): {report['samples']} "
            f"samples; trained on the other {summary['data']['train_samples']}."
        )
    else:
        split = (
            f"Held-out split: {report['samples']} samples (`src/qwen3_lora/data/builtin/eval/`); "
            f"train split: {summary['data']['train_samples']} samples."
        )
    about = f"; {model['about']}" if model.get("about") else ""
    load = summary.get("load_average")
    load_text = f" (load average {', '.join(f'{x:.1f}' for x in load)} at the end)" if load else ""
    kind = (
        " (smoke run: checks the stages, measures nothing)"
        if summary["smoke"]
        else " (dev run: for recipe choice)"
        if summary.get("split") == "dev"
        else ""
    )
    return [
        "# Quality benchmark" + kind,
        "",
        f"Measured on **{model['name']}** ({model['parameters'] / 1e6:.1f}M parameters; "
        f"`{model['file']}` from PyPI `{model['package']}` {model['package_version']}, "
        f"dequantised{about}), not on Qwen3-0.6B: {summary['precision']}, "
        f"{summary['host']['threads']} CPU thread(s) on a {summary['host']['cpu_count']}-core "
        f"machine{load_text}, {summary['created'][:10]}. {split}",
        "",
        f"- command: `{summary['command']}`",
        f"- wall time: **{_minutes(t['total'])}**: load + train {_minutes(t['train'])}, "
        f"eval base {_minutes(t['eval_base'])}, eval tuned {_minutes(t['eval_tuned'])}",
        f"- recipe: LoRA r={recipe['lora_r']}, alpha={recipe['lora_alpha']}, "
        f"dropout={recipe['lora_dropout']} on {', '.join(recipe['target_modules'])}; "
        + length
        + f", batch {recipe['batch_size']} x {recipe['grad_accum']} accumulation, "
        f"lr {recipe['learning_rate']:g} ({recipe['lr_scheduler']}, warmup "
        f"{recipe['warmup_ratio']:g}), seed {recipe['seed']}, precision {recipe['precision']}; "
        f"{summary['train']['optimizer_steps']} optimizer steps",
        f"- decoding: classification by label scoring; extraction greedy within the input's "
        f"spans; QA greedy, at most "
        f"{report['max_new_tokens']} new tokens; metrics from `qwen3_lora.metrics`",
    ]


def results_table(summary: dict) -> list[str]:
    """Base against tuned, per task and metric, with the targets."""
    models = summary["eval_report"]["models"]
    lines = [
        "| task | n | metric | base | tuned | Δ | target | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    targets = {(r["task"], r["metric"]): r for r in summary["targets"]}
    for task, entry in models["tuned"].items():
        for metric, tuned in entry["metrics"].items():
            base = models.get("base", {}).get(task, {}).get("metrics", {}).get(metric)
            delta = "–" if base is None else f"{tuned - base:+.3f}"
            target = targets.get((task, metric))
            goal = _goal(target["target"]) if target else ""
            met = {True: "yes", False: "**no**", None: "–"}[target["met"]] if target else ""
            lines.append(
                f"| {task} (`{entry['id']}`) | {entry['n']} | {metric} | {_fmt(base)} | "
                f"{_fmt(tuned)} | {delta} | {goal} | {met} |"
            )
    return lines


def _split_name(summary: dict) -> str:
    return "dev" if summary.get("split") == "dev" else "held-out"


def _training(summary: dict, link_prefix: str) -> list[str]:
    train = summary["train"]
    epochs = ", ".join(f"{e['eval_loss']:.3f}" for e in train["eval_loss_by_epoch"])
    return [
        f"Training: loss {_fmt(train['first_loss'])} → {_fmt(train['last_loss'])}"
        + (f"; {_split_name(summary)} loss after each epoch {epochs}" if epochs else "")
        + f"; median {train['tokens_per_s_median'] or 0:.0f} tokens/s (prompt + answer).",
        "",
        f"![base vs tuned]({link_prefix}report.png)",
        "",
        f"Files: [report.md]({link_prefix}report.md) (confusion matrices), "
        f"[predictions.jsonl]({link_prefix}predictions.jsonl) (every answer of both models), "
        f"[quality.json]({link_prefix}quality.json), "
        f"[train_config.yaml]({link_prefix}train_config.yaml), "
        f"[train_metrics.jsonl]({link_prefix}train_metrics.jsonl).",
        "",
    ]


def _recipe_and_data(summary: dict) -> list[str]:
    lines = []
    if summary["recipe_changes"]:
        lines += ["## Recipe: changes from the default", "", "| option | value | why |"]
        lines.append("|---|---|---|")
        for key, value in summary["recipe_changes"].items():
            why = summary["recipe_why"].get(key, "set for this run")
            lines.append(f"| `{key}` | `{value}` | {why} |")
        lines.append("")
    if summary.get("recipe_selection"):
        lines += ["## How the recipe was chosen", "", summary["recipe_selection"], ""]
    counts = summary["data"]["train_per_task"]
    return [
        *lines,
        "## Data",
        "",
        "Train split per task: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + ".",
        "",
    ]


def _misses_section(summary: dict) -> list[str]:
    misses = summary.get("misses", {})
    if not misses:
        return []
    lines = ["## The tuned model's misses", ""]
    for task, items in misses.items():
        # quality.json files from before `_order` kept a null probability on generated answers.
        items = _order([{k: v for k, v in item.items() if v is not None} for item in items])
        shown = items[:MISSES_SHOWN]
        kind = "lowest char-F1 first" if items[0].get("probability") is None else "wrong labels"
        more = (
            f", {len(items) - len(shown)} more in quality.json" if len(items) > len(shown) else ""
        )
        lines += [f"**{task}** ({kind}{more})", "", "| input | reference | prediction |"]
        lines.append("|---|---|---|")
        for item in shown:
            prob = item.get("probability")
            pred = _clip(item["prediction"]) + (f" ({prob:.2f})" if prob is not None else "")
            if "char_f1" in item and prob is None:
                pred += f" [F1 {item['char_f1']:.2f}]"
            lines.append(
                f"| {_clip(item['input'], 40)} | {_clip(item['reference'], 30)} | {pred} |"
            )
        lines.append("")
    return lines


def render_quality_markdown(summary: dict, link_prefix: str = "") -> str:
    """quality.md / QUALITY.md: base vs tuned with targets; model, recipe, wall time, misses."""
    lines = [
        *_header(summary),
        "",
        *results_table(summary),
        "",
        *_training(summary, link_prefix),
        *_recipe_and_data(summary),
        *_misses_section(summary),
    ]
    if summary.get("notes"):
        lines += ["## Notes", "", *summary["notes"], ""]
    return "\n".join(lines)


def _link(path: Path) -> str:
    folder = path.parent.name
    return f"[{folder}](benchmarks/results/{folder}/quality.md)"


def readme_block(runs: list[tuple[dict, Path]]) -> str:
    """The README's quality table: the first run's targets; one line per further run."""
    summary, path = runs[0]
    tuned = summary["eval_report"]["models"]["tuned"]
    sha = summary.get("commit", {}).get("sha")
    made = f"commit `{sha[:12]}`" if sha else "commit not recorded (the file predates it)"
    changes = ", ".join(f"{k} {v}" for k, v in summary["recipe_changes"].items()) or "none"
    lines = [
        f"{_link(path)} (`{summary['command']}`, {_minutes(summary['timings_s']['total'])}, "
        f"{summary['host']['threads']} thread(s) on a {summary['host']['cpu_count']}-core "
        f"machine; {made}): {summary['data']['train_samples']} training samples, "
        f"{summary['eval_report']['samples']} held out; recipe changes: {changes}.",
        "",
        "| task | metric | n | base | tuned | target | met | one answer (at most) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in summary["targets"]:
        entry = tuned[t["task"]]
        met = {True: "yes", False: "**no**", None: "–"}[t["met"]]
        lines.append(
            f"| {t['task']} `{entry['id']}` | {t['metric']} | {entry['n']} | {_fmt(t['base'])} | "
            f"{_fmt(t['tuned'])} | {_goal(t['target'])} | {met} | {1 / entry['n']:.3f} |"
        )
    for other, other_path in runs[1:]:
        figures = ", ".join(
            f"{other['eval_report']['models']['tuned'][t['task']]['id']} {_fmt(t['tuned'])}"
            for t in other["targets"]
        )
        lines += ["", f"Also {_link(other_path)} (`{other['command']}`): tuned {figures}."]
    return "\n".join(lines)
