"""ACAM-KD's default attention on a CPU: ``densekd.ops.cross_attention`` (PyTorch's scaled_dot_product_attention,
two heads of width d sharing Q and K) against a blockwise exact attention written here the way
``densekd.ops.ProjectedAttention`` is built (query-row blocks, P recomputed in backward from the row
log-sum-exp, fused softmax and softmax backward), forward + backward at an FPN level of an 800×1333 image.

Why: on a CPU the SDPA form performs 14 products of N²·d (per head QKᵀ, PV, QKᵀ again, ∂V, ∂P, ∂Q, ∂K) where the
exact form's floor is 9 (d = C/2: QKᵀ, PV ×2, ∂V ×2, ∂P ×2, ∂Q, ∂K); the blockwise form performs 10 (QKᵀ once
more). This script measures whether that shows; it is not yet the library's kernel (README, "What each method
costs at the papers' sizes"). Batch 2, C = 256, d = 128, 128 query rows a block, interleaved reps, median,
freed memory kept as the Trainer keeps it; the floor at the rate of a 2048² product in the same process.

    python benchmarks/blocked_attention.py                  # P3 (100×168), 3 reps
    python benchmarks/blocked_attention.py --level P4 --reps 5
"""
from __future__ import annotations

import argparse
import statistics
import time

LEVELS = {"P3": (100, 168), "P4": (50, 84), "P5": (25, 42)}


def blocked_attention_function():
    import torch
    from torch.autograd.function import once_differentiable

    softmax_out = torch.ops.aten._softmax.out
    softmax_backward_out = torch.ops.aten._softmax_backward_data.out

    class BlockedAttention(torch.autograd.Function):
        """O = softmax(q kᵀ · scale) v for q, k [B, N, d], v [B, N, C] (CPU, fp32)."""

        @staticmethod
        def forward(ctx, q, k, v, scale, rows):
            b, n, _ = q.shape
            o, lse = v.new_empty(b, n, v.shape[2]), q.new_empty(b, n)
            sbuf, pbuf = q.new_empty(b * rows * n), q.new_empty(b * rows * n)
            kt = k.transpose(1, 2)
            for i0 in range(0, n, rows):
                r = min(rows, n - i0)
                s, p = sbuf[: b * r * n].view(b, r, n), pbuf[: b * r * n].view(b, r, n)
                s.baddbmm_(q[:, i0:i0 + r], kt, beta=0, alpha=scale)
                mx, at = s.max(dim=2, keepdim=True)
                softmax_out(s, 2, False, out=p)
                lse[:, i0:i0 + r] = (mx - p.gather(2, at).log()).squeeze(2)
                o[:, i0:i0 + r] = torch.bmm(p, v)
            ctx.save_for_backward(q, k, v, lse)
            ctx.scale, ctx.rows = scale, rows
            return o

        @staticmethod
        @once_differentiable
        def backward(ctx, go):
            q, k, v, lse = ctx.saved_tensors
            scale, rows = ctx.scale, ctx.rows
            b, n, _ = q.shape
            qa = torch.cat([q * scale, -lse.unsqueeze(2)], dim=2)  # [q·scale, −lse]·[k, 1] = log P
            kat = torch.cat([k, k.new_ones(b, n, 1)], dim=2).transpose(1, 2)
            dq, dk, dv = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
            vt, gos = v.transpose(1, 2), go * scale
            pbuf, dbuf = q.new_empty(b * rows * n), q.new_empty(b * rows * n)
            for i0 in range(0, n, rows):
                r = min(rows, n - i0)
                p, ds = pbuf[: b * r * n].view(b, r, n), dbuf[: b * r * n].view(b, r, n)
                torch.bmm(qa[:, i0:i0 + r], kat, out=p).exp_()
                dv.baddbmm_(p.transpose(1, 2), go[:, i0:i0 + r])
                torch.bmm(gos[:, i0:i0 + r], vt, out=ds)  # ∂P · scale
                softmax_backward_out(ds, p, 2, ds.dtype, grad_input=ds)  # ∂S, in place (CPU row kernel)
                dq[:, i0:i0 + r] = torch.bmm(ds, k)
                dk.baddbmm_(ds.transpose(1, 2), q[:, i0:i0 + r])
            return dq, dk, dv, None, None

    return BlockedAttention


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--level", default="P3", choices=list(LEVELS))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import torch

    from densekd.engine import malloc
    from densekd.ops import cross_attention
    from densekd.ops.attention import attention_floor_flops, cross_attention_flops
    from densekd.ops.flops import matmul_rate

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    kept = malloc.keep_freed_memory()
    blocked = blocked_attention_function()
    b, d, c = 2, 128, 256
    h, w = LEVELS[args.level]
    n = h * w
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(b, n, d, generator=g) * 0.3 for _ in range(2))
    v, go = torch.randn(b, n, c, generator=g), torch.randn(b, n, c, generator=g)

    def run(kind):
        qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
        t0 = time.perf_counter()
        o = cross_attention(qq, kk, vv) if kind == "sdpa" else blocked.apply(qq, kk, vv, d ** -0.5, 128)
        o.backward(go)
        return time.perf_counter() - t0, (o.detach(), qq.grad, kk.grad, vv.grad)

    _, ref = run("sdpa")
    _, got = run("blocked")
    diff = max(((x - y).abs().max() / y.abs().max()).item() for x, y in zip(got, ref))
    times = {"sdpa": [], "blocked": []}
    for rep in range(args.reps):
        for kind in (("sdpa", "blocked") if rep % 2 == 0 else ("blocked", "sdpa")):
            times[kind].append(run(kind)[0])
    rate = matmul_rate("cpu")
    floor = attention_floor_flops(b, n, d, c) / rate
    performed = {"sdpa": cross_attention_flops(b, n, d, c), "blocked": 2 * b * n * n * (4 * d + 3 * c + 1)}
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.level} ({h}×{w}), batch {b}, d {d}, C {c}, "
          f"median of {args.reps} interleaved reps after a warm-up; freed memory kept: {kept}; matrix-product rate "
          f"{rate / 1e9:.0f} GFLOP/s; floor {floor:.2f} s; max relative difference blocked vs SDPA {diff:.1e}\n")
    print("| form | s (min–max) | TFLOP performed | × floor time |\n|---|---|---|---|")
    for kind, t in times.items():
        print(f"| {kind} | {statistics.median(t):.2f} ({min(t):.2f}–{max(t):.2f}) | {performed[kind] / 1e12:.2f} | "
              f"{statistics.median(t) / floor:.2f} |")
    r = [x / y for x, y in zip(times["blocked"], times["sdpa"])]
    print(f"\nblocked / sdpa, per rep: median {statistics.median(r):.2f} ({min(r):.2f}–{max(r):.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
