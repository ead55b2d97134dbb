"""The `qwen3-lora` command: a flat map from subcommands to plain functions.

Known, user-fixable errors print one clear message and exit non-zero; no traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from .config import ConfigError, TrainConfig, add_config_arguments, build_config, load_yaml_config
from .dataset import DataError, load_records
from .models import ModelSourceError
from .prompt import TemplateError
from .tasks import RegistryError, load_registry

USER_ERRORS = (DataError, ConfigError, ModelSourceError, RegistryError, TemplateError)
log = logging.getLogger("qwen3_lora")


def cmd_train(args: argparse.Namespace) -> int:
    from .train import train

    cli_values = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__}
    file_values = load_yaml_config(args.config) if args.config else {}
    config = build_config(file_values, cli_values)
    result = train(config)
    if os.environ.get("RANK", "0") != "0":
        return 0
    print(
        f"done: {result.optimizer_steps} optimizer steps on {result.train_samples} samples; "
        f"final train loss {result.final_loss:.4f}; adapter in {result.output_dir}"
    )
    return 0


def cmd_data_validate(args: argparse.Namespace) -> int:
    from .datatools import validate_files

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
    from .datatools import default_stat_files, describe, format_stats
    from .models import load_tokenizer

    registry = load_registry(args.tasks)
    groups = {", ".join(args.files): args.files} if args.files else default_stat_files()
    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
    for title, files in groups.items():
        records = load_records(files, registry)
        print(format_stats(title, describe(records, registry, tokenizer)))
    return 0


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="LoRA fine-tune a base model on the task data")
    p.add_argument(
        "--config", help="YAML config file (e.g. configs/qwen3-0.6b-lora.yaml); flags override it"
    )
    add_config_arguments(p)
    p.set_defaults(func=cmd_train)


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="validate or describe data files")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    v = data_sub.add_parser("validate", help="report every defect of each file (exit 1 if any)")
    v.add_argument("files", nargs="+", help="JSONL or alpaca-style JSON files")
    v.add_argument("--tasks", help="task registry YAML (default: built-in)")
    v.set_defaults(func=cmd_data_validate)
    s = data_sub.add_parser("stats", help="per-task counts and token-length percentiles")
    s.add_argument("files", nargs="*", help="data files (default: the built-in splits)")
    s.add_argument("--tokenizer", help="tokenizer folder, hub id or 'tiny' for token lengths")
    s.add_argument("--tasks", help="task registry YAML (default: built-in)")
    s.set_defaults(func=cmd_data_stats)


def cmd_merge(args: argparse.Namespace) -> int:
    from .merge import merge_adapter

    result = merge_adapter(
        args.adapter,
        args.output,
        base_model=args.base_model,
        dtype=args.dtype,
        hub=args.hub,
        trust_remote_code=args.trust_remote_code,
        tasks=args.tasks,
    )
    tie = "tied" if result.tie_word_embeddings else "untied"
    print(
        f"merged into {result.base_model} ({result.dtype}, {tie} embeddings): "
        f"{result.output_dir} [{', '.join(result.files)}]"
    )
    return 0


def _add_merge(sub) -> None:
    from .merge import MERGE_DTYPES

    p = sub.add_parser("merge", help="merge a LoRA adapter into its base model (plain HF folder)")
    p.add_argument("--adapter", required=True, help="adapter folder (output_dir of `train`)")
    p.add_argument("--output", required=True, help="new folder for the merged model")
    p.add_argument(
        "--base-model", help="base model folder or hub id (default: from adapter_config.json)"
    )
    p.add_argument(
        "--dtype",
        default="fp32",
        choices=list(MERGE_DTYPES),
        help="dtype of the written weights; the merge itself runs in fp32 "
        "('base': the base model's dtype)",
    )
    p.add_argument("--hub", default="huggingface", choices=["huggingface", "modelscope"])
    p.add_argument("--trust-remote-code", action="store_true", help="run code shipped with a model")
    p.add_argument("--tasks", help="task registry YAML for the model card (default: built-in)")
    p.set_defaults(func=cmd_merge)


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from .server import API_KEY_ENV, ServeConfig, read_test_delay_ms, serve
    except ImportError as exc:
        raise ConfigError(
            f"serve needs the serve extra: pip install 'qwen3-lora[serve]' ({exc})"
        ) from exc
    values = {
        k: v
        for k, v in vars(args).items()
        if k in ServeConfig.__dataclass_fields__ and v is not None
    }
    values.setdefault("api_key", os.environ.get(API_KEY_ENV) or None)
    serve(ServeConfig(**values, test_delay_ms=read_test_delay_ms()))
    return 0


def _add_serve(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="OpenAI-compatible HTTP server (chat completions, task and route endpoints)",
        argument_default=argparse.SUPPRESS,
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--adapter", help="LoRA adapter folder (base model from its config)")
    what.add_argument("--model", help="merged or plain model folder, hub id, or 'tiny'")
    p.add_argument("--base-model", help="with --adapter: override the base model")
    p.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"], help="default auto")
    p.add_argument("--hub", choices=["huggingface", "modelscope"], help="default huggingface")
    p.add_argument("--trust-remote-code", action="store_true", help="run code shipped with a model")
    p.add_argument("--tasks", help="task registry YAML (default: built-in)")
    p.add_argument("--host", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, help="default 8000")
    p.add_argument(
        "--api-key",
        help="require 'Authorization: Bearer KEY' on every route but /health "
        "(default: $QWEN3_LORA_API_KEY; none: no auth)",
    )
    p.add_argument("--served-model-name", help="model id clients send (default: folder name)")
    p.add_argument("--max-body-bytes", type=int, help="larger bodies get 413 (default 1 MiB)")
    p.add_argument("--max-tokens-cap", type=int, help="max_tokens is clamped to this (1024)")
    p.add_argument("--default-max-tokens", type=int, help="when a request sets none (512)")
    p.add_argument("--max-context", type=int, help="context limit (default: the model's)")
    p.add_argument("--max-concurrency", type=int, help="requests running at once (16)")
    p.add_argument("--max-queue", type=int, help="requests waiting; beyond: 429 (256)")
    p.add_argument("--request-timeout", dest="request_timeout_s", type=float, help="504 (120 s)")
    p.add_argument("--batch-window-ms", type=float, help="task requests collected per batch (5)")
    p.add_argument("--max-batch-size", type=int, help="largest task batch (32)")
    p.set_defaults(func=cmd_serve)


PARSER_BUILDERS: list[Callable] = [_add_train, _add_data, _add_merge, _add_serve]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qwen3-lora", description="LoRA fine-tuning of Qwen3-0.6B for a data platform"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in PARSER_BUILDERS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Under torchrun/accelerate only the main process talks; the others log warnings and errors.
    main_process = os.environ.get("RANK", "0") == "0"
    logging.basicConfig(
        level=(logging.DEBUG if args.verbose else logging.INFO)
        if main_process
        else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return args.func(args)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
