"""``densekd compare``: every method × seed through the engine, then a mean ± std table and a bar chart.

    densekd compare configs/compare/digits_segmentation.yaml train.max_iters=300 \\
        --methods baseline fitnet acam_kd --seeds 3 --out runs/compare/digits

``key=value`` overrides (applied to every run) go right after CONFIG or at the end of ``--methods``
(argparse takes no positionals after other options such as ``--out``). A config may carry its own plan in a
``compare:`` section (methods, seeds, per-method ``set`` and ``kwargs``), so ``densekd compare CONFIG`` runs the
whole table (configs/compare/demo_methods.yaml).

Each run is ``densekd.train(CONFIG, overrides + [distill.method=<m>, seed=<s>, output_dir=<out>/<m>/seed<s>])``;
``baseline`` (:data:`~.plan.PLAIN_STUDENT`; ``student`` and ``plain`` are accepted too) trains the plain student
(``distill=null``). When the method differs from the config's own ``distill.method``, ``distill.kwargs`` is reset
to ``{}`` (kwargs belong to a method; method-specific defaults such as ``num_masks`` come from the task's
``default_pairs``).

Per-method loss kwargs: ``--kwargs maskd.fit_steps=200 samkd.scales=[1,2]`` (Python: ``method_kwargs``).
Per-method engine overrides, for a distillation point or weight that suits one method:
``--set "hinton_kd:distill.pairs=[{student: classifier}]" fitnet:distill.weight=0.5`` (Python: ``method_set``).

Paired gains: when the plain student is among the methods, every other method's gain in the primary
metric is computed seed by seed against the baseline run of the same seed (same init and data order), with the
sample std of those per-seed gains and whether the mean gain exceeds 2 × that std (:func:`paired_gains`).

Resumable: a run whose ``metrics.json`` exists is finished and not redone, its metrics are read back
(whatever its settings: the run folder is named by method and seed only, so use a new ``--out`` after
changing them); an interrupted run resumes from its ``checkpoint.pth`` (the engine's ``train.resume``).

Outputs in ``--out``: ``compare.md`` and ``compare.csv`` (mean ± sample std, ddof = 1, with n, per metric per
method in the order of ``--methods``) and ``compare.png`` (bar chart of the primary metric: mIoU for
segmentation, AP for detection, with std error bars). The aggregation (:func:`aggregate`) is a pure function.

With ``--tune KEY=[v1, v2, ...]`` (or a ``compare.tune`` plan) every method's setting is first chosen on a
held-out split with the same budget for every method, and the table reports each at its choice:
:mod:`.tune`.

One module per concern: :mod:`.statistics` (mean ± std, paired gains: pure), :mod:`.report` (the tables, CSV and
chart), :mod:`.plan` (methods, the plain student, per-method overrides, where each run goes), :mod:`.runs` (the runs
through the engine), :mod:`.tune` (choosing each method's setting on a held-out split first), :mod:`.command` (the
command line).
"""
from .command import add_subparser
from .plan import (PLAIN_NAMES, PLAIN_STUDENT, baseline_of, check_methods, is_plain, method_overrides,
                   parse_method_kwargs, parse_method_set, plan_from_config, preflight, raw_config, run_dir,
                   run_overrides, split_methods)
from .report import bar_chart, fmt, format_csv, format_markdown, gains_for, markdown_table, write_outputs
from .runs import compare, compare_runs, worker_threads
from .statistics import MethodStats, PairedGain, aggregate, default_metrics, mean_std, paired_gains, primary_metric

__all__ = ["MethodStats", "PLAIN_NAMES", "PLAIN_STUDENT", "PairedGain", "add_subparser", "aggregate", "bar_chart",
           "baseline_of", "check_methods", "compare", "compare_runs", "default_metrics", "fmt", "format_csv",
           "format_markdown", "gains_for", "is_plain", "markdown_table", "mean_std", "method_overrides", "paired_gains",
           "parse_method_kwargs", "parse_method_set", "plan_from_config", "preflight", "primary_metric", "raw_config",
           "run_dir", "run_overrides", "split_methods", "worker_threads", "write_outputs"]
