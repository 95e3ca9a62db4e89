"""COCO-format detection data: an annotation JSON plus an image folder.

Samples are ``(image, target)`` with ``image`` a float [3, H, W] tensor in [0, 1] at its original size
(the torchvision detector resizes and normalises it) and ``target`` = ``{"boxes": [n, 4] xyxy pixels,
"labels": [n] int64 in 1..K, "image_id": int}``. Category ids are mapped to contiguous labels 1..K in
ascending id order (0 is torchvision's background); :attr:`CocoDetection.label_to_cat` maps back.

The annotation file is checked once, up front: a bbox that is not four finite numbers with w, h >= 0, a box
that reaches outside its image by more than :data:`BOX_TOLERANCE` pixels (checked against the image's
``width``/``height``, or against the image file's size when the JSON has none), an unknown category or image
id, a missing image file, or a split without images is one error naming the JSON file and the id.
Zero-area boxes and crowd regions are not training targets (MMDetection / torchvision references);
boxes within the tolerance are clipped to the image.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Callable

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import ConfigError


class CocoFormatError(ConfigError):
    """A malformed COCO annotation file or a missing image."""


#: pixels a box may reach beyond its image (rounding in exported annotations) before it is an error
BOX_TOLERANCE = 1.0


def _outside(box: list[float], w: float, h: float) -> bool:
    x1, y1, x2, y2 = box
    t = BOX_TOLERANCE
    return x1 < -t or y1 < -t or x2 > w + t or y2 > h + t


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class CocoDetection(Dataset):
    """COCO-format detection dataset.

    Args:
        ann_file: COCO annotation JSON (``images``, ``annotations``, ``categories``).
        img_dir: folder the images' ``file_name`` are relative to.
        train: training transforms (random horizontal flip with ``flip_prob``) instead of evaluation ones.
        filter_empty: drop images without any (non-crowd, non-degenerate) box, as MMDetection does for training.
        label_map: "contiguous" (labels 1..K in category-id order) or "category_id" (label = category id).
        max_images: keep only the first N images in image-id order (after ``filter_empty``).
    """

    def __init__(
        self,
        ann_file: str,
        img_dir: str,
        train: bool = False,
        flip_prob: float = 0.5,
        filter_empty: bool = False,
        check_files: bool = True,
        label_map: str = "contiguous",
        max_images: int | None = None,
    ) -> None:
        self.ann_file = str(ann_file)
        self.img_dir = str(img_dir)
        self.train = train
        self.flip_prob = flip_prob if train else 0.0
        data = self._read(self.ann_file)
        cats = sorted(int(c["id"]) for c in data["categories"])
        if label_map == "contiguous":
            self.cat_to_label = {c: i + 1 for i, c in enumerate(cats)}
        elif label_map == "category_id":
            if cats[0] < 1:
                raise CocoFormatError(f"{self.ann_file}: label_map 'category_id' needs category ids >= 1 "
                                      f"(0 is the background), found {cats[0]}")
            self.cat_to_label = {c: c for c in cats}
        else:
            raise ConfigError(f"data.label_map: expected 'contiguous' or 'category_id', got {label_map!r}")
        self.label_to_cat = {v: k for k, v in self.cat_to_label.items()}
        self.category_names = {int(c["id"]): str(c.get("name", c["id"])) for c in data["categories"]}
        self.images: dict[int, dict[str, Any]] = {}
        for im in data["images"]:
            if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
                raise CocoFormatError(f"{self.ann_file}: image entry {im!r} needs 'id' and 'file_name'")
            self.images[int(im["id"])] = im
        boxes: dict[int, list[list[float]]] = {i: [] for i in self.images}
        labels: dict[int, list[int]] = {i: [] for i in self.images}
        ann_ids: dict[int, list[Any]] = {i: [] for i in self.images}
        for a in data["annotations"]:
            aid = a.get("id", "?") if isinstance(a, dict) else "?"
            if not isinstance(a, dict) or "image_id" not in a or "bbox" not in a or "category_id" not in a:
                raise CocoFormatError(f"{self.ann_file}: annotation id {aid} needs image_id, bbox and category_id")
            img_id = a["image_id"]
            if img_id not in self.images:
                raise CocoFormatError(f"{self.ann_file}: annotation id {aid} refers to unknown image id {img_id}")
            if a["category_id"] not in self.cat_to_label:
                raise CocoFormatError(
                    f"{self.ann_file}: annotation id {aid} (image id {img_id}) has unknown category id "
                    f"{a['category_id']!r}; categories are {cats}"
                )
            b = a["bbox"]
            if not (isinstance(b, list) and len(b) == 4 and all(_is_num(v) for v in b) and b[2] >= 0 and b[3] >= 0):
                raise CocoFormatError(
                    f"{self.ann_file}: annotation id {aid} (image id {img_id}) has a bad bbox {b!r}; "
                    f"expected [x, y, width, height] with finite numbers and width, height >= 0"
                )
            if a.get("iscrowd", 0):
                continue
            im = self.images[img_id]
            w, h = im.get("width"), im.get("height")
            x1, y1, x2, y2 = b[0], b[1], b[0] + b[2], b[1] + b[3]
            if _is_num(w) and _is_num(h):
                if _outside([x1, y1, x2, y2], w, h):
                    raise self._outside_error(aid, img_id, b, w, h)
                x1, x2 = min(max(x1, 0), w), min(max(x2, 0), w)
                y1, y2 = min(max(y1, 0), h), min(max(y2, 0), h)
            if x2 <= x1 or y2 <= y1:
                continue
            boxes[img_id].append([x1, y1, x2, y2])
            labels[img_id].append(self.cat_to_label[a["category_id"]])
            ann_ids[img_id].append(aid)
        self._boxes, self._labels, self._ann_ids = boxes, labels, ann_ids
        ids = sorted(self.images)
        if not ids:
            raise CocoFormatError(f"{self.ann_file}: the 'images' list is empty: no sample to "
                                  f"{'train on' if train else 'evaluate'}")
        if filter_empty:
            ids = [i for i in ids if boxes[i]]
            if not ids:
                raise CocoFormatError(f"{self.ann_file}: none of its {len(self.images)} images has a box, so "
                                      f"filter_empty leaves no sample (set data.filter_empty=false?)")
        if max_images is not None:
            ids = ids[:max_images]
        self.ids = ids
        if check_files:
            for i in self.ids:
                p = self.path(i)
                if not os.path.isfile(p):
                    raise CocoFormatError(f"{self.ann_file}: image id {i}: image file {p!r} does not exist")

    def _outside_error(self, aid: Any, img_id: int, bbox: Any, w: float, h: float) -> CocoFormatError:
        return CocoFormatError(
            f"{self.ann_file}: annotation id {aid} (image id {img_id}) has bbox {bbox!r} outside its {w:g}×{h:g} "
            f"image (more than {BOX_TOLERANCE:g} px beyond an edge); expected [x, y, width, height] in pixels, "
            f"not [x1, y1, x2, y2] or normalised"
        )

    def _read(self, path: str) -> dict[str, Any]:
        if not os.path.isfile(path):
            raise CocoFormatError(f"annotation file {path!r} does not exist")
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise CocoFormatError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise CocoFormatError(f"{path}: expected a JSON object with images, annotations, categories")
        for key in ("images", "annotations", "categories"):
            if not isinstance(data.get(key), list):
                raise CocoFormatError(f"{path}: missing list {key!r} (a COCO annotation file has images, "
                                      f"annotations and categories)")
        if not data["categories"]:
            raise CocoFormatError(f"{path}: 'categories' is empty")
        return data

    @property
    def num_classes(self) -> int:
        """K: the number of foreground outputs the detector needs (labels 1..K)."""
        return max(self.cat_to_label.values())

    def path(self, image_id: int) -> str:
        return os.path.join(self.img_dir, self.images[image_id]["file_name"])

    def __len__(self) -> int:
        return len(self.ids)

    def load_image(self, image_id: int) -> Tensor:
        import numpy as np
        from PIL import Image

        p = self.path(image_id)
        try:
            with Image.open(p) as im:
                arr = np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
        except Exception as e:  # noqa: BLE001
            raise CocoFormatError(f"{self.ann_file}: image id {image_id}: cannot read {p!r}: {e}") from None
        return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255)

    def _check_size(self, image_id: int, img: Tensor) -> None:
        """The image file against the JSON's width/height, or (without them) the boxes against the file."""
        h, w = img.shape[-2:]
        im = self.images[image_id]
        jw, jh = im.get("width"), im.get("height")
        if _is_num(jw) and _is_num(jh):
            if (int(jw), int(jh)) != (w, h):
                raise CocoFormatError(f"{self.ann_file}: image id {image_id}: {self.path(image_id)!r} is {w}×{h} "
                                      f"pixels, the annotation file says {jw}×{jh}")
            return
        for box, aid in zip(self._boxes[image_id], self._ann_ids[image_id]):
            if _outside(box, w, h):
                x1, y1, x2, y2 = box
                raise self._outside_error(aid, image_id, [x1, y1, x2 - x1, y2 - y1], w, h)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Any]]:
        image_id = self.ids[index]
        img = self.load_image(image_id)
        self._check_size(image_id, img)
        boxes = torch.tensor(self._boxes[image_id], dtype=torch.float32).reshape(-1, 4)
        if boxes.numel() and not (_is_num(self.images[image_id].get("width"))
                                  and _is_num(self.images[image_id].get("height"))):
            h, w = img.shape[-2:]  # within the tolerance: clip, as with a known size
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        labels = torch.tensor(self._labels[image_id], dtype=torch.int64)
        if self.flip_prob > 0 and torch.rand(()) < self.flip_prob:
            img = img.flip(-1)
            w = img.shape[-1]
            boxes = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=1)
        return img, {"boxes": boxes, "labels": labels, "image_id": image_id}


def collate_detection(batch: list[tuple[Tensor, dict[str, Any]]]) -> tuple[list[Tensor], list[dict[str, Any]]]:
    """A list of images (sizes may differ; the detector batches them) and a list of targets."""
    return [b[0] for b in batch], [b[1] for b in batch]


Transform = Callable[[Tensor, dict[str, Any]], tuple[Tensor, dict[str, Any]]]
