"""Kernels in densekd.ops, each against its explicit formula."""
import math

import pytest
import torch

from densekd.ops import attention as attention_ops
from densekd.ops import (ATTENTION_MIN_ROWS, RELATION_BLOCK_ELEMENTS, ProjectedAttention, RelationKL,
                         SquaredErrorSums, at_least_fp32, block_rows, cross_attention, pointwise, projected_attention,
                         relation_block_rows, relation_kl, reverse_grad, squared_error_sums)


@pytest.mark.parametrize("d_qk,d_v", [(4, 8), (3, 6), (3, 7), (5, 5)])
def test_efficient_attention_equals_explicit(d_qk, d_v):
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 30, d_qk), torch.randn(2, 30, d_qk), torch.randn(2, 30, d_v)
    ref = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(d_qk), -1) @ v
    for kernel in ("auto", "blocked", "sdpa"):
        assert torch.allclose(cross_attention(q, k, v, kernel=kernel), ref, atol=1e-5, rtol=1e-5)
        out = cross_attention(q, k, v, channels_first=True, kernel=kernel)
        assert out.is_contiguous() and torch.allclose(out, ref.transpose(1, 2), atol=1e-5, rtol=1e-5)


def test_cross_attention_kernel_is_blocked_on_a_cpu_for_large_maps_and_sdpa_otherwise():
    from densekd.ops.attention import BLOCKED_MIN_CHANNELS as C, BLOCKED_MIN_POSITIONS as N, cross_attention_kernel

    assert cross_attention_kernel("cpu") == "blocked"  # sizes not given do not decide
    assert cross_attention_kernel("cpu", channels=C, positions=N) == "blocked"
    assert cross_attention_kernel("cpu", channels=C - 1, positions=N) == "sdpa"  # few channels: passes over P rule
    assert cross_attention_kernel("cpu", channels=C, positions=N - 1) == "sdpa"  # small map: per-call overhead
    assert cross_attention_kernel(torch.device("cuda", 0), channels=C, positions=N) == "sdpa"
    assert cross_attention_kernel("meta") == "sdpa"
    assert cross_attention_kernel("cpu", "sdpa", C, N) == "sdpa"
    assert cross_attention_kernel("cpu", "blocked", 1, 1) == "blocked"


def test_cross_attention_auto_takes_the_kernel_its_sizes_call_for(monkeypatch):
    from torch.profiler import profile

    q, v = torch.randn(2, 40, 4), torch.randn(2, 40, 8)

    def kernels():
        with profile() as prof:
            cross_attention(q, q, v)
        names = {e.key for e in prof.key_averages()}
        return {"sdpa" for n in names if "scaled_dot_product" in n} | {"blocked" for n in names if "Blocked" in n}

    assert kernels() == {"sdpa"}  # 40 positions, 8 channels: below both thresholds
    monkeypatch.setattr(attention_ops, "BLOCKED_MIN_CHANNELS", 8)
    monkeypatch.setattr(attention_ops, "BLOCKED_MIN_POSITIONS", 40)
    assert kernels() == {"blocked"}


def test_cross_attention_refuses_narrower_values_and_unknown_kernels():
    q = torch.randn(1, 4, 6)
    for kernel in ("auto", "blocked", "sdpa"):
        with pytest.raises(ValueError, match="cross_attention expects d_v >= d_qk, got d_v=3, d_qk=6"):
            cross_attention(q, q, torch.randn(1, 4, 3), kernel=kernel)
    with pytest.raises(ValueError, match="cross_attention: kernel must be one of auto, blocked, sdpa, got 'flash'"):
        cross_attention(q, q, q, kernel="flash")


@pytest.mark.parametrize("rows", [1, 4, 7, 30])
@pytest.mark.parametrize("nq", [30, 11])  # square, and fewer queries than keys
def test_blocked_attention_gradcheck_and_explicit(rows, nq):
    """BlockedAttention's hand-written backward against finite differences (float64), any block size, and its
    output against the explicit softmax(q kᵀ · scale) v."""
    from densekd.ops import BlockedAttention

    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, nq, 3, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 30, 3, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 30, 5, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, k, v: BlockedAttention.apply(q, k, v, 0.7, rows), (q, k, v))
    ref = torch.softmax(0.7 * q @ k.transpose(1, 2), dim=-1) @ v
    torch.testing.assert_close(BlockedAttention.apply(q, k, v, 0.7, rows), ref)


def test_blocked_attention_equals_cross_attention_and_computes_in_fp32():
    from densekd.ops import blocked_attention

    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 40, 4, generator=g), torch.randn(2, 40, 4, generator=g)
    v = torch.randn(2, 40, 8, generator=g)
    torch.testing.assert_close(blocked_attention(q, k, v, rows=7), cross_attention(q, k, v), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(blocked_attention(q, k, v, channels_first=True), cross_attention(q, k, v, True),
                               atol=1e-5, rtol=1e-5)
    out = blocked_attention(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert out.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert blocked_attention(q, k, v).dtype == torch.float32
    with pytest.raises(ValueError, match=r"blocked_attention needs q \[B, Nq, d\], k \[B, Nk, d\], v \[B, Nk, C\], "
                                         r"got \(2, 40, 4\), \(2, 40, 3\), \(2, 40, 8\)"):
        blocked_attention(q, k[..., :3], v)


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


def test_projected_attention_takes_fewer_queries_than_keys():
    """q [B, d, Nq] against k [B, d, Nk] (benchmarks/attention_rows.py times slabs of query rows so)."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, 9, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 3, 20, generator=g, dtype=torch.float64, requires_grad=True)
    vt = torch.randn(2, 4, 20, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, k, vt: ProjectedAttention.apply(q, k, vt, 0.7, 4), (q, k, vt))
    y, cs = ProjectedAttention.apply(q, k, vt, 0.7, 4)
    p = torch.softmax(0.7 * q.transpose(1, 2) @ k, dim=-1)  # [B, Nq, Nk]
    assert y.shape == (2, 4, 9) and cs.shape == (2, 20)
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
    assert block_rows(2, 4200, torch.device("cpu")) == 2**21 // (2 * 4200)  # 249 rows of P4 per block on CPU
    assert block_rows(2, 4200, torch.device("cuda")) == 2**24 // (2 * 4200)
    assert block_rows(2, 16800, torch.device("cpu")) == ATTENTION_MIN_ROWS == 128  # not the budget's 62 at P3
    assert block_rows(2, 20, torch.device("cpu")) == 20  # a small map is one block
    assert block_rows(10**6, 10**4, torch.device("cpu")) == 128


def test_block_rows_never_zero(monkeypatch):
    monkeypatch.setattr(attention_ops, "ATTENTION_MIN_ROWS", 0)
    assert block_rows(10**6, 10**4, torch.device("cpu")) == 1


def test_reverse_grad():
    x = torch.tensor([1.0, -2.0], requires_grad=True)
    y = reverse_grad(x)
    torch.testing.assert_close(y, x.detach())
    (y * torch.tensor([3.0, 4.0])).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([-3.0, -4.0]))


def _relation_kl_explicit(s_rows, s_cols, t_rows, t_cols, scale, group):
    """Σ KL(softmax(z_t) ‖ softmax(z_s)) over rows and column groups, written out with autograd."""
    n, m = s_rows.shape[0], s_cols.shape[0]
    log_pt = torch.log_softmax((scale * t_rows @ t_cols.t()).view(n, m // group, group), -1)
    log_ps = torch.log_softmax((scale * s_rows @ s_cols.t()).view(n, m // group, group), -1)
    return (log_pt.exp() * (log_pt - log_ps)).sum()


@pytest.mark.parametrize("rows", [1, 3, 10])
@pytest.mark.parametrize("group", [8, 4, 2])
def test_relation_kl_gradcheck_and_explicit(rows, group):
    """The blockwise kernel (gradients formed in forward) against finite differences (float64) and against the
    explicit formula, any block size, softmax over all columns or over groups of them."""
    g = torch.Generator().manual_seed(0)
    s_rows = torch.randn(10, 3, generator=g, dtype=torch.float64, requires_grad=True)
    s_cols = torch.randn(8, 3, generator=g, dtype=torch.float64, requires_grad=True)
    t_rows, t_cols = torch.randn(10, 5, generator=g, dtype=torch.float64), torch.randn(8, 5, generator=g, dtype=torch.float64)
    fn = lambda a, b: relation_kl(a, b, t_rows, t_cols, 0.7, group, rows)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (s_rows, s_cols))
    value = fn(s_rows, s_cols)
    ref = _relation_kl_explicit(s_rows, s_cols, t_rows, t_cols, 0.7, group)
    torch.testing.assert_close(value, ref)
    assert value > 0
    grads = torch.autograd.grad(value, (s_rows, s_cols))
    for got, exp in zip(grads, torch.autograd.grad(ref, (s_rows, s_cols))):
        torch.testing.assert_close(got, exp)


def test_relation_kl_self_relation_fixed_columns_and_no_grad():
    """s_cols = s_rows (a self-relation: both gradients add up); columns without gradient (a memory bank); under
    no_grad no gradient is formed; the teacher side never gets one; float32 under autocast."""
    g = torch.Generator().manual_seed(1)
    s = torch.randn(12, 3, generator=g, requires_grad=True)
    t = torch.randn(12, 4, generator=g, requires_grad=True)
    value = relation_kl(s, s, t, t, 2.0, group=4, rows=5)
    value.backward()
    s_ref = s.detach().clone().requires_grad_()
    _relation_kl_explicit(s_ref, s_ref, t.detach(), t.detach(), 2.0, 4).backward()
    torch.testing.assert_close(s.grad, s_ref.grad)
    assert t.grad is None
    bank = torch.randn(6, 3, generator=g)
    tb = torch.randn(6, 4, generator=g)
    s.grad = None
    relation_kl(s, bank, t, tb, 1.5).backward()
    s_ref.grad = None
    _relation_kl_explicit(s_ref, bank, t.detach(), tb, 1.5, 6).backward()
    torch.testing.assert_close(s.grad, s_ref.grad)
    with torch.no_grad():
        quiet = relation_kl(s, s, t, t, 2.0, group=4, rows=5)
    assert not quiet.requires_grad and torch.equal(quiet, value.detach())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert relation_kl(s, s, t, t, 2.0, group=4).dtype == torch.float32
    assert relation_block_rows(10, 2**10, torch.device("cpu")) == 10
    assert relation_block_rows(5000, 4103, torch.device("cpu")) == RELATION_BLOCK_ELEMENTS // 4103


def test_relation_kl_bad_input():
    s, t = torch.randn(4, 3), torch.randn(4, 5)
    with pytest.raises(ValueError, match=r"^relation_kl expects s_rows \[N, C_s\], s_cols \[M, C_s\], t_rows \[N, C_t\], "
                                         r"t_cols \[M, C_t\] with M a multiple of group, got \(4, 3\), \(6, 3\), "
                                         r"\(4, 5\), \(6, 5\) and group 4$"):
        relation_kl(s, torch.randn(6, 3), t, torch.randn(6, 5), group=4)
    with pytest.raises(ValueError, match=r"^relation_kl expects .* got \(4, 3\), \(4, 3\), \(3, 5\), \(4, 5\) and group 4$"):
        relation_kl(s, s, torch.randn(3, 5), t)
    a = s.clone().requires_grad_()
    out = RelationKL.apply(a, a, t, t, 1.0, 4, 4, False)  # forward told that no backward follows
    with pytest.raises(RuntimeError, match=r"^relation_kl: its forward ran without gradients \(under no_grad\), no "
                                           r"backward$"):
        out.backward()



def test_flush_subnormal_grad_zeroes_only_subnormal_gradients():
    from densekd.ops import flush_subnormal_grad

    x = torch.ones(4, requires_grad=True)
    y = flush_subnormal_grad(x)
    assert torch.equal(y, x)
    g = torch.tensor([1e-39, -1e-40, 2e-38, -0.5])  # two subnormal, two normal
    y.backward(g)
    assert x.grad.tolist() == [0.0, 0.0, pytest.approx(2e-38), -0.5]
    d = torch.ones(2, dtype=torch.float64, requires_grad=True)  # float64's own threshold (2.2e-308)
    flush_subnormal_grad(d).backward(torch.tensor([1e-39, 1e-310], dtype=torch.float64))
    assert d.grad.tolist() == [1e-39, 0.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("inplace", [False, True])
def test_zero_subnormals_keeps_the_smallest_normal_and_zeroes_the_largest_subnormal(dtype, inplace):
    from densekd.ops import zero_subnormals

    fi = torch.finfo(dtype)
    g = torch.tensor([fi.tiny, -fi.tiny, 2 * fi.tiny, -1.0, 0.0, float("nan"), float("inf")], dtype=dtype)
    # subnormal in dtype, the largest one last
    sub = torch.tensor([fi.tiny / 2, -fi.tiny / 4, fi.tiny * (1 - fi.eps)], dtype=dtype)
    assert (sub.abs() < fi.tiny).all() and (sub != 0).all()
    x = torch.cat([g, sub])
    out = zero_subnormals(x, inplace=inplace)
    assert (out is x) == inplace
    assert torch.equal(out[:5], g[:5]) and out[5].isnan() and out[6].isinf()
    assert out[7:].tolist() == [0.0, 0.0, 0.0]


def test_cwd_sends_no_subnormal_gradient_to_the_student():
    """CWD's softmax over positions at τ = 4 with a far tail: the gradient that reaches the student map has no
    subnormal entry (they would make a CPU backward 10–100× slower in every thread)."""
    from densekd.losses import build_loss

    torch.manual_seed(0)
    mod = build_loss("cwd", student_channels=2, teacher_channels=2, align="identity")
    s = (torch.randn(1, 2, 16, 16) * 200).requires_grad_()
    t = torch.randn(1, 2, 16, 16) * 200
    mod(s, t)["loss_cwd"].backward()
    tiny = torch.finfo(torch.float32).tiny
    g = s.grad.abs()
    assert ((g > 0) & (g < tiny)).sum() == 0 and (g > 0).sum() > 0


def _standardised_mse_written_out(s, t):
    from densekd.losses.pkd import channel_standardise  # the written-out standardisation (PKD's reference form)

    return torch.nn.functional.mse_loss(channel_standardise(s), channel_standardise(t))


def test_standardised_mse_gradcheck_and_written_out():
    from densekd.ops import standardised_mse

    g = torch.Generator().manual_seed(0)
    s = (torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64) * 0.5 + 30).requires_grad_()
    t = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64) * 3 - 4 + 0.6 * s.detach()
    assert torch.autograd.gradcheck(lambda x: standardised_mse(x, t), (s,))
    s2 = s.detach().clone().requires_grad_()
    ref = _standardised_mse_written_out(s2, t)
    ref.backward()
    out = standardised_mse(s, t)
    out.backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(s.grad, s2.grad)


def test_standardised_mse_keeps_its_accuracy_where_the_maps_agree():
    """Near ŝ = t̂ (a well-distilled channel, loss ~1e-8) the value in float32 is as close to float64's as the
    written-out form's — a form from Σŝ², Σt̂² and Σŝt̂ alone is off by several times the loss there."""
    from densekd.ops import standardised_mse

    g = torch.Generator().manual_seed(0)
    t = torch.randn(2, 16, 20, 30, generator=g, dtype=torch.float64) * 2 + 5
    s = 3 * t - 7 + 1e-3 * torch.randn(t.shape, generator=g, dtype=torch.float64)
    exact = _standardised_mse_written_out(s, t).item()
    err_ref = abs(_standardised_mse_written_out(s.float(), t.float()).item() - exact) / exact
    err_new = abs(standardised_mse(s.float(), t.float()).item() - exact) / exact
    assert err_new < max(4 * err_ref, 1e-5)


def test_standardised_mse_constant_channel_fp32_result_and_bad_input():
    from densekd.ops import standardised_mse

    g = torch.Generator().manual_seed(1)
    s0 = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    s0[:, 1] = 2.0  # σ_s = 0: autograd through torch.std takes that channel's std gradient as 0; so does the kernel
    t = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    s, s2 = s0.clone().requires_grad_(), s0.clone().requires_grad_()
    standardised_mse(s, t).backward()
    _standardised_mse_written_out(s2, t).backward()
    assert s.grad.isfinite().all()
    torch.testing.assert_close(s.grad, s2.grad)
    b = torch.randn(2, 3, 4, 5).bfloat16().requires_grad_()
    out = standardised_mse(b, torch.randn(2, 3, 4, 5).bfloat16())
    out.backward()
    assert out.dtype == torch.float32 and b.grad.dtype == torch.bfloat16
    with pytest.raises(ValueError, match=r"standardised_mse needs two \[B, C, H, W\] maps of one shape"):
        standardised_mse(torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 4))


def _channel_kl_written_out(s, t, tau):
    log_p_t = torch.log_softmax(t.flatten(2) / tau, dim=2)
    log_p_s = torch.log_softmax(s.flatten(2) / tau, dim=2)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum()


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_channel_kl_gradcheck_and_written_out(tau):
    from densekd.ops import channel_kl

    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: channel_kl(x, t, tau), (s,))
    s2 = s.detach().clone().requires_grad_()
    ref = _channel_kl_written_out(s2, t, tau)
    ref.backward()
    out = channel_kl(s, t, tau)
    out.backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(s.grad, s2.grad)


def test_channel_kl_zeroes_subnormal_gradients_dtypes_and_bad_input():
    from densekd.ops import channel_kl

    torch.manual_seed(0)
    s = (torch.randn(1, 2, 16, 16) * 200).requires_grad_()
    channel_kl(s, torch.randn(1, 2, 16, 16) * 200, 4.0).backward()
    g, tiny = s.grad.abs(), torch.finfo(torch.float32).tiny
    assert ((g > 0) & (g < tiny)).sum() == 0 and (g > 0).sum() > 0
    b = torch.randn(2, 3, 4, 5).bfloat16().requires_grad_()
    out = channel_kl(b, torch.randn(2, 3, 4, 5).bfloat16(), 2.0)
    out.backward()
    assert out.dtype == torch.float32 and b.grad.dtype == torch.bfloat16
    with pytest.raises(ValueError, match=r"channel_kl needs two \[B, C, H, W\] maps of one shape"):
        channel_kl(torch.randn(2, 3, 4, 5), torch.randn(2, 3, 5, 4))
    with pytest.raises(ValueError, match="channel_kl tau must be > 0, got 0"):
        channel_kl(torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5), 0)


def test_standardised_mse_and_channel_kl_keep_fp32_under_autocast():
    """Their product-reductions (einsum → bmm) would run in bf16 under autocast: both kernels turn it off inside,
    so an amp run computes the same loss as an fp32 one."""
    from densekd.ops import channel_kl, standardised_mse

    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 16, 30, 40, generator=g)
    t = torch.randn(2, 16, 30, 40, generator=g) + 0.5 * s
    ref = (standardised_mse(s, t), channel_kl(s, t, 4.0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = (standardised_mse(s, t), channel_kl(s, t, 4.0))
    for a, r in zip(amp, ref):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, r, rtol=1e-6, atol=0)
