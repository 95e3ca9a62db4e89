"""PKD's and CWD's losses: the written-out form (what autograd runs through) against densekd's kernels
(``densekd.ops.standardised_mse``, ``densekd.ops.channel_kl``), forward + backward to the student maps, at the
papers' FPN sizes, interleaved in one process.

The written-out forms are written here from the equations (docs/methods.md, "PKD", "CWD"): PKD standardises both
maps per channel over (batch, positions) with the unbiased std and takes the MSE; CWD takes log-softmaxes over
each channel's positions at τ and the KL sum, its student map passed through ``flush_subnormal_grad`` (what
densekd's CWD did before the kernel). Random maps; every level of the setting, batch 2, 256 channels, the loss of
all levels summed as the Distiller does. For each rep the four variants run once each, the order rotating rep by
rep; the table gives the median (min–max) seconds and the median of the per-rep ratios kernel / written-out.
Subnormals flushed and freed memory kept in malloc's heap, as the Trainer runs on a CPU (``train.flush_denormal``,
``train.malloc_keep``).

    python benchmarks/feature_kernels.py                               # RetinaNet P3–P7 and Faster R-CNN P2–P6
    python benchmarks/feature_kernels.py --settings retinanet --reps 3 --threads 1
"""
from __future__ import annotations

import argparse
import statistics
import time

#: FPN levels of an 800×1333 image padded to 800×1344 (size_divisible 32): RetinaNet/FCOS P3–P7, Faster R-CNN P2–P6
SETTINGS = {
    "retinanet": [(100, 168), (50, 84), (25, 42), (13, 21), (7, 11)],
    "faster_rcnn": [(200, 336), (100, 168), (50, 84), (25, 42), (13, 21)],
}


def pkd_written_out(s, t):
    import torch.nn.functional as F

    from densekd.losses.pkd import channel_standardise

    return F.mse_loss(channel_standardise(s), channel_standardise(t))


def cwd_written_out(s, t, tau=4.0):
    import torch.nn.functional as F

    from densekd.ops import flush_subnormal_grad

    s = flush_subnormal_grad(s)
    log_p_t = F.log_softmax(t.flatten(2) / tau, dim=2)
    log_p_s = F.log_softmax(s.flatten(2) / tau, dim=2)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--channels", type=int, default=256)
    args = ap.parse_args(argv)

    import torch

    from densekd.ops import channel_kl, standardised_mse
    from densekd.tools.bench import cpu_as_the_trainer

    kept = cpu_as_the_trainer(args.threads)  # subnormals flushed, freed memory kept: no block faulted in anew
    variants = {"pkd written-out": pkd_written_out, "pkd kernel": standardised_mse,
                "cwd written-out": cwd_written_out, "cwd kernel": lambda s, t: channel_kl(s, t, 4.0)}
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch 2, {args.channels} channels, {args.reps} reps "
          f"after one warm-up each, order rotating; subnormals flushed, freed memory kept: {kept}")
    for name in args.settings:
        g = torch.Generator().manual_seed(0)
        maps = [(torch.randn(2, args.channels, h, w, generator=g), torch.randn(2, args.channels, h, w, generator=g))
                for h, w in SETTINGS[name]]

        def run(fn):
            ss = [s.detach().requires_grad_() for s, _ in maps]
            t0 = time.perf_counter()
            sum(fn(s, t) for s, (_, t) in zip(ss, maps)).backward()
            return time.perf_counter() - t0

        keys = list(variants)
        times = {k: [] for k in keys}
        for k in keys:
            run(variants[k])
        for rep in range(args.reps):
            for k in keys[rep % len(keys):] + keys[:rep % len(keys)]:
                times[k].append(run(variants[k]))
        print(f"\n**{name}** ({' + '.join(f'{h}×{w}' for h, w in SETTINGS[name])})\n")
        print("| loss | written-out s (min–max) | kernel s (min–max) | kernel / written-out (min–max) |")
        print("|---|---|---|---|")
        for loss in ("pkd", "cwd"):
            a, b = times[f"{loss} written-out"], times[f"{loss} kernel"]
            r = [y / x for x, y in zip(a, b)]
            print(f"| {loss} | {statistics.median(a):.3f} ({min(a):.3f}–{max(a):.3f}) | {statistics.median(b):.3f} "
                  f"({min(b):.3f}–{max(b):.3f}) | {statistics.median(r):.2f} ({min(r):.2f}–{max(r):.2f}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
