"""Checks on what a user hands the YOLO integration: models, the student, the data YAML, train arguments — each
bad input gets one line (what was expected, what was found, where), before Ultralytics could download anything."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn
from ultralytics.cfg import DEFAULT_CFG_DICT
from ultralytics.nn.tasks import guess_model_task, load_checkpoint, yaml_model_load

from .. import _ultralytics_offline as _offline
from ...errors import ConfigError

_DETECT_HEADS = ("Detect", "v10Detect")  # plain detection heads (YOLO26's Detect is end-to-end, still "Detect")
_MULTI_DEVICE = "distill_yolo trains on one device"


def _where(x: Any) -> str:
    return f"'{x}'" if isinstance(x, (str, Path)) else type(x).__name__


def _check_detector(model: nn.Module, role: str, where: Any) -> nn.Module:
    """The model's Detect head; one line if it is not an Ultralytics detection model."""
    layers = getattr(model, "model", None)
    if not isinstance(layers, nn.Sequential) or len(layers) == 0:
        raise ConfigError(f"{role} {_where(where)} is a {type(model).__name__}, not an Ultralytics YOLO model")
    head = layers[-1]
    name = type(head).__name__
    if name not in _DETECT_HEADS:
        try:
            task = guess_model_task(model)
        except Exception:  # noqa: BLE001 - only for the message
            task = "non-detection"
        raise ConfigError(f"{role} {_where(where)} is a {task} model (head {name}); distill_yolo distils detection "
                          f"models: expected a head of type Detect")
    return head


def _local_file(x: str | Path, role: str) -> Path:
    s = str(x)
    if "://" in s:
        raise ConfigError(f"{role} '{s}' is a URL; densekd does not download: pass a local file")
    try:
        return Path(_offline.local_asset(s))
    except FileNotFoundError:
        raise ConfigError(f"{role} '{s}' does not exist; densekd does not download weights: pass a local .pt file"
                          + (" or a model YAML such as 'yolov8n.yaml'" if role == "student" else "")) from None


def load_yolo(x: Any, role: str) -> nn.Module:
    """A detection model from a ``.pt`` path, a ``YOLO`` object or a ``DetectionModel`` (frozen copy untouched)."""
    if isinstance(x, (str, Path)):
        if not str(x).endswith(".pt"):
            raise ConfigError(f"{role} '{x}' must be a trained Ultralytics checkpoint (.pt)")
        path = _local_file(x, role)
        try:
            model = load_checkpoint(path)[0]
        except Exception as e:  # noqa: BLE001 - any unreadable file gets one line
            raise ConfigError(f"{role} '{x}' is not a readable Ultralytics checkpoint: {str(e).splitlines()[0]}") from None
    elif isinstance(x, nn.Module):
        inner = getattr(x, "model", None)  # ultralytics.YOLO holds its DetectionModel in .model; a model, its layers
        model = inner if isinstance(inner, nn.Module) and not isinstance(inner, nn.Sequential) else x
    else:
        raise ConfigError(f"{role} must be a .pt path, a YOLO object or a DetectionModel, got {type(x).__name__}")
    _check_detector(model, role, x)
    return model


def _check_student(student: Any) -> str:
    """The student as Ultralytics' ``model=`` argument (a YAML or a .pt path), checked to be a detector."""
    if not isinstance(student, (str, Path)):
        raise ConfigError(f"student must be a model YAML or a .pt path, got {type(student).__name__}")
    s = str(student)
    if s.endswith((".yaml", ".yml")):
        if "://" in s:
            raise ConfigError(f"student '{s}' is a URL; densekd does not download: pass a local file")
        try:
            cfg = yaml_model_load(s)
        except Exception:  # noqa: BLE001 - FileNotFoundError and parse errors alike
            raise ConfigError(f"student '{s}': no such model YAML (a file, or a name Ultralytics ships such as "
                              f"'yolov8n.yaml')") from None
        head = str(cfg.get("head", [[None, None, "?"]])[-1][2])
        if head not in _DETECT_HEADS:
            raise ConfigError(f"student '{s}' builds a {head} head; distill_yolo distils detection models: expected "
                              f"a head of type Detect")
        return s
    load_yolo(s, "student")
    return str(_local_file(s, "student"))


def _check_data(data: Any, split: str) -> str:
    """The data YAML exists and its image folders are on disk (else Ultralytics may run its ``download:``)."""
    import yaml

    from ultralytics.utils import DATASETS_DIR

    if data is None:
        raise ConfigError("data: missing; expected an Ultralytics data YAML with train/val image folders")
    s = str(data)
    if "://" in s:
        raise ConfigError(f"data '{s}' is a URL; densekd does not download datasets: pass a local data YAML")
    p = Path(s)
    if not p.is_file():
        raise ConfigError(f"data '{s}' does not exist (expected an Ultralytics data YAML with train/val image folders)")
    try:
        cfg = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"data '{s}' is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"data '{s}' must hold a mapping with train/val/names, got {type(cfg).__name__}")
    for key in ("train", split):
        if key not in cfg:
            raise ConfigError(f"data '{s}' has no '{key}:' entry (keys: {', '.join(map(str, cfg))})")
    if "names" not in cfg and "nc" not in cfg:
        raise ConfigError(f"data '{s}' has neither 'names:' nor 'nc:'")
    root = Path(cfg.get("path") or p.parent)
    if not root.is_absolute() and not root.exists():
        root = DATASETS_DIR / root
    for key in ("train", split):
        entries = cfg[key] if isinstance(cfg[key], list) else [cfg[key]]
        for e in entries:
            q = Path(str(e))  # Ultralytics resolves train/val/test/minival against `path`, other keys against cwd
            q = q if q.is_absolute() or key not in ("train", "val", "test", "minival") else root / q
            if not q.exists():
                raise ConfigError(f"data '{s}': {key} images '{q}' not found (densekd does not download datasets)")
    return s


def _check_train_args(args: Mapping[str, Any]) -> dict[str, Any]:
    import difflib

    out = dict(args)
    for k in out:
        if k not in DEFAULT_CFG_DICT:
            close = difflib.get_close_matches(k, list(DEFAULT_CFG_DICT), n=1)
            raise ConfigError(f"unknown Ultralytics train argument {k!r}" + (f" (did you mean {close[0]!r}?)" if close
                                                                               else ""))
    dev = out.get("device")
    if dev is not None and ("," in str(dev) or isinstance(dev, (list, tuple))):
        raise ConfigError(f"{_MULTI_DEVICE}; got device={dev!r} (Ultralytics' multi-GPU mode relaunches its trainer "
                          f"from command-line arguments, which cannot carry the teacher)")
    return out
