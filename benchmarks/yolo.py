"""YOLO distillation benchmark: plain YOLOv8n, Ultralytics' own ``distill_model=``, and densekd methods through
``densekd.integrations.ultralytics``, on the built-in digits in YOLO format (no download). Write-up:
benchmarks/results/yolo.md.

    python benchmarks/yolo.py data                                  # digits → runs/yolo_bench/data/data.yaml
    python benchmarks/yolo.py teacher                               # YOLOv8s teacher (sha256 printed)
    python benchmarks/yolo.py ratios                                # first-batch KD/task ratios (weights)
    python benchmarks/yolo.py run --method acam_kd --seed 0 --split dev [--weight W] [--kwargs k=v ...]
    python benchmarks/yolo.py table runs/yolo_bench/results.jsonl --split val

``--method``: ``plain`` (student alone), ``ultralytics`` (Ultralytics' distill_model=, weight ``dis``) or any
densekd loss name. Every run appends one JSON line (mAP50-95 / mAP50 of the final model on ``--split``, mean
seconds per training epoch without validation, the KD/task ratio of the first batch) to ``--out``.
Choose settings with ``--split dev``; report with ``--split val``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import statistics
import sys
import time
from pathlib import Path


ROOT = Path("runs/yolo_bench")
DATA = ROOT / "data"
TEACHER = ROOT / "teacher" / "weights" / "best.pt"

#: the one schedule every student run uses (chosen on dev, see results/yolo.md)
SCHEDULE = dict(epochs=10, fraction=0.5, imgsz=64, batch=16, nbs=16, optimizer="AdamW", lr0=0.002,
                warmup_epochs=1, close_mosaic=3, workers=0, val=False, plots=False, verbose=False, exist_ok=True,
                deterministic=True)
#: the teacher: YOLOv8s on the whole train split (students see its first half: fraction=0.5)
TEACHER_SCHEDULE = dict(SCHEDULE, epochs=20, fraction=1.0)
DATA_SIZES = dict(n_train=256, n_dev=128, n_val=128)


def _sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""


def cmd_data(a: argparse.Namespace) -> None:
    from densekd.data.yolo import make_yolo_digits

    sizes = dict(DATA_SIZES)
    if a.n_train:
        sizes["n_train"] = a.n_train
    print(make_yolo_digits(DATA, seed=0, **sizes))


class _EpochClock:
    """Seconds of each training epoch, validation excluded (Ultralytics callbacks)."""

    def __init__(self) -> None:
        self.t0 = 0.0
        self.epochs: list[float] = []

    def start(self, _trainer) -> None:
        self.t0 = time.perf_counter()

    def end(self, _trainer) -> None:
        self.epochs.append(time.perf_counter() - self.t0)

    def callbacks(self) -> dict:
        return {"on_train_epoch_start": [self.start], "on_train_epoch_end": [self.end]}


def cmd_teacher(a: argparse.Namespace) -> None:
    from densekd.integrations.ultralytics import train_yolo

    sched = dict(TEACHER_SCHEDULE, epochs=a.epochs or TEACHER_SCHEDULE["epochs"])
    clock = _EpochClock()
    tr = train_yolo(a.model, DATA / "data.yaml", project=str(ROOT.resolve()), name="teacher", seed=0, split="val",
                    callbacks=clock.callbacks(), **sched)
    m = tr.metrics
    print(json.dumps({"teacher": a.model, "epochs": sched["epochs"], "map50_95": m.get("metrics/mAP50-95(B)"),
                      "map50": m.get("metrics/mAP50(B)"), "s_per_epoch": statistics.mean(clock.epochs),
                      "sha256": _sha256(TEACHER)}))


def cmd_run(a: argparse.Namespace) -> None:
    from densekd.config import parse_assignment
    from densekd.integrations.ultralytics import distill_yolo, train_yolo

    sched = dict(SCHEDULE, epochs=a.epochs or SCHEDULE["epochs"])
    name = f"{a.split}_{a.method}_w{a.weight}_s{a.seed}" + ("_" + "_".join(a.kwargs) if a.kwargs else "")
    common = dict(project=str((ROOT / "students").resolve()), name=name, seed=a.seed, split=a.split, **sched)
    clock = _EpochClock()
    kd_check: dict = {}
    if a.method == "plain":
        tr = train_yolo(a.student, DATA / "data.yaml", callbacks=clock.callbacks(), **common)
    elif a.method == "ultralytics":
        tr = train_yolo(a.student, DATA / "data.yaml", distill_model=str(TEACHER), callbacks=clock.callbacks(),
                        **({"dis": a.weight} if a.weight is not None else {}), **common)
    else:
        tr = distill_yolo(a.student, str(TEACHER), DATA / "data.yaml", method=a.method,
                          weight=a.weight if a.weight is not None else 1.0,
                          method_kwargs=dict(parse_assignment(x, "--kwargs") for x in a.kwargs or []),
                          callbacks=clock.callbacks(), **common)
        kd_check = tr.kd_check
    m = tr.metrics
    rec = {"method": a.method, "seed": a.seed, "split": a.split, "weight": a.weight, "kwargs": a.kwargs or [],
           "epochs": sched["epochs"], "map50_95": m.get("metrics/mAP50-95(B)"), "map50": m.get("metrics/mAP50(B)"),
           "s_per_epoch": statistics.mean(clock.epochs), "kd_task_ratio": kd_check.get("kd_task_ratio"),
           "teacher_map50_95": kd_check.get("teacher_map50_95"), "teacher_sha256": _sha256(TEACHER)}
    with open(a.out, "a") as f:
        f.write(json.dumps(rec) + "\n")
    print(json.dumps(rec))


def cmd_ratios(a: argparse.Namespace) -> None:
    """First-batch KD/task loss ratio of each method at its default weight (no training, no val data): the rule
    that sets the benchmark's weights (results/yolo.md, "Weights")."""
    import torch

    from densekd.integrations import _ultralytics_offline as offline
    from densekd.integrations.ultralytics import first_batch, kd_task_ratio_check

    for method in a.methods:
        with offline.offline():
            tr = _trainer(method, a.student)
            if method == "ultralytics":
                with torch.no_grad():
                    _, items = tr.model(first_batch(tr))
                kd = float(items.pop("dis_loss"))
                task = float(sum(float(v) for v in items.values()))
                r = {"task_loss": task, "kd_loss": kd, "kd_task_ratio": kd / task, "weight": tr.args.dis}
            else:
                r = {**kd_task_ratio_check(tr), "weight": 1.0}
        print(json.dumps({"method": method, **r}))


def _trainer(method: str, student: str):
    """A set-up trainer (model, optimizer, loaders) for ``method`` on the benchmark's data and schedule."""
    from densekd.integrations.ultralytics import (DistillationTrainer, OfflineDetectionTrainer, YOLOKDConfig)

    over = {**SCHEDULE, "model": student, "data": str(DATA / "data.yaml"), "split": "dev", "seed": 0,
            "project": str((ROOT / "setup").resolve()), "name": method}
    if method == "plain":
        tr = OfflineDetectionTrainer(overrides=over)
    elif method == "ultralytics":
        tr = OfflineDetectionTrainer(overrides={**over, "distill_model": str(TEACHER)})
    else:
        tr = DistillationTrainer(overrides=over, kd=YOLOKDConfig(teacher=str(TEACHER), method=method, check=False))
    tr._setup_train()
    return tr


def cmd_speed(a: argparse.Namespace) -> None:
    """Seconds per training step (forward, backward, optimizer step) of every method in ONE process, on one fixed
    batch, methods interleaved round by round; median per method and its ratio to plain."""
    import torch

    from densekd.integrations import _ultralytics_offline as offline
    from densekd.integrations.ultralytics import first_batch

    with offline.offline():
        trainers = {m: _trainer(m, a.student) for m in a.methods}
        batches = {m: first_batch(tr) for m, tr in trainers.items()}
        times: dict[str, list[float]] = {m: [] for m in a.methods}
        for r in range(a.warmup + a.rounds):
            for m, tr in trainers.items():
                t0 = time.perf_counter()
                for _ in range(a.steps):
                    loss, _ = tr.model(dict(batches[m]))
                    loss.sum().backward()
                    tr.optimizer.step()
                    tr.optimizer.zero_grad()
                if r >= a.warmup:
                    times[m].append((time.perf_counter() - t0) / a.steps)
    base = statistics.median(times["plain"]) if "plain" in times else math.nan
    print(f"| method | s/step (median of {a.rounds} rounds × {a.steps} steps) | × plain |")
    print("|---|---|---|")
    for m, ts in times.items():
        med = statistics.median(ts)
        print(f"| {m} | {med:.4f} | {med / base:.2f}× |")
    print(f"\nbatch {SCHEDULE['batch']} at {SCHEDULE['imgsz']} px, torch threads {torch.get_num_threads()}")


def _fmt(xs: list[float], scale: float = 100.0) -> str:
    if len(xs) == 1:
        return f"{xs[0] * scale:.2f}"
    return f"{statistics.mean(xs) * scale:.2f} ± {statistics.stdev(xs) * scale:.2f}"


def cmd_table(a: argparse.Namespace) -> None:
    recs = [json.loads(line) for line in Path(a.results).read_text().splitlines() if line.strip()]
    recs = [r for r in recs if r["split"] == a.split]
    groups: dict[tuple, dict[int, dict]] = {}
    for r in recs:  # the last record of a (method, weight, kwargs, seed) wins
        key = (r["method"], r["weight"], tuple(r["kwargs"]))
        groups.setdefault(key, {})[r["seed"]] = r
    plain = next((g for k, g in groups.items() if k[0] == "plain"), {})
    base_s = statistics.mean(r["s_per_epoch"] for r in plain.values()) if plain else math.nan
    print(f"| method | weight | seeds | mAP50-95 | mAP50 | gain mAP50-95 (paired) | s/epoch | × plain |")
    print("|---|---|---|---|---|---|---|---|")
    for (method, weight, kw), by_seed in groups.items():
        seeds = sorted(by_seed)
        m = [by_seed[s]["map50_95"] for s in seeds]
        m50 = [by_seed[s]["map50"] for s in seeds]
        sp = statistics.mean(by_seed[s]["s_per_epoch"] for s in seeds)
        gains = [by_seed[s]["map50_95"] - plain[s]["map50_95"] for s in seeds if s in plain]
        gain = "—" if method == "plain" or not gains else _fmt(gains)
        label = method + (f" ({', '.join(kw)})" if kw else "")
        default = {"plain": None, "ultralytics": 6.0}.get(method, 1.0)  # dis=6 / pair weight 1 when not given
        w = "—" if method == "plain" else f"{weight if weight is not None else default:g}"
        print(f"| {label} | {w} | {len(seeds)} | {_fmt(m)} | {_fmt(m50)} | {gain} | {sp:.2f} | {sp / base_s:.2f}× |")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("data")
    d.add_argument("--n-train", type=int, default=None)
    d.set_defaults(func=cmd_data)
    t = sub.add_parser("teacher")
    t.add_argument("--model", default="yolov8s.yaml")
    t.add_argument("--epochs", type=int, default=None)
    t.set_defaults(func=cmd_teacher)
    r = sub.add_parser("run")
    r.add_argument("--method", required=True)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--split", choices=["dev", "val"], required=True)
    r.add_argument("--weight", type=float, default=None, help="KD weight (densekd pair weight / Ultralytics dis)")
    r.add_argument("--kwargs", nargs="*", default=[], metavar="key=value", help="loss keyword arguments")
    r.add_argument("--student", default="yolov8n.yaml")
    r.add_argument("--epochs", type=int, default=None)
    r.add_argument("--out", default=str(ROOT / "results.jsonl"))
    r.set_defaults(func=cmd_run)
    ra = sub.add_parser("ratios")
    ra.add_argument("--methods", nargs="+", default=["ultralytics", "acam_kd", "mgd", "cwd", "fitnet"])
    ra.add_argument("--student", default="yolov8n.yaml")
    ra.set_defaults(func=cmd_ratios)
    sp = sub.add_parser("speed")
    sp.add_argument("--methods", nargs="+", default=["plain", "ultralytics", "acam_kd", "mgd", "cwd", "fitnet"])
    sp.add_argument("--student", default="yolov8n.yaml")
    sp.add_argument("--steps", type=int, default=5)
    sp.add_argument("--rounds", type=int, default=5)
    sp.add_argument("--warmup", type=int, default=1)
    sp.set_defaults(func=cmd_speed)
    tb = sub.add_parser("table")
    tb.add_argument("results")
    tb.add_argument("--split", default="val")
    tb.set_defaults(func=cmd_table)
    a = p.parse_args(argv)
    a.func(a)


if __name__ == "__main__":
    sys.exit(main())
