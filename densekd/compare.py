"""``densekd compare``: every method × seed through the engine, then a mean ± std table and a bar chart.

    densekd compare configs/compare/digits_segmentation.yaml train.max_iters=300 \\
        --methods baseline fitnet acam_kd --seeds 3 --out runs/compare/digits

``key=value`` overrides (applied to every run) go right after CONFIG or at the end of ``--methods``
(argparse takes no positionals after other options such as ``--out``). A config may carry its own plan in a
``compare:`` section (methods, seeds, per-method ``set`` and ``kwargs``), so ``densekd compare CONFIG`` runs the
whole table (configs/compare/demo_methods.yaml).

Each run is ``densekd.train(CONFIG, overrides + [distill.method=<m>, seed=<s>, output_dir=<out>/<m>/seed<s>])``;
the pseudo-methods ``baseline`` / ``student`` train the plain student (``distill=null``). When the method
differs from the config's own ``distill.method``, ``distill.kwargs`` is reset to ``{}`` (kwargs belong to a
method; method-specific defaults such as ``num_masks`` come from the task's ``default_pairs``).

Per-method loss kwargs: ``--kwargs maskd.fit_steps=200 samkd.scales=[1,2]`` (Python: ``method_kwargs``).
Per-method engine overrides, for a distillation point or weight that suits one method:
``--set "hinton_kd:distill.pairs=[{student: classifier}]" fitnet:distill.weight=0.5`` (Python: ``method_set``).

Paired gains: when ``baseline`` (or ``student``) is among the methods, every other method's gain in the primary
metric is computed seed by seed against the baseline run of the same seed (same init and data order), with the
sample std of those per-seed gains and whether the mean gain exceeds 2 × that std (:func:`paired_gains`).

Resumable: a run whose ``metrics.json`` exists is finished and not redone, its metrics are read back
(whatever its settings: the run folder is named by method and seed only, so use a new ``--out`` after
changing them); an interrupted run resumes from its ``checkpoint.pth`` (the engine's ``train.resume``).

Outputs in ``--out``: ``compare.md`` and ``compare.csv`` (mean ± sample std, ddof = 1, with n, per metric per
method in the order of ``--methods``) and ``compare.png`` (bar chart of the primary metric: mIoU for
segmentation, AP for detection, with std error bars). The aggregation (:func:`aggregate`) is a pure function.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .errors import ConfigError
from .run_folder import CHECKPOINT_FILE, CONSOLE_FILE, METRICS_FILE

#: pseudo-methods that mean "train the plain student, no distillation"
BASELINE_NAMES = ("baseline", "student")
#: metric shown in the bar chart, first one present wins (segmentation, detection)
PRIMARY_METRICS = ("mIoU", "AP", "mAP")
#: numbers in a run's metrics.json that are not metrics to aggregate
NON_METRIC_KEYS = ("iteration", "seed", "train_iterations")
#: metrics shown as they are (not × 100): wall-clock seconds of the training loop
UNSCALED_METRICS = ("train_seconds",)


@dataclass
class MethodStats:
    """Aggregated metrics of one method: ``stats[metric] = (mean, std, n)`` (std NaN when n < 2)."""

    method: str
    n: int
    stats: dict[str, tuple[float, float, int]]


# --------------------------------------------------------------------------- pure aggregation
def _mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(vals)
    if n == 0:
        return float("nan"), float("nan"), 0
    mean = sum(vals) / n
    if n < 2:
        return mean, float("nan"), n
    var = sum((v - mean) ** 2 for v in vals) / (n - 1)  # sample variance, ddof = 1
    return mean, math.sqrt(var), n


def default_metrics(results: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
    """Numeric metric names over all runs, first-seen order, without ``iteration`` and per-class entries
    (names containing ``/`` such as ``IoU/road``)."""
    names: list[str] = []
    for runs in results.values():
        for r in runs:
            for k, v in r.items():
                if k in NON_METRIC_KEYS or "/" in k or k in names:
                    continue
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    names.append(k)
    return names


def aggregate(results: Mapping[str, Sequence[Mapping[str, Any]]], methods: Sequence[str] | None = None,
              metrics: Sequence[str] | None = None) -> list[MethodStats]:
    """Mean and sample std (ddof = 1) of every metric per method.

    results: ``{method: [metrics dict of seed 0, of seed 1, ...]}``.
    methods: row order (default: the order of ``results``); metrics: columns (default :func:`default_metrics`).
    A run that lacks a metric (or has NaN) is left out of that metric's mean; its count is the ``n`` stored
    with each entry. ``MethodStats.n`` is the number of runs of the method.
    """
    methods = list(results) if methods is None else list(methods)
    missing = [m for m in methods if m not in results]
    if missing:
        raise ValueError(f"aggregate: no results for method(s) {missing}; have {list(results)}")
    metrics = default_metrics(results) if metrics is None else list(metrics)
    out = []
    for m in methods:
        runs = results[m]
        out.append(MethodStats(m, len(runs), {k: _mean_std([r[k] for r in runs if k in r]) for k in metrics}))
    return out


def _fmt(mean: float, std: float, scale: float, digits: int, sign: bool = False) -> str:
    if math.isnan(mean):
        return "—"
    m = f"{mean * scale:+.{digits}f}" if sign else f"{mean * scale:.{digits}f}"
    if math.isnan(std):
        return m
    return f"{m} ± {std * scale:.{digits}f}"


@dataclass
class PairedGain:
    """Gain of ``method`` over the baseline in ``metric``, paired by seed: mean and sample std (ddof = 1) of the
    per-seed differences, their number, and the seeds' own differences (raw metric units)."""

    method: str
    metric: str
    mean: float
    std: float
    n: int
    per_seed: dict[int, float]

    @property
    def beyond_2std(self) -> bool:
        """The mean gain is positive and more than 2 × the std of the paired gains (needs n ≥ 2)."""
        return self.n >= 2 and not math.isnan(self.std) and self.mean > 2 * self.std

    def verdict(self) -> str:
        if self.n < 2:
            return "— (1 seed)"
        return "yes" if self.beyond_2std else "no"


def paired_gains(results: Mapping[str, Sequence[Mapping[str, Any]]], baseline: str, metric: str,
                 methods: Sequence[str] | None = None) -> list[PairedGain]:
    """Every method's gain over ``baseline`` in ``metric``, seed by seed (runs carry ``"seed"``; runs without it
    pair by position). Seeds missing on either side are left out. The baseline itself is not listed."""
    def by_seed(runs: Sequence[Mapping[str, Any]]) -> dict[int, float]:
        return {int(r.get("seed", i)): float(r[metric]) for i, r in enumerate(runs)
                if metric in r and not math.isnan(float(r[metric]))}

    if baseline not in results:
        raise ValueError(f"paired_gains: no results for the baseline {baseline!r}; have {list(results)}")
    base = by_seed(results[baseline])
    out = []
    for m in (list(results) if methods is None else list(methods)):
        if m == baseline:
            continue
        own = by_seed(results[m])
        diffs = {s: own[s] - base[s] for s in sorted(own) if s in base}
        mean, std, n = _mean_std(list(diffs.values()))
        out.append(PairedGain(m, metric, mean, std, n, diffs))
    return out


def baseline_of(methods: Sequence[str]) -> str | None:
    """The first baseline pseudo-method among ``methods`` (the plain student), if any."""
    return next((m for m in methods if m in BASELINE_NAMES), None)


def format_markdown(rows: Sequence[MethodStats], metrics: Sequence[str] | None = None, scale: float = 100.0,
                    digits: int = 2, title: str | None = None, gains: Sequence[PairedGain] | None = None) -> str:
    """A Markdown table: one row per method, ``mean ± std`` per metric (× ``scale``, default in %; the
    training seconds as they are), n, and with ``gains`` the paired gain over the baseline and its verdict."""
    metrics = list(rows[0].stats) if metrics is None and rows else list(metrics or [])
    by_gain = {g.method: g for g in gains or ()}
    gm = gains[0].metric if gains else None
    head = ["method", "n", *[("train s" if k in UNSCALED_METRICS else k) for k in metrics]]
    if gm:
        head += [f"{gm} gain (paired)", "> 2 std"]
    lines = []
    if title:
        lines += [title, ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.method, str(r.n)] + [
            _fmt(r.stats[k][0], r.stats[k][1], 1.0 if k in UNSCALED_METRICS else scale, 0 if k in UNSCALED_METRICS else digits)
            for k in metrics]
        if gm:
            g = by_gain.get(r.method)
            cells += ["—", "—"] if g is None else [_fmt(g.mean, g.std, scale, digits, sign=True), g.verdict()]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"mean ± sample standard deviation (ddof = 1) over n seeds; values × {scale:g}"
                  if scale != 1 else "mean ± sample standard deviation (ddof = 1) over n seeds"]
    if gm:
        lines.append(f"gain: {gm} minus the baseline's of the same seed (same init and data order), mean ± std of "
                     f"those per-seed gains; > 2 std: the mean gain exceeds twice that std")
    return "\n".join(lines) + "\n"


def format_csv(rows: Sequence[MethodStats], metrics: Sequence[str] | None = None) -> str:
    """CSV with columns ``method, n, <metric>_mean, <metric>_std, <metric>_n, ...`` (raw values, no scaling)."""
    metrics = list(rows[0].stats) if metrics is None and rows else list(metrics or [])
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "n"] + [f"{k}_{s}" for k in metrics for s in ("mean", "std", "n")])
    for r in rows:
        w.writerow([r.method, r.n] + [v for k in metrics for v in (repr(r.stats[k][0]), repr(r.stats[k][1]), r.stats[k][2])])
    return buf.getvalue()


def primary_metric(rows: Sequence[MethodStats]) -> str | None:
    present = {k for r in rows for k, v in r.stats.items() if v[2] > 0}
    for k in PRIMARY_METRICS:
        if k in present:
            return k
    return next(iter(rows[0].stats), None) if rows else None


def bar_chart(rows: Sequence[MethodStats], metric: str, path: str, scale: float = 100.0) -> str:
    """PNG bar chart of ``metric`` (mean, std error bars) per method; returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    means = [r.stats[metric][0] * scale for r in rows]
    stds = [0.0 if math.isnan(r.stats[metric][1]) else r.stats[metric][1] * scale for r in rows]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(rows) + 1.5), 3.5))
    ax.bar(range(len(rows)), means, yerr=stds, capsize=4, color="#4c72b0")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([f"{r.method}\n(n={r.stats[metric][2]})" for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(f"{metric}" + (f" (×{scale:g})" if scale != 1 else ""))
    finite = [m for m in means if not math.isnan(m)]
    if finite:
        lo = min(m - s for m, s in zip(means, stds) if not math.isnan(m))
        hi = max(m + s for m, s in zip(means, stds) if not math.isnan(m))
        pad = max(0.5, 0.15 * (hi - lo))
        bottom = max(0.0, lo - pad)
        ax.set_ylim(bottom, hi + pad)
        for x, (m, sd) in enumerate(zip(means, stds)):
            if not math.isnan(m):
                ax.text(x, m + sd, f"{m:.2f}", ha="center", va="bottom", fontsize=7)
    bottom = ax.get_ylim()[0]
    note = f"\n(y axis starts at {bottom:.3g}, not 0)" if bottom > 0 else ""
    ax.set_title(f"{metric}: mean ± std over seeds{note}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- running
def run_dir(out: str, method: str, seed: int) -> str:
    return os.path.join(out, method, f"seed{seed}")


def _metrics_path(d: str) -> str:
    return os.path.join(d, METRICS_FILE)


def run_overrides(config_raw: Mapping[str, Any], method: str, seed: int, out: str,
                  overrides: Sequence[str] = (), kwargs: Mapping[str, Any] | None = None,
                  method_set: Sequence[str] = (), folder: str | None = None) -> list[str]:
    """The engine overrides of one run: user overrides first, then the method's own (``method_set``), so the
    run's own keys (seed, output folder, method) win. ``folder``: the runs' folder name if not the method's."""
    return list(overrides) + list(method_set) + [f"seed={seed}", f"output_dir={run_dir(out, folder or method, seed)}"] + \
        method_overrides(config_raw, method, kwargs)


def method_overrides(config_raw: Mapping[str, Any], method: str, kwargs: Mapping[str, Any] | None = None
                     ) -> list[str]:
    """Overrides that select ``method``: ``distill=null`` for the plain student (``baseline`` / ``student``
    / ``plain``), else ``distill.method=<m>`` (plus ``distill.kwargs={}`` when the config's own method
    differs, so its kwargs are not handed to another method), then ``distill.kwargs.<k>=<v>`` for this
    method's own ``kwargs`` (``--kwargs method.k=v``)."""
    if method in BASELINE_NAMES or method == "plain":
        return ["distill=null"]
    d = config_raw.get("distill")
    own = d.get("method") if isinstance(d, Mapping) else None
    ov = [f"distill.method={method}"] + (["distill.kwargs={}"] if own != method else [])
    return ov + [f"distill.kwargs.{k}={json.dumps(v)}" for k, v in (kwargs or {}).items()]


def parse_method_kwargs(items: Sequence[str], methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["maskd.fit_steps=200", ...]`` → ``{"maskd": {"fit_steps": 200}}`` (values read as YAML)."""
    from .config import parse_assignment

    expected = "METHOD.KEY=VALUE, e.g. maskd.fit_steps=200"
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        head, value = parse_assignment(item, "--kwargs", expected)
        method, dot, key = head.partition(".")
        if not (dot and method and key):
            raise ConfigError(f"--kwargs {item!r}: expected {expected}")
        if method not in methods or method in BASELINE_NAMES:
            raise ConfigError(f"--kwargs {item!r}: {method!r} is not one of the distillation --methods "
                              f"({', '.join(m for m in methods if m not in BASELINE_NAMES)})")
        out.setdefault(method, {})[key] = value
    return out


def parse_method_set(items: Sequence[str], methods: Sequence[str]) -> dict[str, list[str]]:
    """``["hinton_kd:distill.weight=0.5", ...]`` → ``{"hinton_kd": ["distill.weight=0.5"]}``."""
    from .config import parse_assignment

    expected = "METHOD:KEY=VALUE, e.g. fitnet:distill.weight=0.5"
    out: dict[str, list[str]] = {}
    for item in items:
        head, _ = parse_assignment(item, "--set", expected)  # the override itself is applied by the engine
        method, colon, key = head.partition(":")
        if not (colon and method and key.strip()):
            raise ConfigError(f"--set {item!r}: expected {expected}")
        override = item.partition(":")[2]
        if method not in methods:
            raise ConfigError(f"--set {item!r}: {method!r} is not one of the --methods ({', '.join(methods)})")
        out.setdefault(method, []).append(override)
    return out


def _raw_config(config: str | Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    from .config import apply_overrides, read_yaml

    import copy

    raw = read_yaml(config) if isinstance(config, (str, os.PathLike)) else copy.deepcopy(dict(config))
    return apply_overrides(raw, list(overrides))


def check_methods(methods: Sequence[str]) -> None:
    """Every name is a registered loss or a baseline pseudo-method; duplicates are an error."""
    from .losses import get_loss_class

    if not methods:
        raise ConfigError("--methods: expected at least one method name")
    seen = set()
    for m in methods:
        if m in seen:
            raise ConfigError(f"--methods: {m!r} is given twice")
        seen.add(m)
        if m in BASELINE_NAMES:
            continue
        try:
            get_loss_class(m)
        except KeyError as e:
            raise ConfigError(f"--methods: {e.args[0]} (or one of {', '.join(BASELINE_NAMES)})") from None


def preflight(config_raw: Mapping[str, Any], methods: Sequence[str],
              method_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
              method_set: Mapping[str, Sequence[str]] | None = None) -> None:
    """Before any (long) run: every method's config validates and the task can build its pairs (e.g. fgd
    on segmentation fails here, with the task's one-line reason, not after the runs before it)."""
    from .config import load_config
    from .tasks import get_task

    for m in methods:
        ov = list((method_set or {}).get(m, ())) + method_overrides(config_raw, m, (method_kwargs or {}).get(m))
        try:
            cfg = load_config(config_raw, ov)
        except ConfigError as e:
            raise ConfigError(f"{m}: {e}") from None
        if cfg.distill is not None and cfg.distill.pairs is None:
            get_task(cfg.task).default_pairs(cfg.model, cfg.distill.method, cfg.distill.kwargs)


def compare(config: str | Mapping[str, Any], methods: Sequence[str], seeds: int | Sequence[int] = 3,
            out: str | None = None, overrides: Sequence[str] = (), metrics: Sequence[str] | None = None,
            log=print, method_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
            method_set: Mapping[str, Sequence[str]] | None = None, jobs: int = 1) -> list[MethodStats]:
    """Run (or reuse) every method × seed and write ``compare.md`` / ``compare.csv`` / ``compare.png`` /
    ``runs.json`` to ``out``. ``seeds``: a count N (seeds 0..N-1) or explicit seeds; ``method_kwargs``: loss
    kwargs per method; ``method_set``: engine overrides per method; ``jobs``: runs trained at once. Returns the
    aggregated rows (the paired gains: :func:`paired_gains` on ``runs.json``, or :func:`compare_runs`)."""
    rows, _ = compare_runs(config, methods, seeds, out, overrides, metrics, log, method_kwargs, method_set, jobs)
    return rows


def _train_in_worker(config: Any, overrides: list[str], threads: int, log_path: str) -> None:
    """One run in a worker process (``jobs > 1``): ``threads`` torch threads, its console output (progress bar,
    health lines) into ``log_path`` instead of interleaving with the other workers'."""
    import sys

    import torch

    from .engine import train

    torch.set_num_threads(threads)
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "a", encoding="utf-8", buffering=1) as f:
        sys.stdout = sys.stderr = f
        train(config, overrides)


def worker_threads(jobs: int) -> int:
    """Torch threads per worker when ``jobs`` runs share this machine: the cores torch would use, split evenly."""
    import torch

    return max(1, torch.get_num_threads() // max(1, jobs))


def _run_parallel(todo: list[tuple[int, str, int, str, list[str]]], config: Any, jobs: int, total: int, log) -> None:
    """Train ``todo`` = [(k, method, seed, run folder, overrides)] in ``jobs`` worker processes (spawned: nothing of
    this process's state leaks into a run); a failed run is reported with the log that says why."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = worker_threads(jobs)
    log(f"compare: {len(todo)} run(s) in {jobs} parallel worker(s), {threads} torch thread(s) each; each run's "
        f"console output goes to <run>/{CONSOLE_FILE}")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = {}
        for k, m, s, d, ov in todo:
            resumed = os.path.isfile(os.path.join(d, CHECKPOINT_FILE))
            log(f"[{k}/{total}] {m} seed {s}: {'resuming' if resumed else 'training'} in {d}")
            futures[pool.submit(_train_in_worker, config, ov, threads, os.path.join(d, CONSOLE_FILE))] = (m, s, d)
        for fut in as_completed(futures):
            m, s, d = futures[fut]
            try:
                fut.result()
            except BaseException as e:  # noqa: BLE001 - say which run and where its log is, then stop
                for other in futures:
                    other.cancel()
                raise type(e)(f"{m} seed {s}: {e} (its console output: {os.path.join(d, CONSOLE_FILE)})") from e
            log(f"{m} seed {s}: finished ({d})")


def compare_runs(config: str | Mapping[str, Any], methods: Sequence[str], seeds: int | Sequence[int] = 3,
                 out: str | None = None, overrides: Sequence[str] = (), metrics: Sequence[str] | None = None,
                 log=print, method_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
                 method_set: Mapping[str, Sequence[str]] | None = None, jobs: int = 1,
                 run_names: Mapping[str, str] | None = None
                 ) -> tuple[list[MethodStats], dict[str, list[dict[str, Any]]]]:
    """:func:`compare`, returning also the per-run metrics ``{method: [metrics of each seed (with "seed")]}``.
    ``jobs > 1``: unfinished runs train in that many worker processes at once, with the machine's torch threads
    split between them (on a CPU, small models train faster this way than one run on every core).
    ``run_names``: the folder of a method's runs when it is not the method's name (``OUT/<name>/seed<s>``), e.g.
    a name that also encodes the method's own settings, so that finished runs are reused only for the same runs."""
    from .engine import train

    check_methods(methods)
    if not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"--jobs: expected a positive number of parallel runs, got {jobs}")
    seed_list = list(range(int(seeds))) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list:
        raise ConfigError(f"--seeds: expected a positive count, got {seeds}")
    raw = _raw_config(config, overrides)
    method_kwargs = dict(method_kwargs or {})
    method_set = {m: list(v) for m, v in (method_set or {}).items()}
    for what, given in (("method_kwargs", method_kwargs), ("method_set", method_set)):
        unknown = sorted(set(given) - set(methods))
        if unknown:
            raise ConfigError(f"{what}: {unknown} are not among the methods {list(methods)}")
    preflight(raw, methods, method_kwargs, method_set)
    out = out or os.path.join(str(raw.get("output_dir", "runs/default")), "compare")
    os.makedirs(out, exist_ok=True)
    results: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    total = len(methods) * len(seed_list)
    k = 0
    todo = []
    names = {m: (run_names or {}).get(m, m) for m in methods}
    for m in methods:
        for s in seed_list:
            k += 1
            d = run_dir(out, names[m], s)
            ov = run_overrides(raw, m, s, out, overrides, method_kwargs.get(m), method_set.get(m, ()), names[m])
            if os.path.isfile(_metrics_path(d)):
                log(f"[{k}/{total}] {m} seed {s}: finished earlier, reading {_metrics_path(d)}")
            elif jobs > 1:
                todo.append((k, m, s, d, ov))
            else:
                resumed = os.path.isfile(os.path.join(d, CHECKPOINT_FILE))
                log(f"[{k}/{total}] {m} seed {s}: {'resuming' if resumed else 'training'} in {d}")
                train(config, ov)
    if todo:
        _run_parallel(todo, config, jobs, total, log)
    for m in methods:
        for s in seed_list:
            with open(_metrics_path(run_dir(out, names[m], s)), encoding="utf-8") as f:
                results[m].append({"seed": s, **json.load(f)})
    rows = aggregate(results, methods, metrics)
    cols = list(rows[0].stats) if rows else []
    write_outputs(rows, out, cols, results)
    log(f"wrote {os.path.join(out, 'compare.md')}, compare.csv, compare.png")
    return rows, results


def gains_for(rows: Sequence[MethodStats], results: Mapping[str, Sequence[Mapping[str, Any]]] | None
              ) -> list[PairedGain] | None:
    """Paired gains in the primary metric when a baseline is among the rows' methods, else None."""
    methods = [r.method for r in rows]
    base, pm = baseline_of(methods), primary_metric(rows)
    if results is None or base is None or pm is None:
        return None
    return paired_gains(results, base, pm, methods)


def write_outputs(rows: Sequence[MethodStats], out: str, metrics: Sequence[str],
                  results: Mapping[str, Sequence[Mapping[str, Any]]] | None = None) -> None:
    title = "## densekd compare"
    with open(os.path.join(out, "compare.md"), "w", encoding="utf-8") as f:
        f.write(format_markdown(rows, metrics, title=title, gains=gains_for(rows, results)))
    with open(os.path.join(out, "compare.csv"), "w", encoding="utf-8") as f:
        f.write(format_csv(rows, metrics))
    if results is not None:
        with open(os.path.join(out, "runs.json"), "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    pm = primary_metric(rows)
    if pm is not None:
        bar_chart(rows, pm, os.path.join(out, "compare.png"))


# --------------------------------------------------------------------------- CLI
def add_subparser(sub) -> None:
    p = sub.add_parser("compare", help="train every method × seed and tabulate mean ± std")
    p.add_argument("config", help="YAML config (its distill section gives the teacher/pairs; method is replaced)")
    p.add_argument("--methods", nargs="+", default=None,
                   help=f"registered loss names, or {' / '.join(BASELINE_NAMES)} for the plain student "
                        "(default: the config's compare.methods)")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (0..N-1); default: the config's "
                                                           "compare.seeds, else 3")
    p.add_argument("--out", default=None, help="output folder (default OUTPUT_DIR/compare)")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once in worker processes, the torch threads "
                                                       "split between them (default 1)")
    p.add_argument("--metrics", nargs="+", default=None, help="metric columns (default: all scalar metrics)")
    p.add_argument("--kwargs", nargs="+", default=[], metavar="METHOD.KEY=VALUE",
                   help="keyword arguments of one method's loss, e.g. maskd.fit_steps=200")
    p.add_argument("--set", nargs="+", default=[], metavar="METHOD:KEY=VALUE", dest="method_set",
                   help="engine overrides for one method's runs, e.g. fitnet:distill.weight=0.5 or "
                        "\"hinton_kd:distill.pairs=[{student: classifier}]\"")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted-key overrides for every run (right after CONFIG, or after the method names)")
    p.set_defaults(func=_run_cli)


def split_methods(methods: Sequence[str], overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    """``--methods a b key=value`` → (["a", "b"], overrides + ["key=value"]) (argparse puts trailing
    overrides into the ``nargs="+"`` list)."""
    return [m for m in methods if "=" not in m], list(overrides) + [m for m in methods if "=" in m]


def plan_from_config(config: str | Mapping[str, Any], overrides: Sequence[str] = ()) -> Any:
    """The config's ``compare:`` section (:class:`densekd.config.CompareConfig`), or None."""
    from .config import CompareConfig, from_dict

    section = _raw_config(config, overrides).get("compare")
    return None if section is None else from_dict(CompareConfig, section, "compare")


def _run_cli(args) -> int:
    methods, args.overrides = split_methods(args.methods or [], args.overrides)
    # argparse puts overrides that follow --set into its list: a plain KEY=VALUE has no METHOD: before the key
    plain = [x for x in args.method_set if ":" not in x.split("=", 1)[0]]
    args.method_set = [x for x in args.method_set if x not in plain]
    args.overrides = list(args.overrides) + plain
    if methods:
        check_methods(methods)  # before reading the config: a misspelt method is the first thing to say
    plan = plan_from_config(args.config, args.overrides)
    args.methods = methods or (list(plan.methods) if plan is not None else [])
    if not args.methods:
        raise ConfigError("--methods: expected at least one method name (or a compare.methods list in the config)")
    if args.seeds is None:
        args.seeds = plan.seeds if plan is not None else 3
    if args.seeds < 1:
        raise ConfigError(f"--seeds: expected a positive count, got {args.seeds}")
    kwargs = parse_method_kwargs(args.kwargs, args.methods)
    method_set = parse_method_set(args.method_set, args.methods)
    if plan is not None:  # the config's plan first, the command line's additions after (so they win)
        for m, ov in plan.set.items():
            if m in args.methods:
                method_set[m] = list(ov) + method_set.get(m, [])
        for m, kw in plan.kwargs.items():
            if m in args.methods:
                kwargs[m] = {**kw, **kwargs.get(m, {})}
    rows, results = compare_runs(args.config, args.methods, args.seeds, args.out, args.overrides, args.metrics,
                                 method_kwargs=kwargs, method_set=method_set, jobs=args.jobs)
    metrics = list(rows[0].stats) if rows else []
    print(format_markdown(rows, metrics, gains=gains_for(rows, results)))
    return 0
