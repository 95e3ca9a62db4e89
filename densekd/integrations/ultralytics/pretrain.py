"""Pre-training checks of a distillation run (each ``check(trainer) -> dict``, run before the first epoch) and the
measurements they rest on, none of which shifts the run (random streams, BatchNorm statistics and modes kept)."""
from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from ultralytics.utils import LOGGER
from ultralytics.utils.torch_utils import unwrap_model

from ...health import RATIO_HIGH, RATIO_LOW, suggested_weight
from .._state import module_state_preserved, rng_preserved


def first_batch(trainer: Any) -> dict[str, Any]:
    """The first training batch as the loop would see it (augmented, preprocessed), without consuming the
    loader or any random stream."""
    ds = trainer.train_loader.dataset
    n = min(len(ds), trainer.train_loader.batch_size or 1)
    with rng_preserved():
        batch = ds.collate_fn([ds[i] for i in range(n)])
        return trainer.preprocess_batch(batch)


def training_loss_items(model: nn.Module, batch: Mapping[str, Any]) -> dict[str, float]:
    """Ultralytics' loss items (``{"box_loss": …, …}``, per image) of ``model`` on ``batch`` as a training step
    computes them: the model in train mode (BatchNorm normalises with the batch's statistics; a distillation
    wrapper keeps its teacher in eval), no gradient. The model's buffers and modes and Python's, NumPy's and
    torch's random streams are left as they were, so measuring does not shift the run. Works for any model that
    Ultralytics' trainer calls with a batch dict: a plain ``DetectionModel``, :class:`YOLOKDModel`, Ultralytics'
    own ``DistillationModel``."""
    model = unwrap_model(model)
    with torch.no_grad(), rng_preserved(), module_state_preserved(model):
        model.train()
        _, items = model(dict(batch))
    return {k: float(v) for k, v in items.items()}


def kd_task_ratio_check(trainer: Any) -> dict[str, Any]:
    """KD/task loss ratio on the first training batch, computed as the first training step will (train mode, see
    :func:`training_loss_items`); warns when KD would dominate or vanish and says which pair weight makes the two
    equal. The bounds are the health checks' (:data:`densekd.health.RATIO_LOW`, :data:`densekd.health.RATIO_HIGH`)."""
    model = unwrap_model(trainer.model)
    task, kd = model.measure(first_batch(trainer))
    ratio = kd / task if task > 0 else math.inf
    weights = sorted({p.weight for p in model.pairs})
    LOGGER.info(f"densekd: first batch: task loss {task:.4g}, KD loss {kd:.4g}, KD/task {ratio:.3g}")
    if ratio > RATIO_HIGH or ratio < RATIO_LOW:
        what = "KD would dominate the task loss" if ratio > RATIO_HIGH else "KD would barely move the student"
        if len(weights) == 1 and ratio > 0 and math.isfinite(ratio):
            fix = f"weight={suggested_weight(weights[0], ratio):.3g} (now {weights[0]:g}) would make them equal"
        else:
            fix = f"scale every pair's weight by {1 / ratio:.3g} to make them equal" if ratio > 0 and \
                math.isfinite(ratio) else "check the teacher and the pairs"
        msg = f"densekd: KD/task loss ratio {ratio:.3g} on the first batch (KD {kd:.4g}, task {task:.4g}): {what}; {fix}"
        LOGGER.warning(msg)
        warnings.warn(msg, UserWarning, stacklevel=2)
    return {"task_loss": task, "kd_loss": kd, "kd_task_ratio": ratio}


def teacher_metric_check(trainer: Any) -> dict[str, Any]:
    """The teacher's mAP on the run's validation split (a copy is validated: Ultralytics fuses what it checks)."""
    teacher = copy.deepcopy(unwrap_model(trainer.model).teacher_model)
    validator = trainer.get_validator()
    validator.args.plots = False
    validator.args.save_json = False
    with rng_preserved():
        stats = validator(model=teacher)
    m, m50 = float(stats.get("metrics/mAP50-95(B)", float("nan"))), float(stats.get("metrics/mAP50(B)", float("nan")))
    LOGGER.info(f"densekd: teacher on '{trainer.args.split}': mAP50-95 {m:.4f}, mAP50 {m50:.4f}")
    return {"teacher_map50_95": m, "teacher_map50": m50}


__all__ = ["RATIO_HIGH", "RATIO_LOW", "first_batch", "kd_task_ratio_check", "teacher_metric_check",
           "training_loss_items"]
