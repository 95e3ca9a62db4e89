"""FGD — focal and global distillation (Yang et al., CVPR 2022).

Follows the official code (yzd-v/FGD ``mmdet/distillation/losses/fgd.py``, ``FeatureLoss``; also mmrazor
``models/losses/fgd_loss.py``, which fixes the official file's swapped row/column indexing of the box mask
— we index rows by y and columns by x as mmrazor does):

* Boxes rescaled to the level; box b covers rows floor(y1)..ceil(y2) and columns floor(x1)..ceil(x2)
  (inclusive). Foreground mask M_fg = 1 / ((ceil(y2) − floor(y1) + 1)(ceil(x2) − floor(x1) + 1)) inside a
  box, the max over overlapping boxes, 0 elsewhere; background M_bg = 1 where M_fg = 0, divided by the
  number of background pixels of that image (an image without boxes is all background).
  Built by broadcasting a coordinate grid against the [B, N, 4] boxes — no Python loop over boxes.
* Attention (eq. 2–3): S = H·W·softmax(mean_c |F| / T) over positions, C = C·softmax(mean_hw |F| / T) over
  channels, T = 0.5, for the teacher and the aligned student.
* Focal loss (eq. 4): α Σ M_fg S_T C_T (F_T − F̂_S)² / N + β Σ M_bg S_T C_T (F_T − F̂_S)² / N
  (teacher attention on both sides, sum over C, H, W and batch, divided by the batch size N).
* Attention loss (eq. 5): γ (Σ |C_T − C_S| + Σ |S_T − S_S|) / N.
* Global loss (eq. 6–7): λ Σ (G(F_T) − G(F̂_S))² / N with GcBlock context modelling
  G(F) = F + W_v2(ReLU(LN(W_v1(Σ_j softmax_j(W_k F) F_j)))), one block for each side; W_k kaiming
  (fan_in) initialised, the last W_v2 zero-initialised (as the official ``reset_parameters``).

Defaults are the RetinaNet recipe (yzd-v/FGD ``configs/distillers/fgd/
fgd_retina_r101_fpn_2x_distill_retina_r50_fpn_2x_coco.py``): T = 0.5, α = 1e-3, β = 5e-4, γ = 5e-4,
λ = 5e-6 (the code's own default γ is 1e-3, used for the two-stage detectors).
Needs ``context.boxes`` (+ ``box_valid``) and ``context.image_size``.
Returns ``{"loss_fg", "loss_bg", "loss_attention", "loss_global"}``, each already weighted.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import DistillContext, DistillLoss
from .registry import register_loss


def fgd_masks(boxes: Tensor, box_valid: Tensor | None, hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Foreground / background masks [B, H, W] from level-scaled boxes [B, N, 4] (x1, y1, x2, y2)."""
    h, w = hw
    b = boxes.shape[0]
    dev = boxes.device
    if boxes.shape[1] == 0:
        fg = torch.zeros(b, h, w, device=dev)
    else:
        wmin = torch.floor(boxes[..., 0])
        hmin = torch.floor(boxes[..., 1])
        wmax = torch.ceil(boxes[..., 2])
        hmax = torch.ceil(boxes[..., 3])
        area = 1.0 / ((hmax + 1 - hmin) * (wmax + 1 - wmin))  # [B, N]
        ys = torch.arange(h, device=dev, dtype=boxes.dtype)
        xs = torch.arange(w, device=dev, dtype=boxes.dtype)
        rows = (ys >= hmin[..., None]) & (ys <= hmax[..., None])  # [B, N, H]
        cols = (xs >= wmin[..., None]) & (xs <= wmax[..., None])  # [B, N, W]
        inside = rows[..., :, None] & cols[..., None, :]  # [B, N, H, W]
        if box_valid is not None:
            inside = inside & box_valid[..., None, None].bool()
        fg = (inside.to(boxes.dtype) * area[..., None, None]).amax(dim=1).clamp_min(0)  # [B, H, W]
    bg = (fg <= 0).to(fg.dtype)
    bg = bg / bg.sum(dim=(1, 2), keepdim=True).clamp_min(1.0)
    return fg, bg


def fgd_attention(feat: Tensor, temp: float) -> tuple[Tensor, Tensor]:
    """Spatial [B, H, W] = H·W·softmax(mean_c|F|/T) and channel [B, C] = C·softmax(mean_hw|F|/T)."""
    n, c, h, w = feat.shape
    value = feat.abs()
    spatial = h * w * F.softmax((value.mean(1) / temp).reshape(n, -1), dim=1).reshape(n, h, w)
    channel = c * F.softmax(value.mean(dim=(2, 3)) / temp, dim=1)
    return spatial, channel


class _GcContext(nn.Module):
    """GcBlock-style global context: F + W_v2(ReLU(LN(W_v1(attention-pooled F))))."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv_mask = nn.Conv2d(c, 1, kernel_size=1)
        self.channel_add = nn.Sequential(
            nn.Conv2d(c, c // 2, kernel_size=1), nn.LayerNorm([c // 2, 1, 1]), nn.ReLU(inplace=True),
            nn.Conv2d(c // 2, c, kernel_size=1),
        )
        nn.init.kaiming_normal_(self.conv_mask.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.conv_mask.bias)
        nn.init.zeros_(self.channel_add[-1].weight)
        nn.init.zeros_(self.channel_add[-1].bias)

    def added(self, x: Tensor) -> Tensor:
        """W_v2(ReLU(LN(W_v1(Σ_j softmax_j(W_k F) F_j)))) [N, C, 1, 1]: what the block adds at every position."""
        n, c, h, w = x.shape
        att = F.softmax(self.conv_mask(x).reshape(n, h * w, 1), dim=1)  # [N, HW, 1]
        context = torch.bmm(x.reshape(n, c, h * w), att).reshape(n, c, 1, 1)  # attention pooling: one product
        return self.channel_add(context)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.added(x)


@register_loss("fgd")
class FGD(DistillLoss):
    def __init__(self, student_channels: int, teacher_channels: int, align: str = "conv1x1",
                 temp: float = 0.5, alpha_fgd: float = 1e-3, beta_fgd: float = 5e-4,
                 gamma_fgd: float = 5e-4, lambda_fgd: float = 5e-6) -> None:
        super().__init__(student_channels, teacher_channels, align)
        if teacher_channels < 2:
            raise ValueError(f"fgd needs teacher_channels ≥ 2 for its GcBlock (C/2 bottleneck), got {teacher_channels}")
        self.temp = float(temp)
        self.alpha_fgd, self.beta_fgd = float(alpha_fgd), float(beta_fgd)
        self.gamma_fgd, self.lambda_fgd = float(gamma_fgd), float(lambda_fgd)
        self.context_s = _GcContext(teacher_channels)
        self.context_t = _GcContext(teacher_channels)

    def forward(self, student_feat: Tensor, teacher_feat: Tensor,
                context: DistillContext | None = None) -> dict[str, Tensor]:
        self.check_pair(student_feat, teacher_feat)
        if context is None or context.boxes is None:
            raise ValueError(
                "fgd needs ground-truth boxes: pass a DistillContext with boxes [B, N, 4], box_valid [B, N] "
                "and image_size (the Distiller builds it from detection targets)"
            )
        n, _, h, w = teacher_feat.shape
        if context.boxes.dim() != 3 or context.boxes.shape[0] != n or context.boxes.shape[-1] != 4:
            raise ValueError(
                f"fgd: context.boxes must be [B, N, 4] with B={n}, got {tuple(context.boxes.shape)}"
            )
        boxes = context.boxes_at((h, w)).to(teacher_feat.device, torch.float32)
        valid = None if context.box_valid is None else context.box_valid.to(teacher_feat.device)
        mask_fg, mask_bg = fgd_masks(boxes, valid, (h, w))
        mask_fg, mask_bg = mask_fg.to(teacher_feat.dtype), mask_bg.to(teacher_feat.dtype)

        t = teacher_feat.detach()
        s = self.align(student_feat)
        s_att_t, c_att_t = fgd_attention(t, self.temp)
        s_att_s, c_att_s = fgd_attention(s, self.temp)

        # focal loss (eq. 4): Σ_{c,h,w} M S_T C_T (F_T − F̂_S)² for M = M_fg and M_bg, teacher attention on both
        # sides. The weight factors into a spatial part (M S_T) and a channel part (C_T), so both sums are one
        # product of the squared error [N, C, HW] with the two spatial maps [N, HW, 2], then weighted by C_T: no
        # weighted [N, C, H, W] error is written (docs/methods.md, "FGD")
        d = s - t
        d2 = d.pow(2).reshape(n, -1, h * w)
        spatial = torch.stack([mask_fg * s_att_t, mask_bg * s_att_t], dim=-1).reshape(n, h * w, 2)
        fg_loss, bg_loss = (torch.bmm(d2, spatial) * c_att_t[..., None]).sum(dim=(0, 1)) / n
        # attention loss (eq. 5)
        att_loss = ((c_att_s - c_att_t).abs().sum() + (s_att_s - s_att_t).abs().sum()) / n
        # global loss (eq. 6–7): G(F) = F + a(F), a(F) [N, C, 1, 1] the same at every position; with
        # δ = a(F̂_S) − a(F_T): Σ (G(F̂_S) − G(F_T))² = Σ d² + 2 Σ_c δ Σ_hw d + H·W Σ δ², no two more full maps
        delta = (self.context_s.added(s) - self.context_t.added(t)).reshape(n, -1)
        rela_loss = (d2.sum() + 2 * (delta * d.sum(dim=(2, 3))).sum() + h * w * delta.pow(2).sum()) / n
        return {
            "loss_fg": self.alpha_fgd * fg_loss,
            "loss_bg": self.beta_fgd * bg_loss,
            "loss_attention": self.gamma_fgd * att_loss,
            "loss_global": self.lambda_fgd * rela_loss,
        }
