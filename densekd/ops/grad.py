"""Gradient reversal: identity forward, negated gradient backward."""
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
