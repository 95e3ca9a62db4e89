"""One method against others on the same seeds, from a ``densekd compare`` run folder's ``runs.json``: ``M − X`` per
seed, mean ± std of those differences and whether the mean exceeds 2 std (densekd.tools.compare.statistics).

    python benchmarks/head_to_head.py runs/compare/demo_val/runs.json --method acam_kd \
        --against baseline fitnet maskd pkd freekd samkd cirkd
"""
from __future__ import annotations

import argparse
import json


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", help="runs.json of a densekd compare output folder")
    ap.add_argument("--method", required=True)
    ap.add_argument("--against", nargs="+", required=True)
    ap.add_argument("--metric", default="mIoU")
    ap.add_argument("--scale", type=float, default=100.0, help="values × this (default 100: mIoU in %%)")
    args = ap.parse_args(argv)

    from densekd.tools.compare.statistics import paired_gains

    with open(args.runs, encoding="utf-8") as f:
        runs = json.load(f)
    missing = [m for m in [args.method, *args.against] if m not in runs]
    if missing:
        raise SystemExit(f"head_to_head: no runs for {', '.join(missing)} in {args.runs}; have {', '.join(runs)}")
    print(f"| | {args.method} − it | per seed | > 2 std |\n|---|---|---|---|")
    for other in args.against:
        g = paired_gains(runs, other, args.metric, [args.method])[0]
        seeds = ", ".join(f"{v * args.scale:+.2f}" for _, v in sorted(g.per_seed.items()))
        print(f"| {other} | {g.mean * args.scale:+.2f} ± {g.std * args.scale:.2f} | {seeds} | {g.verdict()} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
