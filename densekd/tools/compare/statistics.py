"""The statistics of ``densekd compare`` (pure functions, no engine): mean ± sample std per method and metric
(:func:`aggregate`), and every method's gain over the plain student paired by seed (:func:`paired_gains`)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

#: metric shown in the bar chart, first one present wins (segmentation, detection)
PRIMARY_METRICS = ("mIoU", "AP", "mAP")
#: numbers in a run's metrics.json that are not metrics to aggregate
NON_METRIC_KEYS = ("iteration", "seed", "train_iterations")


@dataclass
class MethodStats:
    """Aggregated metrics of one method: ``stats[metric] = (mean, std, n)`` (std NaN when n < 2)."""

    method: str
    n: int
    stats: dict[str, tuple[float, float, int]]


def mean_std(values: Sequence[float | None]) -> tuple[float, float, int]:
    """Mean and sample standard deviation (ddof = 1) of ``values``, and how many there were: None and NaN are left
    out; std is NaN below two values, both are NaN for none. The one mean ± std of compare, bench and the demos."""
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
        out.append(MethodStats(m, len(runs), {k: mean_std([r[k] for r in runs if k in r]) for k in metrics}))
    return out


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
        mean, std, n = mean_std(list(diffs.values()))
        out.append(PairedGain(m, metric, mean, std, n, diffs))
    return out


def primary_metric(rows: Sequence[MethodStats]) -> str | None:
    """The metric tables, gains and charts lead with: the first of :data:`PRIMARY_METRICS` a method has a value of,
    else the first column."""
    present = {k for r in rows for k, v in r.stats.items() if v[2] > 0}
    for k in PRIMARY_METRICS:
        if k in present:
            return k
    return next(iter(rows[0].stats), None) if rows else None


__all__ = ["MethodStats", "NON_METRIC_KEYS", "PRIMARY_METRICS", "PairedGain", "aggregate", "default_metrics",
           "mean_std", "paired_gains", "primary_metric"]
