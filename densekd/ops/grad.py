"""Gradient edits: identity forward, an edited gradient backward — reversal (negated) and subnormal flushing
(entries below the smallest normal float set to zero on a CPU)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


class _EditGrad(torch.autograd.Function):
    """Identity forward; backward hands on ``edit(grad)``."""

    @staticmethod
    def forward(ctx, x: Tensor, edit: Callable[[Tensor], Tensor]) -> Tensor:  # type: ignore[override]
        ctx.edit = edit
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return ctx.edit(grad), None


def _negate(grad: Tensor) -> Tensor:
    return -grad


def zero_subnormals(grad: Tensor, inplace: bool = False) -> Tensor:
    """``grad`` with its subnormal entries (below the dtype's smallest normal) set to zero, on a CPU; unchanged
    elsewhere and for integer tensors. ``inplace``: edit ``grad`` itself (a gradient nobody else holds)."""
    if grad.device.type != "cpu" or not grad.is_floating_point():
        return grad
    fi = torch.finfo(grad.dtype)
    largest_subnormal = fi.tiny * (1 - fi.eps)  # exact: 2^emin − 2^(emin − mantissa bits)
    # hardshrink: x where |x| > λ, else 0 — one fused pass (|x| < tiny, masked_fill: three passes and two maps)
    return torch.hardshrink(grad, largest_subnormal, out=grad) if inplace else torch.hardshrink(grad, largest_subnormal)


def reverse_grad(x: Tensor) -> Tensor:
    """Gradient reversal: ``x`` unchanged forward, ``-∂L/∂x`` backward (so whatever produced ``x`` ascends L)."""
    return _EditGrad.apply(x, _negate)


def flush_subnormal_grad(x: Tensor) -> Tensor:
    """``x`` unchanged forward; in backward, on a CPU, the gradient's subnormal entries become zero before they reach
    whatever produced ``x``. Products with subnormals are slow on x86 in every thread (the flush-to-zero mode
    ``torch.set_flush_denormal`` sets is per thread: OpenMP workers keep their own); a softmax's far tail makes
    them (CWD; docs/methods.md, "Precision", has the measurement). A value below 1.2e-38 adds nothing a float32 sum
    keeps."""
    return _EditGrad.apply(x, zero_subnormals)
