"""`qwen3-lora data validate|stats`: check data files and describe them."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

from ..prompt.encoding import IGNORE_INDEX, encode_sample
from .records import CHAT, Conversation, Sample, builtin_files, read_records
from .registry import TaskRegistry, load_registry


def validate_files(
    paths: list[str | Path], registry: TaskRegistry | None = None
) -> tuple[int, list]:
    """Validate each file fully; return (valid record count, every problem of every file)."""
    registry = registry or load_registry()
    count, problems = 0, []
    for path in paths:
        records, found = read_records(path, registry)
        count += len(records)
        problems.extend(found)
    return count, problems


def _percentiles(values: list[int], points=(50, 90, 95, 99)) -> dict[str, int]:
    ordered = sorted(values)
    out = {}
    for p in points:
        index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
        out[f"p{p}"] = ordered[index]
    out["max"] = ordered[-1]
    return out


def describe(
    records: list[Sample], registry: TaskRegistry, tokenizer=None, loss_on: str = "all"
) -> dict:
    """Per-task counts (conversations without a task under `chat`), label distribution,
    conversation turns and (with a tokenizer) token-length percentiles of the encoded samples."""
    by_group: dict[str, list[Sample]] = defaultdict(list)
    for r in records:
        by_group[r.group].append(r)
    order = [*registry.names, CHAT]
    stats = {}
    for group in sorted(by_group, key=order.index):
        rows = by_group[group]
        task = registry.get(group)
        entry: dict = {"samples": len(rows)}
        chats = [r for r in rows if isinstance(r, Conversation)]
        if chats:
            entry["conversations"] = len(chats)
            entry["assistant_turns"] = sum(
                role == "assistant" for c in chats for role, _ in c.turns
            )
        if task is not None and task.is_classification:
            entry["labels"] = dict(Counter(r.output for r in rows).most_common())
        if tokenizer is not None:
            totals, answers = [], []
            for r in rows:
                for enc in encode_sample(tokenizer, r, loss_on):
                    totals.append(len(enc.input_ids))
                    answers.append(sum(1 for x in enc.labels if x != IGNORE_INDEX))
            entry["tokens"] = _percentiles(totals)
            entry["answer_tokens"] = _percentiles(answers)
        stats[group] = entry
    return stats


def format_stats(title: str, stats: dict) -> str:
    lines = [f"== {title}: {sum(s['samples'] for s in stats.values())} samples"]
    for task, s in stats.items():
        chats = (
            f" ({s['conversations']} conversations, {s['assistant_turns']} assistant turns)"
            if "conversations" in s
            else ""
        )
        lines.append(f"  {task}: {s['samples']}{chats}")
        if "labels" in s:
            lines.append("    labels: " + ", ".join(f"{k} {v}" for k, v in s["labels"].items()))
        if "tokens" in s:
            lines.append("    tokens: " + " ".join(f"{k}={v}" for k, v in s["tokens"].items()))
            lines.append(
                "    answer: " + " ".join(f"{k}={v}" for k, v in s["answer_tokens"].items())
            )
    return "\n".join(lines)


def default_stat_files() -> dict[str, list[Path]]:
    return {"built-in train": builtin_files("train"), "built-in eval": builtin_files("eval")}
