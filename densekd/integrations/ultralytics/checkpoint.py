"""The ``"densekd"`` entry a distillation run adds to Ultralytics' checkpoints (KD modules' state, method, pairs,
teacher path: plain tensors, numbers and strings), and reading it back to resume."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ...errors import ConfigError
from .inputs import _local_file

_CKPT_KEY = "densekd"
_CKPT_FORMAT = 1


def read_kd_entry(path: str | Path) -> dict[str, Any]:
    """The ``"densekd"`` entry of a checkpoint written by :class:`DistillationTrainer` (one line if absent)."""
    p = _local_file(path, "resume")
    ckpt = torch.load(p, map_location="cpu", weights_only=False)
    entry = ckpt.get(_CKPT_KEY) if isinstance(ckpt, dict) else None
    if not entry:
        raise ConfigError(f"resume '{path}' has no '{_CKPT_KEY}' entry: it was not written by densekd's YOLO trainer "
                          f"(resume Ultralytics' own runs with YOLO(...).train(resume=True))")
    return entry
