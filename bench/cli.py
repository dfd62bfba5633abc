"""The `bench` and `check` commands of `python -m convkit` (wired in convkit/__main__.py).

Exit status: 0 all good; 1 a result did not match the reference (or raised); 2 bad
arguments or a bad suite file (the message says which layer and field).
"""
from __future__ import annotations

import argparse
import sys

from . import check, report, runner, suite
from .ops import DIRECTIONS
from .progress import Progress
from .timing import MIN_BLOCKS


def _names(text: str) -> tuple:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list of names")
    return names


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {value}")
    return value


def add_commands(sub) -> None:
    b = sub.add_parser("bench", help="time every algorithm on the layer suite against the reference (and torch)",
                       description="Times convkit's CPU algorithms, the NumPy reference and optionally PyTorch on "
                                   "the layer suite; checks every result against the reference once.")
    b.add_argument("--suite", metavar="FILE", help="a suite JSON file (default: the packaged suite.json)")
    b.add_argument("--layers", type=_names, metavar="A,B", help="only these layers (by name)")
    b.add_argument("--ops", type=_names, default=DIRECTIONS, metavar="fwd,bwd", help="directions (default both)")
    b.add_argument("--algo", type=_names, metavar="A,B",
                   help='only these convkit algorithms, "auto" included (default: every registered one)')
    b.add_argument("--against", choices=["torch"], help="also time torch.nn.functional")
    b.add_argument("--repeat", type=_positive, metavar="N",
                   help=f"timed blocks per implementation (default 10, --quick {MIN_BLOCKS}; "
                        f"{MIN_BLOCKS} or more for a trustworthy median)")
    b.add_argument("--threads", type=_positive, metavar="N",
                   help="threads for convkit, torch and NumPy's BLAS alike (BLAS through threadpoolctl, when "
                        "installed; default: the cores available)")
    b.add_argument("--quick", action="store_true",
                   help=f"representative layers ({', '.join(suite.QUICK_LAYERS)}), fewer repeats: about a minute")
    b.add_argument("--json", metavar="FILE", help="write the results as JSON")
    b.add_argument("--markdown", metavar="FILE", help="write the results as a Markdown table")
    b.add_argument("--plot", metavar="FILE.png", help="draw a bar chart per layer (needs matplotlib)")
    b.set_defaults(run=run_bench)

    c = sub.add_parser("check", help="every registered implementation against the reference on random shapes",
                       description="Correctness sweep: every registered implementation of every primitive (CPU, and "
                                   "CUDA when a device is there) against the float64 reference on random small cases.")
    c.add_argument("--count", type=_positive, default=20, metavar="N", help="random cases per primitive (default 20)")
    c.add_argument("--seed", type=int, default=0, help="seed of the random cases (default 0)")
    c.add_argument("--device", choices=["cpu", "cuda"], help="only this device (default: every one available)")
    c.set_defaults(run=run_check)


def _error(command: str, message) -> int:
    print(f"convkit {command}: error: {message}", file=sys.stderr)
    return 2


def run_bench(args) -> int:
    try:
        unknown = [d for d in args.ops if d not in DIRECTIONS]
        if unknown:
            raise ValueError(f"--ops: {unknown} unknown; choose from {list(DIRECTIONS)}")
        if args.plot:
            report.require_matplotlib()
        layers = suite.select(suite.load_suite(args.suite), args.layers, args.quick)
        make = runner.Settings.quick if args.quick else runner.Settings
        settings = make(directions=tuple(d for d in DIRECTIONS if d in args.ops), algos=args.algo,
                        against_torch=args.against == "torch", threads=args.threads)
        if args.repeat:
            settings.repeat = args.repeat
        result = runner.run(layers, settings, Progress())
    except ValueError as exc:
        return _error("bench", exc)
    print(report.table(result))
    if args.json:
        report.write(report.to_json(result), args.json)
    if args.markdown:
        report.write(report.to_markdown(result), args.markdown)
    if args.plot:
        report.plot(result, args.plot)
    if result.failures:
        print(f"convkit bench: {len(result.failures)} result(s) failed the check against the reference "
              f"(see the table)", file=sys.stderr)
        return 1
    return 0


def run_check(args) -> int:
    outcomes, notes = check.sweep(args.count, args.seed, [args.device] if args.device else None)
    if not outcomes:
        return _error("check", "no implementation to check: " + "; ".join(notes))
    print(check.table(outcomes, notes, args.count, args.seed))
    return 0 if all(o.ok for o in outcomes) else 1
