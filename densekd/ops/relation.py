"""Relational KL: Σ_rows KL(softmax(τ⁻¹·t_rows t_colsᵀ) ‖ softmax(τ⁻¹·s_rows s_colsᵀ)), a block of rows at a time.

CIRKD's three relation terms (its mini-batch pixel-to-pixel term and the memory pixel-to-pixel / pixel-to-region
terms) are each this sum for a different pair of (rows, columns); written with autograd it keeps both N×M
similarity matrices, their two log-softmaxes and the products between them from forward to backward and runs
a dozen elementwise passes over each. :class:`RelationKL` forms a block of rows of both similarity matrices,
reduces it to its KL and — when a gradient will be asked for — to its gradient rows at once (∂KL_row/∂z_s =
softmax(z_s) − softmax(z_t)), so nothing of size N×M outlives its block: backward only scales the two gradients
it kept (N×C and M×C). The blocks share one workspace (out= products and log-softmaxes: on CPU a fresh
buffer per block costs page faults). Exact: the same products and the same log-softmax formula as the autograd
form, only the order of the final sums differs (tests/test_ops.py: gradcheck, and against the autograd form).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

#: elements of one [rows, M] block of the similarity matrices (the workspace holds four such buffers): 4 MiB in
#: fp32 on CPU (the demo's terms in 4–16 blocks; of 2^16, 2^18, 2^20 and 2^22 elements, 2^18 and 2^20 were the
#: fastest for CIRKD's memory term, one thread on a loaded machine, so noisy); 64 MiB on other devices, where fewer and larger products keep
#: kernel launches few (a choice, not measured: no GPU was available here; as ``ATTENTION_BLOCK_ELEMENTS``).
RELATION_BLOCK_ELEMENTS = 2**20
RELATION_BLOCK_ELEMENTS_ACCELERATOR = 2**24


def relation_block_rows(n: int, m: int, device: torch.device) -> int:
    """Rows per block so that a [rows, m] block holds about the device's budget of elements."""
    budget = RELATION_BLOCK_ELEMENTS if device.type == "cpu" else RELATION_BLOCK_ELEMENTS_ACCELERATOR
    return max(1, min(n, budget // max(m, 1)))


class RelationKL(torch.autograd.Function):
    """Σ over rows a and column groups g of KL(softmax(z_t[a, g]) ‖ softmax(z_s[a, g])), z_s = scale·s_rows
    s_colsᵀ, z_t = scale·t_rows t_colsᵀ, the softmax over each group of ``group`` consecutive columns.

    s_rows [N, C_s], s_cols [M, C_s], t_rows [N, C_t], t_cols [M, C_t] (t side without gradient; s_cols may
    be s_rows itself: a self-relation, both gradients then add up). ``with_grad``: also form the gradients in
    forward (when a backward can follow). Returns a 0-d tensor.
    """

    @staticmethod
    def forward(ctx, s_rows: Tensor, s_cols: Tensor, t_rows: Tensor, t_cols: Tensor,  # type: ignore[override]
                scale: float, group: int, rows: int, with_grad: bool):
        with torch.autocast(s_rows.device.type, enabled=False):
            return RelationKL._forward(ctx, s_rows, s_cols, t_rows, t_cols, scale, group, rows, with_grad)

    @staticmethod
    def _forward(ctx, s_rows: Tensor, s_cols: Tensor, t_rows: Tensor, t_cols: Tensor, scale: float, group: int,
                 rows: int, with_grad: bool) -> Tensor:
        n, m = s_rows.shape[0], s_cols.shape[0]
        rows = max(1, min(rows, n))
        grad_rows = torch.empty_like(s_rows) if with_grad and ctx.needs_input_grad[0] else None
        grad_cols = torch.zeros_like(s_cols) if with_grad and ctx.needs_input_grad[1] else None
        sr, tr = s_rows * scale, t_rows * scale  # the scale on the [N, C] rows, not the [N, M] products
        s_cols_t, t_cols_t = s_cols.t().contiguous(), t_cols.t().contiguous()  # [C, M]: the products' layout
        # one workspace for every block (fresh [rows, M] buffers per block cost page faults on CPU)
        z, log_pt, log_ps, pt = torch.empty(4, rows, m, dtype=sr.dtype, device=sr.device).unbind(0)
        parts = []  # each block's KL
        for a in range(0, n, rows):
            b = min(n, a + rows)
            shape = (b - a, m // group, group)
            zb, lt, ls, p = z[: b - a], log_pt[: b - a], log_ps[: b - a], pt[: b - a]
            torch.log_softmax(torch.mm(tr[a:b], t_cols_t, out=zb).view(shape), -1, out=lt.view(shape))
            torch.log_softmax(torch.mm(sr[a:b], s_cols_t, out=zb).view(shape), -1, out=ls.view(shape))
            torch.exp(lt, out=p)
            parts.append(torch.dot(p.view(-1), lt.sub_(ls).view(-1)))  # Σ p_t (log p_t − log p_s)
            if grad_rows is None and grad_cols is None:
                continue
            g = ls.exp_().sub_(p)  # ∂KL/∂z_s = p_s − p_t
            if grad_rows is not None:
                torch.mm(g, s_cols, out=grad_rows[a:b])
            if grad_cols is not None:
                grad_cols.addmm_(g.t(), s_rows[a:b])
        if grad_rows is not None:
            grad_rows.mul_(scale)
        if grad_cols is not None:
            grad_cols.mul_(scale)
        ctx.save_for_backward(grad_rows, grad_cols)
        return torch.stack(parts).sum() if parts else s_rows.new_zeros(())

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor):  # type: ignore[override]
        grad_rows, grad_cols = ctx.saved_tensors
        if (ctx.needs_input_grad[0] and grad_rows is None) or (ctx.needs_input_grad[1] and grad_cols is None):
            raise RuntimeError("relation_kl: its forward ran without gradients (under no_grad), no backward")
        return (None if grad_rows is None else grad_rows * g, None if grad_cols is None else grad_cols * g,
                None, None, None, None, None, None)


def relation_kl(s_rows: Tensor, s_cols: Tensor, t_rows: Tensor, t_cols: Tensor, scale: float = 1.0,
                group: int | None = None, rows: int | None = None) -> Tensor:
    """Σ_rows, groups KL(softmax(scale·t_rows t_colsᵀ) ‖ softmax(scale·s_rows s_colsᵀ)); see :class:`RelationKL`.

    ``group``: the softmax runs over each group of that many consecutive columns (default: all M columns);
    ``rows``: rows per block (default :func:`relation_block_rows`). The t side never gets a gradient."""
    n, m = s_rows.shape[0], s_cols.shape[0]
    group = m if group is None else group
    if s_rows.dim() != 2 or s_cols.dim() != 2 or t_rows.dim() != 2 or t_cols.dim() != 2 \
            or t_rows.shape[0] != n or t_cols.shape[0] != m or s_cols.shape[1] != s_rows.shape[1] \
            or t_cols.shape[1] != t_rows.shape[1] or group < 1 or m % group:
        raise ValueError(f"relation_kl expects s_rows [N, C_s], s_cols [M, C_s], t_rows [N, C_t], t_cols [M, C_t] "
                         f"with M a multiple of group, got {tuple(s_rows.shape)}, {tuple(s_cols.shape)}, "
                         f"{tuple(t_rows.shape)}, {tuple(t_cols.shape)} and group {group}")
    rows = relation_block_rows(n, m, s_rows.device) if rows is None else rows
    with_grad = torch.is_grad_enabled() and (s_rows.requires_grad or s_cols.requires_grad)
    return RelationKL.apply(s_rows, s_cols, t_rows.detach(), t_cols.detach(), float(scale), group, rows, with_grad)
