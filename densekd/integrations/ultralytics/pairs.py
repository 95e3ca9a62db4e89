"""Which YOLO layers are distilled: the Detect head's inputs by default, or the user's pairs in any spelling."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Sequence

from torch import nn

from ...errors import ConfigError
from ...levels import Pair
from .inputs import _check_detector


def _layer(x: Any) -> str:
    if isinstance(x, int) or (isinstance(x, str) and x.isdigit()):
        return f"model.{int(x)}"
    if isinstance(x, str):
        return x
    raise ConfigError(f"a YOLO pair layer must be an index (15) or a module name ('model.15'), got {x!r}")


def default_pairs(student: nn.Module, teacher: nn.Module, method: str = "acam_kd", weight: float = 1.0,
                  kwargs: Mapping[str, Any] | None = None) -> list[Pair]:
    """One pair per feature level the Detect heads read: student ``Detect.f[i]`` with teacher ``Detect.f[i]``."""
    fs = list(_check_detector(student, "student", student).f)
    ft = list(_check_detector(teacher, "teacher", teacher).f)
    if len(fs) != len(ft):
        raise ConfigError(f"the student's Detect head reads {len(fs)} levels (layers {fs}), the teacher's {len(ft)} "
                          f"(layers {ft}); pass pairs= to choose which to distil")
    return [Pair(student=f"model.{s}", teacher=f"model.{t}", loss=method, weight=weight, kwargs=dict(kwargs or {}))
            for s, t in zip(fs, ft)]


def normalize_pairs(pairs: Sequence[Any], method: str, weight: float, kwargs: Mapping[str, Any]) -> list[Pair]:
    """Pairs from indices (``15``), names (``"model.15"``), ``(student, teacher)`` tuples, dicts or Pairs."""
    out: list[Pair] = []
    for p in pairs:
        if isinstance(p, Pair):
            out.append(p)
        elif isinstance(p, Mapping):
            q = {"loss": method, "weight": weight, "kwargs": dict(kwargs), **p}
            q["student"] = _layer(q.get("student")) if "student" in q else q.get("student")
            if q.get("teacher") is not None:
                q["teacher"] = _layer(q["teacher"])
            out.append(Pair.coerce(q))
        elif isinstance(p, (tuple, list)) and len(p) == 2:
            out.append(Pair(_layer(p[0]), _layer(p[1]), method, weight, dict(kwargs)))
        else:
            out.append(Pair(_layer(p), None, method, weight, dict(kwargs)))
    if not out:
        raise ConfigError("pairs: empty; pass None for the Detect head's input layers")
    return out
