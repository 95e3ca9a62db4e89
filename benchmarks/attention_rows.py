"""Query rows per block of ``densekd.ops.ProjectedAttention`` (``acam_kd_paper``'s attention): time per query row
against the kernel's FLOP floor, at FPN levels of an 800×1333 image, forward + backward.

Each block of P reads all of k (and writes all of ∂k) whatever its rows, so few rows per block leave the kernel
moving memory instead of multiplying; ``densekd.ops.attention.ATTENTION_MIN_ROWS`` was chosen with this script.
The kernel is timed on a slab of ``--slab`` query rows against every key of the level (its cost per block does
not depend on how many query rows there are), batch 2, d = 128 (C/2 of a 256-channel FPN), M = 8 spatial units,
both outputs given a gradient as ACAM-KD gives them. Interleaved reps, median; subnormals flushed and freed memory
kept, as the Trainer runs on a CPU. The floor is :func:`densekd.ops.attention.attention_floor_flops` per query
row, at the rate of a 2048² product measured in the same process (``densekd.ops.flops.matmul_rate``).

    python benchmarks/attention_rows.py                                  # P2 and P3, rows 15 … 496
    python benchmarks/attention_rows.py --levels P3 --rows 62 128 --reps 5
"""
from __future__ import annotations

import argparse
import statistics
import time

#: FPN levels of an 800×1333 image padded to 800×1344; the rows the element budget alone gives there at batch 2
LEVELS = {"P2": (200, 336), "P3": (100, 168), "P4": (50, 84)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", nargs="+", default=["P2", "P3"], choices=list(LEVELS))
    ap.add_argument("--rows", nargs="+", type=int, default=[15, 31, 62, 128, 256, 496])
    ap.add_argument("--slab", type=int, default=496, help="query rows timed against all keys")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import torch

    from densekd.ops import ProjectedAttention, block_rows
    from densekd.ops.attention import attention_floor_flops
    from densekd.ops.flops import matmul_rate
    from densekd.tools.bench import cpu_as_the_trainer

    kept = cpu_as_the_trainer(args.threads)
    b, d, m = 2, 128, 8
    rate = matmul_rate("cpu")
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch {b}, d {d}, M {m}, slab {args.slab} query "
          f"rows, median of {args.reps} interleaved reps after a warm-up; freed memory kept: {kept}; "
          f"matrix-product rate {rate / 1e9:.0f} GFLOP/s\n")
    print("| level | N | rows per block | ms per query row (min–max) | floor ms per row | × floor |")
    print("|---|---|---|---|---|---|")
    g = torch.Generator().manual_seed(0)
    for level in args.levels:
        h, w = LEVELS[level]
        n = h * w
        q = torch.randn(b, d, args.slab, generator=g) * 0.3
        k = torch.randn(b, d, n, generator=g) * 0.3
        vt, gy, gcs = torch.randn(b, m, n, generator=g), torch.randn(b, m, args.slab, generator=g), torch.randn(b, n)

        def run(rows):
            qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, vt))
            t0 = time.perf_counter()
            torch.autograd.backward(ProjectedAttention.apply(qq, kk, vv, d ** -0.5, rows), (gy, gcs))
            return time.perf_counter() - t0

        rows_list = [r for r in args.rows if r <= args.slab]
        times = {r: [] for r in rows_list}
        for r in rows_list:
            run(r)
        for rep in range(args.reps):
            for r in rows_list[rep % len(rows_list):] + rows_list[:rep % len(rows_list)]:
                times[r].append(run(r))
        floor = attention_floor_flops(b, n, d, m, column_sums=True) / n / rate * 1e3  # per query row
        default = block_rows(b, n, torch.device("cpu"))
        for r in rows_list:
            t = [x / args.slab * 1e3 for x in times[r]]
            mark = " (default)" if r == default else ""
            print(f"| {level} | {n} | {r}{mark} | {statistics.median(t):.3f} ({min(t):.3f}–{max(t):.3f}) | "
                  f"{floor:.3f} | {statistics.median(t) / floor:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
