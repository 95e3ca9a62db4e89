"""``densekd`` command line.

    densekd train CONFIG [key=value ...]            (also: torchrun --nproc_per_node=N -m densekd train ...)
    densekd eval CONFIG --checkpoint PATH [key=value ...]
    densekd doctor CONFIG [key=value ...] [--batches N] [--control N]   (exit 0 healthy, 1 a check failed, 2 bad config)

One subparser per command, each added by its own small function; other commands (demo, compare, bench)
register theirs the same way in :data:`COMMANDS`. A bad config or input prints one line and exits 2.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from .errors import DenseKDError


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train or distil a student from a YAML config")
    p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted-key overrides, e.g. train.max_iters=100")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from .engine import train

    metrics = train(args.config, args.overrides)
    return 0 if metrics is not None else 1


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a config's student with given weights")
    p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument("--checkpoint", default=None,
                   help="student weights: checkpoint.pth, student_final.pth or a plain state dict "
                        "(default: OUTPUT_DIR/student_final.pth)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted-key overrides")
    p.set_defaults(func=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    from .engine import evaluate

    evaluate(args.config, args.checkpoint, args.overrides)
    return 0


def _add_doctor(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="check a distillation config before training (teacher, pairs, one batch)",
                       description="Builds what `densekd train CONFIG` would build, trains nothing and prints one "
                                   "report: the teacher's weights and its metric against chance, every pair and "
                                   "level, and one batch forward and backward (KD vs task: loss, gradient norm on "
                                   "the student; gradient flow). Exit status: 0 no failure (warnings allowed), "
                                   "1 a check failed, 2 the config cannot be built.")
    p.add_argument("config", help="YAML config with a distill section (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted-key overrides, as for train")
    p.add_argument("--batches", type=int, default=4,
                   help="validation batches (eval.batch_size each) to score the teacher and the student's "
                        "starting point on (default 4)")
    p.add_argument("--control", type=int, default=0, metavar="N",
                   help="also train the run's first N iterations beside a plain twin (same initial weights and "
                        "batches, no KD) and compare both on the --batches validation batches: a warning when KD "
                        "makes the student worse beyond the measured noise (train.control)")
    p.set_defaults(func=_run_doctor)


def _run_doctor(args: argparse.Namespace) -> int:
    from .tools.doctor import doctor

    return doctor(args.config, args.overrides, batches=args.batches, control=args.control).exit_status


def _add_demo(sub: argparse._SubParsersAction) -> None:
    from .demo import add_demo_arguments, main_from_args

    p = sub.add_parser("demo", help="distil a small segmenter on the built-in digits set (no download)")
    add_demo_arguments(p)
    p.set_defaults(func=main_from_args)


#: (name, add-subparser function) — append here to add a command.
COMMANDS: list[tuple[str, Callable[[argparse._SubParsersAction], None]]] = [
    ("train", _add_train),
    ("eval", _add_eval),
    ("doctor", _add_doctor),
    ("demo", _add_demo),
]

from .tools.compare import add_subparser as _add_compare  # noqa: E402

COMMANDS.append(("compare", _add_compare))

from .tools.bench import add_subparser as _add_bench  # noqa: E402

COMMANDS.append(("bench", _add_bench))

from .integrations.yolo_cli import add_subparser as _add_yolo  # noqa: E402

COMMANDS.append(("yolo", _add_yolo))

from .integrations.hf_cli import add_subparser as _add_hf  # noqa: E402

COMMANDS.append(("hf", _add_hf))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="densekd", description="Knowledge distillation for dense prediction")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")
    for _name, add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version or args.command is None:
        from . import __version__

        print(f"densekd {__version__}")
        return 0
    from .engine import TrainingInterrupted

    try:
        return args.func(args)
    except TrainingInterrupted as e:
        print(f"densekd {args.command}: {e}", file=sys.stderr)
        return 143  # 128 + SIGTERM, so schedulers see the job as preempted
    except (DenseKDError, FileNotFoundError) as e:
        print(f"densekd {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
