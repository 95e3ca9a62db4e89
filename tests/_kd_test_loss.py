"""A tiny MSE distillation loss for the engine/detection tests (until ACAM-KD is on main).

Registered as "test_mse"; accepts and ignores other keyword arguments (e.g. ACAM-KD's num_masks) so the
paper recipes' ``distill.kwargs`` can be kept in smoke runs.
"""
from __future__ import annotations

import torch.nn.functional as F

from densekd.losses import DistillLoss, register_loss
from densekd.losses.registry import _LOSSES


class _TestMSE(DistillLoss):
    def __init__(self, student_channels: int, teacher_channels: int, **_ignored) -> None:
        super().__init__(student_channels, teacher_channels)

    def forward(self, s, t, context=None):
        self.check_pair(s, t)
        return {"loss_mse": F.mse_loss(self.align(s), t)}


if "test_mse" not in _LOSSES:
    register_loss("test_mse")(_TestMSE)
