"""`qwen3-lora train` and `qwen3-lora data validate|stats`."""

from __future__ import annotations

import argparse
import os

from ..data.records import load_records
from ..data.registry import load_registry
from ..training.config import TrainConfig, add_config_arguments, build_config, load_yaml_config


def cmd_train(args: argparse.Namespace) -> int:
    from ..training.train import train

    cli_values = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__}
    file_values = load_yaml_config(args.config) if args.config else {}
    config = build_config(file_values, cli_values, source=args.config)
    result = train(config)
    if os.environ.get("RANK", "0") != "0":
        return 0
    print(
        f"done: {result.optimizer_steps} optimizer steps on {result.train_samples} samples; "
        f"final train loss {result.final_loss:.4f}; adapter in {result.output_dir}"
    )
    return 0


def cmd_data_validate(args: argparse.Namespace) -> int:
    from ..data.describe import validate_files

    registry = load_registry(args.tasks)
    count, problems = validate_files(args.files, registry)
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} problem(s) in {len(args.files)} file(s); {count} valid records")
        return 1
    print(f"ok: {count} records in {len(args.files)} file(s)")
    return 0


def cmd_data_stats(args: argparse.Namespace) -> int:
    from ..data.describe import default_stat_files, describe, format_stats
    from ..models.loading import load_tokenizer

    registry = load_registry(args.tasks)
    groups = {", ".join(args.files): args.files} if args.files else default_stat_files()
    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
    if tokenizer is not None:
        from ..prompt.chat_templates import use_chat_template

        use_chat_template(tokenizer, args.chat_template, args.tokenizer)
    for title, files in groups.items():
        records = load_records(files, registry)
        print(format_stats(title, describe(records, registry, tokenizer, args.loss_on)))
    return 0


def add_train(sub) -> None:
    p = sub.add_parser("train", help="LoRA fine-tune a base model on the task data")
    p.add_argument(
        "--config", help="YAML config file (e.g. configs/qwen3-0.6b-lora.yaml); flags override it"
    )
    add_config_arguments(p)
    p.set_defaults(func=cmd_train)


def add_data(sub) -> None:
    p = sub.add_parser("data", help="validate or describe data files")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    v = data_sub.add_parser("validate", help="report every defect of each file (exit 1 if any)")
    v.add_argument(
        "files", nargs="+", help="JSONL or JSON files: task records, alpaca, messages, sharegpt"
    )
    v.add_argument("--tasks", help="task registry YAML (default: built-in)")
    v.set_defaults(func=cmd_data_validate)
    s = data_sub.add_parser("stats", help="per-task counts and token-length percentiles")
    s.add_argument("files", nargs="*", help="data files (default: the built-in splits)")
    s.add_argument("--tokenizer", help="tokenizer folder, hub id or 'tiny' for token lengths")
    s.add_argument(
        "--chat-template",
        help="with --tokenizer: render with this template, as `train --chat-template` does",
    )
    s.add_argument(
        "--loss-on",
        choices=["all", "last"],
        default="all",
        help="conversations: supervise every assistant turn or the last (as `train --loss-on`)",
    )
    s.add_argument("--tasks", help="task registry YAML (default: built-in)")
    s.set_defaults(func=cmd_data_stats)
