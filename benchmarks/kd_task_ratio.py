"""KD/task loss ratio of each method in a ``densekd compare`` folder, and the ``distill.weight`` that brings it to
a target ratio (how the detection experiments choose each method's weight on dev;
docs/methods.md, "Where it is applied": on small from-scratch models the KD term's scale differs from the task
loss's by orders of magnitude).

    python benchmarks/kd_task_ratio.py runs/dev/probe [--first 30] [--target 1.0]

For every ``<method>/seed*/log.csv``: the mean over the logged rows up to iteration ``--first`` of
``loss_kd / loss_task`` (both as logged, i.e. with the run's own ``distill.weight``, read from its config.yaml),
divided by that weight → the ratio at weight 1; the suggested weight is ``target / ratio`` (rounded to one
significant digit).
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys

import yaml

from densekd.run_folder import CONFIG_FILE, LOG_FILE


def ratio(run: str, first: int) -> tuple[float, float]:
    with open(os.path.join(run, CONFIG_FILE), encoding="utf-8") as f:
        cfg = yaml.safe_load(f)
    w = float((cfg.get("distill") or {}).get("weight", 1.0))
    vals = []
    with open(os.path.join(run, LOG_FILE), encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if int(row["iter"]) <= first and row.get("loss_kd") and float(row["loss_task"]) > 0:
                vals.append(float(row["loss_kd"]) / float(row["loss_task"]))
    return (sum(vals) / len(vals) / w if vals else math.nan), w


def round1(x: float) -> float:
    if not math.isfinite(x) or x <= 0:
        return math.nan
    e = math.floor(math.log10(x))
    return round(x / 10**e) * 10**e


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder")
    ap.add_argument("--first", type=int, default=30)
    ap.add_argument("--target", type=float, default=1.0)
    args = ap.parse_args()
    print(f"| method | KD/task at weight 1 (mean of iterations ≤ {args.first}) | weight for KD/task = {args.target:g} |")
    print("|---|---|---|")
    for m in sorted(os.listdir(args.folder)):
        seeds = sorted(d for d in os.listdir(os.path.join(args.folder, m)) if d.startswith("seed")) \
            if os.path.isdir(os.path.join(args.folder, m)) else []
        rs = [ratio(os.path.join(args.folder, m, s), args.first)[0] for s in seeds
              if os.path.isfile(os.path.join(args.folder, m, s, LOG_FILE))]
        rs = [r for r in rs if math.isfinite(r)]
        if not rs:
            continue
        r = sum(rs) / len(rs)
        print(f"| {m} | {r:.3g} | {round1(args.target / r):g} |")


if __name__ == "__main__":
    sys.exit(main())
