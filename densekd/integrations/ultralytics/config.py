"""What distillation adds to an Ultralytics run: teacher, method, weight, pairs."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ...levels import Pair
from .inputs import load_yolo


@dataclass
class YOLOKDConfig:
    """What distillation :class:`DistillationTrainer` adds to an Ultralytics run.

    teacher: a trained detection ``.pt`` (or the loaded model); method/weight/method_kwargs: the densekd loss,
    pair weight and loss keyword arguments used by the default pairs; pairs: ``None`` for the Detect head's
    input layers, or a list (see :func:`normalize_pairs`); check: run :attr:`DistillationTrainer.pretrain_checks`.
    """

    teacher: Any
    method: str = "acam_kd"
    weight: float = 1.0
    method_kwargs: dict[str, Any] = field(default_factory=dict)
    pairs: list[Pair] | None = None
    check: bool = True
    _teacher_model: nn.Module | None = field(default=None, repr=False)

    def teacher_model(self) -> nn.Module:
        if self._teacher_model is None:
            self._teacher_model = load_yolo(self.teacher, "teacher")
        return self._teacher_model

    def teacher_path(self) -> str | None:
        return str(self.teacher) if isinstance(self.teacher, (str, Path)) else None
