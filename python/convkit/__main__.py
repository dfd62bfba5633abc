"""`python -m convkit` / `convkit`: info, bench (the layer suite) and check (correctness sweep)."""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="convkit", description="convkit's command line")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="version, build, CPU features, ISA, threads, CUDA")
    from .bench.cli import add_commands

    add_commands(sub)
    args = parser.parse_args(argv)
    if args.command == "info":
        from . import info

        info()
        return 0
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
