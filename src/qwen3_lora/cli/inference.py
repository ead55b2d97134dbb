"""`qwen3-lora predict|eval|test|chat|route`: thin skins over inference and evaluation."""

from __future__ import annotations

import argparse
import json

from ..files import atomic_write_text, check_output_file, output_folder
from ..inference.decode import DECODES
from ..inference.errors import PredictorError
from ..models.loading import PRECISIONS
from ..models.source import HUBS


def _add_model_arguments(p, base_help: str | None = None) -> None:
    p.add_argument(
        "--adapter", help="LoRA adapter folder (output_dir of `train`) or a merged model folder"
    )
    p.add_argument(
        "--base-model",
        help=base_help or "base model folder, hub id or 'tiny' (default: from adapter_config.json)",
    )
    p.add_argument("--precision", default="auto", choices=list(PRECISIONS))
    p.add_argument("--hub", default="huggingface", choices=list(HUBS))
    p.add_argument("--trust-remote-code", action="store_true", help="run code shipped with a model")
    p.add_argument("--tasks", help="task registry YAML (default: built-in)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")


def _add_decode_arguments(p, max_new_tokens: int = 128) -> None:
    p.add_argument(
        "--decode",
        default="auto",
        choices=list(DECODES),
        help="auto: label scoring for classification tasks, greedy generation within the "
        "input's spans for extraction tasks, greedy generation otherwise; generate: free "
        "greedy generation for every task",
    )
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    p.add_argument("--batch-size", type=int, default=8, help="inputs per forward pass")


def _load_predictor(args: argparse.Namespace, default_base: str | None = None):
    from ..inference.predictor import Predictor

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

    from ..data.records import read_prediction_inputs
    from ..inference.batch import predict_rows

    if bool(args.texts) == bool(args.input_file):
        raise PredictorError("give either texts or --input-file, not both and not neither")
    if args.texts and not args.task:
        raise PredictorError("--task is required with texts (a name or id, e.g. 文件名称提取)")
    rows = (
        read_prediction_inputs(args.input_file, args.task)
        if args.input_file
        else [{"task": args.task, "input": t} for t in args.texts]
    )
    if args.output_file:
        check_output_file(args.output_file, "--output-file")  # before the model loads
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
        atomic_write_text(args.output_file, "".join(line + "\n" for line in lines))
        print(f"{len(results)} predictions written to {args.output_file}")
    elif args.json or args.input_file:
        print("\n".join(lines))
    else:
        for r in results:
            prob = "" if r["probability"] is None else f"\t{r['probability']:.4f}"
            print(f"{r['output']}{prob}")
    return 0


def add_predict(sub) -> None:
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
    from ..evaluation.report import render_markdown, run_eval

    output_folder(args.output_dir, "--output-dir")  # before the model loads
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


def add_eval(sub) -> None:
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
    from ..evaluation.interactive import run_test

    return run_test(
        _load_predictor(args),
        args.mode,
        output_dir=args.output_dir,
        data=args.data,
        per_task=args.per_task,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
    )


def add_test(sub) -> None:
    from ..evaluation.interactive import MODES

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
    from ..evaluation.interactive import chat
    from ..models.source import DEFAULT_BASE_MODEL

    return chat(
        _load_predictor(args, default_base=DEFAULT_BASE_MODEL),
        message=args.message,
        thinking=args.thinking,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
    )


def add_chat(sub) -> None:
    p = sub.add_parser("chat", help="plain chat with a (base) model, optionally with thinking")
    p.add_argument("--message", help="one message, answered once (default: a REPL)")
    p.add_argument("--thinking", action="store_true", help="Qwen3 thinking, shown separately")
    p.add_argument("--max-new-tokens", type=int, default=1024)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    _add_model_arguments(p, base_help="model folder, hub id or 'tiny' (default Qwen/Qwen3-0.6B)")
    p.set_defaults(func=cmd_chat)


def cmd_route(args: argparse.Namespace) -> int:

    from ..inference.router import route

    predictor = _load_predictor(args)
    for text in args.texts:
        result = route(predictor, text, max_new_tokens=args.max_new_tokens)
        print(json.dumps(result, ensure_ascii=False, indent=None if args.jsonl else 2))
    return 0


def add_route(sub) -> None:
    p = sub.add_parser("route", help="scene → type → answer or file name, as one JSON result")
    p.add_argument("texts", nargs="+", help="user messages")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--jsonl", action="store_true", help="one compact JSON line per message")
    _add_model_arguments(p)
    p.set_defaults(func=cmd_route)
