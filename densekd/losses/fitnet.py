"""FitNet (Romero et al., ICLR 2015): hint loss = MSE(align(F_S), F_T).

docs/methods.md, "FitNet": MSE(F̂_S, F_T). Mean-reduced over all elements, times ``loss_weight``
(1.0: the 'no mask' row of ACAM-KD Table 10 is a plain feature MSE). Returns ``{"loss_feat": ...}``.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .base import DistillContext, DistillLoss
from .registry import register_loss


@register_loss("fitnet")
class FitNet(DistillLoss):
    def __init__(self, student_channels: int, teacher_channels: int, align: str = "conv1x1",
                 loss_weight: float = 1.0) -> None:
        super().__init__(student_channels, teacher_channels, align)
        self.loss_weight = float(loss_weight)

    def forward(self, student_feat: Tensor, teacher_feat: Tensor,
                context: DistillContext | None = None) -> dict[str, Tensor]:
        self.check_pair(student_feat, teacher_feat)
        return {"loss_feat": self.loss_weight * F.mse_loss(self.align(student_feat), teacher_feat.detach())}
