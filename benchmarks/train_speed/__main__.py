"""`python -m benchmarks.train_speed`: the command line (see the package's docstring)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import benchmarks.train_speed as package
from benchmarks.common import README, RESULTS, result_name, write_result
from benchmarks.train_speed.phases import ablate, run
from benchmarks.train_speed.report import (
    ablation_markdown,
    markdown,
    render_readme,
    write_latest,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.train_speed",
        description=package.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--smoke", action="store_true", help="tiny model + tokenizer (seconds)")
    parser.add_argument("--samples", type=int, help="samples (a) and (b) both train on")
    parser.add_argument("--no-epoch", action="store_true", help="skip the epoch of (b)")
    parser.add_argument(
        "--epoch-budget",
        type=float,
        default=180,
        help="seconds of (b)'s epoch to time; a longer epoch is projected from its first part",
    )
    parser.add_argument("--no-inference", action="store_true", help="skip inference figures")
    parser.add_argument(
        "--inference-rounds",
        type=int,
        default=2,
        help="rounds of inference measurements (base and adapter in turns; the best of each)",
    )
    parser.add_argument("--no-trl", action="store_true", help="skip phase 1b (ours vs TRL)")
    parser.add_argument(
        "--trl-samples", type=int, help="samples of phase 1b (default 112; smoke: 12)"
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    parser.add_argument(
        "--ablate",
        nargs="+",
        metavar="NAME:KEY=VALUE,...",
        help="instead: ours against variants of its TrainConfig (e.g. b8:batch_size=8,grad_accum=1)",
    )
    parser.add_argument(
        "--render",
        type=Path,
        help="only rewrite LATEST.md (beside the JSON) and the README's tables from a results JSON",
    )
    parser.add_argument(
        "--readme",
        type=Path,
        help="the README whose tables to rewrite (default: this repository's, for results "
        "in benchmarks/results/ only)",
    )
    parser.add_argument("--note", help="a line stored with an ablation and shown in LATEST.md")
    args = parser.parse_args(argv)
    # Smoke: 12 samples are 3 of our micro-batches of 4, two of them timed after the warm-up.
    args.samples = args.samples or (12 if args.smoke else 10)
    # 112 samples: 14 optimizer steps of 4 x 2, the first one excluded as warm-up.
    args.trl_samples = args.trl_samples or (12 if args.smoke else 112)
    if args.smoke and args.threads is None:
        # A tiny model gains nothing from threads, and on a busy machine two threads per
        # process wait on each other at every one of its thousands of small ops.
        args.threads = 1
    args.argv = argv
    # The phases left out: such a run is partial, and a partial run publishes nothing.
    args.skipped = [
        phase
        for phase, skip in (
            ("trl", args.no_trl),
            ("epoch", args.no_epoch),
            ("inference", args.no_inference),
        )
        if skip
    ]
    args.mode = "smoke" if args.smoke else "partial" if args.skipped else "full"
    return args


def _render_readme(args, report: dict, path: Path) -> None:
    readme = args.readme
    if readme is None and path.resolve().parent == RESULTS.resolve():
        readme = README
    if readme is not None:
        blocks = render_readme(report, path, readme)
        print(f"rendered {', '.join(blocks) or 'no blocks'} into {readme}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        report = json.loads(args.render.read_text("utf-8"))
        if report.get("mode") != "full":
            print(
                f"{args.render}: a {report.get('mode')} run (`{report.get('command')}`); only a full"
                " run renders LATEST.md and the README's tables",
                file=sys.stderr,
            )
            return 2
        write_latest(args.render.parent, report)
        print(markdown(report))
        _render_readme(args, report, args.render)
        return 0
    if args.ablate:
        report = ablate(args)
        if args.note:
            report["note"] = args.note
        names = "-".join(report["variants"])
        path = write_result(args.out / result_name(f"ablation-{names}"), report)
        print(ablation_markdown(report))
        print(f"wrote {path}")
        return 0
    report = run(args)
    kind = "partial" if args.skipped else ""
    path = write_result(args.out / result_name(kind, smoke=args.smoke), report)
    if args.mode == "full":
        write_latest(args.out, report)
        _render_readme(args, report, path)
    elif args.mode == "partial":
        print(f"skipped {', '.join(args.skipped)}: LATEST.md and the README keep the last full run")
    print()
    print(markdown(report))
    print(f"wrote {path} in {report['seconds_total']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
