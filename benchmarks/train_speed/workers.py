"""The worker processes: one per pipeline, each paced by the driver through a pipe.

`worker_main` is a spawned process's entry point; it runs one of `WORKERS` and reports its
result, or the traceback of its failure.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import traceback

import torch

from benchmarks.common import lifetime_peak_rss, rss_bytes
from benchmarks.train_speed.pacer import Pacer, since_start, supervised_lookup
from benchmarks.train_speed.trl_arm import train_trl

SPEC_MAX_LENGTH = 512
# The spec's batching: 2 samples per micro-batch, 4 accumulation steps (ours: 4 x 2).
SPEC_BATCH_SIZE = 2
SPEC_GRAD_ACCUM = 4


def _lookup(opts: dict, max_length: int) -> dict[tuple, int]:
    """Supervised targets of every sample the worker trains on, by its input ids."""
    from transformers import AutoTokenizer

    from qwen3_lora.data.records import load_builtin, load_records

    records = load_records([opts["data"]]) if opts.get("data") else load_builtin("train")
    return supervised_lookup(AutoTokenizer.from_pretrained(opts["model_dir"]), records, max_length)


def train_ours(opts: dict, conn) -> dict:
    """(b): `qwen3_lora.training.train.train` with `TrainConfig` defaults."""
    from qwen3_lora.models.loading import resolve_precision
    from qwen3_lora.training.config import TrainConfig
    from qwen3_lora.training.train import train

    values = dict(
        base_model=opts["model_dir"],
        output_dir=opts["output_dir"],
        data=[opts["data"]] if opts.get("data") else [],
        builtin_data=not opts.get("data"),
        eval_each_epoch=False,
        epochs=1,
        save_steps=10**9,
        report_to=["none"],
        logging_steps=1,
    )
    values.update(opts.get("overrides", {}))
    config = TrainConfig(**values)
    pacer = Pacer(conn, opts["every"], _lookup(opts, config.max_length))
    result = train(config, callbacks=[pacer])
    return {
        "precision": resolve_precision(config.precision, torch.device("cpu")).name,
        "final_loss": result.final_loss,
        "optimizer_steps": result.optimizer_steps,
        "compiled": result.compiled,
    }


def _spec_rows(tokenizer, data: str) -> list[dict]:
    from qwen3_lora.data.records import load_records
    from qwen3_lora.prompt.encoding import encode_example

    rows = []
    for record in load_records([data]):
        ids = encode_example(tokenizer, record.task, record.input, record.output).input_ids
        ids = ids[:SPEC_MAX_LENGTH]
        pad = SPEC_MAX_LENGTH - len(ids)
        padded = ids + [tokenizer.pad_token_id] * pad
        rows.append(
            {
                "input_ids": torch.tensor(padded),
                "attention_mask": torch.tensor([1] * len(ids) + [0] * pad),
                "labels": torch.tensor(padded),
            }
        )
    return rows


def train_spec(opts: dict, conn) -> dict:
    """(a) the spec-style pipeline: pad to 512, labels = input ids, fp32, Trainer defaults."""
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        Trainer,
        TrainingArguments,
        default_data_collator,
    )

    from qwen3_lora.training.config import TrainConfig

    recipe = TrainConfig()
    tokenizer = AutoTokenizer.from_pretrained(opts["model_dir"])
    rows = _spec_rows(tokenizer, opts["data"])
    model = AutoModelForCausalLM.from_pretrained(opts["model_dir"], dtype=torch.float32)
    model = get_peft_model(
        model,
        LoraConfig(
            r=recipe.lora_r,
            lora_alpha=recipe.lora_alpha,
            lora_dropout=recipe.lora_dropout,
            target_modules=list(recipe.target_modules),
            task_type="CAUSAL_LM",
        ),
    )
    args = TrainingArguments(
        output_dir=opts["output_dir"],
        per_device_train_batch_size=SPEC_BATCH_SIZE,
        gradient_accumulation_steps=SPEC_GRAD_ACCUM,
        learning_rate=recipe.learning_rate,
        num_train_epochs=1,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=recipe.seed,
        dataloader_num_workers=0,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=rows,
        data_collator=default_data_collator,
        callbacks=[Pacer(conn, opts["every"], _lookup(opts, SPEC_MAX_LENGTH))],
    )
    result = trainer.train()
    return {"final_loss": result.training_loss, "optimizer_steps": result.global_step}


def _timed(fn, n: int) -> float:
    """Milliseconds per item of one call of `fn` over `n` items."""
    began = time.perf_counter()
    fn()
    return (time.perf_counter() - began) * 1000 / n


def _measurements(predictor, scene: list[str], prompts: list[str], new_tokens: int) -> dict:
    """name -> a function timing it (ms per query) on `predictor`."""
    found = {}
    for batch in (1, 8):
        found[f"score_ms_per_query_b{batch}"] = lambda b=batch: _timed(
            lambda: predictor.predict("问题场景分类", scene, decode="score", batch_size=b),
            len(scene),
        )
        # stop_at_eot=False: random weights never stop on their own; every query decodes
        # exactly `new_tokens` tokens, so the figure is the cost of that many tokens.
        found[f"generate_ms_per_query_b{batch}"] = lambda b=batch: _timed(
            lambda: predictor.generate(
                prompts, max_new_tokens=new_tokens, stop_at_eot=False, batch_size=b
            ),
            len(prompts),
        )
    return found


def in_turns(timers: dict[str, dict], rounds: int) -> dict[str, dict[str, list[float]]]:
    """name -> figure -> one time per round. Each round times every figure of each name back
    to back, in the opposite order of the round before (base, adapter, then adapter, base, ...),
    so a drift of the machine's speed within a pair favours neither."""
    names = list(timers)
    found = {name: {key: [] for key in timers[name]} for name in names}
    for round_ in range(rounds):
        for key in timers[names[0]]:
            for name in names if round_ % 2 == 0 else reversed(names):
                found[name][key].append(timers[name][key]())
    return found


def infer(opts: dict, conn) -> dict:
    """Label scoring and generation through `Predictor`, batch 1 and 8: the base model alone and
    with the adapter, loaded as two instances (PEFT injects LoRA in place) and measured in turns
    (`in_turns`), the best of `rounds` for each figure."""
    from qwen3_lora.data.records import load_builtin
    from qwen3_lora.inference.predictor import Predictor
    from qwen3_lora.prompt.render import render_prompt

    predictors = {
        "base": Predictor.load(opts["model_dir"], None, precision="auto"),
        "adapter": Predictor.load(opts["model_dir"], opts["adapter"], precision="auto"),
    }
    conn.send({"event": "ready", "rss": rss_bytes()[0], "since_start": since_start()})
    if conn.recv() != "go":
        raise SystemExit(0)
    records = load_builtin("eval")
    queries, new_tokens = opts["queries"], opts["new_tokens"]
    scene = [r.input for r in records if r.task == "问题场景分类"][:queries]
    tokenizer = predictors["base"].tokenizer
    prompts = [render_prompt(tokenizer, r.task, r.input) for r in records[:queries]]
    results, timers = {}, {}
    for name, predictor in predictors.items():
        predictor.predict("问题场景分类", scene[:2], decode="score", batch_size=2)  # warm-up
        predictor.generate(prompts[:1], max_new_tokens=2, stop_at_eot=False)
        timers[name] = _measurements(predictor, scene, prompts, new_tokens)
        results[name] = {
            "precision": predictor.precision,
            "queries": queries,
            "adapter": name == "adapter",
            "new_tokens": new_tokens,
            "rounds": opts.get("rounds", 1),
            "order": "alternating",  # see in_turns
            "prompt_tokens_mean": statistics.mean(
                len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts
            ),
        }
    for name, rounds_ms in in_turns(timers, opts.get("rounds", 1)).items():
        results[name]["rounds_ms"] = rounds_ms
    for figures in results.values():
        figures.update({key: min(times) for key, times in figures["rounds_ms"].items()})
        for batch in (1, 8):
            ms = figures[f"generate_ms_per_query_b{batch}"]
            figures[f"generate_tokens_per_s_b{batch}"] = new_tokens / (ms / 1000)
    return results


WORKERS = {"ours": train_ours, "spec": train_spec, "trl": train_trl, "infer": infer}


def worker_main(kind: str, opts: dict, conn) -> None:
    """Entry point of a worker process: run, report, and send a traceback on failure."""
    log = open(opts["log"], "w", encoding="utf-8")  # noqa: SIM115 - lives as long as the process
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout = sys.stderr = log
    os.environ["TQDM_DISABLE"] = "1"
    if opts.get("threads"):
        torch.set_num_threads(opts["threads"])
    try:
        result = WORKERS[kind](opts, conn)
        conn.send(
            {
                "event": "done",
                "result": result,
                "rss": rss_bytes(),
                "lifetime_peak_rss": lifetime_peak_rss(),
            }
        )
    except SystemExit:
        pass
    except BaseException:
        conn.send({"event": "error", "trace": traceback.format_exc()})
    finally:
        log.flush()
