"""The `qwen3-lora` command: a flat map from subcommands to plain functions.

Known, user-fixable errors (`errors.UserError`) print one clear message and exit non-zero; no
traceback. Each subcommand's flags and its function live in `cli.training` (train, data),
`cli.inference` (predict, eval, test, chat, route) and `cli.deploy` (merge, export, serve).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from ..errors import UserError
from . import deploy, inference, training

log = logging.getLogger("qwen3_lora")

PARSER_BUILDERS: list[Callable] = [
    training.add_train,
    training.add_data,
    deploy.add_merge,
    deploy.add_export,
    deploy.add_serve,
    inference.add_predict,
    inference.add_eval,
    inference.add_test,
    inference.add_chat,
    inference.add_route,
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
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
