"""The runs of ``densekd compare``: every method × seed through the engine (one at a time, or ``jobs`` at once in
worker processes), each in its own run folder (:func:`~densekd.tools.compare.plan.run_dir`); a finished run is read
back, an interrupted one resumes; then the statistics and the report."""
from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping, Sequence

from ...errors import ConfigError
from ...run_folder import CHECKPOINT_FILE, CONSOLE_FILE, METRICS_FILE
from .plan import check_methods, preflight, raw_config, run_dir, run_overrides
from .report import COMPARE_CSV, COMPARE_MD, COMPARE_PNG, write_outputs
from .statistics import MethodStats, aggregate


def _metrics_path(d: str) -> str:
    return os.path.join(d, METRICS_FILE)


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

    from ...engine import train

    torch.set_num_threads(threads)
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "a", encoding="utf-8", buffering=1) as f:
        sys.stdout = sys.stderr = f
        train(config, overrides)


def worker_threads(jobs: int) -> int:
    """Torch threads per worker when ``jobs`` runs share this machine: the cores torch would use, split evenly."""
    import torch

    return max(1, torch.get_num_threads() // max(1, jobs))


def _run_parallel(todo: list[tuple[int, str, int, str, list[str]]], config: Any, jobs: int, total: int, log,
                  worker: Any = None) -> None:
    """Train ``todo`` = [(k, method, seed, run folder, overrides)] in ``jobs`` worker processes (spawned: nothing of
    this process's state leaks into a run); a failed run is reported with the log that says why. ``worker``: a
    module-level function with :func:`_train_in_worker`'s arguments (default: it)."""
    worker = worker or _train_in_worker
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = worker_threads(jobs)
    log(f"compare: {len(todo)} run(s) in {jobs} parallel worker(s), {threads} torch thread(s) each; each run's "
        f"console output goes to <run>/{CONSOLE_FILE}")
    start = time.monotonic()
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = {}
        for k, m, s, d, ov in todo:
            resumed = os.path.isfile(os.path.join(d, CHECKPOINT_FILE))
            log(f"[{k}/{total}] {m} seed {s}: queued ({'resumes' if resumed else 'trains'} in {d})")
            futures[pool.submit(worker, config, ov, threads, os.path.join(d, CONSOLE_FILE))] = (m, s, d)
        for done, fut in enumerate(as_completed(futures), 1):
            m, s, d = futures[fut]
            try:
                fut.result()
            except BaseException as e:  # noqa: BLE001 - say which run and where its log is, then stop
                for other in futures:
                    other.cancel()
                raise type(e)(f"{m} seed {s}: {e} (its console output: {os.path.join(d, CONSOLE_FILE)})") from e
            log(f"{m} seed {s}: finished ({d}); {progress_text(done, len(todo), time.monotonic() - start)}")


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


def progress_text(done: int, n: int, elapsed: float) -> str:
    """``"3/10 runs done in 1:30, about 3:30 left at this pace"`` (the pace: elapsed / done; runs of other methods
    may be slower or faster, so it is an estimate)."""
    text = f"{done}/{n} run(s) done in {_clock(elapsed)}"
    if 0 < done < n:
        text += f", about {_clock(elapsed / done * (n - done))} left at this pace"
    return text



def seeds_of(seeds: int | Sequence[int], flag: str) -> list[int]:
    """``seeds`` (a count, or the seeds themselves) as a list; none is a one-line error naming ``flag``."""
    out = list(range(int(seeds))) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not out:
        raise ConfigError(f"{flag}: expected a positive count, got {seeds}")
    return out


def check_run_inputs(methods: Sequence[str], jobs: int, method_kwargs: Mapping[str, Any] | None,
                     method_set: Mapping[str, Sequence[str]] | None) -> tuple[dict, dict]:
    """The checks compare and compare --tune share: known methods, a positive ``jobs``, per-method kwargs and
    overrides only for methods that run. Returns (method_kwargs, method_set) as plain dicts."""
    check_methods(methods)
    if not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"--jobs: expected a positive number of parallel runs, got {jobs}")
    method_kwargs = dict(method_kwargs or {})
    method_set = {m: list(v) for m, v in (method_set or {}).items()}
    for what, given in (("method_kwargs", method_kwargs), ("method_set", method_set)):
        unknown = sorted(set(given) - set(methods))
        if unknown:
            raise ConfigError(f"{what}: {unknown} are not among the methods {list(methods)}")
    return method_kwargs, method_set

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
    from ...engine import train

    method_kwargs, method_set = check_run_inputs(methods, jobs, method_kwargs, method_set)
    seed_list = seeds_of(seeds, "--seeds")
    raw = raw_config(config, overrides)
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
    log(f"wrote {os.path.join(out, COMPARE_MD)}, {COMPARE_CSV}, {COMPARE_PNG}")
    return rows, results


__all__ = ["compare", "compare_runs", "worker_threads"]
