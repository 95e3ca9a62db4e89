"""Σ over (batch, channel) of KL(softmax(t/τ) ‖ softmax(s/τ)), each channel's softmax over its positions (CWD's
loss), with its gradient written in one expression.

Per (b, c) row, with p_t = softmax(t/τ) and log p_s = log_softmax(s/τ) over the positions,

    KL = Σ_i p_t,i (log p_t,i − log p_s,i),      ∂KL/∂s_i = (p_s,i − p_t,i) / τ      (Σ_i p_t,i = 1),

so backward is one difference of the two distributions. Autograd through the written-out form runs the same
gradient as five backward operations (the product's, the difference's, the log-softmax's reduction and product,
the division's) and forward keeps the difference map for the product's backward; here forward keeps log p_s
and p_t (two maps, as many as autograd keeps there) and computes the sum as one product-reduction per row. On a
CPU the gradient's subnormal entries are set to zero before it leaves (a softmax's far tail makes them; they make
every later product slow: docs/methods.md, "Precision"). Computed in at least float32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from .grad import zero_subnormals
from .squared_error import at_least_fp32


class ChannelKL(torch.autograd.Function):
    """Σ_{b,c} KL(softmax_n(t/τ) ‖ softmax_n(s/τ)) of s, t [B, C, H, W] (module docstring); a 0-dim tensor."""

    @staticmethod
    def forward(ctx, student: Tensor, teacher: Tensor, tau: float):  # type: ignore[override]
        b, c = student.shape[:2]
        with torch.autocast(student.device.type, enabled=False):  # the product-reduction in fp32, not autocast's
            log_p_s = F.log_softmax(at_least_fp32(student).reshape(b, c, -1) / tau, dim=2)
            log_p_t = F.log_softmax(at_least_fp32(teacher).reshape(b, c, -1) / tau, dim=2)
            p_t = log_p_t.exp()
            kl = torch.einsum("bcl,bcl->bc", p_t, log_p_t.sub_(log_p_s)).sum()
        ctx.save_for_backward(log_p_s, p_t)
        ctx.tau, ctx.shape, ctx.dtype = tau, student.shape, student.dtype
        return kl

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        if not ctx.needs_input_grad[0]:
            return None, None, None
        log_p_s, p_t = ctx.saved_tensors
        g = log_p_s.exp().sub_(p_t).mul_(grad.to(p_t.dtype) / ctx.tau)
        return zero_subnormals(g, inplace=True).view(ctx.shape).to(ctx.dtype), None, None


def channel_kl(student: Tensor, teacher: Tensor, tau: float = 1.0) -> Tensor:
    """Σ over (batch, channel) of KL(softmax(teacher/τ) ‖ softmax(student/τ)), softmax over each channel's
    positions, both [B, C, H, W]; gradient to ``student`` only. Equals the written-out
    ``(p_t * (log p_t − log p_s)).sum()`` (tests/test_ops.py); see the module docstring."""
    if student.shape != teacher.shape or student.dim() != 4:
        raise ValueError(f"channel_kl needs two [B, C, H, W] maps of one shape, got {tuple(student.shape)} and "
                         f"{tuple(teacher.shape)}")
    if tau <= 0:
        raise ValueError(f"channel_kl tau must be > 0, got {tau}")
    return ChannelKL.apply(student, teacher.detach(), float(tau))
