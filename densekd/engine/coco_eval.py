"""COCO box evaluation with pycocotools: AP, AP50, AP75, APs, APm, APl (0–1, pycocotools' scale).

Under DDP every rank runs its shard of the images; predictions are gathered to rank 0, which scores them,
prints a table, writes ``coco_bbox.json`` (metrics) and ``coco_predictions.json`` and broadcasts the metrics.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

from . import distributed as dist_utils

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def coco_gt_from_file(ann_file: str):
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(ann_file)


def evaluate_coco(coco_gt: Any, results: Sequence[Mapping[str, Any]], image_ids: Iterable[int] | None = None) -> dict[str, float]:
    """Score COCO-format ``results`` (``image_id, category_id, bbox [x, y, w, h], score``) against
    ``coco_gt`` (a pycocotools COCO object or an annotation file path). No detections → all zeros."""
    from pycocotools.cocoeval import COCOeval

    if isinstance(coco_gt, (str, os.PathLike)):
        coco_gt = coco_gt_from_file(str(coco_gt))
    ids = sorted(set(image_ids)) if image_ids is not None else sorted(coco_gt.getImgIds())
    if not results:
        return {k: 0.0 for k in METRICS}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes([dict(r) for r in results])
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.params.imgIds = ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # pycocotools reports -1 where a size range has no ground truth; keep it (it is not a score of 0)
    return {k: float(v) for k, v in zip(METRICS, ev.stats[:6])}


def format_table(metrics: Mapping[str, float]) -> str:
    """A Markdown-style table of the six COCO numbers, in percent (as papers report them)."""
    w = 5
    head = "| " + " | ".join(m.rjust(w) for m in METRICS) + " |"
    sep = "|" + "|".join("-" * (w + 2) for _ in METRICS) + "|"
    cells = []
    for m in METRICS:
        v = metrics.get(m, float("nan"))
        cells.append(("n/a" if v < 0 else f"{100 * v:.1f}").rjust(w))
    return "\n".join([head, sep, "| " + " | ".join(cells) + " |"])


@torch.no_grad()
def evaluate_detector(
    model: nn.Module,
    loader: Iterable[Any],
    device: torch.device,
    dataset: Any,
    out_dir: str | None = None,
    autocast: Any = None,
    progress: bool = True,
) -> dict[str, float]:
    """Run ``model`` (a torchvision detector in eval mode) over ``loader`` (this rank's shard), gather to
    rank 0, score with pycocotools; every rank returns the same metrics."""
    was_training = model.training
    model.eval()
    results: list[dict[str, Any]] = []
    seen: list[int] = []
    it = loader
    if progress and dist_utils.is_main():
        from tqdm import tqdm

        it = tqdm(loader, desc="eval", leave=False, dynamic_ncols=True)
    for images, targets in it:
        images = [im.to(device, non_blocking=True) for im in images]
        ctx = autocast() if autocast is not None else contextlib.nullcontext()
        with ctx:
            outputs = model(images)
        for t, o in zip(targets, outputs):
            img_id = int(t["image_id"])
            seen.append(img_id)
            boxes = o["boxes"].float().cpu()
            if boxes.numel() == 0:
                continue
            xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
            cats = [dataset.label_to_cat[int(lbl)] for lbl in o["labels"].cpu().tolist()]
            for b, c, s in zip(xywh, cats, o["scores"].float().cpu().tolist()):
                results.append({"image_id": img_id, "category_id": c, "bbox": [round(v, 3) for v in b],
                                "score": round(s, 5)})
    model.train(was_training)
    all_results = dist_utils.gather_objects(results)
    all_seen = dist_utils.gather_objects(seen)
    metrics: dict[str, float] = {}
    if dist_utils.is_main():
        flat = [r for part in all_results for r in part]
        ids = sorted({i for part in all_seen for i in part})
        metrics = evaluate_coco(coco_gt_from_file(dataset.ann_file), flat, ids)
        print(f"COCO bbox evaluation on {len(ids)} images (%):\n{format_table(metrics)}", flush=True)
        if out_dir:
            os.makedirs(out_dir, exist_ok=True)
            with open(os.path.join(out_dir, "coco_bbox.json"), "w", encoding="utf-8") as f:
                json.dump(metrics, f, indent=2)
            with open(os.path.join(out_dir, "coco_predictions.json"), "w", encoding="utf-8") as f:
                json.dump(flat, f)
    return dist_utils.broadcast_object(metrics)
