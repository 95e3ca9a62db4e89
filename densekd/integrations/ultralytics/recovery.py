"""Recovery from a NaN/Inf loss or fitness in a distillation run: back to ``last.pt``'s EMA student and KD
modules, and the epoch redone."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from ultralytics.utils import LOGGER
from ultralytics.utils.torch_utils import unwrap_model

from .checkpoint import _CKPT_KEY


def recover_from_nan(trainer: Any, epoch: int) -> bool:
    """Ultralytics' NaN/Inf recovery (reload ``last.pt``, redo the epoch; at most 3 times in a row), for the
    wrapped model of a :class:`~densekd.integrations.ultralytics.DistillationTrainer`. Ultralytics' own reads the
    checkpoint's EMA as its distillation wrapper (``student_model``, ``projector``); ours holds the plain student,
    and the KD modules are in the ``"densekd"`` entry. The detection and the limits follow Ultralytics 8.4's
    ``BaseTrainer._handle_nan_recovery`` (one device: no DDP broadcast). True when the epoch is to be redone."""
    loss_nan = trainer.loss is not None and not bool(torch.isfinite(trainer.loss).all())
    fitness_nan = trainer.fitness is not None and not np.isfinite(trainer.fitness)
    if not (loss_nan or fitness_nan):
        return False
    reason = "Loss NaN/Inf" if loss_nan else "Fitness NaN/Inf"
    if epoch == trainer.start_epoch:
        LOGGER.warning(f"{reason} detected but can not recover from last.pt...")
        return False  # as Ultralytics: nothing to go back to in the first epoch, training continues
    if not trainer.last.exists():
        raise RuntimeError(f"{reason} detected but no valid last.pt is available for recovery")
    trainer.nan_recovery_attempts += 1
    if trainer.nan_recovery_attempts > 3:
        raise RuntimeError(f"Training failed: NaN persisted for {trainer.nan_recovery_attempts} epochs")
    ckpt = torch.load(trainer.last, map_location="cpu", weights_only=False)
    entry = ckpt.get(_CKPT_KEY) if isinstance(ckpt, dict) else None
    ema = ckpt.get("ema") if isinstance(ckpt, dict) else None
    if not entry or not isinstance(ema, nn.Module):
        raise RuntimeError(f"{reason} detected in epoch {epoch + 1}; cannot recover: {trainer.last} holds "
                           f"{'no EMA model' if not isinstance(ema, nn.Module) else 'no densekd entry'}")
    student_sd = ema.float().state_dict()
    kd_sd = entry.get("kd_ema") or entry["kd"]
    if not all(torch.isfinite(v).all() for sd in (student_sd, kd_sd) for v in sd.values()
               if isinstance(v, Tensor) and v.is_floating_point()):
        raise RuntimeError(f"Checkpoint {trainer.last} is corrupted with NaN/Inf weights")
    LOGGER.warning(f"{reason} detected (attempt {trainer.nan_recovery_attempts}/3), recovering from last.pt...")
    trainer._model_train()
    model = unwrap_model(trainer.model)
    model.student_model.load_state_dict(student_sd)  # the model restarts from the EMA, as Ultralytics does
    model.kd.load_state_dict(kd_sd)
    trainer._load_checkpoint_state(ckpt)  # optimizer, scaler, EMA (rebuilt around the wrapper), best fitness
    trainer.scheduler.last_epoch = epoch - 1
    return True
