"""Part 3: label scoring against generating the label, batch 1 and 8, through `Predictor`.

The model has random weights and never stops on its own, so generation gets exactly the gold
label's answer tokens (label + <|im_end|>; in a batch, the longest of its labels): the cost a
perfectly trained model pays to generate the label.
"""

from __future__ import annotations

import statistics
import time

import torch


def _ms(fn, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    began = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - began) * 1000


def _batches(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _time_group(predictor, task: str, group: list, budget: int, rounds: int, device: str):
    """(scoring ms, generating ms) per query of one batch, for each round."""
    from qwen3_lora.prompt.render import render_prompt

    inputs = [r.input for r in group]
    prompts = [render_prompt(predictor.tokenizer, task, r.input) for r in group]
    size = len(group)

    def score():
        predictor.predict(task, inputs, decode="score", batch_size=size)

    def generate():
        predictor.generate(prompts, max_new_tokens=budget, stop_at_eot=False, batch_size=size)

    times = [(_ms(score, device) / size, _ms(generate, device) / size) for _ in range(rounds)]
    return [t[0] for t in times], [t[1] for t in times]


def scoring(ctx: dict) -> dict:
    from qwen3_lora.data.records import load_builtin
    from qwen3_lora.inference.predictor import Predictor
    from qwen3_lora.inference.scoring import label_answer_ids
    from qwen3_lora.prompt.render import render_prompt

    dry, device = ctx["dry_run"], ctx["device"]
    predictor = Predictor.load(str(ctx["model_dir"]), None, precision="auto", device=device)
    tokenizer = predictor.tokenizer
    per_task, rounds = (2, 1) if dry else (16, 3)
    tasks = [t for t in predictor.registry.tasks if t.is_classification]
    records = load_builtin("eval", predictor.registry)
    found: dict = {"precision": predictor.precision, "rounds": rounds, "per_batch": {}}
    for task in tasks:  # warm-up
        first = next(r for r in records if r.task == task.name).input
        predictor.predict(task.name, [first], decode="score")
        predictor.generate([render_prompt(tokenizer, task.name, first)], max_new_tokens=2)
    for batch in (1, 8):
        score_ms, generate_ms, queries = [], [], 0
        for task in tasks:
            chosen = [r for r in records if r.task == task.name][:per_task]
            lengths = {x: len(label_answer_ids(tokenizer, task.name, x)) for x in task.labels}
            for group in _batches(chosen, batch):
                budget = max(lengths[r.output] for r in group)
                s, g = _time_group(predictor, task.name, group, budget, rounds, device)
                score_ms += s
                generate_ms += g
                queries += len(group)
        score, generate = statistics.median(score_ms), statistics.median(generate_ms)
        found["per_batch"][str(batch)] = {
            "queries": queries,
            "score_ms_per_query": round(score, 3),
            "generate_ms_per_query": round(generate, 3),
            "speedup": round(generate / score, 2),
        }
    found["min_speedup"] = 3.0
    found["meets_min_speedup"] = all(
        b["speedup"] >= found["min_speedup"] for b in found["per_batch"].values()
    )
    return found
