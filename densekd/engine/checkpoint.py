"""Checkpoints that load with ``torch.load(weights_only=True)``: tensors and plain containers only.

Written atomically (a temporary file in the same folder, then ``os.replace``), so a run killed while
writing never leaves a truncated ``checkpoint.pth``.
"""
from __future__ import annotations

import os
import random
import tempfile
from typing import Any

import numpy as np
import torch

FORMAT = "densekd-checkpoint-v1"
TMP_PREFIX, TMP_SUFFIX = ".tmp_", ".pth"  # save_atomic's temporary files


def save_atomic(obj: Any, path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=TMP_SUFFIX, dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def remove_stale_temporaries(folder: str) -> list[tuple[str, int]]:
    """Delete the temporary files :func:`save_atomic` leaves in ``folder`` when the process is killed while
    writing (``kill -9``, out of memory): ``.tmp_*.pth``. The checkpoint they were meant to replace is
    untouched (``os.replace`` never ran). Call it once when a run starts, on the one process that writes.
    Returns ``[(file name, size in bytes)]`` of what was removed."""
    removed = []
    if not os.path.isdir(folder):
        return removed
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.startswith(TMP_PREFIX) and name.endswith(TMP_SUFFIX) and os.path.isfile(path):
            size = os.path.getsize(path)
            os.unlink(path)
            removed.append((name, size))
    return removed


def load(path: str, map_location: Any = "cpu") -> dict[str, Any]:
    return torch.load(path, map_location=map_location, weights_only=True)


def rng_state() -> dict[str, Any]:
    """python / numpy / torch (CPU and CUDA) generator states as tensors and primitives."""
    py = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    v, keys, gauss = state["python"]
    random.setstate((v, tuple(keys), gauss))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
