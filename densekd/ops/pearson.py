"""The mean squared error of two maps standardised per channel (PKD's loss), from per-channel sums.

With x̂ = (x − μ)/(σ + ε) per channel over batch and positions (μ the mean, σ the unbiased std over the channel's
M = B·H·W values), the written-out form materialises both standardised maps, their difference and its square, and
autograd runs back through the std and both divisions: about twenty passes over a map, several of them strided
reductions over (B, H, W). Here forward takes each map's per-channel mean and M2 = Σ (x − μ)² (per (b, c) row
along the contiguous positions, combined exactly: Chan et al.'s pairwise update), then

    z = s/(σ_s + ε) − t/(σ_t + ε) = ŝ − t̂ + a per-channel constant,   Σ (ŝ − t̂)² = M2(z),
    mse = Σ_c M2(z)_c / (M · C)

— centred sums throughout, so the value is as accurate as the written-out form's even where ŝ ≈ t̂ (a form from
Σ ŝ², Σ t̂² and Σ ŝ t̂ alone loses it to cancellation). The gradient is affine in s and t per channel:

    ∂(Σ (ŝ − t̂)²)/∂s = α (s − μ_s) − β (t − μ_t),   β = 2 / ((σ_s + ε)(σ_t + ε)),
    α = 2ε/(σ_s + ε)³ + 2 Σ ŝ t̂ / ((σ_s + ε)(M − 1) σ_s),   Σ ŝ t̂ = (Σ ŝ² + Σ t̂² − M2(z)) / 2,
    Σ ŝ² = (M − 1) σ_s² / (σ_s + ε)²

(σ_s depends on s_i through (s_i − μ_s)/((M − 1) σ_s); the mean's own dependence cancels, Σ (s − μ_s) = 0), so
backward writes the gradient in two passes. Forward centres each (b, c) row of s and t (a mean, a write, a
product-reduction), forms z in place of the centred student map and reduces it. Computed in at least float32
(docs/methods.md, "Precision").

A constant student channel (σ_s = 0): α's second term divides 0 by 0 and is taken as 0 — it multiplies
s − μ_s = 0 anyway — so the channel gets −β (t − μ_t), the gradient with σ_s held fixed, as autograd through
``torch.std`` gives the written-out form (tested).
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .squared_error import at_least_fp32


def _centred_rows(x3: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """x3 [B, C, L] → the rows centred on their own means (a new tensor), those means [B, C] and each row's sum of
    squared deviations [B, C] (a product-reduction of the centred rows: two passes and one write, where
    ``torch.var_mean``'s Welford loop took 3× as long at COCO P2)."""
    mean = x3.mean(dim=2)
    u = x3 - mean.unsqueeze(2)
    return u, mean, torch.einsum("bcl,bcl->bc", u, u)


def _combine(mean_bc: Tensor, m2_bc: Tensor, length: int) -> tuple[Tensor, Tensor]:
    """Per-(b, c) row means and M2 of rows of ``length`` → per-channel mean μ [C] and M2 [C] over (b, positions),
    exactly (Chan et al.'s pairwise update for equal counts)."""
    mean = mean_bc.mean(dim=0)
    return mean, m2_bc.sum(dim=0) + length * (mean_bc - mean).square().sum(dim=0)


class StandardisedMSE(torch.autograd.Function):
    """mean((ŝ − t̂)²) over all elements of s, t [B, C, H, W] (module docstring); a 0-dim float32+ tensor."""

    @staticmethod
    def forward(ctx, student: Tensor, teacher: Tensor, eps: float):  # type: ignore[override]
        with torch.autocast(student.device.type, enabled=False):  # the product-reductions in fp32, not autocast's
            return StandardisedMSE._forward(ctx, student, teacher, eps)

    @staticmethod
    def _forward(ctx, student: Tensor, teacher: Tensor, eps: float) -> Tensor:
        b, c = student.shape[:2]
        s3 = at_least_fp32(student).reshape(b, c, -1)
        t3 = at_least_fp32(teacher).reshape(b, c, -1)
        length = s3.shape[2]
        m = b * length
        u_s, ms_bc, m2s_bc = _centred_rows(s3)
        u_t, mt_bc, m2t_bc = _centred_rows(t3)
        mu_s, m2_s = _combine(ms_bc, m2s_bc, length)
        mu_t, m2_t = _combine(mt_bc, m2t_bc, length)
        sd_s, sd_t = (m2_s / (m - 1)).sqrt(), (m2_t / (m - 1)).sqrt()
        ds, dt = sd_s + eps, sd_t + eps
        # z = u_s/(σ_s + ε) − u_t/(σ_t + ε) = ŝ − t̂ − (its row mean), so Σ (ŝ − t̂)² is z's M2 combined with the
        # row means of ŝ − t̂, known from the statistics: the loss from centred sums, as accurate as the
        # written-out form even where ŝ ≈ t̂
        z = u_s.mul_(ds.reciprocal().view(1, -1, 1)).addcmul_(u_t, dt.reciprocal().view(1, -1, 1), value=-1)
        del u_t
        per_channel = _combine((ms_bc - mu_s) / ds - (mt_bc - mu_t) / dt, torch.einsum("bcl,bcl->bc", z, z),
                               length)[1]
        del z
        # Σ ŝ t̂ = C_st / ((σ_s + ε)(σ_t + ε)) = (Σ ŝ² + Σ t̂² − Σ (ŝ − t̂)²) / 2
        cross = (m2_s / ds.square() + m2_t / dt.square() - per_channel) / 2
        alpha = 2 * eps / ds.pow(3) + torch.where(sd_s > 0, 2 * cross / (ds * (m - 1) * sd_s), 0.0)
        beta = 2 / (ds * dt)
        ctx.save_for_backward(student, teacher, alpha, beta, mu_s, mu_t)
        ctx.scale = 1.0 / (m * c)
        return per_channel.sum() * ctx.scale

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        student, teacher, alpha, beta, mu_s, mu_t = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        k = grad.to(alpha.dtype) * ctx.scale
        a, bt = (alpha * k).view(1, -1, 1, 1), (beta * k).view(1, -1, 1, 1)
        shift = (bt.flatten() * mu_t - a.flatten() * mu_s).view(1, -1, 1, 1)
        g = torch.addcmul(shift, at_least_fp32(student), a).addcmul_(at_least_fp32(teacher), bt, value=-1)
        return g.to(student.dtype), None, None


def standardised_mse(student: Tensor, teacher: Tensor, eps: float = 1e-6) -> Tensor:
    """mean((norm(student) − norm(teacher))²), norm = (x − mean)/(std + eps) per channel over batch and positions
    (unbiased std), both [B, C, H, W]; gradient to ``student`` only (``teacher`` is a target). See the module
    docstring; equals ``F.mse_loss(channel_standardise(s), channel_standardise(t))`` (tests/test_ops.py)."""
    if student.shape != teacher.shape or student.dim() != 4:
        raise ValueError(f"standardised_mse needs two [B, C, H, W] maps of one shape, got {tuple(student.shape)} "
                         f"and {tuple(teacher.shape)}")
    return StandardisedMSE.apply(student, teacher.detach(), float(eps))
