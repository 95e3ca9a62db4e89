"""COCO detection files → the YOLO (Ultralytics) dataset layout, and the built-in digits in that layout.

Ultralytics reads ``<root>/images/<split>/<stem>.png`` with one label file per image at
``<root>/labels/<split>/<stem>.txt`` (it swaps ``/images/`` for ``/labels/`` in the path): one line per
object, ``class x_center y_center width height``, coordinates normalised to [0, 1]. ``data.yaml`` names the
root, the split folders and the class names. Nothing here needs Ultralytics.

    make_yolo_digits("data/yolo_digits", n_train=64, n_val=32)   # → data/yolo_digits/data.yaml
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

import yaml

from ..errors import ConfigError
from .digits import make_digits_dataset


def coco_to_yolo(annotations: str | os.PathLike[str], image_dir: str | os.PathLike[str],
                 out_root: str | os.PathLike[str], split: str) -> dict[int, str]:
    """Write one COCO split as ``out_root/images/<split>`` + ``out_root/labels/<split>``.

    Category ids are mapped to contiguous class indices in id order. Images without annotations get an empty
    label file (a background image for Ultralytics). Returns ``{class index: name}``.
    """
    ann_path, image_dir, out_root = Path(annotations), Path(image_dir), Path(out_root)
    if not ann_path.is_file():
        raise ConfigError(f"coco_to_yolo: annotation file '{ann_path}' does not exist")
    coco = json.loads(ann_path.read_text())
    cats = sorted(coco.get("categories", []), key=lambda c: c["id"])
    index = {c["id"]: i for i, c in enumerate(cats)}
    boxes: dict[int, list[str]] = {im["id"]: [] for im in coco["images"]}
    sizes = {im["id"]: (im["width"], im["height"]) for im in coco["images"]}
    for a in coco.get("annotations", []):
        if a.get("iscrowd", 0):
            continue
        w_img, h_img = sizes[a["image_id"]]
        x, y, w, h = a["bbox"]
        if w <= 0 or h <= 0:
            continue
        boxes[a["image_id"]].append(
            f"{index[a['category_id']]} {(x + w / 2) / w_img:.6f} {(y + h / 2) / h_img:.6f} "
            f"{w / w_img:.6f} {h / h_img:.6f}"
        )
    img_out, lab_out = out_root / "images" / split, out_root / "labels" / split
    for d in (img_out, lab_out):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    for im in coco["images"]:
        src = image_dir / im["file_name"]
        if not src.is_file():
            raise ConfigError(f"coco_to_yolo: image '{src}' listed in '{ann_path}' does not exist")
        shutil.copyfile(src, img_out / src.name)
        (lab_out / f"{Path(im['file_name']).stem}.txt").write_text("".join(line + "\n" for line in boxes[im["id"]]))
    return {i: c["name"] for i, c in enumerate(cats)}


def write_data_yaml(out_root: str | os.PathLike[str], names: Mapping[int, str], splits: list[str]) -> Path:
    """``out_root/data.yaml`` with absolute paths, so it works from any working directory (Ultralytics resolves
    only ``train``/``val``/``test`` against ``path``; other splits, such as ``dev``, against the working directory)."""
    out_root = Path(out_root).resolve()
    data: dict[str, Any] = {"path": str(out_root)}
    for s in splits:
        data[s] = str(out_root / "images" / s)
    data["names"] = {int(k): str(v) for k, v in names.items()}
    path = out_root / "data.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def make_yolo_digits(root: str | os.PathLike[str], seed: int = 0, n_train: int = 512, n_val: int = 256,
                     n_dev: int = 0, canvas: int = 64, **digits_kwargs: Any) -> Path:
    """The built-in digits (:func:`densekd.data.digits.make_digits_dataset`, real handwritten digits from
    scikit-learn, no download) in the YOLO layout under ``root``; returns the path of ``root/data.yaml``.

    The COCO build lives in ``root/coco`` and is reused when its parameters are unchanged; the YOLO copy is
    rewritten only when the COCO build changed or is incomplete.
    """
    root = Path(root)
    ds = make_digits_dataset(root / "coco", seed=seed, n_train=n_train, n_val=n_val, n_dev=n_dev,
                             canvas=canvas, **digits_kwargs)
    data_yaml = root / "data.yaml"
    complete = data_yaml.is_file() and all(
        sum(1 for _ in (root / "labels" / s).glob("*.txt")) == sp.num_images for s, sp in ds.splits.items()
    )
    if ds.built or not complete:
        names: dict[int, str] = {}
        for s, sp in ds.splits.items():
            names = coco_to_yolo(sp.annotations, sp.image_dir, root, s)
        data_yaml = write_data_yaml(root, names, list(ds.splits))
    return data_yaml
