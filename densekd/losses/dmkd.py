"""DMKD — dual masking augmentation KD (Yang et al., ICASSP 2024).

docs/methods.md, "DMKD": DMKD = SAMKD's SFD at the single scale 1×1 (no SLD). SAMKD builds on DMKD's
dual (spatial + channel) attention masking and reconstruction (SAMKD paper Sec. III-A, "consistent with
[8]"), so the single-scale SFD *is* the DMKD feature loss: one region (the whole map), teacher spatial
attention rescaled to mean 1, channel attention σ(mean/τ), masks at ω_s = 0.95 / ω_c = 0.50, θ_s / θ_c
generators mixed 0.45 / 0.55, summed squared error / batch size, weight α = 2e-3.
Returns ``{"loss_feat": ...}`` only.
"""
from __future__ import annotations

from .registry import register_loss
from .samkd import SAMKD


@register_loss("dmkd")
class DMKD(SAMKD):
    """SAMKD's SFD at scale 1, no logit term. Same keyword arguments as :class:`SAMKD` except that
    ``scales`` is fixed to ``[1]`` and ``use_logits`` to False."""

    def __init__(self, student_channels: int, teacher_channels: int, align: str = "conv1x1", **kwargs) -> None:
        for fixed in ("scales", "use_logits", "beta", "temperature"):
            if fixed in kwargs:
                raise TypeError(f"dmkd fixes {fixed!r} (single scale 1, no SLD); use 'samkd' to change it")
        super().__init__(student_channels, teacher_channels, align, scales=(1,), use_logits=False, **kwargs)
