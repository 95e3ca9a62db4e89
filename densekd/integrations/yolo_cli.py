"""``densekd yolo`` — Ultralytics YOLO distillation from the command line (imports Ultralytics only when run).

    densekd yolo data DIR [--n-train 512 --n-val 256 --n-dev 0]          built-in digits in YOLO format
    densekd yolo train --model yolov8s.yaml --data D [epochs=100 ...]     plain training (a teacher), offline
    densekd yolo distill --student yolov8n.yaml --teacher T.pt --data D [--method acam_kd] [--weight 1]
                         [epochs=100 imgsz=640 ...] [--pairs 15 18 21 | 15:16 18:19 21:22] [--kwargs num_masks=6]
    densekd yolo distill --resume runs/detect/train/weights/last.pt

Bare ``key=value`` words are Ultralytics train arguments (values parsed as YAML: ``amp=false``, ``imgsz=640``); put
them before ``--pairs`` / ``--kwargs``, which take every word that follows them.
"""
from __future__ import annotations

import argparse
from typing import Any

from ..config import parse_assignment


def _train_args(words: list[str], where: str = "Ultralytics train argument", example: str = "epochs=100"
                ) -> dict[str, Any]:
    """``key=value`` words → a dict (values read as YAML; :func:`densekd.config.parse_assignment`)."""
    return dict(parse_assignment(w, where, f"key=value, e.g. {example}") for w in words)


def _pairs(words: list[str] | None) -> list[Any] | None:
    if not words:
        return None
    return [tuple(w.split(":", 1)) if ":" in w else w for w in words]


def _run_data(a: argparse.Namespace) -> int:
    from ..data.yolo import make_yolo_digits

    print(make_yolo_digits(a.dir, seed=a.seed, n_train=a.n_train, n_val=a.n_val, n_dev=a.n_dev, canvas=a.canvas))
    return 0


def _run_train(a: argparse.Namespace) -> int:
    from .ultralytics import train_yolo

    tr = train_yolo(a.model, a.data, **_train_args(a.args))
    print(f"densekd yolo train: {tr.best}")
    return 0


def _run_distill(a: argparse.Namespace) -> int:
    from .ultralytics import distill_yolo

    tr = distill_yolo(a.student, a.teacher, a.data, method=a.method, pairs=_pairs(a.pairs), weight=a.weight,
                      method_kwargs=_train_args(a.kwargs, "--kwargs", "num_masks=6"), resume=a.resume,
                      check=not a.no_check, **_train_args(a.args))
    print(f"densekd yolo distill: {tr.best}")
    return 0


def add_subparser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("yolo", help="distil Ultralytics YOLO detectors (needs densekd[ultralytics])",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ysub = p.add_subparsers(dest="yolo_command", required=True)

    d = ysub.add_parser("data", help="write the built-in digits as a YOLO dataset (DIR/data.yaml)")
    d.add_argument("dir")
    d.add_argument("--n-train", type=int, default=512)
    d.add_argument("--n-val", type=int, default=256)
    d.add_argument("--n-dev", type=int, default=0)
    d.add_argument("--canvas", type=int, default=64)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=_run_data)

    t = ysub.add_parser("train", help="plain Ultralytics training (e.g. a teacher), with nothing downloaded")
    t.add_argument("--model", required=True, help="model YAML (yolov8s.yaml) or .pt")
    t.add_argument("--data", required=True, help="Ultralytics data YAML")
    t.add_argument("args", nargs="*", metavar="key=value", help="Ultralytics train arguments")
    t.set_defaults(func=_run_train)

    k = ysub.add_parser("distill", help="distil a YOLO student from a YOLO teacher with a densekd method")
    k.add_argument("--student", help="model YAML (yolov8n.yaml) or .pt")
    k.add_argument("--teacher", help="trained detection .pt")
    k.add_argument("--data", help="Ultralytics data YAML")
    k.add_argument("--method", default="acam_kd", help="densekd loss name (default acam_kd)")
    k.add_argument("--weight", type=float, default=1.0, help="weight of every KD pair (default 1)")
    k.add_argument("--pairs", nargs="+", metavar="S[:T]",
                   help="layer indices or names, student[:teacher] (default: the layers the Detect head reads); "
                        "put them after the Ultralytics key=value arguments")
    k.add_argument("--kwargs", nargs="+", default=[], metavar="key=value",
                   help="loss keyword arguments (put them after the Ultralytics key=value arguments)")
    k.add_argument("--resume", default=None, help="last.pt of an interrupted densekd run")
    k.add_argument("--no-check", action="store_true", help="skip the teacher-mAP and KD/task-ratio checks")
    k.add_argument("args", nargs="*", metavar="key=value", help="Ultralytics train arguments")
    k.set_defaults(func=_run_distill)
