"""YAML configuration: ``yaml.safe_load`` → validated dataclasses, with ``key=value`` overrides.

    cfg = load_config("configs/detection/retinanet_r101_r50_acamkd_2x.yaml", ["train.max_iters=10"])

Every mistake is one :class:`~densekd.errors.ConfigError` line naming the dotted key, e.g.
``train.optimizer.lr: expected float, got 'abc'`` or ``train.optimizr: unknown key (did you mean
'optimizer'?)``. The ``model:`` and ``data:`` sections are validated by the task's own dataclasses
(``task.model_config_cls`` / ``task.data_config_cls``) with the same rules.

Schema (shared by every task)::

    task: detection            # or segmentation
    output_dir: runs/x
    seed: 0
    model: {...}               # the task's model section (has .student and .teacher)
    data: {...}                # the task's data section
    distill:                   # optional; absent/null → plain student training
      method: acam_kd
      kwargs: {}
      weight: 1.0
      pairs: null              # null → task.default_pairs(...); else a list of Pair dicts
      teacher_amp: none        # the teacher's forward: none | bf16 | auto (see Distiller)
      teacher_channels_last: false  # NHWC teacher weights: false | true | auto (see Distiller)
    train: {max_iters, batch_size, num_workers, optimizer: {...}, schedule: {...}, grad_clip, amp,
            checkpoint_every, log_every, eval_every, resume, guards, grad_ratio_every, control, control_iters,
            prepare_cache, flush_denormal, malloc_keep}
    eval: {batch_size}
    compare: {methods, seeds, set, kwargs, tune}   # optional; densekd compare's plan (training ignores it)
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence, Union

import yaml

from .errors import ConfigError

__all__ = [
    "CompareConfig",
    "Config",
    "TuneConfig",
    "DistillConfig",
    "EvalConfig",
    "OptimizerConfig",
    "ScheduleConfig",
    "TrainConfig",
    "apply_overrides",
    "from_dict",
    "load_config",
    "parse_assignment",
    "to_dict",
]


# --------------------------------------------------------------------------- schema
@dataclass
class OptimizerConfig:
    type: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.9  # SGD momentum; AdamW uses it as beta1
    weight_decay: float = 1e-4


@dataclass
class ScheduleConfig:
    """Learning rate = base lr × warmup(it) × decay(it).

    warmup: linear from ``warmup_factor`` to 1 over ``warmup_iters`` (torchvision/MMDetection "linear").
    step: × ``gamma`` at each iteration in ``steps``; cosine: to 0 at max_iters; poly: (1 - it/max)^power.
    """

    type: Literal["step", "cosine", "poly", "constant"] = "step"
    warmup_iters: int = 0
    warmup_factor: float = 0.001
    steps: list[int] = field(default_factory=list)
    gamma: float = 0.1
    power: float = 0.9


@dataclass
class TrainConfig:
    max_iters: int = 1000
    batch_size: int = 2  # per process
    num_workers: int = 2
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    grad_clip: float | None = None  # max total L2 norm; null = no clipping
    amp: Literal["none", "bf16", "fp16"] = "none"
    checkpoint_every: int = 1000  # 0 = only at the end (and on SIGTERM)
    log_every: int = 20
    eval_every: int = 0  # 0 = evaluate only at the end; -1 = never
    resume: bool = True  # continue from output_dir/checkpoint.pth when it exists
    guards: bool = True  # KD health guards during training (densekd.health): ratios, mask statistics, warnings
    grad_ratio_every: int = 100  # KD/task gradient-norm ratio at iteration 1 and every N iterations; 0 = never
    control: bool = False  # also train a plain twin for the first control_iters iterations (densekd.engine.control)
    control_iters: int | None = None  # null = a tenth of max_iters (at least 1)
    # a folder where KD modules fitted on the frozen teacher before training (FreeKD's prompts, MasKD's tokens) are
    # kept and reused by runs with the same teacher, data, seed and module settings (densekd.engine.prepare)
    prepare_cache: str | None = None
    # on a CPU, flush subnormal floats to zero while the Trainer runs: x86 cores compute with them 10-100x slower,
    # and a softmax's far tail makes them (CWD's backward: docs/methods.md, "Precision"); no effect on a GPU
    flush_denormal: bool = True
    # on a CPU (Linux, glibc), keep freed memory in the process for the next step instead of giving every large
    # block back to the system and faulting it in again (docs/methods.md, "The CPU allocator": a distilled
    # DeepLabV3 step 13.4 → 8.7 s); the process keeps its peak between steps, and gives malloc its defaults back
    # if its memory keeps growing (inputs of changing size). No effect on a GPU or elsewhere
    malloc_keep: bool = True


@dataclass
class EvalConfig:
    batch_size: int = 1


@dataclass
class DistillConfig:
    method: str = "acam_kd"
    kwargs: dict[str, Any] = field(default_factory=dict)
    weight: float = 1.0  # multiplies every pair's weight
    pairs: list[dict[str, Any]] | None = None
    # the frozen teacher's forward (densekd.distiller.Distiller): bf16 autocast never ("none": as the rest of the
    # step), always ("bf16") or where the device has bf16 matrix units ("auto"); NHWC weights (true / false, or
    # "auto": on CPU and for a bf16 teacher; off by default: exact only up to fp32 rounding)
    teacher_amp: Literal["auto", "bf16", "none"] = "none"
    teacher_channels_last: bool | Literal["auto"] = False


@dataclass
class TuneConfig:
    """``compare.tune``: choose each method's setting on a held-out split before the table (``densekd compare
    --tune``, :mod:`densekd.tools.compare.tune`). ``grid``: ``{dotted key: [values]}`` for every distillation method (several
    keys: every combination); ``per_method``: ``{method: {key: [values]}}``, that method's own grid instead.
    The budget (settings × ``seeds``) must be the same for every method. ``split``: where the settings are
    scored (segmentation: a ``data.root`` split folder; detection: a name in ``data.splits``); ``metric``:
    the score to maximise (default: the task's primary metric, mIoU or AP)."""

    split: str = "dev"
    seeds: int = 2
    metric: str | None = None
    grid: dict[str, list[Any]] = field(default_factory=dict)
    per_method: dict[str, dict[str, list[Any]]] = field(default_factory=dict)

    def validate(self, where: str = "compare.tune") -> None:
        if self.seeds < 1:
            raise ConfigError(f"{where}.seeds: expected a positive int, got {self.seeds}")
        if not self.split:
            raise ConfigError(f"{where}.split: expected a split name such as dev, got an empty string")
        grids = [(f"{where}.grid", self.grid)] + [(f"{where}.per_method.{m}", g) for m, g in self.per_method.items()]
        for name, grid in grids:
            for key, values in grid.items():
                if not values:
                    raise ConfigError(f"{name}.{key}: expected a non-empty list of values, got []")


@dataclass
class CompareConfig:
    """The plan of ``densekd compare CONFIG`` (training ignores it): which methods, how many seeds, and each
    method's own engine overrides (``set``, e.g. ``{hinton_kd: ["distill.pairs=[{student: classifier}]"]}``) and
    loss kwargs (``kwargs``, e.g. ``{maskd: {fit_steps: 200}}``). Command-line ``--methods``/``--seeds`` replace
    these; ``--set``/``--kwargs`` add to them."""

    methods: list[str] = field(default_factory=list)
    seeds: int = 3
    set: dict[str, list[str]] = field(default_factory=dict)
    kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    tune: TuneConfig | None = None  # choose settings on a held-out split first (densekd compare --tune)

    def validate(self, where: str = "compare") -> None:
        if self.seeds < 1:
            raise ConfigError(f"{where}.seeds: expected a positive int, got {self.seeds}")
        for what in ("set", "kwargs"):
            extra = sorted(set(getattr(self, what)) - set(self.methods)) if self.methods else []
            if extra:
                raise ConfigError(f"{where}.{what}: {extra} are not among {where}.methods {self.methods}")
        if self.tune is not None and self.methods:
            extra = sorted(set(self.tune.per_method) - set(self.methods))
            if extra:
                raise ConfigError(f"{where}.tune.per_method: {extra} are not among {where}.methods {self.methods}")


@dataclass
class Config:
    task: str
    model: Any
    data: Any
    output_dir: str = "runs/default"
    seed: int = 0
    distill: DistillConfig | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    compare: CompareConfig | None = None  # read by densekd compare only


# --------------------------------------------------------------------------- validation
def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, Sequence):
        args = typing.get_args(tp)
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin in (dict, Mapping):
        return "mapping"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _got(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return f"a {type(value).__name__}"
    return repr(value)


def _convert(tp: Any, value: Any, key: str) -> Any:
    """``value`` checked (and gently converted) against ``tp``; a ConfigError naming ``key`` otherwise."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got null")
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, value, key)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {_got(value)}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices and type(value) is type(choices[choices.index(value)]):
            return value
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {_got(value)}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin in (list, Sequence) or tp is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {_got(value)}")
        args = typing.get_args(tp)
        return [_convert(args[0], v, f"{key}[{i}]") if args else v for i, v in enumerate(value)]
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {_got(value)}")
        args = typing.get_args(tp)
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _convert(vt, v, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected bool (true/false), got {_got(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():  # 1e4 in YAML
            return int(value)
        raise ConfigError(f"{key}: expected int, got {_got(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads "1e-4" (no dot) as a string
            try:
                f = float(value)
            except ValueError:
                f = None
            if f is not None and math.isfinite(f):
                return f
        raise ConfigError(f"{key}: expected float, got {_got(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected str, got {_got(value)}")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {_got(value)}")


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping; unknown keys, missing required keys and wrong types are one
    :class:`ConfigError` naming the dotted key (``prefix`` is the dotted path of ``data`` itself)."""
    where = prefix or "config"
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {_got(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    dot = f"{prefix}." if prefix else ""
    for k in data:
        if k not in fields:
            close = difflib.get_close_matches(str(k), list(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (allowed: {', '.join(fields)})"
            raise ConfigError(f"{dot}{k}: unknown key{hint}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], f"{dot}{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
            raise ConfigError(f"{dot}{name}: required key is missing")
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if callable(check):
        check(prefix)
    return obj


def to_dict(obj: Any) -> Any:
    """A dataclass config back to plain YAML-able containers."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items()}
    return obj


# --------------------------------------------------------------------------- overrides
def parse_assignment(item: str, where: str, expected: str = "key=value, e.g. train.optimizer.lr=0.02"
                     ) -> tuple[str, Any]:
    """``"key=value"`` → ``(key, value)``, the value read as a YAML scalar (``null``, ``true``, ``[1, 2]``; nothing
    → None): the one reader of the ``key=value`` words densekd takes (config overrides, ``compare --kwargs`` and
    ``--set``, ``densekd yolo``'s arguments). No ``=``, an empty key or a value that is not YAML is one
    :class:`ConfigError` line: ``<where> '<item>': expected <expected>``."""
    key, eq, text = item.partition("=")
    if not eq or not key.strip():
        raise ConfigError(f"{where} {item!r}: expected {expected}")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"{where} {item!r}: the value is not valid YAML ({str(e).splitlines()[0]})") from None
    return key.strip(), value


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """Set dotted keys in the raw YAML dict: ``"train.optimizer.lr=0.02"`` (the value is a YAML scalar,
    so ``null``, ``true``, ``[1, 2]`` work) or a mapping ``{"train.optimizer.lr": 0.02}``."""
    if not overrides:
        return raw
    items: list[tuple[str, Any]] = []
    if isinstance(overrides, Mapping):
        items = list(overrides.items())
    else:
        items = [parse_assignment(o, "override") for o in overrides]
    for key, value in items:
        parts = key.split(".")
        if not all(parts):
            raise ConfigError(f"override {key!r}: empty component in dotted key")
        node = raw
        for i, p in enumerate(parts[:-1]):
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            elif not isinstance(nxt, dict):
                raise ConfigError(f"{'.'.join(parts[: i + 1])}: is {_got(nxt)}, cannot set {key}")
            node = nxt
        node[parts[-1]] = value
    return raw


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise ConfigError(f"config file {str(path)!r} does not exist")
    with open(path, encoding="utf-8") as f:
        try:
            raw = yaml.safe_load(f)
        except yaml.YAMLError as e:
            msg = " ".join(str(e).split())
            raise ConfigError(f"{path}: not valid YAML: {msg}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {_got(raw)}")
    return raw


def load_config(
    config: str | os.PathLike | Mapping[str, Any] | Config,
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
) -> Config:
    """A validated :class:`Config` from a YAML path or a dict (plus overrides)."""
    if isinstance(config, Config):
        if overrides:
            return load_config(to_dict(config), overrides)
        return config
    import copy

    raw = read_yaml(config) if isinstance(config, (str, os.PathLike)) else copy.deepcopy(dict(config))
    raw = apply_overrides(raw, overrides)
    if "task" not in raw:
        raise ConfigError("task: required key is missing (detection or segmentation)")
    if not isinstance(raw["task"], str):
        raise ConfigError(f"task: expected str, got {_got(raw['task'])}")
    from .tasks import get_task

    task = get_task(raw["task"])
    raw = dict(raw)
    model_raw, data_raw = raw.pop("model", None), raw.pop("data", None)
    if model_raw is None:
        raise ConfigError("model: required key is missing")
    if data_raw is None:
        raise ConfigError("data: required key is missing")
    expand = getattr(task, "expand_model_section", None)
    if callable(expand):  # presets (detection: model.preset) fill keys the config does not set
        model_raw = expand(model_raw)
    cfg = from_dict(Config, {**raw, "model": None, "data": None})
    cfg.model = from_dict(task.model_config_cls, model_raw, "model")
    cfg.data = from_dict(task.data_config_cls, data_raw, "data")
    _check(cfg)
    return cfg


def _check(cfg: Config) -> None:
    t = cfg.train
    for name in ("max_iters", "batch_size"):
        if getattr(t, name) < 1:
            raise ConfigError(f"train.{name}: expected a positive int, got {getattr(t, name)}")
    for name in ("num_workers", "checkpoint_every", "log_every", "grad_ratio_every"):
        if getattr(t, name) < 0:
            raise ConfigError(f"train.{name}: expected an int >= 0, got {getattr(t, name)}")
    if t.control and t.control_iters is not None and not 1 <= t.control_iters <= t.max_iters:
        raise ConfigError(f"train.control_iters: expected an int in [1, train.max_iters={t.max_iters}] or null "
                          f"(a tenth of the run), got {t.control_iters}")
    if t.eval_every < -1:
        raise ConfigError(f"train.eval_every: expected -1 (never), 0 (at the end) or a positive int, got {t.eval_every}")
    if t.optimizer.lr <= 0:
        raise ConfigError(f"train.optimizer.lr: expected a positive float, got {t.optimizer.lr}")
    if t.grad_clip is not None and t.grad_clip <= 0:
        raise ConfigError(f"train.grad_clip: expected a positive float or null, got {t.grad_clip}")
    if sorted(t.schedule.steps) != t.schedule.steps:
        raise ConfigError(f"train.schedule.steps: expected increasing iterations, got {t.schedule.steps}")
    if cfg.eval.batch_size < 1:
        raise ConfigError(f"eval.batch_size: expected a positive int, got {cfg.eval.batch_size}")
