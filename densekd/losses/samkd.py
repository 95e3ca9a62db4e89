"""SAMKD — Spatial-aware Adaptive Masking KD (Zhang, Li, Li, Xu), paper Sec. III.

Reads top to bottom against docs/methods.md, "SAMKD" and the paper ("SAMKD: Spatial-aware Adaptive Masking
Knowledge Distillation for Object Detection"):

* SFD (Sec. III-A, eq. 1–8): for each pyramid scale s ∈ {1, 2, 4} the map is split into s×s regions;
  teacher spatial / channel attention per region decide which student positions / channels are hidden
  (masks), two small generators rebuild the teacher feature from the masked student feature.
* SLD (Sec. III-B, eq. 9–12): region-averaged classification logits distilled with KL, each region
  weighted by the (detached) cosine distance of the teacher and student features in that region.
* Total (eq. 13): ``loss_feat = α·L_feat`` and ``loss_logit = β·L_logit`` (α = 2e-3, β = 6e-6).

Regions when H or W is not divisible by s
-----------------------------------------
**Decision** (docs/methods.md, "Regions"): regions form a *partition* of the map: row r belongs to region row
``floor(r·s/H)`` and column c to region column ``floor(c·s/W)``. For divisible sizes this is exactly the
even s×s split. We do not use ``adaptive_avg_pool2d``'s bins because they *overlap* when H % s ≠ 0
(H = 5, s = 2 gives rows [0, 3) and [2, 5)), which would give one position two masks from two regions.
When H < s some regions are empty; they are left out of every sum.

All region statistics are computed with one one-hot [HW, s²] assignment matrix (a matmul gathers a
region's sum, its transpose broadcasts region values back to positions): no Python loop over regions,
only the loop over the (at most three) scales.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import DistillContext, DistillLoss
from .registry import register_loss


def region_assignment(h: int, w: int, s: int, device=None, dtype=torch.float32) -> Tensor:
    """One-hot [H·W, s·s] matrix: P[p, r] = 1 iff position p (row-major) lies in region r.

    Region of position (y, x) = (floor(y·s/H), floor(x·s/W)), region index ``ry·s + rx``
    (see the module docstring for why a partition and not adaptive-pool bins).
    """
    if s < 1:
        raise ValueError(f"SAMKD scale must be a positive integer, got {s}")
    ry = torch.div(torch.arange(h, device=device) * s, h, rounding_mode="floor")
    rx = torch.div(torch.arange(w, device=device) * s, w, rounding_mode="floor")
    rid = (ry[:, None] * s + rx[None, :]).reshape(-1)  # [HW]
    return F.one_hot(rid, s * s).to(dtype)


def _region_sum(x: Tensor, p: Tensor) -> Tensor:
    """[B, K, H, W] → [B, K, R]: sum of x over each region."""
    b, k = x.shape[:2]
    return x.reshape(b, k, -1) @ p


def _to_positions(v: Tensor, p: Tensor, hw: tuple[int, int]) -> Tensor:
    """[B, K, R] region values → [B, K, H, W], each position gets its region's value."""
    b, k = v.shape[:2]
    return (v @ p.t()).reshape(b, k, *hw)


def samkd_masks(
    teacher_feat: Tensor,
    scale: int,
    tau: float = 0.5,
    omega_s: float = 0.95,
    omega_c: float = 0.50,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Teacher attention and SFD masks at one pyramid scale (eq. 1–4).

    Returns ``(mask_s [B,1,H,W], mask_c [B,C,H,W], att_s [B,1,H,W], att_c [B,C,s*s])`` where
    ``att_s`` is A_s = φ(σ(‖F_T(p)‖²/(τC))) with φ rescaling each region's map to mean 1
    (docs/methods.md, "SFD": Decision on φ), ``att_c`` is A_c = σ(mean_{p∈R} F_T(p)/τ) per region, and
    the masks are 0 where the attention is ≥ its threshold, else 1 (the most attentive parts are hidden).
    Computed without gradient: they only depend on the teacher.
    """
    with torch.no_grad():
        t = teacher_feat.detach().float()
        b, c, h, w = t.shape
        p = region_assignment(h, w, scale, device=t.device)  # [HW, R]
        count = p.sum(0)  # [R] positions per region (0 for empty regions when H < s)
        # eq. 1: spatial attention, sigmoid of the squared L2 norm over channels / (τ C)
        a = torch.sigmoid(t.pow(2).sum(1, keepdim=True) / (tau * c))  # [B,1,H,W]
        a_sum = _region_sum(a, p)  # [B,1,R]
        # φ: rescale to mean 1 inside each region: φ(a) = |R| · a / Σ_R a
        scale_r = count / a_sum.clamp_min(1e-12)  # [B,1,R]
        att_s = a * _to_positions(scale_r, p, (h, w))
        # eq. 2: channel attention, sigmoid of the region mean / τ
        att_c = torch.sigmoid(_region_sum(t, p) / count.clamp_min(1) / tau)  # [B,C,R]
        # eq. 3–4: hide what is at or above the thresholds
        mask_s = (att_s < omega_s).to(teacher_feat.dtype)
        mask_c = _to_positions((att_c < omega_c).float(), p, (h, w)).to(teacher_feat.dtype)
    return mask_s, mask_c, att_s, att_c


def _generator_spatial(c: int) -> nn.Sequential:
    """θ_s: conv3×3 – ReLU – conv3×3 (eq. 7)."""
    return nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(c, c, 3, padding=1))


def _generator_channel(c: int) -> nn.Sequential:
    """θ_c: per-position perceptron conv1×1 – ReLU – conv1×1 (eq. 7)."""
    return nn.Sequential(nn.Conv2d(c, c, 1), nn.ReLU(inplace=True), nn.Conv2d(c, c, 1))


@register_loss("samkd")
class SAMKD(DistillLoss):
    """SAMKD loss for one FPN level (docs/methods.md, "SAMKD").

    Args:
        student_channels, teacher_channels, align: see :class:`DistillLoss`.
        scales: pyramid scales (s×s regions each); ``[1]`` is DMKD-style single scale (paper Table III).
        tau: temperature of both attentions (0.5).
        omega_s, omega_c: spatial / channel mask thresholds (0.95 / 0.50, paper Table VI).
        lambda_s, mu_c: weights of θ_s and θ_c in eq. 7 (0.45 / 0.55, paper Table V).
        alpha, beta: weights of L_feat and L_logit in eq. 13 (2e-3 / 6e-6, paper Fig. 4).
        temperature: T of the SLD softmax (1).
        use_features: SFD on (default). ``False`` with ``use_logits`` is the paper's Table II row "SLD only"
            (no generators are built; ``loss_feat`` is not returned).
        use_logits: SLD on. If True, ``context.aux["logits"] = (student_logits, teacher_logits)``
            ([B, K, h, w] classification logits of this level) is required and a missing entry is an
            error; if False only SFD runs and ``loss_logit`` is not returned.

    Returns ``{"loss_feat": α·L_feat, "loss_logit": β·L_logit}`` (each only when its switch is on).
    L_feat = Σ_scales Σ_{b,c,h,w} (F_T − F_rec)² / B. L_logit = Σ_scales Σ_R W(R)·KL, averaged over the
    batch (**Decision (this file):** the paper sums over regions and does not say how the batch is
    reduced; we divide by B as L_feat does).
    """

    def __init__(
        self,
        student_channels: int,
        teacher_channels: int,
        align: str = "conv1x1",
        scales: Sequence[int] = (1, 2, 4),
        tau: float = 0.5,
        omega_s: float = 0.95,
        omega_c: float = 0.50,
        lambda_s: float = 0.45,
        mu_c: float = 0.55,
        alpha: float = 2e-3,
        beta: float = 6e-6,
        temperature: float = 1.0,
        use_logits: bool = True,
        use_features: bool = True,
    ) -> None:
        super().__init__(student_channels, teacher_channels, align)
        scales = [int(s) for s in scales]
        if not scales or any(s < 1 for s in scales):
            raise ValueError(f"SAMKD scales must be a non-empty list of positive integers, got {scales}")
        if not (use_features or use_logits):
            raise ValueError("samkd: use_features and use_logits are both off: nothing would be distilled (paper "
                             "Table II: SFD, SLD or both)")
        self.use_features = bool(use_features)
        self.scales = scales
        self.tau, self.omega_s, self.omega_c = float(tau), float(omega_s), float(omega_c)
        self.lambda_s, self.mu_c = float(lambda_s), float(mu_c)
        self.alpha, self.beta, self.temperature = float(alpha), float(beta), float(temperature)
        self.use_logits = bool(use_logits)
        c = teacher_channels
        # docs/methods.md, "SFD": one θ_s/θ_c pair per FPN level (= per loss module) and per scale.
        n_gen = len(scales) if self.use_features else 0
        self.gen_spatial = nn.ModuleList(_generator_spatial(c) for _ in range(n_gen))
        self.gen_channel = nn.ModuleList(_generator_channel(c) for _ in range(n_gen))

    # -- SFD ------------------------------------------------------------------------------------------
    def reconstruct(self, student_aligned: Tensor, teacher_feat: Tensor, i: int) -> Tensor:
        """F_rec at the i-th scale (eq. 5–7)."""
        mask_s, mask_c, _, _ = samkd_masks(teacher_feat, self.scales[i], self.tau, self.omega_s, self.omega_c)
        f_sp = student_aligned * mask_s  # eq. 5
        f_ch = student_aligned * mask_c  # eq. 6
        return self.lambda_s * self.gen_spatial[i](f_sp) + self.mu_c * self.gen_channel[i](f_ch)  # eq. 7

    # -- SLD ------------------------------------------------------------------------------------------
    def _logit_loss(self, s_aligned: Tensor, t: Tensor, logits_s: Tensor, logits_t: Tensor) -> Tensor:
        b = t.shape[0]
        total = t.new_zeros(())
        T = self.temperature
        for s in self.scales:
            # W(R) = 1 − cos(vec F_T(R), vec F̂_S(R)), eq. 11; detached (docs/methods.md, "SLD")
            with torch.no_grad():
                pf = region_assignment(t.shape[2], t.shape[3], s, device=t.device, dtype=t.dtype)
                sd = s_aligned.detach()
                dot = _region_sum((t * sd).sum(1, keepdim=True), pf)[:, 0]  # [B,R]
                nt = _region_sum(t.pow(2).sum(1, keepdim=True), pf)[:, 0]
                ns = _region_sum(sd.pow(2).sum(1, keepdim=True), pf)[:, 0]
                cos = dot / (nt.sqrt() * ns.sqrt()).clamp_min(1e-12)
                nonempty = pf.sum(0) > 0  # [R]
                weight = (1.0 - cos) * nonempty
            # Z(R): average of the logits over R, eq. 9–10 (regions of the logit map at the same scale)
            pl = region_assignment(logits_t.shape[2], logits_t.shape[3], s, device=t.device, dtype=logits_s.dtype)
            cnt = pl.sum(0).clamp_min(1)
            z_t = _region_sum(logits_t.detach(), pl) / cnt  # [B,K,R]
            z_s = _region_sum(logits_s, pl) / cnt
            # KL(softmax(Z_T/T) ‖ softmax(Z_S/T)) per region, summed over classes, eq. 12
            log_p_t = F.log_softmax(z_t / T, dim=1)
            log_p_s = F.log_softmax(z_s / T, dim=1)
            kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(1)  # [B,R]
            kl = kl * (pl.sum(0) > 0)
            total = total + (weight * kl).sum() / b
        return total

    def forward(
        self, student_feat: Tensor, teacher_feat: Tensor, context: DistillContext | None = None
    ) -> dict[str, Tensor]:
        self.check_pair(student_feat, teacher_feat)
        logits = None
        if self.use_logits:
            logits = None if context is None else context.aux.get("logits")
            if logits is None:
                raise ValueError(
                    "samkd: SLD needs the classification logits of this level in context.aux['logits'] = "
                    "(student_logits, teacher_logits); configure the pair's aux={'logits': (student_spec, "
                    "teacher_spec)} or build the loss with use_logits=False (SFD only)"
                )
            if not (isinstance(logits, (tuple, list)) and len(logits) == 2):
                raise ValueError(
                    f"samkd: context.aux['logits'] must be a (student_logits, teacher_logits) pair, got "
                    f"{type(logits).__name__}"
                )
            ls, lt = logits
            if ls.dim() != 4 or ls.shape != lt.shape or ls.shape[0] != teacher_feat.shape[0]:
                raise ValueError(
                    f"samkd: student and teacher logits must be [B, K, h, w] of equal shape with the "
                    f"features' batch size {teacher_feat.shape[0]}, got student {tuple(ls.shape)} and teacher "
                    f"{tuple(lt.shape)}"
                )
        t = teacher_feat.detach()
        s = self.align(student_feat)
        b = t.shape[0]
        out: dict[str, Tensor] = {}
        if self.use_features:
            l_feat = t.new_zeros(())
            for i in range(len(self.scales)):  # ≤ 3 scales; regions are handled as tensors
                rec = self.reconstruct(s, t, i)
                l_feat = l_feat + (rec - t).pow(2).sum() / b  # eq. 8, sum-reduced / batch size
            out["loss_feat"] = self.alpha * l_feat
        if logits is not None:
            out["loss_logit"] = self.beta * self._logit_loss(s, t, logits[0], logits[1])
        return out
