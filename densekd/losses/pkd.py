"""PKD — Pearson correlation KD (Cao et al., NeurIPS 2022).

Both feature maps are standardised per channel over (N, H, W) — (x − mean) / (std + 1e-6) with the
unbiased std, as mmrazor ``models/losses/pkd_loss.py`` (``PKDLoss.norm``) — and the loss is
MSE(norm(F̂_S), norm(F_T)) / 2 (= 1 − Pearson r, up to the std estimator), × ``loss_weight``.
Default weight 6: mmrazor ``configs/distill/mmdet/pkd/pkd_fpn_frcnn_r101_frcnn_r50_2x_coco.py``
(``PKDLoss, loss_weight=6``); its RetinaNet config (``pkd_fpn_retina_x101_retina_r50_2x_coco.py``) uses 10.
Returns ``{"loss_pkd": ...}``.

Computed from per-channel sums (``densekd.ops.standardised_mse``: same value and gradient, a few passes over the
maps instead of the ~20 of the written-out form; docs/methods.md, "PKD").
"""
from __future__ import annotations

from torch import Tensor

from ..ops.pearson import standardised_mse
from .base import DistillContext, DistillLoss
from .registry import register_loss


def channel_standardise(x: Tensor, eps: float = 1e-6) -> Tensor:
    """Zero mean / unit std per channel, statistics over batch and space (the written-out form; the loss itself
    runs :func:`densekd.ops.standardised_mse`, which equals MSE of two of these)."""
    dims = (0, 2, 3)
    mean = x.mean(dim=dims, keepdim=True)
    std = x.std(dim=dims, keepdim=True)
    return (x - mean) / (std + eps)


@register_loss("pkd")
class PKD(DistillLoss):
    def __init__(self, student_channels: int, teacher_channels: int, align: str = "conv1x1",
                 loss_weight: float = 6.0) -> None:
        super().__init__(student_channels, teacher_channels, align)
        self.loss_weight = float(loss_weight)

    def forward(self, student_feat: Tensor, teacher_feat: Tensor,
                context: DistillContext | None = None) -> dict[str, Tensor]:
        self.check_pair(student_feat, teacher_feat)
        if teacher_feat.shape[0] * teacher_feat.shape[2] * teacher_feat.shape[3] < 2:
            raise ValueError(
                f"pkd needs at least 2 values per channel (N·H·W ≥ 2) to standardise, got teacher "
                f"{tuple(teacher_feat.shape)}"
            )
        # MSE(norm F̂_S, norm F_T) / 2, norm = channel_standardise, from per-channel sums
        return {"loss_pkd": self.loss_weight * standardised_mse(self.align(student_feat), teacher_feat) / 2}
