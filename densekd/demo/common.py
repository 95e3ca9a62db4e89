"""What every ``densekd demo`` shares: the shipped teacher (verified, or retrained by our own command), the students
trained through the engine by :mod:`densekd.compare` (one training loop in the project), the paired-gain table
and its verdict, and small plotting helpers. A task's demo (``segmentation.py``, ``detection.py``) supplies its
data, its configs and its figures.
"""
from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .. import assets
from ..run_folder import EVAL_LOG_FILE, HEALTH_FILE, LOG_FILE
from ..compare import BASELINE_NAMES, MethodStats, PairedGain, compare_runs, paired_gains, primary_metric


# --------------------------------------------------------------------------------------------- teacher
@dataclass
class TeacherChoice:
    """The teacher a demo run distils from: its weights file, its record and where it came from."""

    path: Path
    record: dict[str, Any]
    origin: str  # "shipped" or "retrained"
    note: str = ""


def resolve_teacher(name: str, retrain: bool, retrain_fn: Callable[[], tuple[dict, dict]], out_dir: Path,
                    retrain_hint: str, log: Callable[[str], None], role: str = "teacher") -> TeacherChoice:
    """The shipped artefact ``name`` (checksum verified; a corrupt or missing file is one error line that offers
    ``retrain_hint``), or with ``retrain`` a new one from ``retrain_fn() -> (state_dict, record)`` written to
    ``out_dir`` (never into the package) and compared with the shipped one bit for bit. ``role`` names it in the
    lines (the demos' teachers; the detection demo's pretrained backbone)."""
    if not retrain:
        path, record = assets.shipped_teacher(name, retrain_hint=retrain_hint)
        log(f"{role}: shipped with densekd ({path.name}, sha256 {record['sha256'][:12]}… verified; "
            f"{_metric_text(record)}; made by `{record.get('command', '?')}`)")
        return TeacherChoice(path, record, "shipped")
    t0 = time.perf_counter()
    sd, record = retrain_fn()
    path, record = assets.write_artifact(name, sd, {**record, "train_seconds": round(time.perf_counter() - t0, 1)},
                                         out_dir)
    try:
        shipped = assets.read_record(name)
    except assets.AssetError:
        shipped = None
    if shipped is None:
        note = "no shipped record to compare with"
    elif shipped.get("weights_sha256") == record["weights_sha256"]:
        note = f"identical to the shipped {role}, bit for bit (weights_sha256 matches)"
    else:
        note = (f"differs from the shipped {role} (weights_sha256 {record['weights_sha256'][:12]}… vs "
                f"{str(shipped.get('weights_sha256'))[:12]}…; {_metric_text(record)} vs shipped {_metric_text(shipped)}): "
                "another torch build, CPU or setting changes floating-point rounding; the shipped files are untouched")
    log(f"{role}: retrained in {record['train_seconds']:.0f} s → {path} ({note})")
    return TeacherChoice(path, record, "retrained", note)


def _metric_text(record: Mapping[str, Any]) -> str:
    m = record.get("metric") or {}
    return ", ".join(f"{k} {v:.2f}" if isinstance(v, (int, float)) else f"{k} {v}" for k, v in m.items()) or "no metric"


# --------------------------------------------------------------------------------------------- students
@dataclass
class StudentResults:
    rows: list[MethodStats]
    runs: dict[str, list[dict[str, Any]]]
    gains: list[PairedGain]
    metric: str
    baseline: str
    out: Path
    health: dict[str, list[str]] = field(default_factory=dict)  # method → the runs' warnings (health.json)
    names: dict[str, str] = field(default_factory=dict)  # method → its runs' folder under ``out`` (default: its name)


def train_students(config: Mapping[str, Any], methods: Sequence[str], seeds: Sequence[int], out: Path,
                   method_set: Mapping[str, Sequence[str]] | None, log: Callable[[str], None],
                   method_kwargs: Mapping[str, Mapping[str, Any]] | None = None, jobs: int = 1,
                   run_names: Mapping[str, str] | None = None) -> StudentResults:
    """Every method × seed through the engine (:func:`densekd.compare.compare_runs`; finished runs in ``out`` are
    reused, an interrupted one resumes; ``jobs`` runs at once), then the paired gains over the baseline in the
    primary metric."""
    rows, runs = compare_runs(dict(config), list(methods), list(seeds), str(out), log=log, method_set=method_set,
                              method_kwargs=method_kwargs, jobs=jobs, run_names=run_names)
    names = {m: (run_names or {}).get(m, m) for m in methods}
    metric = primary_metric(rows)
    baseline = next(m for m in methods if m in BASELINE_NAMES)
    gains = paired_gains(runs, baseline, metric, methods)
    health: dict[str, list[str]] = {}
    for m in methods:
        for s in seeds:
            path = Path(out) / names[m] / f"seed{s}" / HEALTH_FILE
            if path.is_file():
                try:
                    warns = json.loads(path.read_text()).get("warnings", [])
                except (json.JSONDecodeError, AttributeError):
                    warns = []
                for w in warns:
                    text = w if isinstance(w, str) else str(w.get("message", w))
                    if text not in health.setdefault(m, []):
                        health[m].append(text)
    return StudentResults(rows, runs, gains, metric, baseline, Path(out), health, names)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    vals = [float(v) for v in values]
    if not vals:
        return float("nan"), float("nan")
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return m, float("nan")
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


def fmt(mean: float, std: float = float("nan"), digits: int = 2, sign: bool = False) -> str:
    if math.isnan(mean):
        return "—"
    m = f"{mean:+.{digits}f}" if sign else f"{mean:.{digits}f}"
    return m if math.isnan(std) else f"{m} ± {std:.{digits}f}"


def markdown_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *[line(r) for r in rows]])


def results_table(res: StudentResults, labels: Mapping[str, str], scale: float = 100.0, params: str = "",
                  teacher_row: Sequence[str] | None = None) -> str:
    """Teacher (optional), then every method: metric mean ± std over seeds, paired gain over the baseline ± its
    std, whether it exceeds 2 std, training seconds per run."""
    gains = {g.method: g for g in res.gains}
    head = ["model", f"{res.metric} (×{scale:g})" if scale != 1 else res.metric, "gain vs plain (paired)", "> 2 std",
            "train s/run", "seeds"]
    rows = []
    if teacher_row is not None:
        rows.append(list(teacher_row))
    for r in res.rows:
        m, s, n = r.stats[res.metric]
        secs = r.stats.get("train_seconds", (float("nan"),))[0]
        g = gains.get(r.method)
        rows.append([labels.get(r.method, r.method), fmt(m * scale, s * scale),
                     "—" if g is None else fmt(g.mean * scale, g.std * scale, sign=True),
                     "—" if g is None else g.verdict(), "—" if math.isnan(secs) else f"{secs:.0f}", str(n)])
    return markdown_table(head, rows)


def verdict_line(res: StudentResults, method: str, label: str, scale: float = 100.0) -> str:
    g = next((g for g in res.gains if g.method == method), None)
    if g is None:
        return ""
    per_seed = ", ".join(f"{v * scale:+.2f}" for v in g.per_seed.values())
    if g.n < 2:
        return f"{label} − plain = {g.mean * scale:+.2f} {res.metric} (1 seed: no spread, no verdict)"
    return (f"{label} − plain = {g.mean * scale:+.2f} ± {g.std * scale:.2f} {res.metric}, paired over {g.n} seeds "
            f"({per_seed}) → {'MORE' if g.beyond_2std else 'NOT more'} than 2 × the std of the paired gains")


def head_to_head_line(res: StudentResults, method: str, control: str, label: str, control_label: str,
                      scale: float = 100.0) -> str:
    """``method − control`` paired by seed (the same seeds: same initialisation and data order) with the std of the
    per-seed differences and the 2-std verdict; "" when either did not run."""
    from ..compare import paired_gains

    if method not in res.runs or control not in res.runs:
        return ""
    g = next(iter(paired_gains(res.runs, control, res.metric, [method])), None)
    if g is None or g.n == 0:
        return ""
    per_seed = ", ".join(f"{v * scale:+.2f}" for v in g.per_seed.values())
    if g.n < 2:
        return f"{label} − {control_label} = {g.mean * scale:+.2f} {res.metric} (1 seed: no spread, no verdict)"
    return (f"{label} − {control_label} = {g.mean * scale:+.2f} ± {g.std * scale:.2f} {res.metric}, paired over "
            f"{g.n} seeds ({per_seed}) → {'MORE' if g.beyond_2std else 'NOT more'} than 2 × the std of the paired "
            "differences")


# --------------------------------------------------------------------------------------------- run logs
def read_csv_rows(path: Path) -> list[dict[str, float]]:
    """log.csv as a list of {column: float} (empty cells left out)."""
    if not path.is_file():
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        for row in csv.DictReader(f):
            out.append({k: float(v) for k, v in row.items() if v not in ("", None)})
    return out


def read_eval_curve(run: Path, metric: str) -> list[tuple[int, float]]:
    """(iteration, metric) from a run's eval.csv (one JSON line per evaluation)."""
    path = run / EVAL_LOG_FILE
    if not path.is_file():
        return []
    pts = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            d = json.loads(line)
        except json.JSONDecodeError:
            continue
        if metric in d:
            pts.append((int(d["iter"]), float(d[metric])))
    return pts


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_gains(res: StudentResults, labels: Mapping[str, str], path: Path, scale: float = 100.0) -> Path:
    """Each method's gain over the plain student, seed by seed (dots), its mean (bar) and ± 2 × the std of the
    paired gains (error bar): a method helps beyond noise when its whole error bar is above zero."""
    plt = pyplot()
    gains = [g for g in res.gains if g.n > 0]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(gains) + 1.5), 3.6))
    for i, g in enumerate(gains):
        two = 0.0 if math.isnan(g.std) else 2 * g.std * scale
        colour = "tab:green" if g.beyond_2std else "tab:grey"
        ax.bar(i, g.mean * scale, color=colour, alpha=0.5, yerr=two, capsize=5)
        ax.scatter([i] * len(g.per_seed), [v * scale for v in g.per_seed.values()], color="k", s=12, zorder=3)
        ax.text(i, g.mean * scale + two, f"{g.mean * scale:+.2f}", ha="center", va="bottom", fontsize=8)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(gains)))
    ax.set_xticklabels([labels.get(g.method, g.method).replace("student + ", "") for g in gains], rotation=20,
                       ha="right", fontsize=8)
    n = max((g.n for g in gains), default=0)
    ax.set(ylabel=f"{res.metric} gain over plain (×{scale:g})",
           title=f"paired gains over {n} seeds: dots = seeds, bar = mean, error bar = ± 2 std (green: beyond)")
    ax.title.set_fontsize(9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def set_threads(threads: int) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)


__all__ = ["StudentResults", "TeacherChoice", "fmt", "markdown_table", "mean_std", "plot_gains", "pyplot", "read_csv_rows",
           "read_eval_curve", "resolve_teacher", "results_table", "set_threads", "train_students", "verdict_line"]


def run_dirs(res: StudentResults, method: str) -> list[Path]:
    """The run folders of ``method``'s students, in seed order."""
    return [res.out / res.names.get(method, method) / f"seed{r['seed']}" for r in res.runs.get(method, [])]


def plot_curves(res: StudentResults, teacher_metric: float | None, path: Path, split: str, *, metric: str,
                metric_label: str, loss_label: str, labels: Mapping[str, str]) -> Path:
    """Task loss and the eval metric over training, one line per seed and method (both demos)."""
    plt = pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for i, m in enumerate(res.runs):
        colour = f"C{i}"
        for j, d in enumerate(run_dirs(res, m)):
            rows = read_csv_rows(d / LOG_FILE)
            lab = labels.get(m, m) if j == 0 else None
            if rows:
                a1.plot([r["iter"] for r in rows], [r.get("loss_task", math.nan) for r in rows], color=colour,
                        alpha=0.6, label=lab)
            pts = read_eval_curve(d, metric)
            if pts:
                a2.plot([p[0] for p in pts], [100 * p[1] for p in pts], color=colour, alpha=0.6, marker="o", ms=3,
                        label=lab)
    if teacher_metric is not None:
        a2.axhline(teacher_metric, color="k", ls="--", label="teacher")
    a1.set(xlabel="iteration", ylabel=f"task loss ({loss_label})", title="training loss (one line per seed)")
    a2.set(xlabel="iteration", ylabel=f"{metric_label} (%) on {split}", title=f"{split} {metric_label} during training")
    a1.legend(fontsize=7)
    a2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
