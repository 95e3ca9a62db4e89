"""``densekd`` command line."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="densekd", description="Knowledge distillation for dense prediction")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")
    args = parser.parse_args(argv)
    if args.version or args.command is None:
        from . import __version__

        print(f"densekd {__version__}")
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
