"""MGD — masked generative distillation (Yang et al., ECCV 2022).

Official detection code (yzd-v/MGD ``det/mmdet/distillation/losses/mgd.py``): random spatial mask
``M = 0 where rand > 1 − λ else 1`` (one draw per position, shared over channels, so a fraction λ of the
positions is hidden), generation block G = conv3×3 – ReLU – conv3×3 on the masked aligned student feature,
loss = Σ (G(F̂_S ⊙ M) − F_T)² / N, × α. Defaults λ = 0.65, α = 2e-5 (RetinaNet:
``det/configs/distillers/mgd/retina_rx101_64x4d_distill_retina_r50_fpn_2x_coco.py``).
Random numbers are drawn on the features' device (docs/methods.md, "MGD"); pass a ``generator`` on that
device for reproducible masks.
Returns ``{"loss_mgd": ...}``.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import DistillContext, DistillLoss
from .registry import register_loss


@register_loss("mgd")
class MGD(DistillLoss):
    def __init__(self, student_channels: int, teacher_channels: int, align: str = "conv1x1",
                 alpha_mgd: float = 2e-5, lambda_mgd: float = 0.65) -> None:
        super().__init__(student_channels, teacher_channels, align)
        if not 0.0 <= lambda_mgd <= 1.0:
            raise ValueError(f"mgd lambda_mgd (masked ratio) must be in [0, 1], got {lambda_mgd}")
        self.alpha_mgd = float(alpha_mgd)
        self.lambda_mgd = float(lambda_mgd)
        c = teacher_channels
        self.generation = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(c, c, 3, padding=1)
        )

    def random_mask(self, feat: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """[N, 1, H, W] mask on ``feat``'s device: 0 with probability ``lambda_mgd``, else 1."""
        n, _, h, w = feat.shape
        r = torch.rand((n, 1, h, w), device=feat.device, generator=generator)
        return (r <= 1.0 - self.lambda_mgd).to(feat.dtype)

    def masked_generation_loss(self, student_aligned: Tensor, teacher_feat: Tensor, mask: Tensor) -> Tensor:
        """Σ (G(F̂_S ⊙ M) − F_T)² / N, unweighted."""
        new = self.generation(student_aligned * mask)
        return (new - teacher_feat).pow(2).sum() / teacher_feat.shape[0]

    def forward(self, student_feat: Tensor, teacher_feat: Tensor, context: DistillContext | None = None,
                generator: torch.Generator | None = None) -> dict[str, Tensor]:
        self.check_pair(student_feat, teacher_feat)
        s = self.align(student_feat)
        mask = self.random_mask(s, generator)
        return {"loss_mgd": self.alpha_mgd * self.masked_generation_loss(s, teacher_feat.detach(), mask)}
