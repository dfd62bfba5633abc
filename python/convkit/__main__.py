"""`python -m convkit` / `convkit`: info (and the bench/check commands as they land)."""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="convkit", description="convkit's command line")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="version, build, CPU features, ISA, threads, CUDA")
    args = parser.parse_args(argv)
    if args.command == "info":
        from . import info

        info()
    return 0


if __name__ == "__main__":
    sys.exit(main())
