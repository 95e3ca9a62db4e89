"""What ``densekd compare`` writes and prints: the one number format (:func:`fmt`) and Markdown table writer
(:func:`markdown_table`) of compare, bench and the demos, the compare table with its paired gains, its CSV, and the
bar chart."""
from __future__ import annotations

import csv
import io
import json
import math
import os
from typing import Any, Mapping, Sequence

from .plan import baseline_of
from .statistics import MethodStats, PairedGain, paired_gains, primary_metric

#: metrics shown as they are (not × 100): wall-clock seconds of the training loop
UNSCALED_METRICS = ("train_seconds",)
#: the files of a compare folder besides its run folders
COMPARE_MD, COMPARE_CSV, COMPARE_PNG, RUNS_JSON = "compare.md", "compare.csv", "compare.png", "runs.json"


def fmt(mean: float, std: float = math.nan, *, scale: float = 1.0, digits: int = 2, sign: bool = False) -> str:
    """``mean ± std`` × ``scale`` with ``digits`` decimals (``sign``: the mean with its sign), the mean alone when
    ``std`` is NaN, ``—`` when ``mean`` is."""
    if math.isnan(mean):
        return "—"
    m = f"{mean * scale:+.{digits}f}" if sign else f"{mean * scale:.{digits}f}"
    if math.isnan(std):
        return m
    return f"{m} ± {std * scale:.{digits}f}"


def markdown_table(head: Sequence[str], rows: Sequence[Sequence[Any]], align: bool = False) -> str:
    """A Markdown table (no trailing newline): ``| a | b |`` lines under a ``|---|---|`` rule, or with ``align``
    every column padded to its widest cell (for a terminal)."""
    if not align:
        return "\n".join(["| " + " | ".join(map(str, head)) + " |", "|" + "---|" * len(head),
                          *["| " + " | ".join(map(str, r)) + " |" for r in rows]])
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *[line(r) for r in rows]])


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
    body = []
    for r in rows:
        cells = [r.method, str(r.n)] + [
            fmt(r.stats[k][0], r.stats[k][1], scale=1.0 if k in UNSCALED_METRICS else scale,
                digits=0 if k in UNSCALED_METRICS else digits)
            for k in metrics]
        if gm:
            g = by_gain.get(r.method)
            cells += ["—", "—"] if g is None else [fmt(g.mean, g.std, scale=scale, digits=digits, sign=True),
                                                   g.verdict()]
        body.append(cells)
    lines = [title, ""] if title else []
    lines += [markdown_table(head, body), "",
              f"mean ± sample standard deviation (ddof = 1) over n seeds; values × {scale:g}"
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


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bar_chart(rows: Sequence[MethodStats], metric: str, path: str, scale: float = 100.0) -> str:
    """PNG bar chart of ``metric`` (mean, std error bars) per method; returns ``path``."""
    plt = pyplot()
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
    """``compare.md``, ``compare.csv``, ``runs.json`` (with ``results``) and ``compare.png`` into ``out``."""
    title = "## densekd compare"
    with open(os.path.join(out, COMPARE_MD), "w", encoding="utf-8") as f:
        f.write(format_markdown(rows, metrics, title=title, gains=gains_for(rows, results)))
    with open(os.path.join(out, COMPARE_CSV), "w", encoding="utf-8") as f:
        f.write(format_csv(rows, metrics))
    if results is not None:
        with open(os.path.join(out, RUNS_JSON), "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    pm = primary_metric(rows)
    if pm is not None:
        bar_chart(rows, pm, os.path.join(out, COMPARE_PNG))


__all__ = ["COMPARE_CSV", "COMPARE_MD", "COMPARE_PNG", "RUNS_JSON", "UNSCALED_METRICS", "bar_chart", "fmt",
           "format_csv", "format_markdown", "gains_for", "markdown_table", "pyplot", "write_outputs"]
