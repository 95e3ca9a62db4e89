"""Hinton KD (Hinton, Vinyals, Dean 2015): KL of temperature-softened class scores, × T².

docs/methods.md, "Hinton KD": KL of temperature-softened class scores, per pixel for segmentation.
For [B, K, H, W] logits the KL over classes is taken at every pixel and averaged over the *valid* pixels:
when ``context.masks`` ([B, Hm, Wm] labels) is given it is resized (nearest) to (H, W) and pixels equal to
``context.ignore_index`` are left out. [B, K] logits (classification) are also accepted (mean over B).

Defaults: T = 1, weight 1 — the pixel-wise KD baseline of the CIRKD segmentation protocol that ACAM-KD
and MasKD share (winycg/CIRKD ``train_kd.py``: ``--kd-temperature`` default 1.0, ``--lambda-kd 1.``).
Default ``align="identity"``: both sides must score the same classes.
Returns ``{"loss_kd": ...}``.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .base import DistillContext, DistillLoss
from .registry import register_loss


@register_loss("hinton_kd")
class HintonKD(DistillLoss):
    compares_distributions = True  # docs/methods.md, "CWD": on the logits, align="identity"

    def __init__(self, student_channels: int, teacher_channels: int, align: str = "identity",
                 temperature: float = 1.0, loss_weight: float = 1.0) -> None:
        super().__init__(student_channels, teacher_channels, align)
        if temperature <= 0:
            raise ValueError(f"hinton_kd temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.loss_weight = float(loss_weight)

    def forward(self, student_feat: Tensor, teacher_feat: Tensor,
                context: DistillContext | None = None) -> dict[str, Tensor]:
        if student_feat.dim() == 2 and teacher_feat.dim() == 2:  # [B, K] class scores
            s4, t4 = student_feat[:, :, None, None], teacher_feat[:, :, None, None]
        else:
            s4, t4 = student_feat, teacher_feat
        self.check_pair(s4, t4)
        T = self.temperature
        s = self.align(s4)
        log_p_t = F.log_softmax(t4.detach() / T, dim=1)
        log_p_s = F.log_softmax(s / T, dim=1)
        kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(1)  # [B, H, W] per-pixel KL(p_T ‖ p_S)
        if context is not None and context.masks is not None and student_feat.dim() == 4:
            m = context.masks
            if m.dim() != 3 or m.shape[0] != kl.shape[0]:
                raise ValueError(
                    f"hinton_kd: context.masks must be [B, H, W] with B={kl.shape[0]}, got {tuple(m.shape)}"
                )
            m = F.interpolate(m[:, None].float(), size=kl.shape[1:], mode="nearest")[:, 0]
            valid = (m != context.ignore_index).to(kl.dtype)
            loss = (kl * valid).sum() / valid.sum().clamp_min(1.0)
        else:
            loss = kl.mean()
        return {"loss_kd": self.loss_weight * loss * T * T}
