"""Probe: compute a micro-batch's shared prompt prefix once instead of once per sample.

    python -m benchmarks.prefix_probe --smoke    # tiny model, fp32: equality check, seconds
    python -m benchmarks.prefix_probe            # Qwen3-0.6B shape: equality (fp32) + timing (bf16)

Every sample of a task starts with the same tokens (`<|im_start|>user\\n任务: {task}\\n输入: `,
~12 with Qwen3's vocabulary). A micro-batch of one task could run that prefix once (batch 1),
expand its keys and values to the batch, and run only each sample's rest against them. The
prefix is prompt, so no logit is needed there; its LoRA activations still get gradients, summed
over the batch through the expand.

Such a path is worth having only if the loss and every LoRA gradient equal the plain path's, so
this probe first checks that in fp32 with dropout off (max |loss difference|, max relative
gradient difference over all LoRA parameters), then times forward + backward of both paths on
micro-batches of one task in the training precision, in turns (plain, prefix, plain, ...).
Caveats for a real path: micro-batches would have to hold one task each, which changes the
length grouping the sampler does now; and with LoRA dropout the prefix's masks would be drawn
once for the whole micro-batch instead of once per sample (the same expected gradient, not the
same distribution), so the equality holds only without dropout.

Writes benchmarks/results/<date>-<host>-prefix-probe[-smoke].json and prints a summary.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import (
    QWEN3_SHAPE,
    RESULTS,
    TINY,
    build_model_folder,
    build_tokenizer,
    go_offline,
    result_name,
    write_result,
)

IGNORE_INDEX = -100


def one_task_batches(tokenizer, size: int, count: int) -> list[dict]:
    """`count` micro-batches of `size` samples of one task each (tasks in turn)."""
    from qwen3_lora.data.records import load_builtin
    from qwen3_lora.prompt.encoding import PadCollator, encode_records

    encoded, _ = encode_records(tokenizer, load_builtin("train"), 512)
    records = load_builtin("train")
    by_task: dict[str, list] = {}
    for record, e in zip(records, encoded, strict=True):
        by_task.setdefault(record.task, []).append(e)
    collate = PadCollator(tokenizer.pad_token_id)
    tasks = sorted(by_task)
    batches = []
    for i in range(count):
        group = by_task[tasks[i % len(tasks)]][(i // len(tasks)) * size :][:size]
        batches.append(collate([e.as_features() for e in group]))
    return batches


def shared_prefix(batch: dict) -> int:
    """Tokens every row starts with, stopping before the first supervised target."""
    ids, labels = batch["input_ids"], batch["labels"]
    same = (ids == ids[:1]).all(0)
    n = int(same.long().cumprod(0).sum())
    first_target = int((labels != IGNORE_INDEX).any(0).nonzero()[0])
    return min(n, first_target - 1, int(batch["attention_mask"].sum(1).min()) - 1)


def prefix_loss(model, batch: dict) -> torch.Tensor:
    """The loss of `causal_lm_loss`, with the shared prefix computed once."""
    from transformers import DynamicCache

    from qwen3_lora.training.loss import chunked_cross_entropy, supervised_positions

    n = shared_prefix(batch)
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    rows = ids.shape[0]
    decoder = model.get_base_model().model
    cache = DynamicCache(config=decoder.config)
    decoder(input_ids=ids[:1, :n], cache=cache, use_cache=True)
    expanded = DynamicCache(
        ddp_cache_data=[
            (layer.keys.expand(rows, -1, -1, -1), layer.values.expand(rows, -1, -1, -1))
            for layer in cache.layers
        ],
        config=decoder.config,
    )
    keep = supervised_positions(labels[:, n:])  # positions of the rest, next token supervised
    positions = torch.arange(n, ids.shape[1]).expand(rows, -1)
    logits = model(
        input_ids=ids[:, n:],
        attention_mask=mask,
        position_ids=positions,
        cache=expanded,
        use_cache=True,
        logits_to_keep=keep,
    ).logits
    targets = labels[:, n + keep + 1]
    total = chunked_cross_entropy(logits.flatten(0, 1), targets.flatten())
    return total / (targets != IGNORE_INDEX).sum()


def _lora_grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def equality(model, batches: list[dict]) -> dict:
    """Loss and LoRA gradients of both paths on each batch (fp32, no dropout)."""
    from qwen3_lora.training.loss import causal_lm_loss

    worst_loss, worst_grad = 0.0, 0.0
    for batch in batches:
        results = []
        for loss_fn in (causal_lm_loss, prefix_loss):
            model.zero_grad(set_to_none=True)
            loss = loss_fn(model, batch)
            loss.backward()
            results.append((float(loss.detach()), _lora_grads(model)))
        (plain, g1), (shared, g2) = results
        worst_loss = max(worst_loss, abs(plain - shared))
        for name, g in g1.items():
            scale = float(g.abs().max()) or 1.0
            worst_grad = max(worst_grad, float((g - g2[name]).abs().max()) / scale)
    model.zero_grad(set_to_none=True)
    return {
        "batches": len(batches),
        "max_abs_loss_difference": worst_loss,
        "max_relative_grad_difference": worst_grad,
        "equal": worst_loss < 1e-5 and worst_grad < 1e-4,
    }


def timing(model, batches: list[dict], dtype, rounds: int) -> dict:
    """Forward + backward seconds of both paths over `batches`, in turns, best of `rounds`."""
    from qwen3_lora.training.loss import causal_lm_loss

    def step(loss_fn, batch):
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = loss_fn(model, batch)
        loss.backward()
        model.zero_grad(set_to_none=True)

    paths = {"plain": causal_lm_loss, "prefix": prefix_loss}
    best = dict.fromkeys(paths, float("inf"))
    for fn in paths.values():
        step(fn, batches[0])  # warm-up
    for _ in range(rounds):
        for name, fn in paths.items():
            began = time.perf_counter()
            for batch in batches:
                step(fn, batch)
            best[name] = min(best[name], time.perf_counter() - began)
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    prefix = sum(shared_prefix(b) * (b["input_ids"].shape[0] - 1) for b in batches)
    return {
        "seconds": best,
        "useful_tokens": tokens,
        "prefix_tokens_saved": prefix,
        "plain_over_prefix": best["plain"] / best["prefix"],
    }


def _model(args, tokenizer, report: dict, dropout: float, precision_name: str):
    from qwen3_lora.models.loading import resolve_precision
    from qwen3_lora.training.config import TrainConfig
    from qwen3_lora.training.train import training_model

    cpu = torch.device("cpu")
    tmp = tempfile.mkdtemp(prefix="prefix-probe-")
    try:
        report["model"] = build_model_folder(
            tokenizer, TINY if args.smoke else QWEN3_SHAPE, Path(tmp)
        )
        config = TrainConfig(base_model=tmp, lora_dropout=dropout, precision=precision_name)
        precision = resolve_precision(config.precision, cpu)
        return training_model(config, precision, cpu)[0].train(), precision
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.prefix_probe", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny model, equality only + timing")
    parser.add_argument("--batches", type=int, default=8, help="micro-batches of one task each")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    go_offline()
    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer, report = (
        build_tokenizer(args.smoke)[0],
        {
            "command": "python -m benchmarks.prefix_probe "
            + " ".join(sys.argv[1:] if argv is None else argv)
        },
    )
    batches = one_task_batches(tokenizer, size=4, count=4 if args.smoke else args.batches)
    report["shared_prefix_tokens"] = [shared_prefix(b) for b in batches]
    model, _ = _model(args, tokenizer, report, dropout=0.0, precision_name="fp32")
    report["equality_fp32_no_dropout"] = equality(model, batches[:4])
    print(f"equality (fp32, no dropout): {report['equality_fp32_no_dropout']}", flush=True)
    del model
    model, precision = _model(args, tokenizer, report, dropout=0.1, precision_name="auto")
    report["timing"] = timing(model, batches, precision.autocast_dtype, args.rounds)
    report["timing"]["precision"] = precision.name
    print(f"timing ({precision.name}, dropout 0.1): {report['timing']}", flush=True)
    path = write_result(args.out / result_name("prefix-probe", smoke=args.smoke), report)
    print(f"wrote {path}")
    return 0 if report["equality_fp32_no_dropout"]["equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
