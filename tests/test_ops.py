"""Kernels in densekd.ops (architecture.md, ``ops/``), each against its explicit formula."""
import math

import pytest
import torch

from densekd.ops import (ProjectedAttention, SquaredErrorSums, at_least_fp32, block_rows, cross_attention, pointwise,
                         projected_attention, reverse_grad, squared_error_sums)


@pytest.mark.parametrize("d_qk,d_v", [(4, 8), (3, 6), (3, 7), (5, 5)])
def test_efficient_attention_equals_explicit(d_qk, d_v):
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 30, d_qk), torch.randn(2, 30, d_qk), torch.randn(2, 30, d_v)
    ref = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(d_qk), -1) @ v
    assert torch.allclose(cross_attention(q, k, v), ref, atol=1e-5, rtol=1e-5)
    assert torch.allclose(cross_attention(q, k, v, channels_first=True), ref.transpose(1, 2), atol=1e-5, rtol=1e-5)


def test_cross_attention_refuses_narrower_values():
    q = torch.randn(1, 4, 6)
    with pytest.raises(ValueError, match="cross_attention expects d_v >= d_qk, got d_v=3, d_qk=6"):
        cross_attention(q, q, torch.randn(1, 4, 3))


@pytest.mark.parametrize("rows", [1, 4, 7, 30])
@pytest.mark.parametrize("outputs", ["both", "y", "cs"])
def test_projected_attention_gradcheck(rows, outputs):
    """The blockwise kernel's hand-written backward against finite differences (float64), any block size."""
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(2, 3, 30, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    vt = torch.randn(2, 4, 30, generator=g, dtype=torch.float64, requires_grad=True)

    def fn(q, k, vt):
        y, cs = ProjectedAttention.apply(q, k, vt, 0.7, rows)
        return {"both": (y, cs), "y": (y,), "cs": (cs,)}[outputs]

    assert torch.autograd.gradcheck(fn, (q, k, vt))
    y, cs = ProjectedAttention.apply(q, k, vt, 0.7, rows)
    p = torch.softmax(0.7 * q.transpose(1, 2) @ k, dim=-1)  # explicit P: [B, N, N]
    torch.testing.assert_close(y, vt @ p.transpose(1, 2))
    torch.testing.assert_close(cs, p.sum(dim=1))


def test_projected_attention_defaults_are_the_logit_scale_and_the_device_blocks():
    g = torch.Generator().manual_seed(0)
    q, k, vt = torch.randn(2, 4, 25, generator=g), torch.randn(2, 4, 25, generator=g), torch.randn(2, 3, 25, generator=g)
    y, cs = projected_attention(q, k, vt)
    y_ref, cs_ref = ProjectedAttention.apply(q, k, vt, 0.5, 25)  # 1/√4, one block
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(cs, cs_ref)


@pytest.mark.parametrize("outputs", ["both", "c", "n"])
def test_squared_error_sums_gradcheck(outputs):
    g = torch.Generator().manual_seed(0)
    t, st = (torch.randn(2, 3, 20, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))

    def fn(t, st):
        c, n = SquaredErrorSums.apply(t, st)
        return {"both": (c, n), "c": (c,), "n": (n,)}[outputs]

    assert torch.autograd.gradcheck(fn, (t, st))
    c, n = squared_error_sums(t, st)
    torch.testing.assert_close(c, ((t - st) ** 2).sum(dim=2))
    torch.testing.assert_close(n, ((t - st) ** 2).sum(dim=1))


def test_squared_error_sums_in_at_least_fp32():
    t, s = torch.randn(1, 2, 5).bfloat16(), torch.randn(1, 2, 5).bfloat16()
    c, n = squared_error_sums(t, s)
    assert c.dtype == n.dtype == torch.float32
    assert at_least_fp32(t).dtype == torch.float32 and at_least_fp32(t.double()).dtype == torch.float64


def test_pointwise_equals_the_conv_and_refuses_other_layers():
    conv = torch.nn.Conv2d(5, 3, kernel_size=1)
    x = torch.randn(2, 5, 4, 6)
    torch.testing.assert_close(pointwise(conv, x.flatten(2)), conv(x).flatten(2))
    x3 = x.flatten(2)
    assert pointwise(torch.nn.Identity(), x3) is x3
    with pytest.raises(TypeError, match="1×1 nn.Conv2d"):
        pointwise(torch.nn.Conv2d(5, 3, kernel_size=3), x.flatten(2))


def test_block_rows_follow_the_device_budget():
    assert block_rows(2, 16800, torch.device("cpu")) == 2**21 // (2 * 16800)  # 62 rows of P3 per block on CPU
    assert block_rows(2, 16800, torch.device("cuda")) == 2**24 // (2 * 16800)
    assert block_rows(2, 20, torch.device("cpu")) == 20  # a small map is one block
    assert block_rows(10**6, 10**4, torch.device("cpu")) == 1  # never zero rows


def test_reverse_grad():
    x = torch.tensor([1.0, -2.0], requires_grad=True)
    y = reverse_grad(x)
    torch.testing.assert_close(y, x.detach())
    (y * torch.tensor([3.0, 4.0])).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([-3.0, -4.0]))
