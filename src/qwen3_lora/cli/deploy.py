"""`qwen3-lora merge`, `qwen3-lora export` and `qwen3-lora serve`."""

from __future__ import annotations

import argparse
import os

from ..errors import UserError
from ..models.source import HUBS


def cmd_merge(args: argparse.Namespace) -> int:
    from ..deploy.merge import merge_adapter

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


def add_merge(sub) -> None:
    from ..deploy.merge import MERGE_DTYPES

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
    p.add_argument("--hub", default="huggingface", choices=list(HUBS))
    p.add_argument("--trust-remote-code", action="store_true", help="run code shipped with a model")
    p.add_argument("--tasks", help="task registry YAML for the model card (default: built-in)")
    p.set_defaults(func=cmd_merge)


def _serve_package():
    try:
        from ..deploy import serve
    except ImportError as exc:
        raise UserError(
            f"serve needs the serve extra: pip install 'qwen3-lora[serve]' ({exc})"
        ) from exc
    return serve


def cmd_serve(args: argparse.Namespace) -> int:
    from ..deploy.serve.settings import config_from_arguments

    _serve_package().serve(config_from_arguments(args, os.environ))
    return 0


def add_serve(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="OpenAI-compatible HTTP server (chat completions, task and route endpoints)",
        argument_default=argparse.SUPPRESS,
    )
    from ..deploy.serve.settings import add_serve_arguments

    add_serve_arguments(p)
    p.set_defaults(func=cmd_serve)


def cmd_export(args: argparse.Namespace) -> int:
    from ..deploy.export import export

    result = export(
        adapter=args.adapter,
        model=args.model,
        output=args.output,
        format=args.format,
        outtype=args.outtype,
        base_outtype=args.base_outtype,
        base_model=args.base_model,
        hub=args.hub,
        trust_remote_code=args.trust_remote_code,
        tasks=args.tasks,
        name=args.name,
    )
    print(
        f"exported {result.architecture} ({args.format}, {result.outtype}): "
        f"{result.output_dir} [{', '.join(result.files)}]"
    )
    return 0


def add_export(sub) -> None:
    from ..deploy.export import FORMATS, LORA_OUTTYPES, OUTTYPES

    p = sub.add_parser(
        "export",
        help="export to GGUF for llama.cpp and Ollama (model.gguf, Modelfile, README.md)",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--adapter", help="adapter folder (output_dir of `train`): merged first")
    source.add_argument(
        "--model", help="a model folder (e.g. the output of `merge`), hub id or .gguf file"
    )
    p.add_argument("--output", required=True, help="folder for the exported files")
    p.add_argument(
        "--format",
        default="gguf",
        choices=list(FORMATS),
        help="gguf: the merged model as one file; gguf-lora: the adapter alone as a llama.cpp "
        "LoRA GGUF for a base GGUF",
    )
    p.add_argument(
        "--outtype",
        choices=list(OUTTYPES),
        help="tensor type (default f16; f32 for gguf-lora, which takes "
        f"{', '.join(LORA_OUTTYPES)}); q4_k_m, q5_k_m and q6_k need llama.cpp's quantizer",
    )
    p.add_argument(
        "--base-outtype",
        choices=list(OUTTYPES),
        help="gguf-lora: also write the base model as base.gguf in this type",
    )
    p.add_argument(
        "--base-model", help="base model folder or hub id (default: from adapter_config.json)"
    )
    p.add_argument("--name", help="model name in the README and Modelfile (default: the folder)")
    p.add_argument("--hub", default="huggingface", choices=list(HUBS))
    p.add_argument("--trust-remote-code", action="store_true", help="run code shipped with a model")
    p.add_argument("--tasks", help="task registry YAML for the README (default: built-in)")
    p.set_defaults(func=cmd_export)
