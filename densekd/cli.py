"""``densekd`` command line."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="densekd", description="Knowledge distillation for dense prediction")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")
    # --- demo (densekd/demo.py) ---
    from .demo import add_demo_arguments

    add_demo_arguments(sub.add_parser("demo", help="show ACAM-KD improving a small segmenter on built-in digits"))
    # --- end demo ---
    args = parser.parse_args(argv)
    if args.version or args.command is None:
        from . import __version__

        print(f"densekd {__version__}")
        return 0
    if args.command == "demo":  # --- demo ---
        from .demo import main_from_args

        return main_from_args(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
