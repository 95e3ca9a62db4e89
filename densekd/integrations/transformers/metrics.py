"""Metrics of Hugging Face dense-prediction outputs with densekd's own scorers (the numbers the engine reports).

- Semantic segmentation: mIoU and pixel accuracy (:class:`densekd.metrics.segmentation.ConfusionMatrix`) of the
  logits upsampled (bilinear) to the label maps, as the model's own loss sees them. :class:`SegmentationMetrics`
  is a ``compute_metrics`` for the Trainer's ``batch_eval_metrics=True`` mode (a confusion matrix accumulated batch
  by batch, so evaluation never gathers every logit map).
- Object detection (sigmoid-scored DETR family: RT-DETR, D-FINE): COCO AP with pycocotools
  (:func:`densekd.engine.coco_eval.evaluate_coco`) of the top-100 (query, class) scores per image against the
  labels, boxes in pixels of the batch tensor.
"""
from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...engine.coco_eval import evaluate_coco
from ...metrics.segmentation import ConfusionMatrix


def _logits(out: Any) -> Tensor:
    if isinstance(out, Mapping):
        return out["logits"]
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


class SegmentationMetrics:
    """``compute_metrics(eval_pred, compute_result)`` for ``TrainingArguments(batch_eval_metrics=True)``: mIoU and
    pixel accuracy in [0, 1] (keys ``mIoU``, ``pixel_acc``)."""

    def __init__(self, num_labels: int, ignore_index: int = 255) -> None:
        self.cm = ConfusionMatrix(num_labels, ignore_index)

    def update(self, logits: Tensor, labels: Tensor) -> None:
        logits = logits.float()
        if logits.shape[-2:] != labels.shape[-2:]:
            logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        self.cm.update(logits.argmax(dim=1).cpu(), labels.cpu())

    def __call__(self, eval_pred: Any, compute_result: bool = True) -> dict[str, float]:
        preds = eval_pred.predictions
        logits = preds[0] if isinstance(preds, (tuple, list)) else preds
        self.update(torch.as_tensor(logits), torch.as_tensor(eval_pred.label_ids))
        if not compute_result:
            return {}
        m = self.cm.compute()
        self.cm.reset()
        return {"mIoU": m["mIoU"], "pixel_acc": m["pixel_acc"]}


@torch.no_grad()
def segmentation_metric(model: nn.Module, batches: Iterable[Mapping[str, Any]], main_input: str = "pixel_values",
                        autocast: Any = contextlib.nullcontext) -> dict[str, float]:
    """mIoU and pixel accuracy of ``model`` (eval mode) on collated ``batches`` (dicts with the main input and
    ``labels``)."""
    m = SegmentationMetrics(int(model.config.num_labels), int(getattr(model.config, "semantic_loss_ignore_index", 255)))
    for b in batches:
        with autocast():
            out = model(**{main_input: b[main_input]})
        m.update(_logits(out), b["labels"])
    r = m.cm.compute()
    return {"mIoU": r["mIoU"], "pixel_acc": r["pixel_acc"]}


def _coco_gt(images: Sequence[tuple[int, int]], labels: Sequence[Mapping[str, Tensor]], num_labels: int) -> Any:
    from pycocotools.coco import COCO

    anns, aid = [], 1
    for img_id, ((h, w), t) in enumerate(zip(images, labels)):
        for c, b in zip(t["class_labels"].tolist(), t["boxes"].float().cpu().tolist()):
            cx, cy, bw, bh = b[0] * w, b[1] * h, b[2] * w, b[3] * h
            anns.append({"id": aid, "image_id": img_id, "category_id": int(c), "bbox": [cx - bw / 2, cy - bh / 2, bw, bh],
                         "area": bw * bh, "iscrowd": 0})
            aid += 1
    gt = COCO()
    gt.dataset = {"images": [{"id": i, "height": h, "width": w} for i, (h, w) in enumerate(images)],
                  "annotations": anns, "categories": [{"id": k, "name": str(k)} for k in range(num_labels)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


@torch.no_grad()
def detection_metric(model: nn.Module, batches: Iterable[Mapping[str, Any]], main_input: str = "pixel_values",
                     autocast: Any = contextlib.nullcontext, top_k: int = 100) -> dict[str, float]:
    """COCO AP / AP50 (0–1) of a sigmoid-scored DETR-family ``model`` on collated ``batches``."""
    sizes: list[tuple[int, int]] = []
    labels: list[Mapping[str, Tensor]] = []
    results: list[dict[str, Any]] = []
    for b in batches:
        x = b[main_input]
        h, w = int(x.shape[-2]), int(x.shape[-1])
        with autocast():
            out = model(**{main_input: x})
        scores = out["logits"].float().sigmoid()  # [B, Q, K]
        boxes = out["pred_boxes"].float()  # [B, Q, 4] normalised cx, cy, w, h
        k = scores.shape[-1]
        for i in range(scores.shape[0]):
            img_id = len(sizes)
            sizes.append((h, w))
            labels.append(b["labels"][i])
            s, idx = scores[i].flatten().topk(min(top_k, scores[i].numel()))
            q, c = idx // k, idx % k
            for sc, qi, ci in zip(s.tolist(), q.tolist(), c.tolist()):
                cx, cy, bw, bh = boxes[i, qi].tolist()
                results.append({"image_id": img_id, "category_id": int(ci), "score": float(sc),
                                "bbox": [(cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h]})
    gt = _coco_gt(sizes, labels, int(model.config.num_labels))
    m = evaluate_coco(gt, results, range(len(sizes)))
    return {"AP": m["AP"], "AP50": m["AP50"]}
