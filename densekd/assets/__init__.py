"""Small artefacts shipped inside the package: the demos' pretrained teachers.

Each artefact is two files in this folder: ``<name>.pt`` (a state dict, loadable with
``torch.load(weights_only=True)``) and ``<name>.json``, its record: the command that made it, the data and its
seed, the training settings, its metric, the torch build and thread count it was made with, and two checksums —
``sha256`` of the file's bytes (checked every time the artefact is loaded: a corrupt or replaced file is refused)
and ``weights_sha256`` of the tensors themselves (key, dtype, shape and bytes in key order: what a retrain is
compared against, independent of how the file was written).

    path, record = shipped_teacher("demo_segmentation_teacher")   # verified; raises a one-line error if not

In a config, ``model.teacher.checkpoint: asset:demo_segmentation_teacher`` names the same verified file.

A retrain (``densekd demo --retrain-teacher``) writes its own pair of files elsewhere with
:func:`write_artifact` and never touches this folder.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from ..errors import DenseKDError

ASSETS_DIR = Path(__file__).resolve().parent


class AssetError(DenseKDError):
    """A shipped artefact is missing, corrupt or does not match its record."""


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 over (key, dtype, shape, bytes) of every tensor, keys sorted: equal iff the weights are equal bit for bit."""
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def record_path(name: str, root: str | os.PathLike[str] = ASSETS_DIR) -> Path:
    return Path(root) / f"{name}.json"


def read_record(name: str, root: str | os.PathLike[str] = ASSETS_DIR) -> dict[str, Any]:
    path = record_path(name, root)
    if not path.is_file():
        raise AssetError(f"artefact {name!r}: no record {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise AssetError(f"artefact {name!r}: its record {path} is not valid JSON ({e.msg} at line {e.lineno})") from None


def verified_artifact(name: str, root: str | os.PathLike[str] = ASSETS_DIR, retrain_hint: str = "") -> tuple[Path, dict[str, Any]]:
    """``(path of <name>.pt, its record)`` after checking the file's sha256 against the record; one-line
    :class:`AssetError` otherwise (``retrain_hint``, e.g. the command that rebuilds it, ends the message)."""
    hint = f"; {retrain_hint}" if retrain_hint else ""
    try:
        record = read_record(name, root)
    except AssetError as e:
        raise AssetError(f"{e}{hint}") from None
    path = Path(root) / record.get("file", f"{name}.pt")
    if not path.is_file():
        raise AssetError(f"artefact {name!r}: its weights file {path} is missing{hint}")
    got, want = file_sha256(path), record.get("sha256")
    if got != want:
        raise AssetError(f"artefact {name!r}: {path} is corrupt or was replaced (sha256 {got[:16]}…, its record "
                         f"says {str(want)[:16]}…){hint}")
    return path, record


def shipped_teacher(name: str, retrain_hint: str = "") -> tuple[Path, dict[str, Any]]:
    """A teacher shipped with densekd, verified (see :func:`verified_artifact`)."""
    return verified_artifact(name, ASSETS_DIR, retrain_hint)


#: a checkpoint given as ``asset:<name>`` in a config is the shipped artefact <name>, checksum-verified
ASSET_PREFIX = "asset:"


def resolve_checkpoint(value: str | None, where: str = "checkpoint") -> str | None:
    """A config's checkpoint value as a file path: ``asset:<name>`` → the verified shipped ``<name>.pt`` (one
    :class:`AssetError` line naming ``where`` if it is missing or corrupt); anything else unchanged."""
    if not value or not str(value).startswith(ASSET_PREFIX):
        return value
    name = str(value)[len(ASSET_PREFIX):]
    try:
        command = read_record(name, ASSETS_DIR).get("command")
    except AssetError:
        command = None
    hint = f"rebuild it with `{command}`" if command else ""
    try:
        path, _ = verified_artifact(name, ASSETS_DIR, retrain_hint=hint)
    except AssetError as e:
        raise AssetError(f"{where}: {e}") from None
    return str(path)


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def write_artifact(name: str, state_dict: Mapping[str, torch.Tensor], record: Mapping[str, Any],
                   root: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """Write ``<root>/<name>.pt`` and ``<root>/<name>.json`` (atomically, each via a temporary file) with both
    checksums filled in; returns ``(weights path, record)``. Refuses to write into the package's own folder."""
    root = Path(root).resolve()
    if root == ASSETS_DIR:
        raise AssetError(f"write_artifact: refusing to write {name!r} into the package's shipped assets ({root}); "
                         "write elsewhere and copy it in deliberately")
    root.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    pt = root / f"{name}.pt"
    tmp = pt.with_name(pt.name + ".tmp")
    torch.save(sd, tmp)
    os.replace(tmp, pt)
    full = {**dict(record), "name": name, "file": pt.name, "bytes": pt.stat().st_size,
            "sha256": file_sha256(pt), "weights_sha256": weights_sha256(sd)}
    js = record_path(name, root)
    tmp = js.with_name(js.name + ".tmp")
    tmp.write_text(json.dumps(full, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, js)
    return pt, full


__all__ = ["ASSETS_DIR", "ASSET_PREFIX", "AssetError", "file_sha256", "load_state_dict", "read_record", "record_path",
           "resolve_checkpoint", "shipped_teacher", "verified_artifact", "weights_sha256", "write_artifact"]
