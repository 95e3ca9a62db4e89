"""Gradient edits: reversal (identity forward, negated gradient backward) and subnormal flushing (identity
forward, gradients below the smallest normal float set to zero on a CPU)."""
from __future__ import annotations

import torch
from torch import Tensor


class _ReverseGrad(torch.autograd.Function):
    """Identity forward, negated gradient backward (gradient reversal)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        return -grad


def reverse_grad(x: Tensor) -> Tensor:
    """Gradient reversal: ``x`` unchanged forward, ``-∂L/∂x`` backward (so whatever produced ``x`` ascends L)."""
    return _ReverseGrad.apply(x)


class _FlushSubnormalGrad(torch.autograd.Function):
    """Identity forward; backward sets subnormal gradient entries (|g| < finfo.tiny) to zero on a CPU."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        if grad.device.type != "cpu" or not grad.is_floating_point():
            return grad
        return grad.masked_fill(grad.abs() < torch.finfo(grad.dtype).tiny, 0)


def flush_subnormal_grad(x: Tensor) -> Tensor:
    """``x`` unchanged forward; in backward, on a CPU, the gradient's subnormal entries become zero before they reach
    whatever produced ``x``. x86 cores multiply subnormals 10–100× slower, in every thread (the flush-to-zero mode
    ``torch.set_flush_denormal`` sets is per thread: OpenMP workers keep their own); a softmax's far tail makes
    them (CWD; docs/methods.md, "Precision"). A value below 1.2e-38 adds nothing a float32 sum keeps."""
    return _FlushSubnormalGrad.apply(x)
