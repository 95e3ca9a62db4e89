"""ACAM-KD mask-unit variants tried on the detection demo's dev split, registered as losses for
``python benchmarks/detection_setting.py run "w05-pre-1000+acam_kd_wn@0.1#g2" --plugin benchmarks/acam_unit_variants.py
--kwargs '{"acam_kd_wn": {"gain": 2}}'`` (and ``acam_kd_orth``): weight-normalised units (bounded mask sharpness) and
orthogonal units (masks kept apart by construction). Neither changed dev AP (benchmarks/results/detection_setting.md);
kept so that those rows can be rerun, not part of the package."""
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from densekd.losses.acam import ACAMKD
from densekd.losses.registry import register_loss


class RowNorm(nn.Module):
    def __init__(self, gain):
        super().__init__()
        self.gain = float(gain)

    def forward(self, w):
        if w.dim() == 1:  # scalar channel units
            return self.gain * torch.tanh(w / self.gain)
        return self.gain * w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)


@register_loss("acam_kd_wn")
class ACAMKDWeightNorm(ACAMKD):
    """Units weight-normalised to L2 norm `gain` (bounded mask sharpness, Dice keeps a gradient)."""

    def __init__(self, student_channels, teacher_channels, gain=2.0, **kw):
        super().__init__(student_channels, teacher_channels, **kw)
        with torch.no_grad():  # start from the library's init direction
            pass
        for name in ("spatial_units", "channel_units"):
            if getattr(self.ascm, name) is not None:
                parametrize.register_parametrization(self.ascm, name, RowNorm(gain))


@register_loss("acam_kd_orth")
class ACAMKDOrth(ACAMKD):
    """Adds λ_orth · mean_{i≠j} cos²(unit_i, unit_j) over each family's units to loss_div (descended by the masks)."""

    def __init__(self, student_channels, teacher_channels, lambda_orth=1.0, **kw):
        super().__init__(student_channels, teacher_channels, **kw)
        self.lambda_orth = float(lambda_orth)

    def forward(self, s, t, context=None):
        out = super().forward(s, t, context)
        pen = 0.0
        for u in (self.ascm.spatial_units, self.ascm.channel_units):
            if u is None or u.dim() != 2 or u.shape[0] < 2:
                continue
            n = F.normalize(u, dim=1)
            g = n @ n.t()
            m = u.shape[0]
            pen = pen + (g.pow(2).sum() - g.diagonal().pow(2).sum()) / (m * (m - 1))
        out["loss_div"] = out.get("loss_div", 0.0) + self.lambda_orth * pen
        return out
