"""FLOP counting with ``torch.utils.flop_counter.FlopCounterMode``, taught the kernels densekd runs.

    with flop_counter() as fc:
        loss = model(x).sum(); loss.backward()
    fc.get_total_flops()

``FlopCounterMode`` counts the matrix products (mm, bmm, convolutions, attention) it has a formula for, at
dispatch, so it also sees the products inside custom autograd Functions (:class:`~densekd.ops.ProjectedAttention`)
and blockwise loops. Two gaps matter here (measured with torch 2.14; tests/test_flops.py): it has no formula
for the in-place ``baddbmm_`` / ``addmm_`` (the blockwise attention's backward accumulates with them) nor for
the CPU kernel of ``scaled_dot_product_attention`` (``_scaled_dot_product_flash_attention_for_cpu`` and its
backward), so both count 0. :func:`flop_counter` adds them, with the formulas the counter uses for their
out-of-place and CUDA twins: 2 FLOPs per multiply-add; SDPA forward QKᵀ and PV, backward QKᵀ again (the
kernels recompute it), ∂V, ∂P, ∂Q, ∂K. Element-wise work (softmax, exp, norms, the optimizer) is not counted.
"""
from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

aten = torch.ops.aten


def _bmm(b: int, n: int, k: int, m: int) -> int:
    return 2 * b * n * k * m


def _baddbmm_flop(self_shape: Any, a_shape: Any, b_shape: Any, *args: Any, **kwargs: Any) -> int:
    b, n, k = a_shape
    return _bmm(b, n, k, b_shape[-1])


def _addmm_flop(self_shape: Any, a_shape: Any, b_shape: Any, *args: Any, **kwargs: Any) -> int:
    n, k = a_shape
    return _bmm(1, n, k, b_shape[-1])


def sdpa_flops(query_shape: Any, key_shape: Any, value_shape: Any, backward: bool = False) -> int:
    """FLOPs of ``scaled_dot_product_attention`` on q [B, h, L, d], k [B, h, S, d], v [B, h, S, d_v]: forward
    QKᵀ + PV; backward (with ``backward``) QKᵀ recomputed, ∂V = Pᵀ∂O, ∂P = ∂O Vᵀ, ∂Q, ∂K."""
    b, h, n_q, d = query_shape
    n_k, d_v = key_shape[-2], value_shape[-1]
    bh = b * h
    if not backward:
        return _bmm(bh, n_q, d, n_k) + _bmm(bh, n_q, n_k, d_v)
    return 2 * _bmm(bh, n_q, d, n_k) + 2 * _bmm(bh, n_q, n_k, d_v) + _bmm(bh, n_q, n_k, d)


def _sdpa_forward_flop(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kwargs: Any) -> int:
    return sdpa_flops(query_shape, key_shape, value_shape)


def _sdpa_backward_flop(grad_out_shape: Any, query_shape: Any, key_shape: Any, value_shape: Any, *args: Any,
                        **kwargs: Any) -> int:
    return sdpa_flops(query_shape, key_shape, value_shape, backward=True)


def _extra_formulas() -> dict[Any, Any]:
    extra: dict[Any, Any] = {aten.baddbmm_: _baddbmm_flop, aten.addmm_: _addmm_flop}
    for name, formula in (("_scaled_dot_product_flash_attention_for_cpu", _sdpa_forward_flop),
                          ("_scaled_dot_product_flash_attention_for_cpu_backward", _sdpa_backward_flop)):
        op = getattr(aten, name, None)  # absent from older torch builds
        if op is not None:
            extra[op] = formula
    return extra


def flop_counter() -> FlopCounterMode:
    """A silent ``FlopCounterMode`` that also counts in-place batched products and CPU attention (module doc)."""
    return FlopCounterMode(display=False, custom_mapping=_extra_formulas())


def matmul_rate(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, size: int | None = None,
                repeats: int = 5) -> float:
    """FLOP/s of the best of ``repeats`` square ``size``×``size`` products on ``device`` in ``dtype`` (default
    size 2048 on CPU, 8192 on an accelerator): the rate a large dense product reaches here, the yardstick for
    how close a kernel comes to its FLOP floor."""
    import time

    device = torch.device(device)
    n = size or (2048 if device.type == "cpu" else 8192)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *_: None)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def copy_rate(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, numel: int | None = None,
              repeats: int = 5) -> float:
    """Bytes/s of the best of ``repeats`` element-wise sums ``c = a + b`` of ``numel`` elements (default 2**25 on
    CPU, 2**28 on an accelerator: far beyond the caches), counting what they must move: two reads and a write.
    The yardstick for a kernel whose floor is memory traffic, not products."""
    import time

    device = torch.device(device)
    n = numel or (2**25 if device.type == "cpu" else 2**28)
    a = torch.randn(n, device=device).to(dtype)
    b = torch.randn(n, device=device).to(dtype)
    c = torch.empty_like(a)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *_: None)
    torch.add(a, b, out=c)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        torch.add(a, b, out=c)
        sync()
        best = min(best, time.perf_counter() - t0)
    return 3 * n * a.element_size() / best
