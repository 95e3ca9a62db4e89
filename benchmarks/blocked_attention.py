"""ACAM-KD's default attention on a CPU, two ways: ``densekd.ops.cross_attention(kernel="sdpa")`` (PyTorch's
scaled_dot_product_attention, two heads of width d sharing Q and K; what ACAM-KD ran on a CPU until the blocked
kernel replaced it, and still runs on a GPU) against ``densekd.ops.blocked_attention``, a blockwise exact attention built
the way ``densekd.ops.ProjectedAttention`` is (query-row blocks, P recomputed in backward from the row
log-sum-exp, fused softmax and softmax backward), forward + backward at an FPN level of an 800×1333 image.

Why: on a CPU the SDPA form performs 14 products of N²·d (per head QKᵀ, PV, QKᵀ again, ∂V, ∂P, ∂Q, ∂K) where the
exact form's floor is 9 (d = C/2: QKᵀ, PV ×2, ∂V ×2, ∂P ×2, ∂Q, ∂K); the blockwise form performs 10 (QKᵀ once
more). This script measured that it shows, and ``cross_attention`` now runs the blocked kernel on a CPU (README,
"What each method costs at the papers' sizes"). Batch 2, C = 256, d = 128, 128 query rows a block, interleaved reps, median,
freed memory kept as the Trainer keeps it; the floor at the rate of a 2048² product in the same process.

    python benchmarks/blocked_attention.py                  # P3 (100×168), 3 reps
    python benchmarks/blocked_attention.py --level P4 --reps 5
    python benchmarks/blocked_attention.py --sweep          # blocked / SDPA time over C (d = C/2) and N

``--sweep`` times both kernels as ``cross_attention`` would call them (rows from ``block_rows``) over a grid of
channel counts C and positions N — from the demos' small maps to DeepLabV3's logits (C = 19, 64×128) — each cell
a median of interleaved reps, small calls repeated to at least 0.2 s: the table behind
``densekd.ops.attention.BLOCKED_MIN_CHANNELS`` / ``BLOCKED_MIN_POSITIONS``.
"""
from __future__ import annotations

import argparse
import statistics
import time

LEVELS = {"P3": (100, 168), "P4": (50, 84), "P5": (25, 42)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--level", default="P3", choices=list(LEVELS))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sweep", action="store_true", help="blocked / SDPA time over a grid of C and N")
    ap.add_argument("--channels", type=int, nargs="+", default=[19, 32, 64, 128, 256], help="--sweep: C (d = C // 2)")
    ap.add_argument("--positions", type=int, nargs="+", default=[64, 256, 1024, 4096, 8192], help="--sweep: N")
    args = ap.parse_args(argv)
    if args.sweep:
        return sweep(args)

    import torch

    from densekd.ops import blocked_attention, cross_attention
    from densekd.ops.attention import attention_floor_flops, blocked_attention_flops, cross_attention_flops
    from densekd.ops.flops import matmul_rate
    from densekd.tools.bench import cpu_as_the_trainer

    kept = cpu_as_the_trainer(args.threads)
    b, d, c = 2, 128, 256
    h, w = LEVELS[args.level]
    n = h * w
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(b, n, d, generator=g) * 0.3 for _ in range(2))
    v, go = torch.randn(b, n, c, generator=g), torch.randn(b, n, c, generator=g)

    def run(kind):
        qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
        t0 = time.perf_counter()
        o = cross_attention(qq, kk, vv, kernel="sdpa") if kind == "sdpa" else blocked_attention(qq, kk, vv, rows=128)
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
    performed = {"sdpa": cross_attention_flops(b, n, d, c), "blocked": blocked_attention_flops(b, n, d, c)}
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


def sweep(args) -> int:
    import torch

    from densekd.ops import cross_attention
    from densekd.tools.bench import cpu_as_the_trainer

    kept = cpu_as_the_trainer(args.threads)
    b = 2
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch {b}, d = C // 2, forward + backward, median of "
          f"{args.reps} interleaved reps after a warm-up, each rep repeated to at least 0.2 s; freed memory kept: "
          f"{kept}\n")
    print("blocked / SDPA time (below 1: the blocked kernel is faster)\n")
    print("| C \\ N | " + " | ".join(str(n) for n in args.positions) + " |")
    print("|---|" + "---|" * len(args.positions))
    for c in args.channels:
        d = max(c // 2, 1)
        cells = []
        for n in args.positions:
            g = torch.Generator().manual_seed(0)
            q, k = (torch.randn(b, n, d, generator=g) * 0.3 for _ in range(2))
            v, go = torch.randn(b, n, c, generator=g), torch.randn(b, n, c, generator=g)

            def once(kind):
                qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
                cross_attention(qq, kk, vv, kernel=kind).backward(go)

            def timed(kind, times):
                t0 = time.perf_counter()
                for _ in range(times):
                    once(kind)
                return (time.perf_counter() - t0) / times

            once("sdpa"), once("blocked")  # warm-up
            times = max(1, int(0.2 / max(timed("sdpa", 1), 1e-6)))
            ratios = []
            for rep in range(args.reps):
                kinds = ("sdpa", "blocked") if rep % 2 == 0 else ("blocked", "sdpa")
                t = {kind: timed(kind, times) for kind in kinds}
                ratios.append(t["blocked"] / t["sdpa"])
            cells.append(f"{statistics.median(ratios):.2f}")
        print(f"| {c} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
