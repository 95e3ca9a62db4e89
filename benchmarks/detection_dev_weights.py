"""Choose the detection demo's ``distill.weight`` per method on **dev** (never on val): train the demo's students
(``densekd.demo.detection``: FCOS MobileNetV3-Small cpu preset, 400 canvases, 200 iterations, the shipped teacher,
every FPN level P3–P7) with a few weights per method, and print per weight the KD/task ratios at iteration 1 (the
health guards' ``kd/<level>/kd_task_ratio`` and ``kd/<level>/grad_ratio`` columns of log.csv, geometric mean over
the levels, seeds; and the total ``loss_kd / loss_task``), dev AP ± std over seeds and the gain over the plain
student paired by seed.

    python benchmarks/detection_dev_weights.py --out runs/dev/weights --seeds 2 \\
        --weights fitnet=0.002,0.01 acam_kd=0.0008,0.004

Every run goes through the engine (:func:`densekd.tools.compare.compare_runs`; finished runs are reused). The plain
student is trained once (``<out>/plain``) and linked into each weight's folder, so every gain is paired with the
same plain runs. Results: benchmarks/results/acam_ablations_detection.md.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from pathlib import Path

from densekd.config import parse_assignment
from densekd.tools.compare import compare_runs, fmt, mean_std, paired_gains
from densekd.demo import common
from densekd.run_folder import LOG_FILE, kd_level
from densekd.demo.detection import TEACHER_ASSET, DemoConfig, build_data, student_config


def _gmean(values: list[float]) -> float:
    vals = [v for v in values if v > 0]
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else math.nan


def start_ratios(run: Path) -> tuple[float, float, float]:
    """At iteration 1 of ``run`` (log.csv's first row): the geometric mean over the levels of the health guards'
    KD/task loss ratio (``kd/<level>/kd_task_ratio``) and gradient-norm ratio (``kd/<level>/grad_ratio``), and the
    total ``loss_kd / loss_task``."""
    with open(run / LOG_FILE, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return math.nan, math.nan, math.nan
    r = rows[0]
    loss = [float(v) for k, v in r.items() if kd_level(k, "kd_task_ratio") is not None and v]
    grad = [float(v) for k, v in r.items() if kd_level(k, "grad_ratio") is not None and v]
    total = float(r["loss_kd"]) / float(r["loss_task"]) if r.get("loss_kd") and float(r["loss_task"]) else math.nan
    return _gmean(loss), _gmean(grad), total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/dev/weights")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--weights", nargs="+", default=["fitnet=0.002,0.01", "acam_kd=0.0008,0.004"],
                    help="METHOD=W1,W2,...")
    ap.add_argument("--cache-dir", default="~/.cache/densekd")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    common.set_threads(args.threads)
    cfg = DemoConfig(eval_split="dev")
    ds = build_data(cfg, Path(os.path.expanduser(args.cache_dir)))
    out = Path(args.out)
    seeds = list(range(args.seeds))
    conf = student_config(cfg, ds.root, f"asset:{TEACHER_ASSET}", out)
    _, plain = compare_runs(conf, ["baseline"], seeds, str(out / "plain"))
    ap_plain = mean_std([100 * r["AP"] for r in plain["baseline"]])[:2]
    lines = ["| method | distill.weight | KD/task loss ratio per level (geo. mean P3–P7) | KD/task gradient-norm "
             "ratio per level (geo. mean) | KD/task total | dev AP | gain vs plain (paired) | per seed |",
             "|---|---|---|---|---|---|---|---|",
             f"| plain | — | — | — | — | {fmt(*ap_plain)} | — | — |"]
    for item in args.weights:
        method, ws = parse_assignment(item, "--weights", "METHOD=W1,W2,..., e.g. acam_kd=0.004,0.02")
        for w in [float(x) for x in str(ws).split(",")]:
            d = out / f"{method}_w{w:g}"
            d.mkdir(parents=True, exist_ok=True)
            link = d / "baseline"
            if not link.exists():
                link.symlink_to(Path("..") / "plain" / "baseline")
            _, res = compare_runs(conf, ["baseline", method], seeds, str(d),
                                  method_set={method: [f"distill.weight={w:g}"]})
            g = paired_gains(res, "baseline", "AP", ["baseline", method])[0]
            loss, grad, total = zip(*[start_ratios(d / method / f"seed{s}") for s in seeds])
            ap_m = mean_std([100 * r["AP"] for r in res[method]])[:2]
            lines.append(f"| {method} | {w:g} | {_gmean(list(loss)):.3g} | {_gmean(list(grad)):.3g} "
                         f"| {sum(total) / len(total):.3g} "
                         f"| {fmt(*ap_m)} | {fmt(100 * g.mean, 100 * g.std, sign=True)} "
                         f"| {', '.join(f'{100 * v:+.2f}' for v in g.per_seed.values())} |")
            print("\n".join(lines), flush=True)
    text = "\n".join(lines) + "\n"
    (out / "weights.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
