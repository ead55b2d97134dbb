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
from .models import ModelSourceError, SetupError
from .predict import PredictorError
from .prompt import TemplateError
from .tasks import RegistryError, load_registry

USER_ERRORS = (
    DataError,
    ConfigError,
    ModelSourceError,
    SetupError,
    RegistryError,
    TemplateError,
    PredictorError,
)
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
    p.add_argument("--max-concurrency", type=int, help="requests running at once (32)")
    p.add_argument("--max-queue", type=int, help="requests waiting; beyond: 429 (256)")
    p.add_argument("--request-timeout", dest="request_timeout_s", type=float, help="504 (120 s)")
    p.add_argument("--batch-window-ms", type=float, help="task requests collected per batch (5)")
    p.add_argument("--max-batch-size", type=int, help="largest task batch (32)")
    p.set_defaults(func=cmd_serve)


# --- inference: predict, eval, test, chat, route (thin skins over predict/evaluate/interactive)


def _add_model_arguments(p, base_help: str | None = None) -> None:
    p.add_argument(
        "--adapter", help="LoRA adapter folder (output_dir of `train`) or a merged model folder"
    )
    p.add_argument(
        "--base-model",
        help=base_help or "base model folder, hub id or 'tiny' (default: from adapter_config.json)",
    )
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    p.add_argument("--hub", default="huggingface", choices=["huggingface", "modelscope"])
    p.add_argument("--trust-remote-code", action="store_true", help="run code shipped with a model")
    p.add_argument("--tasks", help="task registry YAML (default: built-in)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")


def _add_decode_arguments(p, max_new_tokens: int = 128) -> None:
    p.add_argument(
        "--decode",
        default="auto",
        choices=["auto", "generate", "score", "span"],
        help="auto: label scoring for classification tasks, greedy generation within the "
        "input's spans for extraction tasks, greedy generation otherwise; generate: free "
        "greedy generation for every task",
    )
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    p.add_argument("--batch-size", type=int, default=8, help="inputs per forward pass")


def _load_predictor(args: argparse.Namespace, default_base: str | None = None):
    from .predict import Predictor

    return Predictor.load(
        args.base_model or (None if args.adapter else default_base),
        args.adapter,
        precision=args.precision,
        hub=args.hub,
        trust_remote_code=args.trust_remote_code,
        tasks=args.tasks,
        device=args.device,
    )


def cmd_predict(args: argparse.Namespace) -> int:
    import json

    from .predict import predict_rows, read_prediction_inputs

    if bool(args.texts) == bool(args.input_file):
        raise PredictorError("give either texts or --input-file, not both and not neither")
    if args.texts and not args.task:
        raise PredictorError("--task is required with texts (a name or id, e.g. 文件名称提取)")
    rows = (
        read_prediction_inputs(args.input_file, args.task)
        if args.input_file
        else [{"task": args.task, "input": t} for t in args.texts]
    )
    predictor = _load_predictor(args)
    results = predict_rows(
        predictor,
        rows,
        decode=args.decode,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
    )
    lines = [json.dumps(r, ensure_ascii=False) for r in results]
    if args.output_file:
        with open(args.output_file, "w", encoding="utf-8") as fh:
            fh.writelines(line + "\n" for line in lines)
        print(f"{len(results)} predictions written to {args.output_file}")
    elif args.json or args.input_file:
        print("\n".join(lines))
    else:
        for r in results:
            prob = "" if r["probability"] is None else f"\t{r['probability']:.4f}"
            print(f"{r['output']}{prob}")
    return 0


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="answer task queries (texts, or a JSONL file)")
    p.add_argument("texts", nargs="*", help="inputs to answer")
    p.add_argument("--task", help="task name or id (JSONL rows may carry their own 'task')")
    p.add_argument("--input-file", help='JSONL of {"input": ..., "task"?: ..., "id"?: ...}')
    p.add_argument("--output-file", help="JSONL of predictions (default: stdout)")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of plain text")
    _add_model_arguments(p)
    _add_decode_arguments(p)
    p.set_defaults(func=cmd_predict)


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import render_markdown, run_eval

    result = run_eval(
        _load_predictor(args),
        args.output_dir,
        data=args.data,
        compare_base=args.compare_base,
        decode=args.decode,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
    )
    print(render_markdown(result.report))
    print("written: " + ", ".join(str(p) for p in result.files.values()))
    return 0


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="per-task metrics on held-out data; reports + chart")
    p.add_argument("--data", nargs="+", help="JSONL/JSON data files (default: built-in eval split)")
    p.add_argument("--output-dir", default="runs/eval", help="where the reports are written")
    p.add_argument(
        "--compare-base", action="store_true", help="also run the base model without the adapter"
    )
    _add_model_arguments(p)
    _add_decode_arguments(p)
    p.set_defaults(func=cmd_eval)


def cmd_test(args: argparse.Namespace) -> int:
    from .interactive import run_test

    return run_test(
        _load_predictor(args),
        args.mode,
        output_dir=args.output_dir,
        data=args.data,
        per_task=args.per_task,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
    )


def _add_test(sub) -> None:
    from .interactive import MODES

    p = sub.add_parser("test", help="try a model: suite, interactive, eval or all")
    p.add_argument(
        "--mode",
        default="suite",
        choices=list(MODES),
        help="suite: fixed examples, base vs tuned; interactive: a REPL; eval: the reports; "
        "all: suite, eval, interactive",
    )
    p.add_argument("--per-task", type=int, default=3, help="suite examples per task")
    p.add_argument("--data", nargs="+", help="data files (default: built-in eval split)")
    p.add_argument("--output-dir", default="runs/eval", help="eval reports folder")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    _add_model_arguments(p)
    p.set_defaults(func=cmd_test)


def cmd_chat(args: argparse.Namespace) -> int:
    from .interactive import chat
    from .models import DEFAULT_BASE_MODEL

    return chat(
        _load_predictor(args, default_base=DEFAULT_BASE_MODEL),
        message=args.message,
        thinking=args.thinking,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
    )


def _add_chat(sub) -> None:
    p = sub.add_parser("chat", help="plain chat with a (base) model, optionally with thinking")
    p.add_argument("--message", help="one message, answered once (default: a REPL)")
    p.add_argument("--thinking", action="store_true", help="Qwen3 thinking, shown separately")
    p.add_argument("--max-new-tokens", type=int, default=1024)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    _add_model_arguments(p, base_help="model folder, hub id or 'tiny' (default Qwen/Qwen3-0.6B)")
    p.set_defaults(func=cmd_chat)


def cmd_route(args: argparse.Namespace) -> int:
    import json

    from .router import route

    predictor = _load_predictor(args)
    for text in args.texts:
        result = route(predictor, text, max_new_tokens=args.max_new_tokens)
        print(json.dumps(result, ensure_ascii=False, indent=None if args.jsonl else 2))
    return 0


def _add_route(sub) -> None:
    p = sub.add_parser("route", help="scene → type → answer or file name, as one JSON result")
    p.add_argument("texts", nargs="+", help="user messages")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--jsonl", action="store_true", help="one compact JSON line per message")
    _add_model_arguments(p)
    p.set_defaults(func=cmd_route)


PARSER_BUILDERS: list[Callable] = [
    _add_train,
    _add_data,
    _add_merge,
    _add_serve,
    _add_predict,
    _add_eval,
    _add_test,
    _add_chat,
    _add_route,
]


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
