"""Choosing the detection demo's setting on ``dev``: every candidate, its command, its dev numbers.

Each candidate is a named set of :class:`densekd.demo.detection.DemoConfig` overrides (below). A run trains the
candidate's students through the demo (the engine; finished runs are reused) and evaluates them on ``dev`` — never
on ``val``. The write-up table (``--table``) lists every candidate run so far with the plain student's AP, each
method's paired gain over it and ACAM-KD − FitNet, per seed.

    python benchmarks/detection_setting.py run CANDIDATE [CANDIDATE ...] [--seeds 2] [--methods baseline fitnet acam_kd]
    python benchmarks/detection_setting.py table            # → benchmarks/results/detection_setting.md
    python benchmarks/detection_setting.py list             # the candidates and their overrides
    python benchmarks/detection_setting.py grids [--setting w05-pre-1000-wu100] [--png docs/det_tune.png]
        # every method's weight grid on that setting: dev gain per weight, the chosen weight (best mean dev AP), a
        # flag where it is the grid's edge, and compare --tune's figure (one panel per method)

Runs go to ``$DENSEKD_BENCH_OUT`` (default ``runs/detection_setting``), one folder per candidate; the table reads
their ``summary_detection.json``. Two candidates may run at once in two processes (``--threads 1`` each).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path
from typing import Any

from densekd.config import parse_assignment
from densekd.demo.detection import DemoConfig, run_demo
from densekd.run_folder import METRICS_FILE
from densekd.tools.compare import fmt, mean_std

P35 = ("0", "1", "2")
P37 = ("0", "1", "2", "p6", "p7")

#: name → (what it tests, DemoConfig overrides). Every candidate evaluates on dev.
CANDIDATES: dict[str, tuple[str, dict[str, Any]]] = {
    # first round, 20 warm-up iterations (the demo's earlier schedule)
    "w05-pre-1000": ("pretrained ×0.5 backbone, 1000 it, P3–P5, 20 warm-up it", {"warmup_iters": 20}),
    "w05-scratch-1000": ("×0.5 backbone from scratch, 1000 it, P3–P5, 20 warm-up it",
                         {"student_pretrained": False, "warmup_iters": 20}),
    "w05-pre-600": ("pretrained ×0.5 backbone, 600 it, P3–P5, 20 warm-up it", {"student_iters": 600, "warmup_iters": 20}),
    "w05-pre-1000-p37": ("pretrained ×0.5 backbone, 1000 it, P3–P7 (every level the head uses), 20 warm-up it",
                         {"levels": P37, "warmup_iters": 20}),
    "w05-pre-1000-inherit": ("pretrained ×0.5 backbone, 1000 it, P3–P5, FPN/head inherited from the teacher, 20 "
                             "warm-up it", {"inherit": True, "warmup_iters": 20}),
    # 20 warm-up iterations let seed 2's FCOS regression head die (one ReLU output channel negative everywhere: 9 AP);
    # 100 keep every seed alive: the demo's setting from here on (the DemoConfig defaults)
    "w05-pre-1000-wu100": ("pretrained ×0.5 backbone, 1000 it, P3–P5, 100 warm-up it (the demo's setting)", {}),
}

def out_root() -> Path:
    return Path(os.environ.get("DENSEKD_BENCH_OUT", "runs/detection_setting"))


#: settings that change only the distilled students: candidates equal in everything else share the plain runs
DISTILL_ONLY = ("weights", "levels", "level_weights", "kwargs", "num_masks", "methods", "seeds", "out_dir", "threads", "jobs",
                "quick", "retrain_teacher", "retrain_backbone", "cache_dir")


def config_of(name: str, seeds: int = 2, methods: tuple[str, ...] = ("baseline",), threads: int = 1,
              weights: dict[str, float] | None = None, split: str = "dev") -> DemoConfig:
    """``name``: a candidate, or ``CANDIDATE+METHOD@WEIGHT`` — that candidate with one method at one
    distill.weight (a point of a weight grid; trains the plain student and that method)."""
    name = name.partition("#")[0]  # "#tag": the same point with other loss kwargs (--kwargs), in its own folder
    base, _, point = name.partition("+")
    if base not in CANDIDATES:
        raise SystemExit(f"unknown candidate {base!r}; `list` shows them")
    over = dict(CANDIDATES[base][1])
    if point:
        method, _, w = point.partition("@")
        weights = {**(weights or {}), method: float(w)}
        methods = ("baseline", method)
    if weights:
        over["weights"] = {**DemoConfig().weights, **over.get("weights", {}), **weights}
    return DemoConfig(eval_split=split, seeds=seeds, methods=tuple(methods), threads=threads, jobs=1,
                      out_dir=str(out_root() / name), **over)


def _shipped_records() -> tuple[dict, dict]:
    from densekd import assets
    from densekd.demo.detection import BACKBONE_ASSET, TEACHER_ASSET

    return assets.read_record(TEACHER_ASSET), assets.read_record(BACKBONE_ASSET)


def share_plain_runs(cfg: DemoConfig) -> None:
    """Copy finished plain-student runs of another candidate with the same student setting (they are the same runs:
    distillation settings do not touch the plain student) into ``cfg``'s runs folder."""
    from dataclasses import asdict

    from densekd.demo.detection import student_runs_dir

    teacher, backbone = _shipped_records()
    key = {k: v for k, v in asdict(cfg).items() if k not in DISTILL_ONLY}
    dst = student_runs_dir(cfg, teacher, backbone if cfg.student_pretrained else None) / "baseline"
    done = sorted({p.parent.name for p in out_root().glob("*/summary_detection.json")} | set(CANDIDATES))
    for other in done:
        try:
            o = config_of(other, cfg.seeds)
        except SystemExit:
            continue
        if other == Path(cfg.out_dir).name or {k: v for k, v in asdict(o).items() if k not in DISTILL_ONLY} != key:
            continue
        src = student_runs_dir(o, teacher, backbone if o.student_pretrained else None) / "baseline"
        for seed_dir in sorted(src.glob("seed*")):
            if (seed_dir / METRICS_FILE).is_file() and not (dst / seed_dir.name / METRICS_FILE).is_file():
                shutil.copytree(seed_dir, dst / seed_dir.name, dirs_exist_ok=True)
                print(f"share: {other}/{seed_dir.name} plain run reused for {Path(cfg.out_dir).name}")


def run(names: list[str], seeds: int, methods: list[str], threads: int, weights: dict[str, float],
        kwargs: dict[str, dict[str, Any]] | None = None, split: str = "dev") -> None:
    from dataclasses import replace

    for name in names:
        folder = name if split == "dev" else f"{split}/{name}"  # val runs (settings already chosen) kept apart
        cfg = replace(config_of(name, seeds, tuple(methods), threads, weights, split), out_dir=str(out_root() / folder))
        if kwargs:
            cfg = replace(cfg, kwargs={**cfg.kwargs, **kwargs})
        share_plain_runs(cfg)
        run_demo(cfg)


def table() -> str:
    lines = ["| candidate | what it tests | iters | plain AP (dev) | method | weight | AP (dev) | gain vs plain (paired) "
             "| per seed | ACAM-KD − FitNet (paired) |", "|---|---|---|---|---|---|---|---|---|---|"]
    names = sorted({p.parent.name for p in out_root().glob("*/summary_detection.json")},
                   key=lambda n: (list(CANDIDATES).index(n.partition("+")[0]) if n.partition("+")[0] in CANDIDATES
                                  else 99, n))
    for name in names:
        path = out_root() / name / "summary_detection.json"
        what = CANDIDATES.get(name.partition("+")[0], ("?",))[0] + (f"; {name.partition('+')[2]}" if "+" in name else "")
        s = json.loads(path.read_text())
        cfg, runs = s["config"], s["runs"]
        ap = {m: {r["seed"]: 100 * r["AP"] for r in rs} for m, rs in runs.items()}
        base = ap.get("baseline", {})
        bm, bs, _ = mean_std(list(base.values()))
        diff = ""
        if "acam_kd" in ap and "fitnet" in ap:
            common = sorted(set(ap["acam_kd"]) & set(ap["fitnet"]))
            d = [ap["acam_kd"][k] - ap["fitnet"][k] for k in common]
            diff = fmt(*mean_std(d)[:2], sign=True) if d else ""
        for m, by_seed in ap.items():
            if m == "baseline":
                continue
            common = sorted(set(by_seed) & set(base))
            g = [by_seed[k] - base[k] for k in common]
            lines.append(f"| {name} | {what} | {cfg['student_iters']} | {fmt(bm, bs)} | {m} | "
                         f"{cfg['weights'].get(m, '')} | {fmt(*mean_std(list(by_seed.values()))[:2])} | "
                         f"{fmt(*mean_std(g)[:2], sign=True) if g else ''} | {', '.join(f'{x:+.1f}' for x in g)} | "
                         f"{diff if m == 'acam_kd' else ''} |")
    return "\n".join(lines)


def grid_result(setting: str) -> Any:
    """The weight grids run on ``setting`` as ``densekd compare --tune`` holds its own (a
    :class:`~densekd.tools.compare.tune.TuneResult` on dev, AP), read from every ``SETTING+METHOD@WEIGHT`` folder
    (a ``#tag`` folder ran other kwargs: not a grid point); the choice per method is compare's
    (:func:`~densekd.tools.compare.tune.choose`), so the table and figure below are its own."""
    from densekd.tools.compare.tune import Setting, SettingScore, TuneResult, choose

    runs: dict[str, dict[float, list[dict]]] = {}
    base: dict[int, dict] = {}
    for path in sorted(out_root().glob(f"{setting}+*@*/summary_detection.json")):
        name = path.parent.name
        if "#" in name or name.partition("+")[0] != setting:
            continue
        method, _, w = name.partition("+")[2].partition("@")
        found = json.loads(path.read_text())["runs"]
        base.update({r["seed"]: r for r in found.get("baseline", [])})
        if found.get(method):
            runs.setdefault(method, {})[float(w)] = found[method]

    def score(method: str, weight: float | None, rs: list[dict]) -> SettingScore:
        m, sd, n = mean_std([r["AP"] for r in rs])
        return SettingScore(method, Setting.of({} if weight is None else {"distill.weight": weight}), rs, {}, m, sd, n)

    seeds = sorted({r["seed"] for by_w in runs.values() for rs in by_w.values() for r in rs})
    scores = {"baseline": [score("baseline", None, [base[k] for k in seeds if k in base])]}
    scores.update({m: [score(m, w, by_w[w]) for w in sorted(by_w)] for m, by_w in sorted(runs.items())})
    chosen = {m: choose(scs, len(seeds)) for m, scs in scores.items()}
    return TuneResult("dev", "AP", seeds, [], 0, scores, chosen, [], {}, {})


def grids_table(setting: str) -> str:
    """Markdown: per method and weight, dev AP and the paired gain over the plain student; the chosen weight and
    compare's flag when it is the grid's edge."""
    from densekd.tools.compare import paired_gains
    from densekd.tools.compare.tune import edge_note

    res = grid_result(setting)
    ref = res.scores["baseline"][0].runs
    lines = [f"Weight grids on `{setting}` (dev, AP × 100, gains paired by seed with the plain student; the chosen "
             "weight: best mean dev AP)", "",
             "| method | weight | seeds | AP (dev) | gain vs plain (paired) | per seed | chosen |", "|---|---|---|---|---|---|---|"]
    for m, scs in res.scores.items():
        if m == "baseline":
            continue
        for i, sc in enumerate(scs):
            (g,) = paired_gains({"baseline": ref, "x": sc.runs}, "baseline", "AP", ["x"])
            mark = ""
            if res.chosen[m] == i:
                note = edge_note([x.setting for x in scs], i)
                mark = "**yes**" + (f" ({note})" if note else "")
            lines.append(f"| {m} | {sc.setting.values[0][1]:g} | {sc.n} | {fmt(100 * sc.mean, 100 * sc.std)} | "
                         f"{fmt(100 * g.mean, 100 * g.std, sign=True)} | "
                         f"{', '.join(f'{100 * v:+.1f}' for v in g.per_seed.values())} | {mark} |")
    return "\n".join(lines)


def plot_grids(setting: str, path: str) -> str | None:
    """PNG: compare's tuning figure (:func:`~densekd.tools.compare.tune.tune_curves`) of the grids on ``setting``."""
    from densekd.tools.compare.tune import tune_curves

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return tune_curves(grid_result(setting), path)


HEADER = """# Detection demo settings and weights, chosen on `dev`

Every candidate setting and every weight-grid point of the detection demo, COCO AP × 100 on `dev`, 2 seeds each,
gains paired by seed with the plain student of the same candidate. Made by
`python benchmarks/detection_setting.py run CANDIDATE[+METHOD@WEIGHT][#TAG] --seeds 2 [--kwargs JSON]`, then
`python benchmarks/detection_setting.py table` (which writes this file); 1 thread per run on the project's 2-core
CPU machine, shared with other jobs. `python benchmarks/detection_setting.py list` names every candidate. Rows
with a `#tag` ran the same point with other loss kwargs (`#residual`: ACAM-KD's `fusion_residual=True`);
`acam_kd_wn` and `acam_kd_orth` are mask-unit variants registered by `--plugin benchmarks/acam_unit_variants.py`.
The write-up: [`detection_demo.md`](detection_demo.md).

"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("names", nargs="+", help="candidates, or CANDIDATE+METHOD@WEIGHT points of a weight grid "
                                             "(a '#tag' suffix: the same point with --kwargs, in its own folder)")
    r.add_argument("--seeds", type=int, default=2)
    r.add_argument("--methods", nargs="+", default=["baseline", "fitnet", "acam_kd"])
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--weight", action="append", default=[], metavar="METHOD=W",
                   help="override a method's distill.weight (repeatable)")
    r.add_argument("--split", default="dev", choices=["dev", "val"],
                   help="dev (default: choosing) or val (reporting a point chosen on dev; runs in OUT/val/...)")
    r.add_argument("--plugin", default=None, help="a Python file run first (e.g. one that registers a loss to try)")
    r.add_argument("--kwargs", default=None, help="per-method loss kwargs as JSON, e.g. '{\"acam_kd_wn\": {\"gain\": 2}}'")
    sub.add_parser("table")
    sub.add_parser("list")
    g = sub.add_parser("grids")
    g.add_argument("--setting", default="w05-pre-1000-wu100", help="the candidate whose weight grids to read")
    g.add_argument("--png", default=None, help="also draw every method's grid into this PNG")
    a = p.parse_args()
    if a.cmd == "run":
        if a.plugin:
            import runpy

            runpy.run_path(a.plugin)
        weights = dict(parse_assignment(w, "--weight", "METHOD=W, e.g. acam_kd=0.01") for w in a.weight)
        run(a.names, a.seeds, a.methods, a.threads, {k: float(v) for k, v in weights.items()},
            json.loads(a.kwargs) if a.kwargs else None, a.split)
    elif a.cmd == "grids":
        print(grids_table(a.setting))
        if a.png and plot_grids(a.setting, a.png):
            print(f"figure: {a.png}")
    elif a.cmd == "list":
        for name, (what, over) in CANDIDATES.items():
            print(f"{name}: {what} {over}")
    else:
        text = table()
        out = Path("benchmarks/results/detection_setting.md")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(HEADER + text + "\n")
        print(text)


if __name__ == "__main__":
    main()
