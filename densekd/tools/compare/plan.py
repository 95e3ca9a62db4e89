"""The plan of ``densekd compare``: which methods (the plain student among them), with which engine overrides per run,
read from the command line (``--methods``, ``--kwargs``, ``--set``) and from a config's ``compare:`` section; and
where each run goes (:func:`run_dir`). Nothing here trains."""
from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

from ...errors import ConfigError

#: the plain student (no teacher, no KD term) as a method name: compare's runs and rows, bench's reference row and
#: the demos' students are named so
PLAIN_STUDENT = "baseline"
#: every name a user may type for the plain student (``--methods``); the runs keep the name typed
PLAIN_NAMES = (PLAIN_STUDENT, "student", "plain")


def is_plain(method: str) -> bool:
    """``method`` names the plain student (one of :data:`PLAIN_NAMES`)."""
    return method in PLAIN_NAMES


def baseline_of(methods: Sequence[str]) -> str | None:
    """The first name of the plain student among ``methods``, if any: the runs every gain is paired with."""
    return next((m for m in methods if is_plain(m)), None)


def check_methods(methods: Sequence[str]) -> None:
    """Every name is a registered loss or a name of the plain student (:data:`PLAIN_NAMES`); duplicates are an error."""
    from ...losses import get_loss_class

    if not methods:
        raise ConfigError("--methods: expected at least one method name")
    seen = set()
    for m in methods:
        if m in seen:
            raise ConfigError(f"--methods: {m!r} is given twice")
        seen.add(m)
        if is_plain(m):
            continue
        try:
            get_loss_class(m)
        except KeyError as e:
            raise ConfigError(f"--methods: {e.args[0]} (or one of {', '.join(PLAIN_NAMES)})") from None


def run_dir(out: str, method: str, seed: int) -> str:
    """The run folder of one method and seed in a compare folder: ``<out>/<method>/seed<seed>``."""
    return os.path.join(out, method, f"seed{seed}")


def run_overrides(config_raw: Mapping[str, Any], method: str, seed: int, out: str,
                  overrides: Sequence[str] = (), kwargs: Mapping[str, Any] | None = None,
                  method_set: Sequence[str] = (), folder: str | None = None) -> list[str]:
    """The engine overrides of one run: user overrides first, then the method's own (``method_set``), so the
    run's own keys (seed, output folder, method) win. ``folder``: the runs' folder name if not the method's."""
    own = [f"seed={seed}", f"output_dir={run_dir(out, folder or method, seed)}"]
    return list(overrides) + list(method_set) + own + method_overrides(config_raw, method, kwargs)


def method_overrides(config_raw: Mapping[str, Any], method: str, kwargs: Mapping[str, Any] | None = None
                     ) -> list[str]:
    """Overrides that select ``method``: ``distill=null`` for the plain student (``baseline`` / ``student``
    / ``plain``), else ``distill.method=<m>`` (plus ``distill.kwargs={}`` when the config's own method
    differs, so its kwargs are not handed to another method), then ``distill.kwargs.<k>=<v>`` for this
    method's own ``kwargs`` (``--kwargs method.k=v``)."""
    if is_plain(method):
        return ["distill=null"]
    d = config_raw.get("distill")
    own = d.get("method") if isinstance(d, Mapping) else None
    ov = [f"distill.method={method}"] + (["distill.kwargs={}"] if own != method else [])
    return ov + [f"distill.kwargs.{k}={json.dumps(v)}" for k, v in (kwargs or {}).items()]


def parse_method_kwargs(items: Sequence[str], methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["maskd.fit_steps=200", ...]`` → ``{"maskd": {"fit_steps": 200}}`` (values read as YAML)."""
    from ...config import parse_assignment

    expected = "METHOD.KEY=VALUE, e.g. maskd.fit_steps=200"
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        head, value = parse_assignment(item, "--kwargs", expected)
        method, dot, key = head.partition(".")
        if not (dot and method and key):
            raise ConfigError(f"--kwargs {item!r}: expected {expected}")
        if method not in methods or is_plain(method):
            raise ConfigError(f"--kwargs {item!r}: {method!r} is not one of the distillation --methods "
                              f"({', '.join(m for m in methods if not is_plain(m))})")
        out.setdefault(method, {})[key] = value
    return out


def parse_method_set(items: Sequence[str], methods: Sequence[str]) -> dict[str, list[str]]:
    """``["hinton_kd:distill.weight=0.5", ...]`` → ``{"hinton_kd": ["distill.weight=0.5"]}``."""
    from ...config import parse_assignment

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


def split_methods(methods: Sequence[str], overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    """``--methods a b key=value`` → (["a", "b"], overrides + ["key=value"]) (argparse puts trailing
    overrides into the ``nargs="+"`` list)."""
    return [m for m in methods if "=" not in m], list(overrides) + [m for m in methods if "=" in m]


def raw_config(config: str | Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """The config as a raw YAML dict (a file read, or a copy of a dict) with ``overrides`` applied."""
    import copy

    from ...config import apply_overrides, read_yaml

    raw = read_yaml(config) if isinstance(config, (str, os.PathLike)) else copy.deepcopy(dict(config))
    return apply_overrides(raw, list(overrides))


def plan_from_config(config: str | Mapping[str, Any], overrides: Sequence[str] = ()) -> Any:
    """The config's ``compare:`` section (:class:`densekd.config.CompareConfig`), or None."""
    from ...config import CompareConfig, from_dict

    section = raw_config(config, overrides).get("compare")
    return None if section is None else from_dict(CompareConfig, section, "compare")


def plan_settings(plan: Any, method: str) -> tuple[list[str], dict[str, Any]]:
    """What a config's ``compare:`` plan gives ``method``: its ``set`` overrides and its ``kwargs`` (empty
    without a plan) — the one place compare and bench read them, so a method is built alike by both."""
    if plan is None:
        return [], {}
    return list(plan.set.get(method, ())), dict(plan.kwargs.get(method, {}))


def preflight(config_raw: Mapping[str, Any], methods: Sequence[str],
              method_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
              method_set: Mapping[str, Sequence[str]] | None = None) -> None:
    """Before any (long) run: every method's config validates and the task can build its pairs (e.g. fgd
    on segmentation fails here, with the task's one-line reason, not after the runs before it)."""
    from ...config import load_config
    from ...tasks import get_task

    for m in methods:
        ov = list((method_set or {}).get(m, ())) + method_overrides(config_raw, m, (method_kwargs or {}).get(m))
        try:
            cfg = load_config(config_raw, ov)
        except ConfigError as e:
            raise ConfigError(f"{m}: {e}") from None
        if cfg.distill is not None and cfg.distill.pairs is None:
            get_task(cfg.task).default_pairs(cfg.model, cfg.distill.method, cfg.distill.kwargs)


__all__ = ["PLAIN_NAMES", "PLAIN_STUDENT", "baseline_of", "check_methods", "is_plain", "method_overrides",
           "parse_method_kwargs", "parse_method_set", "plan_from_config", "plan_settings", "preflight", "raw_config", "run_dir",
           "run_overrides", "split_methods"]
