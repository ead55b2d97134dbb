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
from benchmarks.train_speed.pacer import Pacer, since_start

SPEC_MAX_LENGTH = 512
# The spec's batching: 2 samples per micro-batch, 4 accumulation steps (ours: 4 x 2).
SPEC_BATCH_SIZE = 2
SPEC_GRAD_ACCUM = 4


def train_ours(opts: dict, conn) -> dict:
    """(b): `qwen3_lora.training.train.train` with `TrainConfig` defaults."""
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
    result = train(TrainConfig(**values), callbacks=[Pacer(conn, opts["every"])])
    return {
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
        callbacks=[Pacer(conn, opts["every"])],
    )
    result = trainer.train()
    return {"final_loss": result.training_loss, "optimizer_steps": result.global_step}


def _timed(fn, n: int) -> float:
    """Milliseconds per item of one call of `fn` over `n` items."""
    began = time.perf_counter()
    fn()
    return (time.perf_counter() - began) * 1000 / n


def infer(opts: dict, conn) -> dict:
    """Label scoring and generation through `Predictor`, batch 1 and 8."""
    from qwen3_lora.data.records import load_builtin
    from qwen3_lora.inference.predictor import Predictor
    from qwen3_lora.prompt.render import render_prompt

    predictor = Predictor.load(opts["model_dir"], opts.get("adapter"), precision="auto")
    conn.send({"event": "ready", "rss": rss_bytes()[0], "since_start": since_start()})
    if conn.recv() != "go":
        raise SystemExit(0)
    records = load_builtin("eval")
    queries = opts["queries"]
    scene = [r.input for r in records if r.task == "问题场景分类"][:queries]
    prompts = [render_prompt(predictor.tokenizer, r.task, r.input) for r in records[:queries]]
    new_tokens = opts["new_tokens"]
    figures: dict = {
        "precision": predictor.precision,
        "queries": queries,
        "adapter": bool(opts.get("adapter")),
    }
    predictor.predict("问题场景分类", scene[:2], decode="score", batch_size=2)  # warm-up
    predictor.generate(prompts[:1], max_new_tokens=2, stop_at_eot=False)
    for batch in (1, 8):
        ms = _timed(
            lambda b=batch: predictor.predict("问题场景分类", scene, decode="score", batch_size=b),
            len(scene),
        )
        figures[f"score_ms_per_query_b{batch}"] = ms
        # stop_at_eot=False: random weights never stop on their own; every query decodes
        # exactly `new_tokens` tokens, so the figure is the cost of that many tokens.
        ms = _timed(
            lambda b=batch: predictor.generate(
                prompts, max_new_tokens=new_tokens, stop_at_eot=False, batch_size=b
            ),
            len(prompts),
        )
        figures[f"generate_ms_per_query_b{batch}"] = ms
        figures[f"generate_tokens_per_s_b{batch}"] = new_tokens / (ms / 1000)
    figures["new_tokens"] = new_tokens
    figures["prompt_tokens_mean"] = statistics.mean(
        len(predictor.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts
    )
    return figures


WORKERS = {"ours": train_ours, "spec": train_spec, "infer": infer}


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
