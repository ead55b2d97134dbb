"""Training configuration: a typed dataclass with help text, loaded from YAML and overridden by
the command line (CLI wins), validated once with every problem reported together."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from ..errors import UserError
from ..models.loading import PRECISIONS
from ..models.source import DEFAULT_BASE_MODEL, HUBS
from ..prompt.chat_templates import BUILTIN_TEMPLATES, spec_problem
from ..prompt.encoding import LOSS_ON

ATTENTIONS = ("auto", "sdpa", "eager")
COMPILES = ("auto", "on", "off")


def _f(default: Any, help: str, **kw):
    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


def _switch(value: Any) -> Any:
    # Older configs said true/false, and YAML reads a bare on/off as a boolean too.
    return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


@dataclass
class TrainConfig:
    # Model
    base_model: str = _f(
        DEFAULT_BASE_MODEL,
        "local folder, hub id, or 'tiny' (a random-weight model built locally, for smoke runs)",
    )
    gguf_file: str | None = _f(
        None, "a .gguf file inside --base-model's folder (or pass the .gguf path as --base-model)"
    )
    hub: str = _f("huggingface", "where a hub id is fetched from", choices=list(HUBS))
    trust_remote_code: bool = _f(False, "run model code shipped with the weights (off by default)")
    output_dir: str = _f("outputs/qwen3-0.6b-lora", "where the adapter, logs and checkpoints go")
    chat_template: str | None = _f(
        None,
        f"chat template: a built-in name ({', '.join(BUILTIN_TEMPLATES)}) or a .jinja file, saved "
        "with the adapter (default: the tokenizer's own)",
    )
    # Data
    data: list[str] = _f([], "extra JSONL/alpaca-JSON training files, added to the built-in split")
    builtin_data: bool = _f(
        True, "include the built-in train split (--no-builtin-data: only --data)"
    )
    eval_data: list[str] = _f([], "held-out files for eval loss (default: the built-in eval split)")
    tasks: str | None = _f(None, "task registry YAML (default: the built-in registry)")
    max_length: int = _f(512, "longest sample in tokens; longer inputs are shortened and reported")
    loss_on: str = _f(
        "all",
        "the assistant turns of a conversation (messages/sharegpt data) that are learned: all,"
        " or the last one only",
        choices=list(LOSS_ON),
    )
    # LoRA
    lora_r: int = _f(8, "LoRA rank")
    lora_alpha: int = _f(32, "LoRA scaling alpha")
    lora_dropout: float = _f(0.1, "dropout on the LoRA path")
    target_modules: list[str] = _f(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "modules that get LoRA adapters",
    )
    # Optimisation
    epochs: float = _f(3.0, "training epochs")
    max_steps: int = _f(-1, "stop after this many optimizer steps (-1: run all epochs)")
    # The spec trains 2 samples x 4 accumulation steps; 4 x 2 is the same 8 samples and the same
    # gradient per optimizer step (the loss is divided by the window's supervised tokens), and
    # faster on CPU: each micro-batch reads every frozen weight twice (forward, backward) and
    # pays a fixed cost per layer call, so larger ones spend less time per token on both, for a
    # little more memory (benchmarks/results/LATEST.md).
    batch_size: int = _f(4, "per-device micro-batch size (samples per forward/backward)")
    grad_accum: int = _f(
        2, "gradient accumulation steps (samples per optimizer step: batch size x this)"
    )
    learning_rate: float = _f(2e-4, "peak learning rate")
    lr_scheduler: str = _f("cosine", "learning-rate schedule (transformers scheduler name)")
    warmup_ratio: float = _f(0.1, "warmup as a fraction of all optimizer steps")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    max_grad_norm: float = _f(1.0, "gradient clipping norm")
    seed: int = _f(42, "random seed (data order, LoRA init, dropout)")
    # Speed and precision
    precision: str = _f(
        "auto", "auto: bf16 where native, fp16 on old GPUs, else fp32", choices=list(PRECISIONS)
    )
    gradient_checkpointing: bool = _f(False, "trade speed for memory (recomputes each forward)")
    quantization: str | None = _f(None, "'4bit' for QLoRA (CUDA + bitsandbytes only)")
    group_by_length: bool = _f(True, "batch samples of similar length to cut padding")
    loss_on_labels_only: bool = _f(
        True, "compute the LM head and loss only where labels are supervised (same loss, faster)"
    )
    num_threads: int | None = _f(None, "CPU threads for torch (default: torch's choice)")
    attention: str = _f(
        "auto",
        "attention while training: auto (on CPU, plain matmul attention up to 256 tokens, whose"
        " backward is faster than sdpa's there; else as loaded), sdpa, eager",
        choices=list(ATTENTIONS),
    )
    torch_compile: str = _f(
        "auto",
        "compile the decoder layers for training (inductor, one graph for every length): auto"
        " (on CPU, for runs long enough to repay the compile), on, off",
        choices=list(COMPILES),
    )
    trim_memory: bool = _f(
        True,
        "on CPU, return freed heap pages to the OS every few optimizer steps (glibc"
        " malloc_trim): a lower peak for a little speed (--no-trim-memory: faster, more memory)",
    )
    # A trim hands back every free page and the next step faults back the ones it needs: after
    # every step that is a sizeable share of a CPU step, while the resident size creeps up only
    # slowly between trims. Every few steps keeps most of the lower peak at a fraction of the
    # cost (every step, every 4 and never, interleaved: the trim ablation in
    # benchmarks/results/LATEST.md).
    trim_every: int = _f(4, "with --trim-memory, optimizer steps between two trims")
    # Eager steps ran no faster with it (the heap ablation in LATEST.md): they keep glibc's own.
    reuse_heap: bool = _f(
        True,
        "on CPU with compiled layers, serve large tensors from freed heap memory instead of"
        " fresh pages each step (glibc mallopt)",
    )
    # Logging and checkpoints
    logging_steps: int = _f(1, "log loss/lr/tokens-per-second every N optimizer steps")
    save_steps: int = _f(0, "checkpoint every N steps (0: at the end of each epoch)")
    save_total_limit: int = _f(2, "keep at most this many checkpoints")
    eval_each_epoch: bool = _f(True, "compute eval loss on the held-out split after each epoch")
    resume: bool = _f(False, "resume from the last complete checkpoint in output_dir")
    report_to: list[str] = _f(["tensorboard"], "logging integrations (tensorboard, wandb, none)")

    def __post_init__(self):
        self.torch_compile = _switch(self.torch_compile)
        if isinstance(self.report_to, str):  # as TrainingArguments takes it: "none", "wandb"
            self.report_to = [self.report_to]

    def validate(self) -> list[str]:
        """Every problem with the values, not just the first."""
        problems = []
        positive = (
            "max_length",
            "lora_r",
            "lora_alpha",
            "batch_size",
            "grad_accum",
            "logging_steps",
            "trim_every",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.lora_dropout < 1:
            problems.append(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if not 0 <= self.warmup_ratio < 1:
            problems.append(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.learning_rate <= 0:
            problems.append(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.epochs <= 0 and self.max_steps <= 0:
            problems.append("epochs must be > 0 (or set max_steps)")
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                problems.append(
                    f"{f.name} must be one of {', '.join(choices)}, got {getattr(self, f.name)!r}"
                )
        if self.quantization not in (None, "4bit"):
            problems.append(f"quantization must be '4bit' or unset, got {self.quantization!r}")
        if self.chat_template and (problem := spec_problem(self.chat_template)):
            problems.append(problem)
        if not self.builtin_data and not self.data:
            problems.append("--no-builtin-data needs at least one --data file")
        if not self.target_modules:
            problems.append("target_modules must name at least one module")
        for path in [*self.data, *self.eval_data, *([self.tasks] if self.tasks else [])]:
            if Path(path).is_dir():
                problems.append(f"{path} is a folder; name the data or registry files in it")
            elif not Path(path).is_file():
                problems.append(f"file not found: {path}")
        if Path(self.output_dir).exists() and not Path(self.output_dir).is_dir():
            problems.append(
                f"output_dir {self.output_dir} is a file, not a folder; choose another --output-dir"
            )
        return problems

    def to_yaml(self) -> str:
        return yaml.safe_dump(dataclasses.asdict(self), allow_unicode=True, sort_keys=False)


class ConfigError(UserError):
    """A config file or option is invalid; the message lists every problem."""


def _field_types() -> dict[str, Any]:
    return get_type_hints(TrainConfig)


def _type_name(hint: Any) -> str:
    """'bool', 'int', 'float', 'str' or 'list' for a field's type hint."""
    if hint in (bool, int, float, str):
        return hint.__name__
    if getattr(hint, "__origin__", None) is list:
        return "list"
    args = [a for a in getattr(hint, "__args__", ()) if a is not type(None)]
    return _type_name(args[0]) if len(args) == 1 else "str"


def field_type_names() -> dict[str, str]:
    """Each `TrainConfig` field's type: 'bool', 'int', 'float', 'str' or 'list'."""
    return {name: _type_name(hint) for name, hint in _field_types().items()}


def _check_type(name: str, value: Any, kind: str) -> str | None:
    """A problem message when `value` does not fit the field's type, else None."""
    if value is None:
        return None
    ok = {
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "str": isinstance(value, str),
        "list": isinstance(value, list) and all(isinstance(x, str) for x in value),
    }[kind]
    return None if ok else f"{name} must be {kind}, got {value!r}"


def load_yaml_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML config mapping; `build_config(..., source=path)` checks its keys, so that
    unknown keys are reported together with the file's other problems."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text("utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read config: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of option: value")
    return doc


def build_config(
    file_values: dict[str, Any], cli_values: dict[str, Any], source: str | Path | None = None
) -> TrainConfig:
    """Defaults < YAML file (read from `source`) < command line; then every problem is reported
    at once: unknown keys, values of the wrong type and invalid values."""
    types = _field_types()
    merged = {**file_values, **cli_values}
    problems = []
    if unknown := sorted(k for k in merged if k not in types):
        where = f" in {source}" if source else ""
        problems.append(
            f"unknown option(s) {', '.join(unknown)}{where}; known: {', '.join(sorted(types))}"
        )
    values = {k: v for k, v in merged.items() if k in types}
    if "torch_compile" in values:
        values["torch_compile"] = _switch(values["torch_compile"])
    wrong = {k: _check_type(k, v, _type_name(types[k])) for k, v in values.items()}
    problems += [w for w in wrong.values() if w]
    # A value of the wrong type stays at its default while the other values are validated.
    problems += TrainConfig(**{k: v for k, v in values.items() if not wrong[k]}).validate()
    if problems:
        raise ConfigError("invalid training config:\n" + "\n".join(f"  - {p}" for p in problems))
    return TrainConfig(**values)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per config field; both --dash-case and the spec's --under_score spellings."""
    types = _field_types()
    for f in dataclasses.fields(TrainConfig):
        flags = [f"--{f.name.replace('_', '-')}"]
        if "_" in f.name:
            flags.append(f"--{f.name}")
        hint = _type_name(types[f.name])
        help_text = f.metadata.get("help", "")
        common = {"dest": f.name, "default": argparse.SUPPRESS}
        if hint == "bool":
            parser.add_argument(
                *flags, action=argparse.BooleanOptionalAction, help=help_text, **common
            )
        elif hint == "list":
            parser.add_argument(*flags, nargs="+", metavar="X", help=help_text, **common)
        else:
            scalar = {"int": int, "float": float}.get(hint, str)
            kwargs = {"type": scalar, "help": f"{help_text} (default: {f.default})"}
            if "choices" in f.metadata:
                kwargs["choices"] = f.metadata["choices"]
            parser.add_argument(*flags, **kwargs, **common)
