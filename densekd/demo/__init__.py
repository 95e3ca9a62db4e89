"""``densekd demo``: show on a laptop, with no download, whether distillation makes a small student better.

    densekd demo                        # segmentation on the built-in digits (shipped teacher, 3 seeds)
    densekd demo --seeds 5              # the README's table
    densekd demo --retrain-teacher      # rebuild the shipped teacher with our own command first
    densekd demo --quick                # CI smoke run
    densekd demo --task detection       # FCOS on the digits canvases with boxes (shipped teacher and student
                                        # backbone, 3 seeds)

Each task's demo is one module (``segmentation.py``, ``detection.py``: its settings, configs, figures and the hooks of
:class:`~densekd.demo.common.DemoTask`); the skeleton both run and what they share (the shipped teacher, the students
trained through the engine, the paired-gain table) is :mod:`densekd.demo.common`.
"""
from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .detection import DemoConfig as DetectionDemoConfig
from .detection import run_demo as run_detection_demo
from .segmentation import DemoConfig, run_demo

TASKS = ("segmentation", "detection")


def add_demo_arguments(p) -> None:
    """Arguments of ``densekd demo`` (the CLI calls this and then :func:`main_from_args`)."""
    p.add_argument("--task", default="segmentation", choices=list(TASKS))
    p.add_argument("--seeds", type=int, default=None, help="students per method (mean ± std, paired gains); "
                                                            "default 3, --quick 1")
    p.add_argument("--methods", nargs="+", default=None,
                   help="students to train (default: baseline hinton_kd fitnet acam_kd for segmentation, baseline "
                        "fitnet acam_kd for detection; 'baseline' is required)")
    p.add_argument("--retrain-teacher", action="store_true",
                   help="train the teacher with our own command instead of loading the shipped one (written to "
                        "OUT/teacher; the shipped files are never changed) and say whether it matches")
    p.add_argument("--retrain-backbone", action="store_true",
                   help="detection: pretrain the student's backbone (digit classification) with our own command instead "
                        "of loading the shipped one (written to OUT/backbone; the shipped files are never changed)")
    p.add_argument("--quick", action="store_true", help="smoke run for CI (about a minute); shows no gain")
    p.add_argument("--cache-dir", default="~/.cache/densekd", help="where the generated dataset is kept")
    p.add_argument("--out", default="densekd-demo", help="folder for the runs, figures and summary.json")
    p.add_argument("--eval-split", default="val", choices=["val", "dev"],
                   help="report on val (default); dev is the split the settings were chosen on")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--jobs", type=int, default=None,
                   help="students trained at once in worker processes, the threads split between them (default: 1 "
                        "for segmentation, 2 for detection)")


def config_from_args(args) -> Any:
    kw: dict[str, Any] = dict(task=args.task, cache_dir=args.cache_dir, out_dir=args.out, eval_split=args.eval_split,
                              threads=args.threads, retrain_teacher=args.retrain_teacher)
    if args.seeds is not None:
        kw["seeds"] = args.seeds
    if getattr(args, "jobs", None) is not None:
        kw["jobs"] = args.jobs
    if args.methods is not None:
        kw["methods"] = tuple(args.methods)
    if getattr(args, "retrain_backbone", False):
        if args.task != "detection":
            raise ConfigError("demo: --retrain-backbone belongs to --task detection (the segmentation students start "
                              "from scratch)")
        kw["retrain_backbone"] = True
    cls = DetectionDemoConfig if args.task == "detection" else DemoConfig
    return cls.quick_config(**kw) if args.quick else cls(**kw)


def main_from_args(args) -> int:
    cfg = config_from_args(args)
    (run_detection_demo if isinstance(cfg, DetectionDemoConfig) else run_demo)(cfg)
    return 0


__all__ = ["DemoConfig", "DetectionDemoConfig", "TASKS", "run_detection_demo", "add_demo_arguments", "config_from_args", "main_from_args", "run_demo"]
