"""One call: :func:`distill_yolo` (distillation) and :func:`train_yolo` (plain training), offline."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Sequence

from .. import _ultralytics_offline as _offline
from ...errors import ConfigError, UnknownNameError
from ...levels import Pair
from ...losses.registry import available_losses
from .checkpoint import read_kd_entry
from .config import YOLOKDConfig
from .inputs import _check_data, _check_student, _check_train_args, _local_file, load_yolo
from .pairs import normalize_pairs
from .trainers import DistillationTrainer, OfflineDetectionTrainer


def _add_callbacks(trainer: Any, callbacks: Mapping[str, Sequence[Callable[[Any], None]]] | None) -> None:
    for event, fns in (callbacks or {}).items():
        if event not in trainer.callbacks:
            raise ConfigError(f"callbacks: unknown Ultralytics event {event!r}; events: {', '.join(trainer.callbacks)}")
        for fn in fns:
            trainer.add_callback(event, fn)


def distill_yolo(student: str | Path | None = None, teacher: Any = None, data: str | Path | None = None,
                 method: str = "acam_kd", pairs: Sequence[Any] | None = None, weight: float = 1.0,
                 method_kwargs: Mapping[str, Any] | None = None, resume: str | Path | None = None,
                 check: bool = True, callbacks: Mapping[str, Sequence[Callable[[Any], None]]] | None = None,
                 **train_args: Any) -> DistillationTrainer:
    """Distil ``student`` (a model YAML such as ``"yolov8n.yaml"``, or a ``.pt`` to fine-tune) from ``teacher``
    (a trained detection ``.pt``) on ``data`` (an Ultralytics data YAML) with densekd's ``method``.

    ``train_args`` are Ultralytics' train arguments (``epochs``, ``imgsz``, ``batch``, ``project``, ``name``, ...).
    ``resume="…/weights/last.pt"`` continues an interrupted run: teacher, method and pairs come from the
    checkpoint (``teacher=`` overrides the path if it moved). ``callbacks``: ``{event: [fn(trainer), ...]}`` added
    to Ultralytics' callbacks. Returns the finished trainer (``.best``, ``.last``, ``.metrics``, ``.kd_check``).
    """
    if "distill_model" in train_args:
        raise ConfigError("distill_model= is Ultralytics' own distillation; pass the teacher as teacher=")
    args = _check_train_args(train_args)
    with _offline.offline():
        if resume:
            entry = read_kd_entry(resume)
            kd = YOLOKDConfig(teacher=teacher if teacher is not None else entry["teacher"], method=entry["method"],
                              weight=entry["weight"], method_kwargs=dict(entry.get("method_kwargs", {})),
                              pairs=[Pair.coerce({**p, "aux": {k: tuple(v) for k, v in p["aux"].items()}})
                                     for p in entry["pairs"]], check=check)
            if kd.teacher is None:
                raise ConfigError(f"resume '{resume}': the run's teacher was a model object; pass teacher=")
            kd.teacher_model()
            overrides = {**args, "resume": str(resume), "model": str(resume)}
            if data is not None:
                overrides["data"] = str(_check_data(data, args.get("split") or "val"))
        else:
            if student is None or teacher is None:
                raise ConfigError("distill_yolo needs student= (a model YAML or .pt) and teacher= (a trained .pt)")
            if method not in available_losses():
                raise UnknownNameError(f"unknown method {method!r}; available: {', '.join(available_losses())}")
            kwargs = dict(method_kwargs or {})
            kd = YOLOKDConfig(teacher=teacher, method=method, weight=float(weight), method_kwargs=kwargs,
                              pairs=normalize_pairs(pairs, method, float(weight), kwargs) if pairs is not None
                              else None, check=check)
            kd.teacher_model()
            overrides = {**args, "model": _check_student(student),
                         "data": _check_data(data, args.get("split") or "val")}
        trainer = DistillationTrainer(overrides=overrides, kd=kd)
        _add_callbacks(trainer, callbacks)
        trainer.train()
    return trainer


def train_yolo(model: str | Path, data: str | Path,
               callbacks: Mapping[str, Sequence[Callable[[Any], None]]] | None = None,
               **train_args: Any) -> OfflineDetectionTrainer:
    """Plain Ultralytics detection training (teachers, baselines, or Ultralytics' own ``distill_model=``), with
    the same offline guarantees as :func:`distill_yolo`. Returns the finished trainer."""
    args = _check_train_args(train_args)
    with _offline.offline():
        overrides = {**args, "model": _check_student(model), "data": _check_data(data, args.get("split") or "val")}
        if args.get("distill_model") is not None:
            load_yolo(args["distill_model"], "distill_model")
            overrides["distill_model"] = str(_local_file(args["distill_model"], "distill_model"))
        trainer = OfflineDetectionTrainer(overrides=overrides)
        _add_callbacks(trainer, callbacks)
        trainer.train()
    return trainer
