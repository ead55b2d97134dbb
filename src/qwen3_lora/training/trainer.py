"""The Trainer subclass that trains with our loss, and the callbacks that write metrics.jsonl and
progress.json."""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

from ..files import atomic_write_text
from ..models.loading import Precision
from .loss import causal_lm_loss


class TokenCounter:
    """Non-pad tokens the model has trained on, shared by the Trainer and the metrics logger."""

    def __init__(self):
        self.seen = 0


class ShuffledLengthGroupedSampler(LengthGroupedSampler):
    """transformers' length grouping with the groups of one optimizer step in random order.

    `LengthGroupedSampler` sorts each mega-batch (up to 50 steps' samples) by length, longest
    first, and yields the steps in that order: every mega-batch sweeps from the longest samples to
    the shortest. When the tasks differ in answer length that is a run of steps of one task after
    another (QA answers, then file names, then one-word labels), and each run pulls the model
    towards its own task: a model whose last steps were label steps answers a QA prompt with a
    label. Here the steps keep their length-grouped samples (little padding) but come in a random
    order, the longest one still first (an out-of-memory error shows at once).

    Each epoch's order comes from (seed, epoch) alone, never from torch's global generator: a run
    resumed inside a later epoch builds that epoch's order before the Trainer restores the
    checkpoint's RNG state, so from the global generator it drew another order than the
    uninterrupted run and trained on other samples. Every DDP rank draws the same order too.
    """

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch  # the Trainer calls this (through accelerate) before each epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        indices = get_length_grouped_indices(self.lengths, self.batch_size, generator=generator)
        steps = [indices[i : i + self.batch_size] for i in range(0, len(indices), self.batch_size)]
        # A short last step stays last: anywhere else it would shift every later step's samples.
        tail = len(steps) - (len(steps[-1]) < self.batch_size)
        order = (torch.randperm(max(tail - 1, 0), generator=generator) + 1).tolist()
        return iter([i for k in [0, *order, *range(tail, len(steps))] for i in steps[k]])


# How every adapter of a run is saved, the final one and each checkpoint's: the vocabulary is
# never resized, so the embeddings are not saved; saying so also stops PEFT from looking the
# base model up on the hub to find out (a network call, and a warning, at every checkpoint).
ADAPTER_SAVE_OPTIONS = {"safe_serialization": True, "save_embedding_layers": False}


class LoraTrainer(Trainer):
    """A Trainer whose loss uses `causal_lm_loss` under the run's autocast, and counts tokens."""

    def __init__(
        self, *args, precision: Precision, labels_only: bool, tokens: TokenCounter, **kwargs
    ):
        super().__init__(*args, **kwargs)
        self.precision = precision
        self.labels_only = labels_only
        self.tokens = tokens
        # Our loss divides by the batch's supervised-token count, so gradient accumulation is exact.
        self.model_accepts_loss_kwargs = True

    def _get_train_sampler(self, train_dataset=None):
        if self.args.train_sampling_strategy != "group_by_length":
            return super()._get_train_sampler(train_dataset)
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        return ShuffledLengthGroupedSampler(
            self.args.train_batch_size * self.args.gradient_accumulation_steps,
            lengths=[len(item["input_ids"]) for item in dataset],
            seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            self.tokens.seen += int(inputs["attention_mask"].sum())
        dtype = self.precision.autocast_dtype
        device_type = inputs["input_ids"].device.type
        with torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = causal_lm_loss(model, inputs, num_items_in_batch, self.labels_only)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # num_items_in_batch counts every process's tokens; DDP averages the gradients again.
            loss = loss * self.accelerator.num_processes
        return (loss, {"loss": loss}) if return_outputs else loss

    def _save(self, output_dir=None, state_dict=None):
        # A checkpoint's adapter: Trainer calls the model's save_pretrained without options.
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        model.save_pretrained = functools.partial(model.save_pretrained, **ADAPTER_SAVE_OPTIONS)
        try:
            super()._save(output_dir, state_dict)
        finally:
            del model.save_pretrained


class MetricsLogger(TrainerCallback):
    """Append every log (loss, lr, eval loss) to metrics.jsonl with non-pad tokens/s."""

    def __init__(self, path: Path, tokens: TokenCounter):
        self.path = path
        self.tokens = tokens
        self._last = (time.perf_counter(), 0)

    def on_train_begin(self, args, state, control, **kwargs):
        self._last = (time.perf_counter(), self.tokens.seen)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4)}
        record.update({k: v for k, v in logs.items() if isinstance(v, (int, float))})
        if "loss" in logs:
            now, tokens = time.perf_counter(), self.tokens.seen
            elapsed = now - self._last[0]
            record["tokens_per_s"] = (
                round((tokens - self._last[1]) / elapsed, 2) if elapsed else 0.0
            )
            logs["tokens_per_s"] = record["tokens_per_s"]
            self._last = (now, tokens)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")


class ProgressFile(TrainerCallback):
    """progress.json: the optimizer step reached and the Trainer's own planned total.

    `max_steps` is what the Trainer will run (epochs or --max-steps, any world size), so a
    watcher (the web console's job list) needs no log parsing. Rewritten whole, atomically, at
    train begin, after each optimizer step and at the end: a reader never meets half a file.
    """

    def __init__(self, path: Path):
        self.path = path
        self.started = time.time()

    def _write(self, state, status: str) -> None:
        if not state.is_world_process_zero:
            return
        record = {
            "status": status,
            "step": state.global_step,
            "max_steps": state.max_steps,
            "epoch": round(state.epoch or 0.0, 4),
            "num_train_epochs": state.num_train_epochs,
            "started": self.started,
            "updated": time.time(),
        }
        atomic_write_text(self.path, json.dumps(record))

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.time()
        self._write(state, "running")

    def on_step_end(self, args, state, control, **kwargs):
        self._write(state, "running")

    def on_train_end(self, args, state, control, **kwargs):
        self._write(state, "done")
