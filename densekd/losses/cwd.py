"""CWD — channel-wise distillation (Shu et al., ICCV 2021).

Each channel's map is turned into a distribution over the H·W positions with a softmax at temperature τ;
the loss is KL(φ(F_T^c) ‖ φ(F̂_S^c)) summed over positions and channels, × τ², divided by N·C (the
official normalisation: irfanICMLL/TorchDistiller ``SemSeg-distill/utils/criterion.py``, ``CriterionCWD``
with ``norm_type='channel'``: ``loss /= n * c``, ``* temperature**2``; same in mmrazor
``models/losses/cwd.py``), × ``loss_weight``.

Defaults τ = 4, weight 3: the official segmentation run (TorchDistiller ``SemSeg-distill/README.md``:
``bash exp_cwd.sh channel kl 3 4`` = weight 3, temperature 4; CIRKD also builds ``CriterionCWD`` with
temperature 4). mmrazor's detection configs use τ = 1, weight 10 on FPN features
(``configs/distill/mmdet/cwd/cwd_fpn_frcnn_r101_frcnn_r50_1x_coco.py``); pass those for detection recipes.
Returns ``{"loss_cwd": ...}``.

The KL sum and its gradient, (softmax(F̂_S/τ) − softmax(F_T/τ))/τ per channel, are one kernel
(``densekd.ops.channel_kl``: same value and gradient as the written-out form, fewer passes over the maps; it also
zeroes the gradient's subnormal entries on a CPU, docs/methods.md, "Precision").
"""
from __future__ import annotations

from torch import Tensor

from ..ops.channel_kl import channel_kl
from .base import DistillContext, DistillLoss
from .registry import register_loss


@register_loss("cwd")
class CWD(DistillLoss):
    compares_distributions = True  # docs/methods.md, "CWD": on the logits, align="identity"

    def __init__(self, student_channels: int, teacher_channels: int, align: str = "conv1x1",
                 tau: float = 4.0, loss_weight: float = 3.0) -> None:
        super().__init__(student_channels, teacher_channels, align)
        if tau <= 0:
            raise ValueError(f"cwd tau must be > 0, got {tau}")
        self.tau = float(tau)
        self.loss_weight = float(loss_weight)

    def forward(self, student_feat: Tensor, teacher_feat: Tensor,
                context: DistillContext | None = None) -> dict[str, Tensor]:
        self.check_pair(student_feat, teacher_feat)
        s = self.align(student_feat)
        n, c = s.shape[:2]
        # Σ_{n,c} KL(softmax_HW(F_T/τ) ‖ softmax_HW(F̂_S/τ)) · τ² / (N·C); the gradient's subnormal entries (the
        # softmax's far tail) are zeroed in the kernel, so the aligner's and the student's backward run at full speed
        kl = channel_kl(s, teacher_feat, self.tau)
        return {"loss_cwd": self.loss_weight * kl * self.tau ** 2 / (n * c)}
