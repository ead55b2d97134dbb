"""`qwen3-lora train`: LoRA fine-tuning with `transformers.Trainer` and PEFT.

Our own pieces: data loading and masking (`encoding`), the supervised-positions-only loss,
precision handling, tokens/s and a metrics JSONL. Everything else is the Trainer's.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import json
import logging
import math
import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed

from .attention import choose_training_attention
from .compiled import choose_compile, compile_decoder_layers, is_compiled
from .config import TrainConfig
from .dataset import Record, builtin_files, load_records
from .dropout import use_packed_bits_dropout
from .encoding import IGNORE_INDEX, EncodedDataset, EncodeReport, PadCollator, encode_records
from .models import Precision, default_device, load_base_model, load_tokenizer, resolve_precision
from .tasks import load_registry

log = logging.getLogger(__name__)
CONFIG_FILE = "train_config.yaml"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"


def supervised_positions(labels: torch.Tensor) -> torch.Tensor:
    """Sequence positions whose next token is supervised in at least one row of the batch."""
    return (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero().squeeze(-1)


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of (N, V) logits, fp32 inside, without fp32 copies of all logits.

    `F.cross_entropy(logits.float())` keeps an fp32 copy, the fp32 log-softmax and an fp32
    gradient of the whole (N, V) block alive at once: for Qwen3's 151,936-word vocabulary that is
    the largest allocation of a training step. This computes the same loss and gradient a chunk of
    rows at a time: forward keeps one log-sum-exp per row, backward writes softmax - one-hot into
    a gradient of the logits' own dtype.
    """

    @staticmethod
    def forward(ctx, logits, targets, chunk: int):
        valid = targets != IGNORE_INDEX
        safe = targets.masked_fill(~valid, 0)
        lse = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        with torch.autocast(logits.device.type, enabled=False):
            for i in range(0, logits.shape[0], chunk):
                lse[i : i + chunk] = torch.logsumexp(logits[i : i + chunk].float(), dim=-1)
            picked = logits.gather(1, safe[:, None]).squeeze(1).float()
        ctx.save_for_backward(logits, safe, valid, lse)
        ctx.chunk = chunk
        return ((lse - picked) * valid).sum()

    @staticmethod
    def backward(ctx, grad_output):
        logits, safe, valid, lse = ctx.saved_tensors
        grad = torch.empty_like(logits)
        scale = valid.float() * grad_output.float()
        with torch.autocast(logits.device.type, enabled=False):
            for i in range(0, logits.shape[0], ctx.chunk):
                part = (logits[i : i + ctx.chunk].float() - lse[i : i + ctx.chunk, None]).exp_()
                rows = torch.arange(part.shape[0], device=part.device)
                part[rows, safe[i : i + ctx.chunk]] -= 1.0
                grad[i : i + ctx.chunk] = part.mul_(scale[i : i + ctx.chunk, None])
        return grad, None, None


def chunked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, chunk: int = 32):
    """`F.cross_entropy(logits.float(), targets, ignore_index=-100, reduction="sum")`, with the
    fp32 work done `chunk` rows at a time (same value and gradient, a fraction of the memory)."""
    return _ChunkedCrossEntropy.apply(logits, targets, chunk)


def causal_lm_loss(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    num_items: int | torch.Tensor | None = None,
    labels_only: bool = True,
) -> torch.Tensor:
    """Next-token cross-entropy summed over supervised tokens / `num_items` (default: their count).

    With `labels_only`, the vocabulary projection runs only at positions whose next token is
    supervised (`logits_to_keep` with explicit indices): prompt and padding positions need no
    logits. The call still goes through the model's own forward, so DDP/FSDP wrappers and
    autocast see it. The value equals the model's own loss.
    """
    labels = batch["labels"]
    if not labels_only:
        out = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=labels,
            use_cache=False,
            **({"num_items_in_batch": num_items} if num_items is not None else {}),
        )
        return out.loss
    keep = supervised_positions(labels)
    logits = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        use_cache=False,
        logits_to_keep=keep,
    ).logits
    targets = labels[:, keep + 1]
    total = chunked_cross_entropy(logits.flatten(0, 1), targets.flatten())
    denominator = (targets != IGNORE_INDEX).sum() if num_items is None else num_items
    return total / denominator


class LoraTrainer(Trainer):
    """A Trainer whose loss uses `causal_lm_loss` under the run's autocast, and counts tokens."""

    def __init__(self, *args, precision: Precision, labels_only: bool, **kwargs):
        super().__init__(*args, **kwargs)
        self.precision = precision
        self.labels_only = labels_only
        self.tokens_seen = 0
        # Our loss divides by the batch's supervised-token count, so gradient accumulation is exact.
        self.model_accepts_loss_kwargs = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            self.tokens_seen += int(inputs["attention_mask"].sum())
        dtype = self.precision.autocast_dtype
        device_type = inputs["input_ids"].device.type
        with torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = causal_lm_loss(model, inputs, num_items_in_batch, self.labels_only)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # num_items_in_batch counts every process's tokens; DDP averages the gradients again.
            loss = loss * self.accelerator.num_processes
        return (loss, {"loss": loss}) if return_outputs else loss


class MetricsLogger(TrainerCallback):
    """Append every log (loss, lr, eval loss) to metrics.jsonl with non-pad tokens/s."""

    def __init__(self, path: Path, trainer_ref: list):
        self.path = path
        self.trainer_ref = trainer_ref
        self._last = (time.perf_counter(), 0)

    def on_train_begin(self, args, state, control, **kwargs):
        self._last = (time.perf_counter(), self.trainer_ref[0].tokens_seen)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4)}
        record.update({k: v for k, v in logs.items() if isinstance(v, (int, float))})
        if "loss" in logs:
            now, tokens = time.perf_counter(), self.trainer_ref[0].tokens_seen
            elapsed = now - self._last[0]
            record["tokens_per_s"] = (
                round((tokens - self._last[1]) / elapsed, 2) if elapsed else 0.0
            )
            logs["tokens_per_s"] = record["tokens_per_s"]
            self._last = (now, tokens)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")


class TrimFreedMemory(TrainerCallback):
    """After each optimizer step, hand the free pages of glibc's heaps back to the OS.

    Batches of varying length free and allocate activations of varying size; glibc keeps the
    freed chunks (fragmented heap, raised mmap threshold), so the resident size creeps up over an
    epoch. `malloc_trim(0)` releases whole free pages anywhere in the heaps; the pages that the
    next step touches again must be faulted back in, which costs ~5% of the speed on the 0.6B
    shape for ~0.15 GB less peak RSS (benchmarks/results/*-ablation-ours-notrim.json).
    """

    def __init__(self, trim):
        self.trim = trim

    @classmethod
    def create(cls) -> TrimFreedMemory | None:
        """The callback, or None where the C library has no malloc_trim (not glibc)."""
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            trim = libc.malloc_trim
        except (OSError, AttributeError):
            return None
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
        return cls(trim)

    def on_step_end(self, args, state, control, **kwargs):
        self.trim(0)


@dataclass
class TrainResult:
    output_dir: Path
    train_samples: int
    eval_samples: int
    optimizer_steps: int
    encode_report: EncodeReport
    final_loss: float | None
    train_per_task: dict[str, int] = dataclasses.field(default_factory=dict)
    compiled: bool = False  # decoder layers compiled (`qwen3_lora.compiled`)


def sharding_engine() -> str | None:
    """FSDP or DeepSpeed when `accelerate launch` enabled one, else None."""
    for name, var in (("FSDP", "ACCELERATE_USE_FSDP"), ("DeepSpeed", "ACCELERATE_USE_DEEPSPEED")):
        if os.environ.get(var, "false").lower() in ("1", "true"):
            return name
    return None


def _last_complete_checkpoint(folder: Path) -> Path | None:
    """The highest-step checkpoint whose trainer state was written (it is written last)."""
    found = []
    for path in folder.glob("checkpoint-*"):
        m = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if m and (path / "trainer_state.json").is_file():
            found.append((int(m.group(1)), path))
    return max(found)[1] if found else None


def _trim_metrics(path: Path, step: int) -> None:
    """Drop metrics logged after the checkpoint we resume from; they will be logged again."""
    if not path.exists():
        return
    keep = [
        line for line in path.read_text("utf-8").splitlines() if json.loads(line)["step"] <= step
    ]
    path.write_text("".join(line + "\n" for line in keep), encoding="utf-8")


def _load_data(config: TrainConfig, registry) -> tuple[list[Record], list[Record]]:
    train_files = [*(builtin_files("train") if config.builtin_data else []), *config.data]
    train = load_records(train_files, registry)
    eval_files = config.eval_data or (builtin_files("eval") if config.builtin_data else [])
    evaluation = load_records(eval_files, registry) if eval_files else []
    leaked = {(r.task, r.input) for r in train} & {(r.task, r.input) for r in evaluation}
    if leaked:
        log.warning(
            "%d eval input(s) also occur in the training data: eval loss is optimistic", len(leaked)
        )
    return train, evaluation


def _lora_model(config: TrainConfig, precision: Precision, device: torch.device):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    model = load_base_model(
        config.base_model_reference,
        dtype=precision.weight_dtype,
        hub=config.hub,
        trust_remote_code=config.trust_remote_code,
        quantization=config.quantization,
        device=device,
    )
    model.config.use_cache = False
    attention = choose_training_attention(model, config.attention, device)
    log.info("attention while training: %s", attention)
    if config.quantization:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=config.gradient_checkpointing
        )
    elif config.gradient_checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
        model.enable_input_require_grads()
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules),
        task_type="CAUSAL_LM",
    )
    # PEFT keeps adapter weights in fp32 over half-precision base weights (autocast_adapter_dtype).
    model = get_peft_model(model, lora)
    if precision.autocast_dtype is not None and not config.quantization:
        # PEFT casts each adapted layer's input to the adapter's fp32 before LoRA A, and autocast
        # casts it straight back for the matmul: a copy per adapted module kept for backward.
        # Under autocast the input can go to LoRA A as it is (same bf16 matmul, less memory).
        for module in model.modules():
            if hasattr(module, "cast_input_dtype_enabled"):
                module.cast_input_dtype_enabled = False
    if device.type == "cpu" and config.lora_dropout > 0:
        use_packed_bits_dropout(model)
    # Record the base as the user named it (a .gguf path, hub id or folder), so that loading the
    # adapter later finds the same base.
    model.peft_config["default"].base_model_name_or_path = config.base_model_reference
    return model


def _compile_if_worth_it(
    model, config: TrainConfig, device: torch.device, train_flops: float, world_size: int
) -> None:
    """Compile the decoder layers when `config.torch_compile` and the run call for it."""
    wanted, why = choose_compile(
        config.torch_compile,
        device,
        train_flops=train_flops,
        gradient_checkpointing=config.gradient_checkpointing,
        quantized=bool(config.quantization),
        world_size=world_size,
    )
    if wanted:
        layers = compile_decoder_layers(model)
        log.info(
            "compiled decoder layers (%d, dynamic shapes; compiling on the first step): %s",
            layers,
            why,
        )
    else:
        log.info("decoder layers not compiled: %s", why)


def _training_arguments(config: TrainConfig, out: Path, device: torch.device, has_eval: bool):
    save_strategy = "steps" if config.save_steps > 0 else "epoch"
    return TrainingArguments(
        output_dir=str(out / CHECKPOINT_DIR),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        # A float below 1 is a ratio of the true number of optimizer steps, for any world size.
        warmup_steps=float(config.warmup_ratio),
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        seed=config.seed,
        data_seed=config.seed,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        save_strategy=save_strategy,
        save_steps=config.save_steps if config.save_steps > 0 else 500,
        save_total_limit=config.save_total_limit,
        eval_strategy="epoch" if (has_eval and config.eval_each_epoch) else "no",
        prediction_loss_only=True,
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
        remove_unused_columns=False,
        # TensorBoard is attached by `train` so that its logs land in <output_dir>/logs.
        report_to=[r for r in config.report_to if r not in ("none", "tensorboard")] or "none",
        fp16=config.precision == "fp16" and device.type == "cuda",
        use_cpu=device.type == "cpu",
        dataloader_num_workers=0,
        # Every LoRA weight takes part in every step; the search for unused ones only costs time.
        ddp_find_unused_parameters=False,
        # Decoder layers are compiled by `_compile_if_worth_it`; the Trainer's whole-model
        # compile recompiles for every sequence length.
        torch_compile=False,
        disable_tqdm=False,
    )


def train(config: TrainConfig, callbacks: list[TrainerCallback] | None = None) -> TrainResult:
    """Run a LoRA fine-tune as configured; write adapter, tokenizer, config and metrics."""
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    registry = load_registry(config.tasks)
    train_records, eval_records = _load_data(config, registry)
    device = default_device()
    precision = resolve_precision(config.precision, device)
    engine = sharding_engine()
    if engine and precision.weight_dtype != torch.float32:
        # Sharding engines flatten parameters of one dtype: keep base and LoRA both in fp32.
        log.info("%s: frozen base weights in fp32, compute in %s autocast", engine, precision.name)
        precision = dataclasses.replace(precision, weight_dtype=torch.float32)
    tokenizer = load_tokenizer(config.base_model_reference, config.hub, config.trust_remote_code)
    train_set, report = encode_records(tokenizer, train_records, config.max_length)
    eval_set, eval_report = encode_records(tokenizer, eval_records, config.max_length)
    log.info("train: %s", report.summary(config.max_length))
    if eval_records:
        log.info("eval: %s", eval_report.summary(config.max_length))

    set_seed(config.seed)
    model = _lora_model(config, precision, device)
    trainable, total = model.get_nb_trainable_parameters()
    args = _training_arguments(config, out, device, bool(eval_set))
    world = args.world_size
    steps_per_epoch = math.ceil(len(train_set) / (config.batch_size * world * config.grad_accum))
    epochs = config.epochs if config.max_steps <= 0 else config.max_steps / steps_per_epoch
    train_tokens = sum(len(e.input_ids) for e in train_set)
    _compile_if_worth_it(model, config, device, 4 * total * train_tokens * epochs, world)
    log.info(
        "precision %s (weights %s, autocast %s) on %s; LoRA trainable %s / %s params; "
        "effective batch %d = %d per device x %d process(es) x %d accumulation; "
        "~%d optimizer steps per epoch",
        precision.name,
        precision.weight_dtype,
        precision.autocast_dtype,
        device,
        f"{trainable:,}",
        f"{total:,}",
        config.batch_size * world * config.grad_accum,
        config.batch_size,
        world,
        config.grad_accum,
        steps_per_epoch,
    )

    metrics_path = out / METRICS_FILE
    resume_from = None
    if config.resume:
        resume_from = _last_complete_checkpoint(out / CHECKPOINT_DIR)
        if resume_from is None:
            log.warning("--resume: no complete checkpoint in %s; starting from scratch", out)
        else:
            log.info("resuming from %s", resume_from)
            step = json.loads((resume_from / "trainer_state.json").read_text())["global_step"]
            if args.process_index == 0:
                _trim_metrics(metrics_path, step)
    if resume_from is None and args.process_index == 0 and metrics_path.exists():
        metrics_path.unlink()

    extra = list(callbacks or [])
    if config.trim_memory and device.type == "cpu" and (trimmer := TrimFreedMemory.create()):
        extra.append(trimmer)
    if "tensorboard" in config.report_to and args.process_index == 0:
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        extra.append(TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(out / "logs"))))
    trainer_ref: list = []
    trainer = LoraTrainer(
        model=model,
        args=args,
        train_dataset=EncodedDataset(train_set),
        eval_dataset=EncodedDataset(eval_set) if eval_set else None,
        data_collator=PadCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=[MetricsLogger(metrics_path, trainer_ref), *extra],
        precision=precision,
        labels_only=config.loss_on_labels_only,
    )
    trainer_ref.append(trainer)
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)

    if trainer.is_world_process_zero():
        # The vocabulary is never resized, so the embeddings are not saved; saying so also stops
        # PEFT from looking the base up on the hub to find out.
        trainer.model.save_pretrained(out, safe_serialization=True, save_embedding_layers=False)
        tokenizer.save_pretrained(out)
        (out / CONFIG_FILE).write_text(config.to_yaml(), encoding="utf-8")
    return TrainResult(
        output_dir=out,
        train_samples=len(train_set),
        eval_samples=len(eval_set),
        optimizer_steps=result.global_step,
        encode_report=report,
        final_loss=result.training_loss,
        train_per_task=dict(Counter(r.task for r in train_records)),
        compiled=is_compiled(model),  # False as well when compiling failed and training went on
    )
