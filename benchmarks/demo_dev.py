"""How the segmentation demo's settings were chosen: students on the ``dev`` split, paired by seed.

    OMP_NUM_THREADS=1 python benchmarks/demo_dev.py --seeds 3 --out runs/demo-dev [--only NAME ...]

Every candidate is a (method, demo settings, engine overrides) triple trained through the engine exactly as
``densekd demo`` trains its students (same data, shipped teacher, schedule, seeds and data order), but evaluated
on ``dev``. Plain students are trained once per schedule and every candidate is paired with the plain student of
the same schedule and seed. Prints one Markdown table (mIoU on dev, paired gain ± std, > 2 std, s/run);
finished runs are reused, so the script can be stopped and rerun. Write-up: benchmarks/results/demo_segmentation.md.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path

from densekd import assets
from densekd.demo.segmentation import (TEACHER_ASSET, DemoConfig, build_data, method_kwargs, method_settings,
                                       student_config)
from densekd.tools.compare import compare_runs, fmt, markdown_table, mean_std, paired_gains

W1 = {"hinton_kd": 1.0, "fitnet": 1.0, "acam_kd": 1.0}  # every method at weight 1, as when these were measured
BASE = DemoConfig(eval_split="dev", acam_kwargs={}, weights=W1)  # candidates say their own ACAM-KD switches
#: name → (method, DemoConfig changes, engine overrides)
CANDIDATES: dict[str, tuple[str, dict, list[str]]] = {
    "acam_kd": ("acam_kd", {"acam_kwargs": {"z_norm": "none"}}, []),  # z_norm="none": the default when measured
    "acam_kd z_norm=spatial": ("acam_kd", {"acam_kwargs": {"z_norm": "spatial"}}, []),
    "fitnet": ("fitnet", {}, []),
    "hinton_kd (logits)": ("hinton_kd", {}, []),
    "acam_kd z_norm=spatial, weight 0.3": ("acam_kd", {"acam_kwargs": {"z_norm": "spatial"}, "weights": {**W1, "acam_kd": 0.3}}, []),
    "acam_kd z_norm=spatial, on head": ("acam_kd", {"acam_kwargs": {"z_norm": "spatial"}, "feature": "head"}, []),
    "fitnet on head": ("fitnet", {"feature": "head"}, []),
    "acam_kd z_norm=spatial, 600 it": ("acam_kd", {"acam_kwargs": {"z_norm": "spatial"}, "student_iters": 600}, []),
    "fitnet, 600 it": ("fitnet", {"student_iters": 600}, []),
    "acam_kd z_norm=spatial, 400 canvases": ("acam_kd", {"acam_kwargs": {"z_norm": "spatial"}, "n_student": 400}, []),
    "fitnet, 400 canvases": ("fitnet", {"n_student": 400}, []),
    "acam_kd_paper z_norm=spatial": ("acam_kd_paper", {"acam_kwargs": {"z_norm": "spatial"}}, []),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", default="runs/demo-dev")
    p.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/densekd"))
    p.add_argument("--only", nargs="+", default=None, help="candidate names (default: all)")
    args = p.parse_args()
    out = Path(args.out)
    ds = build_data(BASE, Path(args.cache_dir))
    assets.shipped_teacher(TEACHER_ASSET)  # verified before any run
    teacher = f"asset:{TEACHER_ASSET}"
    seeds = list(range(args.seeds))
    rows = []
    for name, (method, changes, extra) in CANDIDATES.items():
        if args.only and name not in args.only:
            continue
        cfg = replace(BASE, **changes)
        schedule = f"n{cfg.n_student}-it{cfg.student_iters}"
        conf = student_config(cfg, ds.root, teacher, out)
        sets = method_settings(replace(cfg, methods=(method,)))
        _, plain = compare_runs(conf, ["baseline"], seeds, str(out / schedule), log=lambda s: None)
        _, runs = compare_runs(conf, [method], seeds, str(out / schedule / name.replace(" ", "_").replace("=", "-")),
                               log=print, method_set={method: sets.get(method, []) + extra},
                               method_kwargs=method_kwargs(replace(cfg, methods=(method,))))
        g = paired_gains({"baseline": plain["baseline"], method: runs[method]}, "baseline", "mIoU")[0]
        m, s = mean_std([r["mIoU"] * 100 for r in runs[method]])[:2]
        pm, ps = mean_std([r["mIoU"] * 100 for r in plain["baseline"]])[:2]
        secs = mean_std([r.get("train_seconds") for r in runs[method]])[0]
        rows.append([name, schedule, fmt(pm, ps), fmt(m, s), fmt(g.mean * 100, g.std * 100, sign=True),
                     g.verdict(), ", ".join(f"{v * 100:+.2f}" for v in g.per_seed.values()), f"{secs:.0f}"])
        print(markdown_table(["candidate", "student set", "plain (dev)", "candidate (dev)", "gain (paired)",
                              "> 2 std", "per seed", "s/run"], rows, align=True), flush=True)


if __name__ == "__main__":
    main()
