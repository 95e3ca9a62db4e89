"""Tiny generated COCO-format datasets (filled rectangles on noise) for tests and smoke runs."""
from __future__ import annotations

import json
import os

import torch


def make_coco_rectangles(
    root: str,
    num_images: int = 4,
    size: int = 64,
    num_classes: int = 2,
    max_boxes: int = 3,
    seed: int = 0,
    empty_every: int = 0,
    category_ids: list[int] | None = None,
) -> tuple[str, str]:
    """Write ``root/images/*.png`` and ``root/annotations.json``; returns (ann_file, img_dir).

    Category ``k`` is a rectangle of colour channel ``k % 3``. ``empty_every`` > 0 makes every n-th image
    box-free. Category ids are ``category_ids`` (default 1..num_classes; pass e.g. [3, 7] to test mapping).
    """
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    img_dir = os.path.join(root, "images")
    os.makedirs(img_dir, exist_ok=True)
    cat_ids = category_ids or list(range(1, num_classes + 1))
    images, anns = [], []
    aid = 1
    for i in range(num_images):
        img = (torch.rand(3, size, size, generator=g) * 60).to(torch.uint8)
        n = 0 if (empty_every and i % empty_every == empty_every - 1) else int(torch.randint(1, max_boxes + 1, (), generator=g))
        for _ in range(n):
            w, h = (int(v) for v in torch.randint(size // 6, size // 2, (2,), generator=g))
            x, y = (int(v) for v in torch.randint(0, size - max(w, h), (2,), generator=g))
            c = int(torch.randint(0, len(cat_ids), (), generator=g))
            img[c % 3, y : y + h, x : x + w] = 200 + 20 * (c // 3)
            anns.append({"id": aid, "image_id": i + 1, "category_id": cat_ids[c], "bbox": [x, y, w, h],
                         "area": float(w * h), "iscrowd": 0})
            aid += 1
        name = f"{i + 1:06d}.png"
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(os.path.join(img_dir, name))
        images.append({"id": i + 1, "file_name": name, "width": size, "height": size})
    cats = [{"id": c, "name": f"class{c}"} for c in cat_ids]
    ann_file = os.path.join(root, "annotations.json")
    with open(ann_file, "w", encoding="utf-8") as f:
        json.dump({"images": images, "annotations": anns, "categories": cats}, f)
    return ann_file, img_dir
