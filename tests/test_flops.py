"""FLOP counting (densekd.ops.flops): the counter sees the products inside ACAM-KD's kernels, and counts exactly
the formulas of densekd.ops.attention; ACAM-KD's distance from its FLOP floor on both attention paths."""
from __future__ import annotations

import pytest
import torch

from densekd import build_loss
from densekd.ops import cross_attention, projected_attention
from densekd.ops.attention import (attention_floor_flops, blocked_attention_flops, cross_attention_flops,
                                   projected_attention_flops)
from densekd.ops.flops import flop_counter, matmul_rate, sdpa_flops


def _count(fn) -> int:
    with flop_counter() as fc:
        fn()
    return int(fc.get_total_flops())


def test_projected_attention_counted_flops_equal_the_formula():
    # a custom autograd Function whose forward and backward are Python loops of bmm / baddbmm_ over row blocks
    b, d, n, m = 2, 8, 40, 3
    q = torch.randn(b, d, n, requires_grad=True)
    k = torch.randn(b, d, n, requires_grad=True)
    vt = torch.randn(b, m, n, requires_grad=True)

    def run():
        y, cs = projected_attention(q, k, vt, rows=7)  # 6 blocks, the last one short
        (y.sin().sum() + cs.square().sum()).backward()

    assert _count(run) == projected_attention_flops(b, n, d, m) == 2 * b * n * n * (4 * d + 3 * m + 3)
    with torch.utils.flop_counter.FlopCounterMode(display=False) as plain:  # what the counter alone sees
        run()
    assert plain.get_total_flops() < projected_attention_flops(b, n, d, m)  # it misses the in-place baddbmm_


def test_blocked_attention_counted_flops_equal_the_formula():
    from densekd.ops import blocked_attention
    from densekd.ops.attention import blocked_attention_flops

    b, n, d, c = 2, 40, 8, 16
    q, k = torch.randn(b, n, d, requires_grad=True), torch.randn(b, n, d, requires_grad=True)
    v = torch.randn(b, n, c, requires_grad=True)

    def run():
        blocked_attention(q, k, v, rows=7).sin().sum().backward()

    assert _count(run) == blocked_attention_flops(b, n, d, c) == 2 * b * n * n * (4 * d + 3 * c + 1)
    # against two-head SDPA at C = 2d: 10 products of N²·d (+ the lse row) where SDPA performs 14
    assert blocked_attention_flops(b, n, d, 2 * d) == 2 * b * n * n * (10 * d + 1)
    assert cross_attention_flops(b, n, d, 2 * d) == 2 * b * n * n * 14 * d


@pytest.mark.parametrize("d_qk, d_v", [(4, 8), (3, 7)])  # two heads sharing Q, K; one zero-padded head
def test_cpu_sdpa_counted_flops_equal_the_formula(d_qk, d_v):
    b, n = 2, 24
    q = torch.randn(b, n, d_qk, requires_grad=True)
    k = torch.randn(b, n, d_qk, requires_grad=True)
    v = torch.randn(b, n, d_v, requires_grad=True)

    def run():
        cross_attention(q, k, v, kernel="sdpa").sin().sum().backward()

    assert _count(run) == cross_attention_flops(b, n, d_qk, d_v) == 14 * b * n * n * d_v
    # the blocked kernel, with its own count
    q.grad = k.grad = v.grad = None
    assert _count(lambda: cross_attention(q, k, v, kernel="blocked").sin().sum().backward()) == \
        blocked_attention_flops(b, n, d_qk, d_v)


def test_sdpa_forward_only_and_baddbmm_inplace():
    q, k, v = torch.randn(1, 2, 5, 4), torch.randn(1, 2, 6, 4), torch.randn(1, 2, 6, 3)
    assert _count(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v)) == sdpa_flops(
        q.shape, k.shape, v.shape) == 2 * 2 * 5 * 6 * (4 + 3)
    acc = torch.zeros(3, 4, 5)
    assert _count(lambda: acc.baddbmm_(torch.randn(3, 4, 6), torch.randn(3, 6, 5))) == 2 * 3 * 4 * 6 * 5


def test_attention_floor_formulas():
    b, n, d, m = 2, 10, 8, 3
    # the projected kernel recomputes QᵀK once in backward (with the log-sum-exp as one more row) and sums P's
    # columns in forward as a product; the two-head SDPA form does 14 against a floor of 9 N×N×(C/2) products
    # (C = 2d: QKᵀ, PV ×2, ∂V ×2, ∂P ×2, ∂Q, ∂K)
    assert projected_attention_flops(b, n, d, m) - attention_floor_flops(b, n, d, m, column_sums=True) == \
        2 * b * n * n * (d + 2)
    assert cross_attention_flops(b, n, d, 2 * d) / attention_floor_flops(b, n, d, 2 * d) == pytest.approx(14 / 9)


@pytest.mark.parametrize("z_norm, blocked", [("none", False), ("spatial", True), ("spatial", False)])
def test_acam_kd_flops_above_floor(z_norm, blocked, monkeypatch):
    from densekd.ops import attention as attention_ops

    b, c, h, w, m = 2, 8, 5, 6, 3
    if blocked:  # thresholds down to this map's size, as a COCO level is above them
        monkeypatch.setattr(attention_ops, "BLOCKED_MIN_CHANNELS", c)
        monkeypatch.setattr(attention_ops, "BLOCKED_MIN_POSITIONS", h * w)
    n = h * w
    mod = build_loss("acam_kd", student_channels=4, teacher_channels=c, num_masks=m, z_norm=z_norm)
    above = mod.flops_above_floor((b, 4, h, w), (b, c, h, w))
    d = c // 2
    if z_norm == "none":  # the projected kernel: its recomputed QᵀK, the lse row and the column-sum product
        performed = projected_attention_flops(b, n, d, m)
        assert above == 2 * b * n * n * (d + 2)
    elif blocked:  # F_fuse on a CPU through the blocked kernel: 10 products of N×N×C/2 (+ the lse row) against 9
        performed = blocked_attention_flops(b, n, d, c)
        assert above == performed - attention_floor_flops(b, n, d, c) == 2 * b * n * n * (d + 1)
        # on another device SDPA on two heads: 14 against 9 (the device is the module's own)
        meta = build_loss("acam_kd", student_channels=4, teacher_channels=c, num_masks=m).to("meta")
        assert meta.flops_above_floor((b, 4, h, w), (b, c, h, w)) == \
            cross_attention_flops(b, n, d, c) - attention_floor_flops(b, n, d, c) == 5 * 2 * b * n * n * d
    else:  # a small map on a CPU: SDPA too
        performed = cross_attention_flops(b, n, d, c)
        assert above == performed - attention_floor_flops(b, n, d, c) == 5 * 2 * b * n * n * d
    # the counter sees the module's attention (it alone outweighs every other product at these sizes)
    fs, ft = torch.randn(b, 4, h, w, requires_grad=True), torch.randn(b, c, h, w)
    total = _count(lambda: sum(mod(fs, ft).values()).backward())
    assert performed <= total < 2 * performed
    assert build_loss("acam_kd_teacher_fusion", student_channels=4, teacher_channels=c).flops_above_floor(
        (b, 4, h, w), (b, c, h, w)) == 0
    assert build_loss("fitnet", student_channels=4, teacher_channels=c).flops_above_floor(
        (b, 4, h, w), (b, c, h, w)) == 0


def test_matmul_rate_is_a_rate():
    assert matmul_rate("cpu", size=64, repeats=2) > 0


def test_channel_masks_alone_take_the_projected_path():
    """z_norm standardises Z for the spatial masks only: with channel masks alone (acam_kd_channel) F_fuse is never
    needed, so the projected kernel runs (no SDPA) and only its recomputed QᵀK (and two rows) is above the floor."""
    from torch.profiler import profile

    b, c, h, w = 2, 8, 5, 6
    n, d = h * w, c // 2
    mod = build_loss("acam_kd_channel", student_channels=4, teacher_channels=c, num_masks=3)
    assert mod.ascm.z_norm == "spatial" and mod.ascm.spatial_units is None
    assert mod.flops_above_floor((b, 4, h, w), (b, c, h, w)) == 2 * b * n * n * (d + 2)
    fs, ft = torch.randn(b, 4, h, w, requires_grad=True), torch.randn(b, c, h, w)
    with profile() as prof:
        sum(mod(fs, ft).values()).backward()
    assert not any("scaled_dot_product" in e.key for e in prof.key_averages())
    total = _count(lambda: sum(mod(fs, ft).values()).backward())
    assert projected_attention_flops(b, n, d, 0) <= total < 2 * projected_attention_flops(b, n, d, 0)
