"""``health.json`` in the run folder: written by the engine, read by the demos (:func:`run_warnings`)."""
from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

from ..run_folder import HEALTH_FILE


def write_health(out_dir: str, iteration: int, checks: Sequence[str], warnings: Sequence[Mapping[str, Any]],
                 finished: bool) -> str:
    """``health.json`` in the run folder: ``{"iteration", "finished", "checks": [lines], "warnings":
    [{"iteration", "kind", "level", "message"}]}`` (read by the demos)."""
    path = os.path.join(out_dir, HEALTH_FILE)
    tmp = path + ".part"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"iteration": iteration, "finished": finished, "checks": list(checks),
                   "warnings": [dict(w) for w in warnings]}, f, indent=1)
    os.replace(tmp, path)
    return path


def read_health(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """A run folder's ``health.json``, or None when it has none."""
    path = os.path.join(run_dir, HEALTH_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def run_warnings(run_dir: str | os.PathLike) -> list[str]:
    """The guard warnings of a run folder's ``health.json``, their messages in the order they fired (none when the
    run has no ``health.json``)."""
    health = read_health(run_dir)
    return [w["message"] if isinstance(w, Mapping) else str(w) for w in (health or {}).get("warnings", [])]
