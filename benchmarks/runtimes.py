"""llama.cpp against our Predictor on Qwen3-0.6B's shape: classification latency, generation
speed and memory, same machine, same prompts, one run.

    python -m benchmarks.runtimes             # 0.6B shape, Qwen3's vocabulary (extras bench, llamacpp)
    python -m benchmarks.runtimes --smoke     # tiny model and tokenizer, seconds
    python -m benchmarks.runtimes --render benchmarks/results/<date>-<host>-runtimes.json

The model has random weights (`models.tiny.build_model`, embedding padded to Qwen3-0.6B's
151,936 rows), saved as bf16 safetensors and exported with `qwen3-lora export` to f16 and q8_0
GGUF. The prompts are the built-in eval split's classification inputs rendered by
`render_prompt`. Engines, each in its own process (so each peak RSS is its own), one query at a
time with nothing cached between queries:

- ours: `Predictor` in bf16 (the base weights, as a merged model runs): label scoring, and
  generating the label;
- llama.cpp (llama-cpp-python), q8_0 and f16: generating the label, and scoring each label by
  log-probability (prompt evaluated once, each label from its end).

A random model never stops by itself, so generating a label is given exactly the gold label's
tokens plus the end of turn: what a perfectly trained model pays. Generation tokens/s is batch 1
over `--gen-tokens` new tokens after the first. Writes benchmarks/results/<date>-<host>-runtimes.json
and RUNTIMES.md, and the table into README.md in its runtimes block (full runs only).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import common

common.go_offline()
# ggml's OpenMP threads spin while idle by default, which distorts a shared CPU.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

GGUF_TYPES = ("q8_0", "f16")


def peak_rss_gb() -> float:
    """This process's peak RSS (VmHWM, its own memory map: getrusage's maxrss would carry the
    parent's peak over fork and exec)."""
    return round(common.rss_bytes()[1] / 2**30, 3)


def _ms(began: float) -> float:
    return (time.perf_counter() - began) * 1000


# ---------------------------------------------------------------------------------------------
# The model, its GGUF files, and the plan every engine follows


def prepare(folder: Path, smoke: bool) -> dict:
    """Build and save the model, export the GGUFs, and write the plan (prompts as token ids)."""
    from qwen3_lora.deploy.export import export

    began = time.perf_counter()
    tokenizer, _ = common.build_tokenizer(tiny=smoke)
    built = common.build_model_folder(
        tokenizer, common.TINY if smoke else common.QWEN3_SHAPE, folder / "hf"
    )
    info = {"arch": built["arch"], "parameters": built["params"]}
    info["build_s"] = round(time.perf_counter() - began, 1)
    info["hf_bytes"] = (folder / "hf" / "model.safetensors").stat().st_size
    for outtype in GGUF_TYPES:
        began = time.perf_counter()
        export(model=folder / "hf", output=folder / outtype, outtype=outtype)
        size = (folder / outtype / "model.gguf").stat().st_size
        info[outtype] = {"export_s": round(time.perf_counter() - began, 1), "bytes": size}
    return info


def make_plan(folder: Path, per_task: int, gen_tokens: int, threads: int) -> dict:
    from transformers import AutoTokenizer

    from qwen3_lora.data.records import load_builtin
    from qwen3_lora.data.registry import load_registry
    from qwen3_lora.inference.predictor import prompt_ids
    from qwen3_lora.inference.scoring import label_answer_ids

    tokenizer = AutoTokenizer.from_pretrained(folder / "hf")
    registry = load_registry()
    records = load_builtin("eval", registry)
    queries = []
    for task in (t for t in registry.tasks if t.is_classification):
        labels = {label: label_answer_ids(tokenizer, task.name, label) for label in task.labels}
        for record in [r for r in records if r.task == task.name][:per_task]:
            ids = prompt_ids(tokenizer, task.name, record.input)
            query = {"task": task.name, "input": record.input, "prompt_ids": ids}
            query |= {"labels": labels, "budget": len(labels[record.output])}
            queries.append(query)
    return {"threads": threads, "gen_tokens": gen_tokens, "queries": queries}


# ---------------------------------------------------------------------------------------------
# Engines (each runs in its own process)


def run_ours(folder: Path, plan: dict) -> dict:
    import torch

    from qwen3_lora.inference.predictor import Predictor

    torch.set_num_threads(plan["threads"])
    began = time.perf_counter()
    predictor = Predictor.load(str(folder / "hf"), precision="bf16", device="cpu")
    load_s = time.perf_counter() - began
    first = plan["queries"][0]
    predictor.predict(first["task"], [first["input"]], decode="score")  # warm-up
    score, generate = [], []
    for q in plan["queries"]:
        began = time.perf_counter()
        predictor.predict(q["task"], [q["input"]], decode="score")
        score.append(_ms(began))
        began = time.perf_counter()
        predictor.generate_ids([q["prompt_ids"]], max_new_tokens=q["budget"], stop_at_eot=False)
        generate.append(_ms(began))

    def generate_ms(n: int) -> float:
        began = time.perf_counter()
        predictor.generate_ids([first["prompt_ids"]], max_new_tokens=n, stop_at_eot=False)
        return _ms(began)

    one, many = generate_ms(1), generate_ms(plan["gen_tokens"] + 1)
    tokens_per_s = plan["gen_tokens"] / ((many - one) / 1000)
    return _summary(load_s, score, generate, tokens_per_s)


def run_llama_cpp(gguf: Path, plan: dict) -> dict:
    import llama_cpp
    import numpy as np

    def load(logits_all: bool):
        return llama_cpp.Llama(
            model_path=str(gguf),
            n_ctx=512,
            n_threads=plan["threads"],
            n_threads_batch=plan["threads"],
            logits_all=logits_all,
            verbose=False,
        )

    began = time.perf_counter()
    llm = load(logits_all=False)
    load_s = time.perf_counter() - began

    def generate(ids: list[int], n: int) -> list[float]:
        """Stamps of n greedy tokens, nothing reused from an earlier prompt."""
        llm.reset()
        began, stamps = time.perf_counter(), []
        for _ in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
            stamps.append(_ms(began))
            if len(stamps) >= n:
                break
        return stamps

    first = plan["queries"][0]
    generate(first["prompt_ids"], 2)  # warm-up
    gen = [generate(q["prompt_ids"], q["budget"])[-1] for q in plan["queries"]]
    stamps = generate(first["prompt_ids"], plan["gen_tokens"] + 1)
    tokens_per_s = plan["gen_tokens"] / ((stamps[-1] - stamps[0]) / 1000)
    llm.close()
    # Log-probabilities need every position's logits: llama-cpp-python only keeps them (in
    # `scores`) with logits_all=True.
    scorer = load(logits_all=True)
    _score_labels(scorer, first, np)  # warm-up
    score = []
    for q in plan["queries"]:
        began = time.perf_counter()
        label = _score_labels(scorer, q, np)
        score.append(_ms(began))
        assert label in q["labels"]
    scorer.close()
    return _summary(load_s, score, gen, tokens_per_s)


def _score_labels(llm, query: dict, np) -> str:
    """The label of highest summed log-probability: the prompt once, each label after it."""
    llm.reset()
    prompt = query["prompt_ids"]
    llm.eval(prompt)
    best = None
    for label, ids in query["labels"].items():
        llm.n_tokens = len(prompt)  # back to the end of the prompt; eval overwrites the rest
        llm.eval(ids)
        logits = np.asarray(llm.scores[len(prompt) - 1 : len(prompt) + len(ids) - 1])
        shifted = logits - logits.max(-1, keepdims=True)
        logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        total = float(logp[np.arange(len(ids)), ids].sum())
        best = max(best or (total, label), (total, label))
    return best[1]


def _summary(load_s: float, score: list[float], generate: list[float], tps: float) -> dict:
    return {
        "load_s": round(load_s, 2),
        "queries": len(score),
        "score_ms_median": round(statistics.median(score), 2),
        "generate_label_ms_median": round(statistics.median(generate), 2),
        "generation_tokens_per_s": round(tps, 2),
        "peak_rss_gb": peak_rss_gb(),
    }


def worker(args) -> int:
    plan = json.loads(Path(args.plan).read_text("utf-8"))
    if args.worker == "ours":
        result = run_ours(Path(args.folder), plan)
    else:
        result = run_llama_cpp(Path(args.folder) / args.worker / "model.gguf", plan)
    Path(args.result).write_text(json.dumps(result), "utf-8")
    return 0


def _in_process(what: str, folder: Path, plan_path: Path) -> dict:
    out = folder / f"result-{what}.json"
    command = [sys.executable, "-m", "benchmarks.runtimes", "--worker", what]
    command += ["--folder", str(folder), "--plan", str(plan_path), "--result", str(out)]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(common.ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    subprocess.run(command, cwd=common.ROOT, env=env, check=True)
    return json.loads(out.read_text("utf-8"))


# ---------------------------------------------------------------------------------------------
# The run and its report

ENGINES = {"ours": "ours, bf16 (Predictor)", "q8_0": "llama.cpp q8_0", "f16": "llama.cpp f16"}


def run(args) -> dict:
    threads = args.threads or os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="runtimes-") as tmp:
        folder = Path(tmp)
        model = prepare(folder, args.smoke)
        print(f"model: {model}", flush=True)
        plan = make_plan(folder, args.per_task, args.gen_tokens, threads)
        plan_path = folder / "plan.json"
        plan_path.write_text(json.dumps(plan, ensure_ascii=False), "utf-8")
        engines = {}
        for what in ENGINES:
            engines[what] = _in_process(what, folder, plan_path)
            print(f"{ENGINES[what]}: {engines[what]}", flush=True)
    prompt_tokens = [len(q["prompt_ids"]) for q in plan["queries"]]
    return {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": common.command_line("benchmarks.runtimes", args.argv),
        "load_average": common.load_average(),
        "threads": threads,
        "model": model,
        "queries": len(plan["queries"]),
        "prompt_tokens_median": statistics.median(prompt_tokens),
        "gen_tokens": args.gen_tokens,
        "engines": engines,
        "comparison": compare(engines),
    }


def compare(engines: dict) -> dict:
    """How much faster the fastest llama.cpp way is than ours, per measure."""
    ours = engines["ours"]
    llama = {k: v for k, v in engines.items() if k != "ours"}
    measures = {"score_ms_median": "scoring", "generate_label_ms_median": "generating"}
    ways = [(v[m], f"{k}, {how}") for k, v in llama.items() for m, how in measures.items()]
    best_ms, best_way = min(ways)
    ours_ms = min(ours["score_ms_median"], ours["generate_label_ms_median"])
    fastest_gen = max(llama, key=lambda k: llama[k]["generation_tokens_per_s"])
    return {
        "classification_fastest_llama_cpp": best_way,
        "classification_speedup": round(ours_ms / best_ms, 2),
        "generation_fastest_llama_cpp": fastest_gen,
        "generation_speedup": round(
            llama[fastest_gen]["generation_tokens_per_s"] / ours["generation_tokens_per_s"], 2
        ),
    }


def render(report: dict) -> str:
    """The Markdown table and the sentence the README quotes."""
    model = report["model"]
    sizes = {"ours": model["hf_bytes"], **{t: model[t]["bytes"] for t in GGUF_TYPES}}
    rows = []
    for key, label in ENGINES.items():
        e = report["engines"][key]
        rows.append(
            f"| {label} | {sizes[key] / 2**20:,.1f} MiB | {e['score_ms_median']:.0f} | "
            f"{e['generate_label_ms_median']:.0f} | {e['generation_tokens_per_s']:.1f} | "
            f"{e['peak_rss_gb']:.2f} GB |"
        )
    c = report["comparison"]
    m = report["machine"]
    return (
        f"{model['arch']} ({model['parameters'] / 1e6:.0f}M parameters, random weights), "
        f"{report['queries']} classification queries (median prompt {report['prompt_tokens_median']}"
        f" tokens), {report['threads']} thread(s) on {m['cpu']} ({m['cores']} cores, load average"
        f" {report['load_average'][0]} at the start), "
        f"`{report['command']}` at {_commit(report)}, {report['date'][:10]}:\n\n"
        "| engine | weights | label scoring, ms/query | generating the label, ms/query "
        "| generation tokens/s (batch 1) | peak RSS |\n|---|---|---|---|---|---|\n"
        + "\n".join(rows)
        + f"\n\n{_classification_sentence(report)} llama.cpp {c['generation_fastest_llama_cpp']}"
        f" generates **{c['generation_speedup']}x** as many tokens/s as ours at batch 1.\n"
    )


def _classification_sentence(report: dict) -> str:
    """Which engine classifies faster, and by how much, said the right way round."""
    c, ours = report["comparison"], report["engines"]["ours"]
    scoring = ours["score_ms_median"] <= ours["generate_label_ms_median"]
    ours_way = "label scoring" if scoring else "generating the label"
    llama_way = c["classification_fastest_llama_cpp"]
    if c["classification_speedup"] >= 1:
        return (
            f"The fastest llama.cpp classification ({llama_way}) is "
            f"**{c['classification_speedup']}x** as fast as our fastest ({ours_way})."
        )
    return (
        f"Our fastest classification ({ours_way}) is **{1 / c['classification_speedup']:.2f}x** "
        f"as fast as llama.cpp's fastest ({llama_way})."
    )


def _commit(report: dict) -> str:
    sha = report["commit"].get("sha") or "an unknown commit"
    return sha[:10] + (" (with local changes)" if report["commit"].get("dirty") else "")


def publish(report: dict, path: Path) -> None:
    """RUNTIMES.md beside the JSON, and the README's runtimes block."""
    text = render(report)
    common.write_text(path.parent / "RUNTIMES.md", f"# llama.cpp vs ours ({path.name})\n\n{text}")
    common.render_block("runtimes", text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model and tokenizer, seconds")
    parser.add_argument("--per-task", type=int, help="eval inputs per classifier (10; smoke 2)")
    parser.add_argument("--gen-tokens", type=int, help="tokens timed for tokens/s (32; smoke 4)")
    parser.add_argument("--threads", type=int, help="threads for every engine (all cores)")
    parser.add_argument(
        "--out", type=Path, default=common.RESULTS, help="folder for the results JSON"
    )
    parser.add_argument("--render", type=Path, help="only re-render the tables from a JSON")
    for hidden in ("--worker", "--folder", "--plan", "--result"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = argv
    if args.worker:
        return worker(args)
    if args.render:
        publish(json.loads(args.render.read_text("utf-8")), args.render)
        return 0
    args.per_task = args.per_task or (2 if args.smoke else 10)
    args.gen_tokens = args.gen_tokens or (4 if args.smoke else 32)
    report = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    path = common.write_result(args.out / common.result_name("runtimes", args.smoke), report)
    print(f"\n{render(report)}\nwrote {path}")
    if not args.smoke:  # a smoke run checks the benchmark, not the machine: nothing published
        publish(report, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
