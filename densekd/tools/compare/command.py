"""``densekd compare CONFIG [key=value …] [--methods …] [--seeds N] [--kwargs …] [--set …] [--jobs N] [--tune …]``:
the command line over the plan (:mod:`.plan`), the runs (:mod:`.runs`), the report (:mod:`.report`) and, with
``--tune`` or a ``compare.tune`` plan, the tuning (:mod:`.tune`); the config's
``compare:`` section first, the command line's additions after."""
from __future__ import annotations

from ...errors import ConfigError
from .plan import (PLAIN_NAMES, check_methods, parse_method_kwargs, parse_method_set, plan_from_config, plan_settings,
                   split_methods)
from .report import format_markdown, gains_for
from .runs import compare_runs
from .tune import add_arguments as add_tune_arguments
from .tune import run_cli as run_tune_cli
from .tune import wants_tuning


def add_subparser(sub) -> None:
    p = sub.add_parser("compare", help="train every method × seed and tabulate mean ± std")
    p.add_argument("config", help="YAML config (its distill section gives the teacher/pairs; method is replaced)")
    p.add_argument("--methods", nargs="+", default=None,
                   help=f"registered loss names, or {' / '.join(PLAIN_NAMES)} for the plain student "
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
    add_tune_arguments(p)  # --tune KEY=[...] --tune-split --tune-seeds --no-tune (.tune)
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted-key overrides for every run (right after CONFIG, or after the method names)")
    p.set_defaults(func=_run_cli)


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
    for m in args.methods:  # the config's plan first, the command line's additions after (so they win)
        own_set, own_kwargs = plan_settings(plan, m)
        if own_set:
            method_set[m] = own_set + method_set.get(m, [])
        if own_kwargs:
            kwargs[m] = {**own_kwargs, **kwargs.get(m, {})}
    if wants_tuning(args, plan):  # every method tuned on the tune split first (.tune)
        return run_tune_cli(args, plan, kwargs, method_set)
    rows, results = compare_runs(args.config, args.methods, args.seeds, args.out, args.overrides, args.metrics,
                                 method_kwargs=kwargs, method_set=method_set, jobs=args.jobs)
    metrics = list(rows[0].stats) if rows else []
    print(format_markdown(rows, metrics, gains=gains_for(rows, results)))
    return 0
