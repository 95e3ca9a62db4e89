"""``densekd compare --tune``: every method gets the same tuning budget on a held-out split before the table.

    densekd compare CONFIG --methods baseline fitnet cwd --seeds 5 \\
        --tune "distill.weight=[0.1, 0.3, 1, 3, 10]" --tune-split dev --tune-seeds 2 --out runs/tuned

A table that compares a method tuned on dev with methods run at one guessed setting compares the guesses,
not the methods. Here every method is treated alike:

1. **Tune** (on the split ``--tune-split``, default ``dev``, never the table's): per method, every setting of
   its grid is trained with each of the ``--tune-seeds`` seeds and scored on the tune split. The setting with
   the best mean of the tune metric over those seeds wins (the task's primary metric, mIoU or AP, unless
   ``compare.tune.metric`` names another one, higher is better; ties go to the first setting in grid order;
   a setting with a failed run, e.g. a non-finite loss, cannot win).
2. **Report**: each method at its chosen setting trains with the report seeds (``--seeds``) and is evaluated
   on the table's own data (``data.val_split`` / ``data.val_ann``), exactly as ``densekd compare`` does; the
   plain student's runs are shared and every gain is paired by seed.

Grids: ``--tune KEY=[v1, v2, ...]`` (a YAML list; give ``--tune`` once per key; several keys: every
combination) applies to every distillation method; ``--tune METHOD:KEY=[...]`` gives one method its own grid
instead (e.g. a logit method's weights on another scale). In a config's plan::

    compare:
      methods: [baseline, fitnet, cwd]
      seeds: 5
      tune:
        split: dev
        seeds: 2
        grid: {distill.weight: [0.1, 0.3, 1, 3, 10]}
        per_method: {cwd: {distill.weight: [0.01, 0.03, 0.1, 0.3, 1]}}

Settings that must stay fixed while another is tuned (MasKD's ``fit_steps``) stay in ``compare.kwargs`` /
``compare.set``; a grid value overrides the same key there. The **budget** — settings × tune seeds — must be
equal for every distillation method (an error otherwise) and the report states it. The plain student is tuned
only on grid keys that apply to it (keys outside ``distill``); otherwise it is trained on the tune split with
the tune seeds, untuned, so the dev table can show paired gains too.

Where the tune split is: segmentation evaluates on the split folder named by ``data.val_split``, so
``--tune-split dev`` sets ``data.val_split=dev``; detection names extra splits in ``data.splits``
(``dev: {ann: ..., images: ...}``). A config without that split, or a tune split that is the table's own data,
is one error line before anything trains; so is a grid key that would move a run's evaluation.

Folders: tuning runs in ``OUT/tune/<split>/<method>/<setting>/seed<s>``, report runs in
``OUT/report/<method>/<setting>/seed<s>`` (no ``<setting>`` level for an untuned method), so the two never mix.
Resumable as ``densekd compare`` (and ``--jobs N`` trains N runs at once the same way): a finished run
(``metrics.json``, or ``failed.json`` for a run that stopped
on a non-finite loss) is read back, an interrupted one resumes from its checkpoint; a folder whose
``config.yaml`` differs from what the run would be now is an error naming the key (use another ``--out``).

Outputs in ``OUT``: ``compare.md`` (the budget, the chosen settings, every setting's tune-split mean ± std
with its paired gain, the report table with paired gains and "> 2 std"), ``compare.csv`` and ``runs.json``
(the report table and runs, as ``densekd compare``), ``tune.csv`` (one row per method and setting),
``tune.json`` (everything: budget, grids, every run's metrics, choices), ``compare.png`` (the table) and
``tune.png`` (each method's paired gain on the tune split at every setting of its grid: where it peaks, and
whether the peak sits at the grid's edge).
"""
from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from ...config import parse_assignment
from ...errors import ConfigError
from ...run_folder import CHECKPOINT_FILE, CONFIG_FILE, FAILED_FILE, METRICS_FILE
from .plan import baseline_of, is_plain, method_overrides, raw_config
from .report import (COMPARE_CSV, COMPARE_MD, COMPARE_PNG, RUNS_JSON, bar_chart, fmt, format_csv, format_markdown,
                     gains_for, pyplot)
from .statistics import PRIMARY_METRICS, MethodStats, PairedGain, aggregate, mean_std, paired_gains, primary_metric

__all__ = ["TUNE_CSV", "TUNE_JSON", "TUNE_PNG", "Setting", "SettingScore", "TuneResult", "add_arguments",
           "budget_of", "choose", "expand_grid", "parse_tune_items", "resolve_grids", "run_cli", "tune_compare",
           "tune_curves", "wants_tuning"]

#: the files of a tuned compare folder besides compare's own (:mod:`.report`) and its run folders
TUNE_CSV, TUNE_JSON, TUNE_PNG = "tune.csv", "tune.json", "tune.png"


# --------------------------------------------------------------------------- grids (pure)
def _value_text(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, float):
        return f"{v:g}"
    return json.dumps(v)


@dataclass(frozen=True)
class Setting:
    """One point of a grid: ``{dotted key: value}`` (empty for an untuned method)."""

    values: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, values: Mapping[str, Any]) -> "Setting":
        return cls(tuple(values.items()))

    def as_dict(self) -> dict[str, Any]:
        return dict(self.values)

    @property
    def label(self) -> str:
        """``distill.weight=0.3`` (several keys joined by ", "); ``—`` when empty."""
        return ", ".join(f"{k}={_value_text(v)}" for k, v in self.values) or "—"

    def overrides(self) -> list[str]:
        return [f"{k}={json.dumps(v)}" for k, v in self.values]

    @property
    def folder(self) -> str:
        """The run folder level of this setting (empty when the setting is)."""
        text = ",".join(f"{k}={_value_text(v)}" for k, v in self.values)
        return re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9._=,+-]", "_", text))[:120]


def expand_grid(grid: Mapping[str, Sequence[Any]]) -> list[Setting]:
    """Every combination of the grid's values, the first key varying slowest; ``[Setting()]`` for ``{}``."""
    keys = list(grid)
    return [Setting(tuple(zip(keys, combo))) for combo in itertools.product(*(list(grid[k]) for k in keys))]


def parse_tune_items(items: Sequence[str], methods: Sequence[str]
                     ) -> tuple[dict[str, list[Any]], dict[str, dict[str, list[Any]]]]:
    """``["distill.weight=[0.1, 1]", "cwd:distill.weight=[0.01, 0.1]"]`` → (the grid of every method,
    ``{method: its own grid}``); each value is a non-empty YAML list (read by :func:`densekd.config.parse_assignment`,
    the one ``key=value`` reader)."""
    expected = "KEY=[v1, v2, ...] or METHOD:KEY=[v1, v2, ...], e.g. \"distill.weight=[0.1, 1, 10]\""
    common: dict[str, list[Any]] = {}
    own: dict[str, dict[str, list[Any]]] = {}
    for item in items:
        head, values = parse_assignment(item, "--tune", expected)
        method, colon, key = head.rpartition(":")
        key = key.strip()
        if not key or (colon and not method):
            raise ConfigError(f"--tune {item!r}: expected {expected}")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"--tune {item!r}: expected a non-empty YAML list of values after '=', e.g. "
                              f"{key}=[0.1, 1, 10]")
        if method:
            if method not in methods or is_plain(method):
                raise ConfigError(f"--tune {item!r}: {method!r} is not one of the distillation --methods "
                                  f"({', '.join(m for m in methods if not is_plain(m))})")
            target = own.setdefault(method, {})
        else:
            target = common
        if key in target:
            raise ConfigError(f"--tune {item!r}: {key} is given twice{' for ' + method if method else ''}")
        target[key] = values
    return common, own


def _applies_to_plain(key: str) -> bool:
    return key != "distill" and not key.startswith("distill.")


def resolve_grids(methods: Sequence[str], grid: Mapping[str, Sequence[Any]],
                  per_method: Mapping[str, Mapping[str, Sequence[Any]]]) -> dict[str, list[Setting]]:
    """Every method's settings: its own grid (``per_method``) or the common one; the plain student's: the
    common grid's keys outside ``distill`` (none → one empty setting, untuned)."""
    extra = sorted(set(per_method) - set(methods))
    if extra:
        raise ConfigError(f"compare.tune.per_method: {extra} are not among the methods {list(methods)}")
    out: dict[str, list[Setting]] = {}
    for m in methods:
        if is_plain(m):
            if m in per_method:
                raise ConfigError(f"compare.tune.per_method.{m}: the plain student has no distillation setting "
                                  f"to tune (its grid is the common grid's keys outside distill)")
            out[m] = expand_grid({k: v for k, v in grid.items() if _applies_to_plain(k)})
            continue
        own = per_method.get(m, grid)
        if not own:
            raise ConfigError(f"--tune: {m} has no grid; give --tune KEY=[...] for every method or "
                              f"--tune {m}:KEY=[...] (compare.tune.grid / compare.tune.per_method.{m})")
        settings = expand_grid(own)
        folders = [s.folder for s in settings]
        dup = next((f for f in folders if folders.count(f) > 1), None)
        if dup is not None:
            raise ConfigError(f"--tune: two settings of {m} share the run folder {dup!r}; give distinct values")
        out[m] = settings
    return out


def budget_of(grids: Mapping[str, Sequence[Setting]], tune_seeds: int) -> int:
    """Runs on the tune split per distillation method (settings × seeds); an error unless equal for all."""
    sizes = {m: len(s) * tune_seeds for m, s in grids.items() if not is_plain(m)}
    if not sizes:
        raise ConfigError("--tune: no distillation method among the methods, so there is nothing to tune")
    if len(set(sizes.values())) > 1:
        parts = ", ".join(f"{m} {len(grids[m])} × {tune_seeds} = {n}" for m, n in sizes.items())
        raise ConfigError(f"--tune: the budget (settings × tune seeds) must be equal for every method, got {parts}; "
                          f"give every grid as many settings")
    return next(iter(sizes.values()))


# --------------------------------------------------------------------------- choice (pure)
@dataclass
class SettingScore:
    """One setting of one method on the tune split: its runs' metrics (with ``seed``), failed seeds, and the
    mean / sample std / n of the tune metric over the finished runs."""

    method: str
    setting: Setting
    runs: list[dict[str, Any]]
    failed: dict[int, str]
    mean: float
    std: float
    n: int


def score(method: str, setting: Setting, runs: Sequence[Mapping[str, Any]], failed: Mapping[int, str],
          metric: str) -> SettingScore:
    vals = [float(r[metric]) for r in runs if metric in r]
    mean, std, n = mean_std(vals)
    return SettingScore(method, setting, [dict(r) for r in runs], dict(failed), mean, std, n)


def choose(scores: Sequence[SettingScore], seeds: int) -> int | None:
    """Index of the setting with the best mean (higher is better) among those whose ``seeds`` runs all
    finished with a finite metric; ties go to the first in grid order. None when no setting qualifies."""
    best: int | None = None
    for i, s in enumerate(scores):
        if s.failed or s.n != seeds or not math.isfinite(s.mean):
            continue
        if best is None or s.mean > scores[best].mean:
            best = i
    return best


def edge_note(settings: Sequence[Setting], chosen: int) -> str:
    """For a one-key grid of ≥ 3 numbers: whether the chosen value is the grid's lowest or highest (the
    best may lie beyond it)."""
    if len(settings) < 3 or any(len(s.values) != 1 for s in settings):
        return ""
    vals = [s.values[0][1] for s in settings]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
        return ""
    v = vals[chosen]
    if v == min(vals):
        return "the lowest value of the grid: the best may lie below it"
    if v == max(vals):
        return "the highest value of the grid: the best may lie above it"
    return ""


# --------------------------------------------------------------------------- runs
def _split_tag(split: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", split)


def tune_run_dir(out: str, split: str, method: str, setting: Setting, seed: int) -> str:
    parts = [out, "tune", _split_tag(split), method] + ([setting.folder] if setting.values else [])
    return os.path.join(*parts, f"seed{seed}")


def report_run_dir(out: str, method: str, setting: Setting, seed: int) -> str:
    parts = [out, "report", method] + ([setting.folder] if setting.values else [])
    return os.path.join(*parts, f"seed{seed}")


def _first_difference(a: Any, b: Any, prefix: str = "") -> tuple[str, Any, Any] | None:
    """The first dotted key whose value differs; keys only one side has are skipped (a run written by a densekd
    without a key added since, e.g. ``train.control``, is still the same run)."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for k in (k for k in a if k in b):
            d = _first_difference(a[k], b[k], f"{prefix}.{k}" if prefix else str(k))
            if d is not None:
                return d
        return None
    return None if a == b else (prefix, a, b)


#: config keys that do not change what a run trains: where it writes, and the comparison plan (training ignores
#: ``compare:``; a grid extended by one value must reuse the runs of the values it had)
NOT_RUN_SETTINGS = ("output_dir", "compare")


def _run_settings(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in NOT_RUN_SETTINGS}


def _expected_config(config: Any, overrides: Sequence[str]) -> dict[str, Any]:
    import yaml

    from ...config import load_config, to_dict

    d = _run_settings(to_dict(load_config(config, list(overrides))))
    return yaml.safe_load(yaml.safe_dump(d, sort_keys=False))


def check_run_folder(d: str, expected: Mapping[str, Any]) -> None:
    """A run folder that already holds a run (its ``config.yaml``) must hold this run: same settings
    (``expected``: :func:`_expected_config`'s)."""
    import yaml

    path = os.path.join(d, CONFIG_FILE)
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        found = _run_settings(yaml.safe_load(f) or {})
    diff = _first_difference(found, expected)  # expected: _expected_config's, already without NOT_RUN_SETTINGS
    if diff is not None:
        key, there, here = diff
        raise ConfigError(f"{d}: this folder holds a run with other settings ({key}: {there!r} there, {here!r} "
                          f"now); use another --out or remove the folder")


@dataclass
class _Run:
    label: str
    folder: str
    overrides: list[str]
    expected: dict[str, Any] = field(default_factory=dict)


def _finished(run: _Run) -> tuple[str, Any]:
    """("metrics", dict) or ("failed", message) for a run that finished earlier, else ("todo", None)."""
    check_run_folder(run.folder, run.expected)
    metrics_path = os.path.join(run.folder, METRICS_FILE)
    failed_path = os.path.join(run.folder, FAILED_FILE)
    if os.path.isfile(metrics_path):
        with open(metrics_path, encoding="utf-8") as f:
            return "metrics", json.load(f)
    if os.path.isfile(failed_path):
        with open(failed_path, encoding="utf-8") as f:
            return "failed", json.load(f)["error"]
    return "todo", None


def _record_failure(folder: str, e: FloatingPointError) -> str:
    msg = str(e).splitlines()[0]
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, FAILED_FILE), "w", encoding="utf-8") as f:
        json.dump({"error": msg}, f)
    return msg


def _tune_train_in_worker(config: Any, overrides: list[str], threads: int, log_path: str) -> None:
    """compare's worker (:mod:`.runs`), with a run that stops on a non-finite loss recorded in its folder
    (``failed.json``) instead of stopping the others."""
    from .runs import _train_in_worker

    try:
        _train_in_worker(config, overrides, threads, log_path)
    except FloatingPointError as e:
        _record_failure(os.path.dirname(log_path), e)


def _run_all(config: Any, runs: Sequence[tuple[int, str, _Run]], total: int, jobs: int,
             log: Callable[[str], None]) -> list[tuple[dict[str, Any] | None, str | None]]:
    """Every run trained unless it finished earlier (``jobs`` > 1: in worker processes); (metrics, None) or
    (None, the failure) of each, in order."""
    from ... import engine
    from .runs import _run_parallel

    todo = []
    for k, prefix, run in runs:
        state, _ = _finished(run)
        if state == "metrics":
            log(f"[{k}/{total}] {prefix} {run.label}: finished earlier, reading {run.folder}")
        elif state == "failed":
            log(f"[{k}/{total}] {prefix} {run.label}: failed earlier (see {os.path.join(run.folder, FAILED_FILE)})")
        elif jobs > 1:
            todo.append((k, f"{prefix} {run.label}", run, run.folder, run.overrides))
        else:
            resumed = os.path.isfile(os.path.join(run.folder, CHECKPOINT_FILE))
            log(f"[{k}/{total}] {prefix} {run.label}: {'resuming' if resumed else 'training'} in {run.folder}")
            try:
                engine.train(config, run.overrides)
            except FloatingPointError as e:  # a setting that diverges is a result, not a crash of the whole grid
                log(f"[{k}/{total}] {prefix} {run.label}: failed: {_record_failure(run.folder, e)}")
    if todo:  # the run's label stands where compare's runner prints the method; "seed" is in the label already
        _run_parallel([(k, label.rsplit(" seed ", 1)[0], run.label.rsplit(" seed ", 1)[-1], d, ov)
                       for k, label, run, d, ov in todo], config, jobs, total, log, worker=_tune_train_in_worker)
    out = []
    for _, _, run in runs:
        state, value = _finished(run)
        out.append((value, None) if state == "metrics" else (None, value))
    return out


@dataclass
class TuneResult:
    """Everything ``densekd compare --tune`` found: per method the scores of its settings (tune split) and the
    chosen index (None: no setting finished), the report rows and runs (val), the tune metric and budget."""

    split: str
    metric: str
    tune_seeds: list[int]
    report_seeds: list[int]
    budget: int
    scores: dict[str, list[SettingScore]]
    chosen: dict[str, int | None]
    rows: list[MethodStats]
    results: dict[str, list[dict[str, Any]]]
    failed_report: dict[str, dict[int, str]]
    report_data: str = "val"  # what the table is scored on, as the config names it

    def chosen_setting(self, method: str) -> Setting | None:
        i = self.chosen.get(method)
        return None if i is None else self.scores[method][i].setting


def _report_name(config: Any, raw: Mapping[str, Any]) -> str:
    from ...config import load_config

    data = load_config(raw).data
    split = getattr(data, "val_split", None)
    return f"data.val_split={split}" if split else f"data.val_ann={getattr(data, 'val_ann', None)}"


def _tune_metric(metric: str | None, runs: Sequence[Mapping[str, Any]]) -> str:
    if metric:
        return metric
    present = {k for r in runs for k in r}
    found = next((k for k in PRIMARY_METRICS if k in present), None)
    if found is None:
        raise ConfigError(f"--tune: the tuning runs report none of {', '.join(PRIMARY_METRICS)}; name the metric "
                          f"to maximise in compare.tune.metric (they report {', '.join(sorted(present)) or 'nothing'})")
    return found


def _preflight(config: Any, raw: Mapping[str, Any], methods: Sequence[str], grids: Mapping[str, Sequence[Setting]],
               split: str, method_kwargs: Mapping[str, Mapping[str, Any]],
               method_set: Mapping[str, Sequence[str]]) -> list[str]:
    """Before any run: the tune split exists and is not the table's data; every run's config validates and
    scores on the data it should. Returns the overrides that move evaluation to the tune split."""
    from ...config import load_config
    from ...tasks import get_task

    base = load_config(raw)
    task = get_task(base.task)
    if not (hasattr(task, "eval_split_overrides") and hasattr(task, "eval_data")):
        raise ConfigError(f"--tune-split: the {base.task} task cannot evaluate on a named split")
    report_data = task.eval_data(base.data)
    if report_data is None:
        raise ConfigError("--tune: the config has no validation data for the table (data.val_ann / val_images)")
    try:
        split_ov = task.eval_split_overrides(base.data, split)
    except ConfigError as e:
        raise ConfigError(f"--tune-split {split}: {e}") from None
    tune_data = task.eval_data(load_config(raw, split_ov).data)
    if tune_data == report_data:
        raise ConfigError(f"--tune-split {split}: the tuning runs would be scored on the table's own data "
                          f"({report_data}); choose settings on a split the table does not report, e.g. dev")
    for m in methods:
        for st in grids[m]:
            ov = list(method_set.get(m, ())) + method_overrides(raw, m, method_kwargs.get(m)) + st.overrides()
            where = f"{m} {st.label}" if st.values else m
            for kind, extra, want in (("tuning", split_ov, tune_data), ("report", [], report_data)):
                try:
                    cfg = load_config(raw, ov + list(extra))
                except ConfigError as e:
                    raise ConfigError(f"{where}: {e}") from None
                got = task.eval_data(cfg.data)
                if got != want:
                    raise ConfigError(f"{where}: its {kind} run would be evaluated on {got}, not on {want} "
                                      f"(a grid or --set key moves the evaluation data; tune other keys)")
            if cfg.distill is not None and cfg.distill.pairs is None:
                task.default_pairs(cfg.model, cfg.distill.method, cfg.distill.kwargs)
    return split_ov


def tune_compare(config: str | Mapping[str, Any], methods: Sequence[str],
                 grid: Mapping[str, Sequence[Any]] | None = None,
                 per_method: Mapping[str, Mapping[str, Sequence[Any]]] | None = None,
                 split: str = "dev", tune_seeds: int | Sequence[int] = 2, seeds: int | Sequence[int] = 3,
                 out: str | None = None, overrides: Sequence[str] = (), metrics: Sequence[str] | None = None,
                 metric: str | None = None, log: Callable[[str], None] = print,
                 method_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
                 method_set: Mapping[str, Sequence[str]] | None = None, jobs: int = 1) -> TuneResult:
    """Tune every method on ``split`` with an equal budget, then the table at the chosen settings (see the
    module docstring). ``tune_seeds`` / ``seeds``: a count N (seeds 0..N-1) or explicit seeds; ``metric``:
    the tune score (default: the primary metric); the rest (``jobs``: runs trained at once in worker processes)
    as :func:`~.runs.compare`."""
    from .runs import check_run_inputs, seeds_of

    method_kwargs, method_set = check_run_inputs(methods, jobs, method_kwargs, method_set)
    t_seeds = seeds_of(tune_seeds, "--tune-seeds")
    r_seeds = seeds_of(seeds, "--seeds")
    raw = raw_config(config, overrides)
    grids = resolve_grids(methods, dict(grid or {}), dict(per_method or {}))
    budget = budget_of(grids, len(t_seeds))
    split_ov = _preflight(config, raw, methods, grids, split, method_kwargs, method_set)
    out = out or os.path.join(str(raw.get("output_dir", "runs/default")), "compare")
    os.makedirs(out, exist_ok=True)

    def make(m: str, st: Setting, s: int, d: str, extra: Sequence[str]) -> _Run:
        ov = list(overrides) + method_set.get(m, []) + [f"seed={s}", f"output_dir={d}"] + \
            method_overrides(raw, m, method_kwargs.get(m)) + st.overrides() + list(extra)
        return _Run(f"{m} {st.label + ' ' if st.values else ''}seed {s}", d, ov, _expected_config(config, ov))

    total = sum(len(grids[m]) for m in methods) * len(t_seeds) + len(methods) * len(r_seeds)
    # 1. every setting of every method on the tune split
    plan_runs, k = [], 0
    for m in methods:
        for st in grids[m]:
            for s in t_seeds:
                k += 1
                plan_runs.append((k, f"tune on {split}:", make(m, st, s, tune_run_dir(out, split, m, st, s), split_ov)))
    done = iter(_run_all(config, plan_runs, total, jobs, log))
    tune_runs: dict[str, list[tuple[Setting, list[dict[str, Any]], dict[int, str]]]] = {}
    for m in methods:
        tune_runs[m] = []
        for st in grids[m]:
            runs, failed = [], {}
            for s in t_seeds:
                got, err = next(done)
                if err is not None:
                    failed[s] = err
                else:
                    runs.append({"seed": s, **got})
            tune_runs[m].append((st, runs, failed))
    tmetric = _tune_metric(metric, [r for v in tune_runs.values() for _, runs, _ in v for r in runs])
    scores = {m: [score(m, st, runs, failed, tmetric) for st, runs, failed in v] for m, v in tune_runs.items()}
    chosen = {m: choose(scores[m], len(t_seeds)) for m in methods}
    for m in methods:
        i = chosen[m]
        if i is None:
            log(f"tune: {m}: no setting finished all {len(t_seeds)} seed(s) on {split}; left out of the table")
        elif len(scores[m]) > 1:
            sc = scores[m][i]
            log(f"tune: {m}: {sc.setting.label} ({tmetric} on {split} {100 * sc.mean:.2f}, best of {len(scores[m])})")
    # 2. the table: each method at its chosen setting, the report seeds, the table's own data
    reported = [m for m in methods if chosen[m] is not None]
    report_runs = []
    for m in methods:
        if chosen[m] is None:
            k += len(r_seeds)
            continue
        st = scores[m][chosen[m]].setting
        for s in r_seeds:
            k += 1
            report_runs.append((k, "report:", make(m, st, s, report_run_dir(out, m, st, s), ())))
    done = iter(_run_all(config, report_runs, total, jobs, log))
    results: dict[str, list[dict[str, Any]]] = {m: [] for m in reported}
    failed_report: dict[str, dict[int, str]] = {}
    for m in reported:
        for s in r_seeds:
            got, err = next(done)
            if err is not None:
                failed_report.setdefault(m, {})[s] = err
            else:
                results[m].append({"seed": s, **got})
    rows = aggregate(results, reported, metrics) if reported else []
    res = TuneResult(split, tmetric, t_seeds, r_seeds, budget, scores, chosen, rows, results, failed_report,
                     _report_name(config, raw))
    write_tune_outputs(res, out, grids)
    log(f"wrote {os.path.join(out, COMPARE_MD)}, {COMPARE_CSV}, {TUNE_CSV}, {TUNE_JSON}, {RUNS_JSON}, {COMPARE_PNG}")
    return res


# --------------------------------------------------------------------------- report
def _seed_text(seeds: Sequence[int]) -> str:
    if seeds == list(range(seeds[0], seeds[0] + len(seeds))) and len(seeds) > 1:
        return f"{len(seeds)} seeds ({seeds[0]}–{seeds[-1]})"
    return f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''} ({', '.join(map(str, seeds))})"


def _seeds_plain(seeds: Sequence[int]) -> str:
    return _seed_text(seeds).replace(" (", ", ").rstrip(")")


def budget_caption(res: TuneResult, grids: Mapping[str, Sequence[Setting]]) -> str:
    """The report's caption: the tuning budget, equal for every distillation method, and the protocol."""
    n = len(res.tune_seeds)
    kd = [m for m in grids if not is_plain(m)]
    per = len(grids[kd[0]]) if kd else 0
    text = (f"Tuning budget: every distillation method ({len(kd)}) got {per} setting{'s' if per != 1 else ''} × {n} "
            f"seed{'s' if n != 1 else ''} = {res.budget} runs on {res.split}, the same for each; the setting with "
            f"the best mean {res.metric} on {res.split} over those seeds was chosen (ties: the first in grid order; "
            f"a setting with a failed run cannot win).")
    for b in (m for m in grids if is_plain(m)):
        if grids[b][0].values:
            text += f" The plain student ({b}) was tuned on the same split: {len(grids[b])} settings × {n} seeds."
        else:
            text += (f" The plain student ({b}) has no setting to tune; it ran {n} seed{'s' if n != 1 else ''} on "
                     f"{res.split} for the paired gains there.")
    text += (f" Report: every method at its chosen setting, {_seed_text(res.report_seeds)}, evaluated on the "
             f"table's own data ({res.report_data}), never used for the choice; the plain student's runs are shared "
             f"and each gain is paired by seed.")
    return text


def _dev_gains(res: TuneResult) -> dict[tuple[str, int], PairedGain]:
    """Paired gain (tune split) of every setting over the plain student's chosen setting, by seed."""
    base = baseline_of(list(res.scores))
    if base is None or res.chosen.get(base) is None:
        return {}
    ref = res.scores[base][res.chosen[base]].runs
    out = {}
    for m, scs in res.scores.items():
        if m == base:
            continue
        for i, sc in enumerate(scs):
            (g,) = paired_gains({base: ref, "x": sc.runs}, base, res.metric, ["x"])
            out[(m, i)] = g
    return out


def format_tune_markdown(res: TuneResult, grids: Mapping[str, Sequence[Setting]], scale: float = 100.0,
                         digits: int = 2) -> str:
    """The whole report: caption (budget), chosen settings, every setting on the tune split, the table."""
    gains = _dev_gains(res)
    met, sp = res.metric, res.split
    lines = ["## densekd compare --tune", "", budget_caption(res, grids), "",
             f"### Chosen settings (by {met} on {sp})", "",
             f"| method | grid | chosen | {sp} {met} at it | note |", "|---|---|---|---|---|"]
    for m, scs in res.scores.items():
        keys: dict[str, list[Any]] = {}
        for sc in scs:
            for key, v in sc.setting.values:
                keys.setdefault(key, [])
                if v not in keys[key]:
                    keys[key].append(v)
        grid_text = "; ".join(f"{key}: {', '.join(_value_text(v) for v in vs)}" for key, vs in keys.items()) \
            or "— (not tuned)"
        i = res.chosen[m]
        if i is None:
            lines.append(f"| {m} | {grid_text} | — | — | no setting finished every seed: left out of the table |")
            continue
        sc = scs[i]
        cell = fmt(sc.mean, sc.std, scale=scale, digits=digits)
        lines.append(f"| {m} | {grid_text} | {sc.setting.label} | {cell} | "
                     f"{edge_note(grids[m], i)} |")
    lines += ["", f"### Every setting on {sp} ({met} × {scale:g}, mean ± std over the seeds)", "",
              f"| method | setting | n | {sp} {met} | {sp} gain (paired) | |", "|---|---|---|---|---|---|"]
    for m, scs in res.scores.items():
        for i, sc in enumerate(scs):
            g = gains.get((m, i))
            gain = "—" if g is None or g.n == 0 else fmt(g.mean, g.std, scale=scale, digits=digits, sign=True)
            mark = "chosen" if res.chosen[m] == i and len(scs) > 1 else ""
            if sc.failed:
                s0 = min(sc.failed)
                mark = (mark + "; " if mark else "") + f"failed: seed {s0}: {sc.failed[s0]}" + \
                    (f" (and {len(sc.failed) - 1} more)" if len(sc.failed) > 1 else "")
            cell = fmt(sc.mean, sc.std, scale=scale, digits=digits)
            lines.append(f"| {m} | {sc.setting.label} | {sc.n} | {cell} | {gain} | "
                         f"{mark} |")
    lines += ["", f"{sp} gain: {met} minus the plain student's of the same seed on {sp}; mean ± sample std (ddof = 1) "
                  f"of those per-seed gains", ""]
    lines += [f"### The table: each method at its chosen setting on {res.report_data}, "
              f"{_seeds_plain(res.report_seeds)}", ""]
    if res.rows:
        cols = list(res.rows[0].stats)
        lines.append(format_markdown(res.rows, cols, scale, digits, gains=gains_for(res.rows, res.results)).rstrip())
    else:
        lines.append("no method has a chosen setting")
    for m, f in res.failed_report.items():
        lines.append(f"- {m}: {len(f)} report run(s) failed and are left out of its row: "
                     + "; ".join(f"seed {s}: {msg}" for s, msg in sorted(f.items())))
    return "\n".join(lines) + "\n"


def format_tune_csv(res: TuneResult) -> str:
    """One row per method and setting: ``method, setting, <key>..., n, <metric>_mean, _std, failed, chosen``."""
    keys = list(dict.fromkeys(k for scs in res.scores.values() for sc in scs for k, _ in sc.setting.values))
    gains = _dev_gains(res)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "setting", *keys, "n", f"{res.metric}_mean", f"{res.metric}_std", "gain_mean", "gain_std",
                "failed", "chosen"])
    for m, scs in res.scores.items():
        for i, sc in enumerate(scs):
            vals = sc.setting.as_dict()
            g = gains.get((m, i))
            w.writerow([m, sc.setting.label, *[json.dumps(vals[k]) if k in vals else "" for k in keys], sc.n,
                        repr(sc.mean), repr(sc.std), repr(g.mean) if g else "", repr(g.std) if g else "",
                        len(sc.failed), int(res.chosen[m] == i)])
    return buf.getvalue()


def tune_json(res: TuneResult, grids: Mapping[str, Sequence[Setting]]) -> dict[str, Any]:
    def nan_free(x: float) -> float | None:
        return None if x is None or not math.isfinite(x) else x

    return {
        "split": res.split, "metric": res.metric, "tune_seeds": res.tune_seeds, "report_seeds": res.report_seeds,
        "report_data": res.report_data, "budget_per_method": res.budget, "caption": budget_caption(res, grids),
        "methods": {m: {
            "settings": [{"setting": sc.setting.as_dict(), "label": sc.setting.label, "mean": nan_free(sc.mean),
                          "std": nan_free(sc.std), "n": sc.n, "failed": {str(s): e for s, e in sc.failed.items()},
                          "runs": sc.runs} for sc in scs],
            "chosen": None if res.chosen[m] is None else scs[res.chosen[m]].setting.as_dict(),
            "report_runs": res.results.get(m, []),
            "report_failed": {str(s): e for s, e in res.failed_report.get(m, {}).items()},
        } for m, scs in res.scores.items()},
    }


def tune_curves(res: TuneResult, path: str, scale: float = 100.0) -> str | None:
    """PNG: one panel per distillation method, its paired gain on the tune split (mean ± std over the seeds) at
    every setting of its grid; the chosen one filled, a zero line for "no better than plain". A single numeric key
    whose values span ≥ 10× gets a log axis. Returns ``path``, or None when there is nothing to draw."""
    gains = _dev_gains(res)
    methods = [m for m, scs in res.scores.items() if any((m, i) in gains for i in range(len(scs)))]
    if not methods:
        return None
    plt = pyplot()
    cols = min(4, len(methods))
    rows = math.ceil(len(methods) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), sharey=True, squeeze=False)
    for ax, m in zip(axes.ravel(), methods):
        scs = res.scores[m]
        keys = {k for sc in scs for k, _ in sc.setting.values}
        vals = [dict(sc.setting.values).get(next(iter(keys))) if len(keys) == 1 else None for sc in scs]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in vals)
        xs = [float(v) for v in vals] if numeric else list(range(len(scs)))
        pts = [(x, gains[(m, i)]) for i, x in enumerate(xs) if (m, i) in gains and gains[(m, i)].n > 0]
        if not pts:
            continue
        means = [g.mean * scale for _, g in pts]
        errs = [0.0 if math.isnan(g.std) else g.std * scale for _, g in pts]
        ax.errorbar([x for x, _ in pts], means, yerr=errs, marker="o", ms=4, capsize=3, color="#4c72b0",
                    mfc="white")
        c = res.chosen.get(m)
        if c is not None and (m, c) in gains:
            ax.plot([xs[c]], [gains[(m, c)].mean * scale], "o", ms=6, color="#4c72b0")
        ax.axhline(0.0, color="grey", lw=0.8, ls="--")
        if numeric and max(xs) / min(xs) >= 10:
            ax.set_xscale("log")
        if numeric:  # the grid's own values as the ticks (a log axis labels its minor ticks otherwise, overlapping)
            ax.set_xticks(xs, [_value_text(v) for v in vals], minor=False)
            ax.set_xticks([], minor=True)
        else:
            ax.set_xticks(xs)
            ax.set_xticklabels([sc.setting.label for sc in scs], rotation=30, ha="right", fontsize=6)
        ax.set_title(m, fontsize=9)
        ax.tick_params(labelsize=7)
        if numeric:
            ax.set_xlabel(next(iter(keys)), fontsize=7)
    for ax in axes.ravel()[len(methods):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel(f"{res.metric} gain on {res.split}" + (f" (×{scale:g})" if scale != 1 else ""), fontsize=7)
    fig.suptitle(f"Tuning on {res.split}: paired gain over the plain student, mean ± std over "
                 f"{len(res.tune_seeds)} seed(s); filled = chosen", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_tune_outputs(res: TuneResult, out: str, grids: Mapping[str, Sequence[Setting]]) -> None:
    with open(os.path.join(out, COMPARE_MD), "w", encoding="utf-8") as f:
        f.write(format_tune_markdown(res, grids))
    with open(os.path.join(out, TUNE_CSV), "w", encoding="utf-8") as f:
        f.write(format_tune_csv(res))
    with open(os.path.join(out, TUNE_JSON), "w", encoding="utf-8") as f:
        json.dump(tune_json(res, grids), f, indent=1)
    with open(os.path.join(out, RUNS_JSON), "w", encoding="utf-8") as f:
        json.dump(res.results, f, indent=1)
    if res.rows:
        with open(os.path.join(out, COMPARE_CSV), "w", encoding="utf-8") as f:
            f.write(format_csv(res.rows, list(res.rows[0].stats)))
        pm = primary_metric(res.rows)
        if pm is not None:
            bar_chart(res.rows, pm, os.path.join(out, COMPARE_PNG))
    tune_curves(res, os.path.join(out, TUNE_PNG))


# --------------------------------------------------------------------------- CLI (hooked into densekd compare)
def add_arguments(p: Any) -> None:
    """``densekd compare``'s tuning flags."""
    p.add_argument("--tune", action="append", default=[], metavar="[METHOD:]KEY=[V1,V2,...]",
                   help="choose KEY per method on the tune split before the table (a YAML list of values; once "
                        "per key; METHOD: gives one method its own grid); e.g. --tune \"distill.weight=[0.1, 1, 10]\"")
    p.add_argument("--tune-split", default=None, help="where settings are scored (default: compare.tune.split, "
                                                      "else dev); never the table's own data")
    p.add_argument("--tune-seeds", type=int, default=None, help="seeds per setting on the tune split (default: "
                                                                "compare.tune.seeds, else 2)")
    p.add_argument("--no-tune", action="store_true", help="ignore the config's compare.tune plan (the table at "
                                                          "the plan's fixed settings)")


def wants_tuning(args: Any, plan: Any) -> bool:
    if args.no_tune and args.tune:
        raise ConfigError("--no-tune: contradicts --tune; give one of them")
    if args.no_tune:
        return False
    return bool(args.tune) or (plan is not None and plan.tune is not None) or args.tune_split is not None \
        or args.tune_seeds is not None


def run_cli(args: Any, plan: Any, method_kwargs: Mapping[str, Mapping[str, Any]],
            method_set: Mapping[str, Sequence[str]]) -> int:
    """``densekd compare ... --tune ...``: the plan's tune section, the command line's flags on top."""
    tp = plan.tune if plan is not None else None
    common, own = parse_tune_items(args.tune, args.methods)
    grid = common or (dict(tp.grid) if tp is not None else {})
    per_method = {**({m: dict(g) for m, g in tp.per_method.items() if m in args.methods} if tp is not None else {}),
                  **own}
    if not grid and not per_method:
        raise ConfigError("--tune: no grid; give --tune KEY=[v1, v2, ...] or compare.tune.grid in the config")
    split = args.tune_split or (tp.split if tp is not None else "dev")
    tune_seeds = args.tune_seeds if args.tune_seeds is not None else (tp.seeds if tp is not None else 2)
    if tune_seeds < 1:
        raise ConfigError(f"--tune-seeds: expected a positive count, got {tune_seeds}")
    res = tune_compare(args.config, args.methods, grid, per_method, split, tune_seeds, args.seeds, args.out,
                       args.overrides, args.metrics, metric=tp.metric if tp is not None else None,
                       method_kwargs=method_kwargs, method_set=method_set, jobs=args.jobs)
    grids = {m: [sc.setting for sc in scs] for m, scs in res.scores.items()}
    print(format_tune_markdown(res, grids))
    return 0
