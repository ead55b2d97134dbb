"""`qwen3-lora train`: LoRA fine-tuning with `transformers.Trainer` and PEFT, top to bottom.

data files -> records -> encoded samples (prompt masked) -> base model + LoRA -> speed paths ->
Trainer -> adapter, tokenizer, resolved config and metrics in the output folder.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import TrainerCallback, TrainingArguments, set_seed

from ..data.records import Sample, builtin_files, load_records
from ..data.registry import load_registry
from ..files import output_folder, remove_leftovers, staged_files
from ..models.adapter import quiet_peft_wrapping
from ..models.loading import (
    Precision,
    default_device,
    load_base_model,
    load_tokenizer,
    resolve_precision,
)
from ..models.source import ModelSource, resolve_model_source
from ..prompt.chat_templates import use_chat_template
from ..prompt.encoding import EncodedDataset, EncodeReport, PadCollator, encode_records
from .checkpoints import (
    CHECKPOINT_DIR,
    CheckpointMarker,
    checkpoints_in,
    last_complete_checkpoint,
    trim_metrics,
)
from .config import ConfigError, TrainConfig
from .outputs import CONFIG_FILE, METRICS_FILE, PROGRESS_FILE
from .speed import HashDropoutSeeds, SpeedPaths, is_compiled, speed_up
from .trainer import ADAPTER_SAVE_OPTIONS, LoraTrainer, MetricsLogger, ProgressFile, TokenCounter

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    output_dir: Path
    train_samples: int
    eval_samples: int
    optimizer_steps: int
    encode_report: EncodeReport
    final_loss: float | None
    train_per_task: dict[str, int] = dataclasses.field(default_factory=dict)
    compiled: bool = False  # decoder layers compiled (`training.speed.compiled`)


def sharding_engine() -> str | None:
    """FSDP or DeepSpeed when `accelerate launch` enabled one, else None."""
    for name, var in (("FSDP", "ACCELERATE_USE_FSDP"), ("DeepSpeed", "ACCELERATE_USE_DEEPSPEED")):
        if os.environ.get(var, "false").lower() in ("1", "true"):
            return name
    return None


def _load_data(config: TrainConfig, registry) -> tuple[list[Sample], list[Sample]]:
    train_files = [*(builtin_files("train") if config.builtin_data else []), *config.data]
    train = load_records(train_files, registry)
    if not train:
        raise ConfigError(
            f"no training records in {', '.join(map(str, train_files))} (empty, or only blank "
            f"lines): add records, or leave out --no-builtin-data to train on the built-in split"
        )
    eval_files = config.eval_data or (builtin_files("eval") if config.builtin_data else [])
    evaluation = load_records(eval_files, registry) if eval_files else []
    if config.eval_data and not evaluation:
        raise ConfigError(
            f"no eval records in {', '.join(config.eval_data)} (empty, or only blank lines): add "
            f"records, or leave out --eval-data"
        )
    leaked = {(r.task, r.input) for r in train} & {(r.task, r.input) for r in evaluation}
    if leaked:
        log.warning(
            "%d eval input(s) also occur in the training data: eval loss is optimistic", len(leaked)
        )
    return train, evaluation


def _precision(config: TrainConfig, device: torch.device) -> Precision:
    precision = resolve_precision(config.precision, device)
    engine = sharding_engine()
    if engine and precision.weight_dtype != torch.float32:
        # Sharding engines flatten parameters of one dtype: keep base and LoRA both in fp32.
        log.info("%s: frozen base weights in fp32, compute in %s autocast", engine, precision.name)
        precision = dataclasses.replace(precision, weight_dtype=torch.float32)
    return precision


def _lora_model(
    config: TrainConfig, source: ModelSource, precision: Precision, device: torch.device
):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    model = load_base_model(
        source,
        dtype=precision.weight_dtype,
        trust_remote_code=config.trust_remote_code,
        quantization=config.quantization,
        device=device,
    )
    model.config.use_cache = False
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
    with quiet_peft_wrapping():
        model = get_peft_model(model, lora)
    if precision.autocast_dtype is not None and not config.quantization:
        # PEFT casts each adapted layer's input to the adapter's fp32 before LoRA A, and autocast
        # casts it straight back for the matmul: a copy per adapted module kept for backward.
        # Under autocast the input can go to LoRA A as it is (same bf16 matmul, less memory).
        for module in model.modules():
            if hasattr(module, "cast_input_dtype_enabled"):
                module.cast_input_dtype_enabled = False
    # Record the base as the user named it (a .gguf path, hub id or folder), so that loading the
    # adapter later finds the same base.
    model.peft_config["default"].base_model_name_or_path = source.name
    return model


def training_model(
    config: TrainConfig,
    precision: Precision,
    device: torch.device,
    *,
    source: ModelSource | None = None,
    train_flops: float = 0.0,
    world_size: int = 1,
) -> tuple[torch.nn.Module, SpeedPaths]:
    """The model `train` trains: the base with LoRA attached and the speed paths applied."""
    source = source or resolve_model_source(
        config.base_model, config.hub, gguf_file=config.gguf_file
    )
    model = _lora_model(config, source, precision, device)
    speed = speed_up(model, config, device, train_flops=train_flops, world_size=world_size)
    return model, speed


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
        # Decoder layers are compiled by `speed_up`; the Trainer's whole-model compile
        # recompiles for every sequence length.
        torch_compile=False,
        disable_tqdm=False,
    )


def _resume_point(config: TrainConfig, out: Path, main_process: bool) -> Path | None:
    """The checkpoint to resume from (None: a fresh run); metrics after it are dropped."""
    metrics_path = out / METRICS_FILE
    resume_from = last_complete_checkpoint(out / CHECKPOINT_DIR) if config.resume else None
    if config.resume and resume_from is None:
        log.warning("--resume: no complete checkpoint in %s; starting from scratch", out)
    if not main_process:
        return resume_from
    for folder in [out, *checkpoints_in(out / CHECKPOINT_DIR)]:
        for leftover in remove_leftovers(folder):
            log.info("removed %s, left by a write that was cut off", leftover)
    if resume_from is not None:
        log.info("resuming from %s", resume_from)
        step = json.loads((resume_from / "trainer_state.json").read_text())["global_step"]
        trim_metrics(metrics_path, step)
    elif metrics_path.exists():
        metrics_path.unlink()
    return resume_from


def _check_fresh_start(config: TrainConfig, out: Path) -> None:
    """A new run must not mix its checkpoints with an earlier run's: a later --resume would take
    whichever has the highest step."""
    if config.resume or not (found := checkpoints_in(out / CHECKPOINT_DIR)):
        return
    raise ConfigError(
        f"{out / CHECKPOINT_DIR} holds checkpoints of an earlier run ({found[-1].name}): pass "
        f"--resume to continue that run, or choose a new --output-dir (or delete that folder "
        f"to start over)"
    )


def _end_distributed(trainer: LoraTrainer) -> None:
    """Under torchrun, every process waits until the main one has written everything, then the
    process group is destroyed on each. A process that returned with the group alive was torn
    down while gloo's threads still ran ("terminate called without an active exception",
    SIGABRT; pytorch/pytorch#65231), and torchrun then stopped the main process mid-save."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        trainer.accelerator.wait_for_everyone()
        trainer.end()  # accelerate's end_training: destroy_process_group


def _logging_callbacks(config: TrainConfig, out: Path, main_process: bool) -> list:
    if "tensorboard" not in config.report_to or not main_process:
        return []
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    return [TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(out / "logs")))]


def _batching(config: TrainConfig, world: int, steps_per_epoch: int) -> str:
    return (
        f"effective batch {config.batch_size * world * config.grad_accum} = {config.batch_size} "
        f"per device x {world} process(es) x {config.grad_accum} accumulation; "
        f"~{steps_per_epoch} optimizer steps per epoch"
    )


def train(config: TrainConfig, callbacks: list[TrainerCallback] | None = None) -> TrainResult:
    """Run a LoRA fine-tune as configured; write adapter, tokenizer, config and metrics."""
    out = output_folder(config.output_dir, "--output-dir")
    _check_fresh_start(config, out)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    registry = load_registry(config.tasks)
    train_records, eval_records = _load_data(config, registry)
    device = default_device()
    precision = _precision(config, device)
    source = resolve_model_source(config.base_model, config.hub, gguf_file=config.gguf_file)
    tokenizer = load_tokenizer(source, config.trust_remote_code)
    # Saved with the adapter (chat_template.jinja), so every later command renders with it.
    end_of_turn = use_chat_template(tokenizer, config.chat_template, source.name)
    log.info(
        "chat template: %s; end of turn %s",
        config.chat_template or "the tokenizer's own",
        end_of_turn,
    )
    train_set, report = encode_records(tokenizer, train_records, config.max_length, config.loss_on)
    eval_set, eval_report = encode_records(
        tokenizer, eval_records, config.max_length, config.loss_on
    )
    log.info("train: %s", report.summary(config.max_length))
    if eval_records:
        log.info("eval: %s", eval_report.summary(config.max_length))

    set_seed(config.seed)
    model = _lora_model(config, source, precision, device)
    trainable, total = model.get_nb_trainable_parameters()
    args = _training_arguments(config, out, device, bool(eval_set))
    world = args.world_size
    steps_per_epoch = math.ceil(len(train_set) / (config.batch_size * world * config.grad_accum))
    epochs = config.epochs if config.max_steps <= 0 else config.max_steps / steps_per_epoch
    train_tokens = sum(len(e.input_ids) for e in train_set)
    speed = speed_up(
        model, config, device, train_flops=4 * total * train_tokens * epochs, world_size=world
    )
    log.info(
        "precision %s (weights %s, autocast %s) on %s; LoRA trainable %s / %s params; %s",
        precision.name,
        precision.weight_dtype,
        precision.autocast_dtype,
        device,
        f"{trainable:,}",
        f"{total:,}",
        _batching(config, world, steps_per_epoch),
    )

    main_process = args.process_index == 0
    resume_from = _resume_point(config, out, main_process)
    seeds = HashDropoutSeeds.attach(model, resume_from)  # compiled layers' dropout
    tokens = TokenCounter()
    trainer = LoraTrainer(
        model=model,
        args=args,
        train_dataset=EncodedDataset(train_set),
        eval_dataset=EncodedDataset(eval_set) if eval_set else None,
        data_collator=PadCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=[
            MetricsLogger(out / METRICS_FILE, tokens),
            *([ProgressFile(out / PROGRESS_FILE)] if main_process else []),
            *([seeds] if seeds else []),
            CheckpointMarker(),  # after every callback that writes into a checkpoint
            *(callbacks or []),
            *speed.callbacks,
            *_logging_callbacks(config, out, main_process),
        ],
        precision=precision,
        labels_only=config.loss_on_labels_only,
        tokens=tokens,
    )
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)

    if trainer.is_world_process_zero():
        # Staged and renamed into place file by file: a kill leaves each file old or new, whole.
        with staged_files(out) as stage:
            trainer.model.save_pretrained(stage, **ADAPTER_SAVE_OPTIONS)
            tokenizer.save_pretrained(stage)
            (stage / CONFIG_FILE).write_text(config.to_yaml(), encoding="utf-8")
    _end_distributed(trainer)
    return TrainResult(
        output_dir=out,
        train_samples=len(train_set),
        eval_samples=len(eval_set),
        optimizer_steps=result.global_step,
        encode_report=report,
        final_loss=result.training_loss,
        train_per_task=dict(Counter(r.group for r in train_records)),
        compiled=is_compiled(model),  # False as well when compiling failed and training went on
    )
