"""Attention kernels: softmax(q kᵀ / √d) v without materialising the N×N matrix.

* :func:`cross_attention` — ACAM-KD's fusion softmax(q kᵀ / √d) v: on a CPU :class:`BlockedAttention`, elsewhere
  PyTorch's ``scaled_dot_product_attention`` arranged so that its memory-efficient kernel applies
  (docs/methods.md, "Computing ACAM-KD without the attention matrix": equal q/k/v last dimensions, unit last-dim
  stride).
* :class:`ProjectedAttention` — what ACAM-KD's ASCM reads of the fused map (its projection on M units and the
  column sums of P), computed blockwise flash-style: P is built a few query rows at a time and recomputed in
  backward from the saved row log-sum-exp. Exact (tests/test_ops.py: gradcheck, against the explicit formula).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable


#: the kernels :func:`cross_attention` can take: "auto" picks "blocked" on a CPU for large enough maps (below),
#: "sdpa" otherwise
ATTENTION_KERNELS = ("auto", "blocked", "sdpa")
#: on a CPU, "auto" runs the blocked kernel from this many value channels (C; d = C/2) and this many key positions
#: N up, and SDPA below either: blocked wins where the N²·d products dominate, SDPA's fused CPU kernel where passes
#: over P and per-call overhead do. Measured (``python benchmarks/blocked_attention.py --sweep``, batch 2, 2 threads;
#: benchmarks/results/blocked_attention.md): blocked / SDPA time 0.78–0.93 for C ≥ 128 and N ≥ 256, 0.76–1.15 at
#: C = 64, 0.91–1.27 at C = 32, 1.38–2.09 at C = 19 (DeepLabV3's logits), 0.98–1.44 at N = 64. So an FPN's 256
#: channels and the segmentation demo's trunk (128 × 16×16) take it; the detection demo's 64-channel FPN and a
#: segmenter's logits keep SDPA.
BLOCKED_MIN_CHANNELS = 128
BLOCKED_MIN_POSITIONS = 256


def cross_attention(q: Tensor, k: Tensor, v: Tensor, channels_first: bool = False, kernel: str = "auto") -> Tensor:
    """softmax(q kᵀ / √d_qk) v for q, k: [B, N, d_qk], v: [B, N, d_v], without materialising the N×N matrix.

    Returns [B, N, d_v], or [B, d_v, N] (contiguous) with ``channels_first`` (for a conv feature map).

    ``kernel``: ``"auto"`` (the default) runs :class:`BlockedAttention` on a CPU when d_v ≥
    :data:`BLOCKED_MIN_CHANNELS` and N ≥ :data:`BLOCKED_MIN_POSITIONS` (:func:`cross_attention_kernel`), and
    ``"sdpa"`` otherwise. On a CPU, SDPA on two heads sharing Q and K performs 14 products of N²·d_qk where the
    blocked kernel performs 10 (floor 9): at COCO P3, batch 2, 2 threads, 0.80× SDPA's time; on small maps or few
    channels SDPA's fused kernel is faster (``python benchmarks/blocked_attention.py [--sweep]``). On a GPU SDPA's
    flash kernels are kept (not measured against the blocked kernel: no GPU here). The blocked kernel computes in
    fp32 even under bf16 autocast, so its output is fp32.

    ``"sdpa"``, docs/methods.md, "Computing ACAM-KD without the attention matrix": ``scaled_dot_product_attention``
    only takes its memory-efficient/flash path when q, k and v have the same last dimension. With d_v = h·d_qk (the
    paper's C vs C/2: h = 2) V is split into h heads of width d_qk that share Q and K (``expand``: a view, no
    copy) in one SDPA call. Any other ratio falls back to zero-padding Q and K up to d_v, which leaves every dot
    product unchanged. The scale stays 1/√d_qk.
    """
    if kernel not in ATTENTION_KERNELS:
        raise ValueError(f"cross_attention: kernel must be one of {', '.join(ATTENTION_KERNELS)}, got {kernel!r}")
    d_qk, d_v = q.shape[-1], v.shape[-1]
    if d_v < d_qk:
        raise ValueError(f"cross_attention expects d_v >= d_qk, got d_v={d_v}, d_qk={d_qk}")
    if cross_attention_kernel(q.device, kernel, d_v, k.shape[-2]) == "blocked":
        out = blocked_attention(q, k, v)  # [B, N, d_v]
        # one copy, as below: a transposed view would reach the masks' convs as a channels-last map
        return out.transpose(1, 2).contiguous() if channels_first else out
    scale = 1.0 / math.sqrt(d_qk)
    # Measured: the CPU flash kernel also needs a unit stride in the last dimension; a transposed conv
    # output (stride HW) silently falls back to the materialising path. The copies are N×d, not N×N.
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    b, n = v.shape[0], v.shape[1]
    if d_v % d_qk == 0:
        heads = d_v // d_qk
        vh = v.view(b, n, heads, d_qk).transpose(1, 2)  # [B, h, N, d_qk]
        qh = q.unsqueeze(1).expand(b, heads, q.shape[1], d_qk)  # shared by every head: a view, no copy
        kh = k.unsqueeze(1).expand(b, heads, n, d_qk)
        out = F.scaled_dot_product_attention(qh, kh, vh, scale=scale)  # [B, h, N, d_qk]
    else:
        out = F.scaled_dot_product_attention(F.pad(q, (0, d_v - d_qk)), F.pad(k, (0, d_v - d_qk)), v,
                                             scale=scale).unsqueeze(1)  # [B, 1, N, d_v]
    if channels_first:  # [B, d_v, N] with channel = head·d_qk + j: one copy
        return out.permute(0, 1, 3, 2).reshape(b, d_v, q.shape[1]).contiguous()  # one head: reshape is a view
    return out.transpose(1, 2).reshape(b, q.shape[1], d_v)


def cross_attention_kernel(device: torch.device | str, kernel: str = "auto", channels: int | None = None,
                           positions: int | None = None) -> str:
    """The kernel :func:`cross_attention` runs on ``device`` for values of ``channels`` (d_v) over ``positions``
    keys: ``"blocked"`` or ``"sdpa"`` (``kernel="auto"``: blocked on a CPU from :data:`BLOCKED_MIN_CHANNELS`
    and :data:`BLOCKED_MIN_POSITIONS` up; a size not given does not decide)."""
    if kernel != "auto":
        return kernel
    if torch.device(device).type != "cpu":
        return "sdpa"
    small = ((channels is not None and channels < BLOCKED_MIN_CHANNELS)
             or (positions is not None and positions < BLOCKED_MIN_POSITIONS))
    return "sdpa" if small else "blocked"


#: elements of one [B, rows, HW] block of P in :class:`ProjectedAttention`: 8 MiB in fp32 on CPU. Measured at
#: COCO P3 (``python benchmarks/acam_memory_trace.py blocks --elements 20 21 22 23 --repeats 3``): 2^20 / 2^21 /
#: 2^22 / 2^23 took 10.3 / 8.2 / 7.7 / 8.4 s and peaked at 4.6 / 5.1 / 6.1 / 8.0 feature maps. 64 MiB on other
#: devices, where fewer and larger products keep kernel launches few (34 blocks at P3; a choice, not measured:
#: no GPU was available here).
ATTENTION_BLOCK_ELEMENTS = 2**21
ATTENTION_BLOCK_ELEMENTS_ACCELERATOR = 2**24
#: but never fewer query rows than this, unless the map has fewer: every block reads all of k (three times) and
#: reads and writes all of ∂k, d·N values each whatever the rows, against 8·rows·d·N FLOPs, so a block of r rows
#: does 0.4·r FLOPs per byte of that traffic, whatever d and N. The budget alone gives 15 rows at Faster R-CNN's
#: P2 (N = 67 200, batch 2), where the traffic ruled: 2.16 ms per query row at 15 rows, 1.07 at 128, 1.00 at 256
#: (4.3 / 2.1 / 2.0× the floor; ``python benchmarks/attention_rows.py``, benchmarks/results/attention_rows.md).
#: 128 rather than 256: each of the two blocks the backward holds is then the size of q at d = 128.
ATTENTION_MIN_ROWS = 128


def block_rows(batch: int, n: int, device: torch.device) -> int:
    """Query rows per block of :class:`ProjectedAttention`: the device's element budget, at least
    :data:`ATTENTION_MIN_ROWS`, at most the map's N."""
    budget = ATTENTION_BLOCK_ELEMENTS if device.type == "cpu" else ATTENTION_BLOCK_ELEMENTS_ACCELERATOR
    return max(1, min(n, max(ATTENTION_MIN_ROWS, budget // max(batch * n, 1))))


_softmax_out = torch.ops.aten._softmax.out  # softmax into a buffer we own: one pass, row by row in cache
_softmax_backward_out = torch.ops.aten._softmax_backward_data.out  # P ⊙ (∂P − Σ_j P_ij ∂P_ij)


def _block(buf: Tensor, b: int, r: int, n: int) -> Tensor:
    """The first b·r·n elements of a flat reused buffer as a [b, r, n] block (contiguous)."""
    return buf[: b * r * n].view(b, r, n)


def _softmax_rows(s: Tensor, p: Tensor) -> Tensor:
    """P's rows for a block of logits ``s`` [B, r, N] written into ``p``; returns their log-sum-exp [B, r], from P at
    each row's maximum (lse = max − log P_i,argmax, and P_i,argmax ≥ 1/N, so the log is safe)."""
    mx, at = s.max(dim=2, keepdim=True)
    _softmax_out(s, 2, False, out=p)
    return (mx - p.gather(2, at).log()).squeeze(2)


def _softmax_backward_rows(dp: Tensor, p: Tensor) -> Tensor:
    """∂S = P ⊙ (∂P − δ), δ_i = Σ_j P_ij ∂P_ij, for a block: in place of ``dp`` on a CPU (its row kernel reads a
    row of ∂P before it writes it); elsewhere into a new tensor (an in-place softmax backward is not measured there)."""
    return _softmax_backward_out(dp, p, 2, dp.dtype, grad_input=dp if dp.device.type == "cpu" else torch.empty_like(dp))


class ProjectedAttention(torch.autograd.Function):
    """What ASCM reads of STCA-FF, without forming F_fuse: y = Ṽ Pᵀ and cs = Pᵀ1, P = softmax(qᵀk · scale).

    q: [B, d, Nq], k: [B, d, Nk] (channels first, as the 1×1 convs give them); vt: [B, M, Nk] = S_s V, i.e. V
    projected on the M spatial units before the attention. Returns y [B, M, Nq] = S_s Z (the spatial-mask
    logits) and cs [B, Nk] (the column sums of P, from which mean_hw F_fuse follows). P is formed ``rows`` query
    rows at a time in buffers reused by every block, and recomputed in backward from the saved row log-sum-exp
    (as flash attention does): memory beyond q and k is O(rows·Nk), never Nq×Nk. Computed in fp32
    (docs/methods.md, "Precision").

    Beyond its four N×N×d products, this kernel's time is passes over blocks of P that do not fit in cache
    (docs/methods.md, "Computing ACAM-KD without the attention matrix"), so it makes few: the forward's softmax
    is PyTorch's fused one (a row at a time, in cache) and the row log-sum-exp follows from P at each row's
    maximum (lse = max − log P_i,argmax, P_i,argmax ≥ 1/Nk); the backward rebuilds P as exp of one product of q
    and k one row longer ([q·scale; −lse] against [k; 1]), takes ∂P = gyᵀṼ + 1 gcsᵀ as one product of rank
    M + 1 ([gy; 1]ᵀ [Ṽ; gcs]) and ∂S from PyTorch's fused softmax backward (in place on a CPU).
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, vt: Tensor, scale: float, rows: int):  # type: ignore[override]
        dtypes = (q.dtype, k.dtype, vt.dtype)
        ct = torch.promote_types(torch.promote_types(q.dtype, vt.dtype), torch.float32)  # fp32, or fp64 if given
        with torch.autocast(q.device.type, enabled=False):
            q, k, vt = q.to(ct), k.to(ct), vt.to(ct)
            (b, _, nq), nk, m = q.shape, k.shape[2], vt.shape[1]
            rows = min(rows, nq)
            y = q.new_empty(b, m, nq)
            cs = q.new_zeros(b, 1, nk)
            lse = q.new_empty(b, nq)
            ones = q.new_ones(b, 1, rows)
            sbuf, pbuf = q.new_empty(b * rows * nk), q.new_empty(b * rows * nk)  # logits and P of one block
            for i0 in range(0, nq, rows):
                r = min(rows, nq - i0)
                s, p = _block(sbuf, b, r, nk), _block(pbuf, b, r, nk)
                s.baddbmm_(q[:, :, i0:i0 + r].transpose(1, 2), k, beta=0, alpha=scale)  # logits of these rows
                lse[:, i0:i0 + r] = _softmax_rows(s, p)  # rows i0..i0+r of P
                y[:, :, i0:i0 + r] = torch.bmm(vt, p.transpose(1, 2))
                cs.baddbmm_(ones[:, :, :r], p)
        ctx.save_for_backward(q, k, vt, lse, y)
        ctx.scale, ctx.rows, ctx.dtypes = scale, rows, dtypes
        return y, cs.squeeze(1)

    @staticmethod
    @once_differentiable  # a second derivative would need its own kernel: refused with a clear error
    def backward(ctx, gy: Tensor | None, gcs: Tensor | None):  # type: ignore[override]
        q, k, vt, lse, y = ctx.saved_tensors
        scale, rows = ctx.scale, ctx.rows
        (b, _, nq), nk = q.shape, k.shape[2]
        with torch.autocast(q.device.type, enabled=False):
            gy = torch.zeros_like(y) if gy is None else gy.to(y.dtype)
            qa = torch.cat([q * scale, -lse.unsqueeze(1)], dim=1)  # [q·scale; −lse]ᵀ[k; 1] = S − lse = log P
            ka = torch.cat([k, k.new_ones(b, 1, nk)], dim=1)
            if gcs is None:  # ∂P_ij = gy_i·Ṽ_j (+ gcs_j), times the logit scale for ∂S
                left, right = gy * scale, vt
            else:
                left = torch.cat([gy, gy.new_ones(b, 1, nq)], dim=1).mul_(scale)
                right = torch.cat([vt, gcs.to(y.dtype).unsqueeze(1)], dim=1)
            dq, dk, dvt = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(vt)
            pbuf, dbuf = q.new_empty(b * rows * nk), q.new_empty(b * rows * nk)  # P and ∂S of one block
            for i0 in range(0, nq, rows):
                r = min(rows, nq - i0)
                p, ds = _block(pbuf, b, r, nk), _block(dbuf, b, r, nk)
                torch.bmm(qa[:, :, i0:i0 + r].transpose(1, 2), ka, out=p).exp_()  # rows i0..i0+r of P
                dvt.baddbmm_(gy[:, :, i0:i0 + r], p)  # ∂/∂Ṽ = gy P
                torch.bmm(left[:, :, i0:i0 + r].transpose(1, 2), right, out=ds)  # ∂P · scale
                ds = _softmax_backward_rows(ds, p)  # ∂S = P ⊙ (∂P − δ) · scale
                dq[:, :, i0:i0 + r] = torch.bmm(k, ds.transpose(1, 2))
                dk.baddbmm_(q[:, :, i0:i0 + r], ds)
        return dq.to(ctx.dtypes[0]), dk.to(ctx.dtypes[1]), dvt.to(ctx.dtypes[2]), None, None


def projected_attention(q: Tensor, k: Tensor, vt: Tensor, scale: float | None = None, rows: int | None = None
                        ) -> tuple[Tensor, Tensor]:
    """y = Ṽ Pᵀ [B, M, N] and cs = Pᵀ1 [B, N] with P = softmax(qᵀk · scale), q, k: [B, d, N], vt: [B, M, N].

    ``scale`` defaults to 1/√d; ``rows`` (query rows per block) to :func:`block_rows` for the device."""
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[1])
    if rows is None:
        rows = block_rows(q.shape[0], q.shape[2], q.device)
    return ProjectedAttention.apply(q, k, vt, scale, rows)


class BlockedAttention(torch.autograd.Function):
    """O = softmax(q kᵀ · scale) v for q [B, Nq, d], k [B, Nk, d], v [B, Nk, C] (any C), built as
    :class:`ProjectedAttention` is: P formed ``rows`` query rows at a time in reused buffers, recomputed in
    backward from the saved row log-sum-exp, fused softmax and softmax backward; computed in fp32 (or fp64).

    Forward + backward perform 10 products of N²·d for C = 2d (QKᵀ, PV, QKᵀ again, ∂V, ∂P, ∂Q, ∂K), where CPU SDPA
    with two heads of width d (:func:`cross_attention`) performs 14 and the exact form's floor is 9: at COCO P3
    (batch 2, d 128, C 256, 2 CPU threads) 0.80× SDPA's time (``python benchmarks/blocked_attention.py``). What
    :func:`cross_attention` (ACAM-KD's fusion) runs on a CPU."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, scale: float, rows: int):  # type: ignore[override]
        ct = torch.promote_types(torch.promote_types(q.dtype, v.dtype), torch.float32)
        with torch.autocast(q.device.type, enabled=False):
            q, k, v = q.to(ct), k.to(ct), v.to(ct)
            (b, nq, _), nk = q.shape, k.shape[1]
            rows = min(rows, nq)
            o, lse = v.new_empty(b, nq, v.shape[2]), q.new_empty(b, nq)
            sbuf, pbuf = q.new_empty(b * rows * nk), q.new_empty(b * rows * nk)  # logits and P of one block
            kt = k.transpose(1, 2)
            for i0 in range(0, nq, rows):
                r = min(rows, nq - i0)
                s, p = _block(sbuf, b, r, nk), _block(pbuf, b, r, nk)
                s.baddbmm_(q[:, i0:i0 + r], kt, beta=0, alpha=scale)  # logits of these rows
                lse[:, i0:i0 + r] = _softmax_rows(s, p)  # rows i0..i0+r of P
                o[:, i0:i0 + r] = torch.bmm(p, v)
        ctx.save_for_backward(q, k, v, lse)
        ctx.scale, ctx.rows = scale, rows
        return o

    @staticmethod
    @once_differentiable  # a second derivative would need its own kernel: refused with a clear error
    def backward(ctx, go: Tensor):  # type: ignore[override]
        q, k, v, lse = ctx.saved_tensors
        scale, rows = ctx.scale, ctx.rows
        (b, nq, _), nk = q.shape, k.shape[1]
        with torch.autocast(q.device.type, enabled=False):
            go = go.to(v.dtype)
            qa = torch.cat([q * scale, -lse.unsqueeze(2)], dim=2)  # [q·scale, −lse]·[k, 1] = S − lse = log P
            kat = torch.cat([k, k.new_ones(b, nk, 1)], dim=2).transpose(1, 2)
            dq, dk, dv = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
            vt, gos = v.transpose(1, 2), go * scale
            pbuf, dbuf = q.new_empty(b * rows * nk), q.new_empty(b * rows * nk)  # P and ∂S of one block
            for i0 in range(0, nq, rows):
                r = min(rows, nq - i0)
                p, ds = _block(pbuf, b, r, nk), _block(dbuf, b, r, nk)
                torch.bmm(qa[:, i0:i0 + r], kat, out=p).exp_()  # rows i0..i0+r of P
                dv.baddbmm_(p.transpose(1, 2), go[:, i0:i0 + r])  # ∂V = Pᵀ ∂O
                torch.bmm(gos[:, i0:i0 + r], vt, out=ds)  # ∂P · scale
                ds = _softmax_backward_rows(ds, p)  # ∂S = P ⊙ (∂P − δ) · scale
                dq[:, i0:i0 + r] = torch.bmm(ds, k)
                dk.baddbmm_(ds.transpose(1, 2), q[:, i0:i0 + r])
        return dq, dk, dv, None, None


def blocked_attention(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None, rows: int | None = None,
                      channels_first: bool = False) -> Tensor:
    """softmax(q kᵀ · scale) v for q [B, Nq, d], k [B, Nk, d], v [B, Nk, C] by :class:`BlockedAttention`:
    [B, Nq, C], or [B, C, Nq] with ``channels_first``. ``scale`` defaults to 1/√d, ``rows`` to
    :func:`block_rows`."""
    if q.dim() != 3 or k.shape != (q.shape[0], k.shape[1], q.shape[2]) or v.shape[:2] != k.shape[:2]:
        raise ValueError(f"blocked_attention needs q [B, Nq, d], k [B, Nk, d], v [B, Nk, C], got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[2])
    if rows is None:
        rows = block_rows(q.shape[0], k.shape[1], q.device)
    out = BlockedAttention.apply(q, k, v, scale, rows)
    return out.transpose(1, 2) if channels_first else out


# --------------------------------------------------------------------------- FLOPs (forward + backward)
# Matrix-product FLOPs, 2 per multiply-add, in the units densekd.ops.flops.flop_counter counts (tests/test_flops.py
# checks that the counter gives exactly these on both kernels). N = H·W positions, d = d_qk, B the batch.

def attention_floor_flops(batch: int, n: int, d_qk: int, d_v: int, column_sums: bool = False) -> int:
    """Floor of exact softmax(QKᵀ/√d)·V attention, forward + backward, with every input needing a gradient:
    forward QKᵀ and PV; backward ∂V = Pᵀ∂O, ∂P = ∂O Vᵀ, ∂Q = ∂S K, ∂K = ∂Sᵀ Q, with P kept from the forward
    (nothing recomputed): 2·B·N²·(3·d_qk + 3·d_v). ``column_sums``: the column sums Pᵀ1 are an output too
    (:class:`ProjectedAttention`), whose gradient enters the softmax backward as one N×N matrix–vector
    product: + 2·B·N²."""
    return 2 * batch * n * n * (3 * d_qk + 3 * d_v + (1 if column_sums else 0))


def projected_attention_flops(batch: int, n: int, d_qk: int, m: int) -> int:
    """What :class:`ProjectedAttention` performs on q, k [B, d_qk, N] and Ṽ [B, m, N]: its floor
    (:func:`attention_floor_flops` with the column sums) plus QᵀK once more, recomputed blockwise in backward
    instead of keeping P (N×N), with the log-sum-exp as one more row of it (+1), and the forward's column sums
    as a product with a row of ones (+1): 2·B·N²·(4·d_qk + 3·m + 3)."""
    return attention_floor_flops(batch, n, d_qk, m, column_sums=True) + 2 * batch * n * n * (d_qk + 2)


def blocked_attention_flops(batch: int, n: int, d_qk: int, d_v: int) -> int:
    """What :class:`BlockedAttention` performs on q, k [B, N, d_qk] and v [B, N, d_v]: the floor
    (:func:`attention_floor_flops`) plus QᵀK recomputed in backward, with the log-sum-exp as one more row:
    2·B·N²·(4·d_qk + 3·d_v + 1)."""
    return attention_floor_flops(batch, n, d_qk, d_v) + 2 * batch * n * n * (d_qk + 1)


def cross_attention_flops(batch: int, n: int, d_qk: int, d_v: int) -> int:
    """What :func:`cross_attention` performs with ``kernel="sdpa"`` (its default off a CPU; on a CPU see
    :func:`blocked_attention_flops`) through ``scaled_dot_product_attention``, forward + backward:
    per head of width w (d_v / d_qk heads of width d_qk, or one zero-padded head of width d_v) QKᵀ and PV
    forward, QKᵀ recomputed, ∂V, ∂P, ∂Q, ∂K backward: 7 products of N×N×w per head, 14·B·N²·d_v either way."""
    return 14 * batch * n * n * d_v
