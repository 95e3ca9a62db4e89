"""Tasks: the task-specific half of training (models, data, evaluation). See :mod:`densekd.tasks.base`."""
from __future__ import annotations

import difflib
import importlib

from ..errors import UnknownNameError
from .base import Task

_TASKS = {
    "detection": ("densekd.tasks.detection", "DetectionTask"),
    "segmentation": ("densekd.tasks.segmentation", "SegmentationTask"),
}


def available_tasks() -> list[str]:
    return sorted(_TASKS)


def get_task(name: str) -> Task:
    """The task object for a config's ``task:`` value (imported lazily)."""
    if name not in _TASKS:
        close = difflib.get_close_matches(str(name), list(_TASKS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownNameError(f"task: unknown task {name!r}{hint} (available: {', '.join(available_tasks())})")
    module, cls = _TASKS[name]
    return getattr(importlib.import_module(module), cls)()


__all__ = ["Task", "available_tasks", "get_task"]
