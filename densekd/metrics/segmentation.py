"""Confusion-matrix mIoU and pixel accuracy for semantic segmentation.

Conventions (documented so numbers are comparable with CIRKD/MasKD/mmseg):

- Pixels whose ground truth is ``ignore_index`` (255) are skipped.
- The confusion matrix ``cm[gt, pred]`` is accumulated over the whole split at each image's full
  resolution (no resize), then mIoU is computed once from the summed matrix (not averaged per image).
- IoU_k = TP_k / (TP_k + FP_k + FN_k). A class that is **absent from both the ground truth and the
  predictions** (TP + FP + FN = 0) has an undefined IoU: it is reported as NaN and **excluded from the mean**.
  A class present in the predictions but not in the ground truth has IoU 0 and counts.
- pixel_acc = trace(cm) / sum(cm) over non-ignored pixels.
- Under ``torch.distributed`` (initialised), :meth:`ConfusionMatrix.compute` first sums the matrices of
  every rank with ``all_reduce``, so every rank returns the metric of the whole split. Shard the data without
  padding (the engine's ``ShardSampler``): images duplicated by a padded ``DistributedSampler`` would be
  counted twice.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.distributed as dist
from torch import Tensor


class ConfusionMatrix:
    """Accumulates a ``[K, K]`` int64 confusion matrix (rows: ground truth, columns: prediction)."""

    def __init__(self, num_classes: int, ignore_index: int = 255, device: torch.device | str = "cpu") -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be ≥ 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def reset(self) -> None:
        self.mat.zero_()

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """``pred``: class ids ``[B, H, W]`` or logits ``[B, K, H, W]`` (argmax over K); ``target``: ``[B, H, W]``."""
        if pred.dim() == target.dim() + 1:
            pred = pred.argmax(dim=1)
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} does not match target shape {tuple(target.shape)}")
        k = self.num_classes
        target = target.to(self.mat.device).long()
        pred = pred.to(self.mat.device).long()
        keep = target != self.ignore_index
        t, p = target[keep], pred[keep]
        bad = (t < 0) | (t >= k)
        if bad.any():
            raise ValueError(
                f"target labels {sorted(torch.unique(t[bad]).tolist())[:10]} are outside [0, {k}) and are not the "
                f"ignore index {self.ignore_index}"
            )
        self.mat += torch.bincount(t * k + p, minlength=k * k).reshape(k, k)

    def reduced(self) -> Tensor:
        """The matrix summed over every rank (itself when torch.distributed is not initialised)."""
        mat = self.mat.clone()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(mat, op=dist.ReduceOp.SUM)
        return mat

    def compute(self, class_names: Sequence[str] | None = None) -> dict[str, float]:
        """``{"mIoU", "pixel_acc", "IoU/<class>" ...}`` (fractions in [0, 1]; NaN for absent classes)."""
        return metrics_from_confusion(self.reduced(), class_names)


def metrics_from_confusion(mat: Tensor, class_names: Sequence[str] | None = None) -> dict[str, float]:
    """mIoU, pixel accuracy and per-class IoU from a confusion matrix ``cm[gt, pred]``."""
    m = mat.double().cpu()
    k = m.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names given for {k} classes")
    tp = m.diag()
    union = m.sum(0) + m.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    present = union > 0
    total = m.sum()
    out: dict[str, float] = {
        "mIoU": float(iou[present].mean()) if present.any() else float("nan"),
        "pixel_acc": float(tp.sum() / total) if total > 0 else float("nan"),
    }
    for name, v in zip(names, iou.tolist()):
        out[f"IoU/{name}"] = v
    return out


def format_iou_table(metrics: dict[str, float]) -> str:
    """A Markdown table of the per-class IoU (in %) followed by mIoU and pixel accuracy."""
    rows = ["| class | IoU (%) |", "|---|---|"]
    for key, v in metrics.items():
        if key.startswith("IoU/"):
            rows.append(f"| {key[4:]} | {'n/a' if math.isnan(v) else f'{100 * v:.2f}'} |")
    rows.append(f"| **mIoU** | {100 * metrics['mIoU']:.2f} |")
    rows.append(f"| pixel acc | {100 * metrics['pixel_acc']:.2f} |")
    return "\n".join(rows)
