"""Ultralytics trainers: one that never touches the network, and the distillation trainer built on it (the wrapped
model, checkpoints holding the plain student plus the ``"densekd"`` entry, resume, pre-training checks)."""
from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any, Callable

import torch
from torch import Tensor
from ultralytics.cfg import DEFAULT_CFG
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.utils.torch_utils import ModelEMA, unwrap_model

from .. import _ultralytics_offline as _offline
from ...errors import ConfigError
from .checkpoint import _CKPT_FORMAT, _CKPT_KEY
from .config import YOLOKDConfig
from .inputs import _check_data, _check_detector
from .model import YOLOKDModel
from .pairs import default_pairs
from .pretrain import kd_task_ratio_check, teacher_metric_check
from .recovery import recover_from_nan


class OfflineDetectionTrainer(DetectionTrainer):
    """Ultralytics' ``DetectionTrainer`` that never touches the network (fonts, AMP-check weights, asset downloads,
    Platform and usage events). Used for teachers and plain baselines, and as the base of distillation."""

    def __init__(self, cfg: Any = DEFAULT_CFG, overrides: dict[str, Any] | None = None,
                 _callbacks: dict[str, Any] | None = None) -> None:
        with _offline.offline():
            super().__init__(cfg, overrides, _callbacks)

    def run_callbacks(self, event: str) -> None:
        _offline.drop_network_callbacks(self.callbacks)
        super().run_callbacks(event)

    def train(self) -> None:
        with _offline.offline():
            super().train()


class DistillationTrainer(OfflineDetectionTrainer):
    """Ultralytics detection training of the student, distilled from ``kd.teacher`` with densekd losses."""

    def __init__(self, cfg: Any = DEFAULT_CFG, overrides: dict[str, Any] | None = None,
                 _callbacks: dict[str, Any] | None = None, kd: YOLOKDConfig | None = None) -> None:
        if kd is None:
            raise ConfigError("DistillationTrainer needs kd=YOLOKDConfig(teacher=...)")
        self.kd_config = kd
        #: ``check(trainer) -> dict`` run once before the first epoch (fresh runs only); results in ``kd_check``
        self.pretrain_checks: list[Callable[[Any], dict[str, Any]]] = (
            [teacher_metric_check, kd_task_ratio_check] if kd.check else [])
        self.kd_check: dict[str, Any] = {}
        super().__init__(cfg, overrides, _callbacks)
        self.add_callback("on_pretrain_routine_end", _run_pretrain_checks)
        self.add_callback("on_train_batch_start", _set_kd_iteration)

    def get_dataset(self) -> dict[str, Any]:
        _check_data(self.args.data, self.args.split or "val")
        return super().get_dataset()

    def setup_model(self) -> Any:
        ckpt = super().setup_model()
        student = self.model
        _check_detector(student, "student", self.args.model)
        teacher = self.kd_config.teacher_model()
        kd = self.kd_config
        pairs = kd.pairs if kd.pairs is not None else default_pairs(student, teacher, kd.method, kd.weight,
                                                                     kd.method_kwargs)
        self.model = YOLOKDModel(student, teacher, pairs)
        entry = (ckpt or {}).get(_CKPT_KEY) if self.resume else None
        if entry:
            self.model.kd.load_state_dict(entry["kd"])
        return ckpt

    def _load_checkpoint_state(self, ckpt: dict[str, Any]) -> None:
        """Ultralytics' restore, with the EMA rebuilt around the wrapper: the checkpoint's EMA is the plain student."""
        ema_student = ckpt.get("ema")
        super()._load_checkpoint_state({**ckpt, "ema": None})
        if self.ema and ema_student is not None:
            self.ema = ModelEMA(self.model)
            self.ema.ema.student_model.load_state_dict(ema_student.float().state_dict())
            entry = ckpt.get(_CKPT_KEY) or {}
            if entry.get("kd_ema"):
                self.ema.ema.kd.load_state_dict(entry["kd_ema"])
            self.ema.updates = ckpt["updates"]

    def _handle_nan_recovery(self, epoch: int) -> bool:
        """Ultralytics' NaN/Inf recovery for the wrapped model (:func:`recover_from_nan`)."""
        return recover_from_nan(self, epoch)

    def kd_state(self) -> dict[str, Any]:
        """The ``"densekd"`` checkpoint entry: only tensors, numbers and strings (loads with ``weights_only``)."""
        kd = self.kd_config
        model = unwrap_model(self.model)

        def cpu(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
            return {k: v.detach().cpu().clone() for k, v in sd.items()}

        return {
            "format": _CKPT_FORMAT,
            "teacher": kd.teacher_path(),
            "method": kd.method,
            "weight": kd.weight,
            "method_kwargs": dict(kd.method_kwargs),
            "pairs": [{**asdict(p), "aux": {k: list(v) for k, v in p.aux.items()}} for p in model.pairs],
            "kd": cpu(model.kd.state_dict()),
            "kd_ema": cpu(self.ema.ema.kd.state_dict()) if self.ema else {},
        }

    def save_model(self) -> bool:
        """Ultralytics' checkpoints with the plain student as the model, plus the ``"densekd"`` entry."""
        wrapper, wrapper_ema = self.model, self.ema.ema
        self.model, self.ema.ema = unwrap_model(wrapper).student_model, wrapper_ema.student_model
        try:
            ok = super().save_model()
        finally:
            self.model, self.ema.ema = wrapper, wrapper_ema
        written = [self.last]
        if self.best_fitness == self.fitness:
            written.append(self.best)
        if self.save_period > 0 and self.epoch % self.save_period == 0:
            written.append(self.wdir / f"epoch{self.epoch}.pt")
        ckpt = torch.load(self.last, map_location="cpu", weights_only=False)
        ckpt[_CKPT_KEY] = self.kd_state()
        buf = io.BytesIO()
        torch.save(ckpt, buf)
        for f in written:
            f.write_bytes(buf.getvalue())
        return ok


def _set_kd_iteration(trainer: DistillationTrainer) -> None:
    model = unwrap_model(trainer.model)
    model.iteration += 1
    if model.max_iterations is None:
        model.max_iterations = trainer.epochs * len(trainer.train_loader)


def _run_pretrain_checks(trainer: DistillationTrainer) -> None:
    if trainer.start_epoch > 0:  # resumed: checked when the run started
        return
    for check in trainer.pretrain_checks:
        trainer.kd_check.update(check(trainer) or {})
