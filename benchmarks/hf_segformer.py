"""The table for a write-up in benchmarks/results/: SegFormer students on the built-in digits, by ``densekd hf``.

    python benchmarks/hf_segformer.py table runs/hf_segformer --split val [--methods plain acam_kd fitnet]

Reads ``RUNS/<method>/seed<S>/eval_<split>.json`` (written by ``densekd hf train`` / ``densekd hf distill``) and
prints mIoU and pixel accuracy per method (mean ± std over seeds) with each method's gain over ``plain`` paired
by seed (densekd.tools.compare's statistics, the same as ``densekd compare``), then every run's numbers.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from densekd.tools.compare import aggregate, format_markdown, paired_gains


def load(runs: Path, split: str, methods: list[str] | None) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for d in sorted(runs.glob(f"*/seed*/eval_{split}.json")):
        method, seed = d.parent.parent.name, int(re.sub(r"\D", "", d.parent.name))
        if methods and method not in methods:
            continue
        r = json.loads(d.read_text())
        out.setdefault(method, []).append({"seed": seed, "mIoU": r["mIoU"], "pixel_acc": r["pixel_acc"]})
    if not out:
        sys.exit(f"no {runs}/*/seed*/eval_{split}.json")
    order = methods or sorted(out, key=lambda m: (m != "plain", m))
    return {m: sorted(out[m], key=lambda r: r["seed"]) for m in order if m in out}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("table")
    t.add_argument("runs", type=Path)
    t.add_argument("--split", default="val")
    t.add_argument("--methods", nargs="+", default=None)
    a = p.parse_args(argv)
    results = load(a.runs, a.split, a.methods)
    rows = aggregate(results, metrics=["mIoU", "pixel_acc"])
    gains = paired_gains(results, "plain", "mIoU") if "plain" in results else None
    print(format_markdown(rows, ["mIoU", "pixel_acc"], gains=gains, title=f"{a.runs} on {a.split}"))
    print("| method | seed | mIoU | pixel_acc |\n|---|---|---|---|")
    for m, runs in results.items():
        for r in runs:
            print(f"| {m} | {r['seed']} | {100 * r['mIoU']:.2f} | {100 * r['pixel_acc']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
