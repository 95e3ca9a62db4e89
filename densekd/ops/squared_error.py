"""Squared-error sums of a feature pair, with D recomputed in backward (never kept between the passes)."""
from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


def at_least_fp32(t: Tensor) -> Tensor:
    """fp16/bf16 → fp32 (docs/methods.md, "Precision"); fp32 and fp64 unchanged."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


class SquaredErrorSums(torch.autograd.Function):
    """(Σ_n D², Σ_c D²) of D = F_T − F̂_S given as [B, C, N]: [B, C] and [B, N], in at least fp32.

    Saves only its inputs (alive anyway) and recomputes D in backward, so D is not kept from forward to
    backward (one feature-sized buffer less at the peak; see benchmarks/acam_loss.py).
    """

    @staticmethod
    def forward(ctx, teacher: Tensor, student: Tensor):  # type: ignore[override]
        ctx.save_for_backward(teacher, student)
        sq = (at_least_fp32(teacher) - at_least_fp32(student)).square_()
        return sq.sum(dim=2), sq.sum(dim=1)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_c: Tensor | None, g_n: Tensor | None):  # type: ignore[override]
        teacher, student = ctx.saved_tensors
        d = at_least_fp32(teacher) - at_least_fp32(student)
        grad = torch.zeros_like(d) if g_c is None else d * g_c.to(d.dtype).unsqueeze(2)
        if g_n is not None:
            grad.addcmul_(d, g_n.to(d.dtype).unsqueeze(1))
        del d
        grad = grad.mul_(2.0)  # ∂(D²)/∂F_T = 2D; ∂/∂F̂_S = −2D
        g_t = grad.to(teacher.dtype, copy=True) if ctx.needs_input_grad[0] else None
        g_s = grad.neg_().to(student.dtype) if ctx.needs_input_grad[1] else None
        return g_t, g_s


def squared_error_sums(teacher: Tensor, student: Tensor) -> tuple[Tensor, Tensor]:
    """(Σ_n D² [B, C], Σ_c D² [B, N]) of D = teacher − student, both [B, C, N]; see :class:`SquaredErrorSums`."""
    return SquaredErrorSums.apply(teacher, student)
