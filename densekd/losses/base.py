"""The contract every distillation loss follows.

A loss is an ``nn.Module`` built by :func:`densekd.build_loss` with the channel counts of one
(student, teacher) feature pair, and called as ``loss(student_feat, teacher_feat, context)``.
It returns a dict of named scalar tensors (``loss_*``), already multiplied by the method's own
weights (the paper's α, λ, ...); the Distiller adds them up, times the pair's ``weight``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor, nn


@dataclass
class DistillContext:
    """What a loss may need beyond the two features of its pair.

    boxes:      [B, N, 4] ground-truth boxes (x1, y1, x2, y2) in pixels of the batch tensor the
                networks saw, zero-padded; ``box_valid`` [B, N] marks the real ones. ``labels`` [B, N].
    masks:      [B, H, W] semantic labels (``ignore_index`` where unlabeled) at input resolution.
    image_size: (H, W) of the (padded) batch tensor; features are rescaled from it per level.
    aux:        further captured pairs a method needs besides its features, e.g. SAMKD's
                classification logits: ``{"logits": (student_tensor, teacher_tensor)}``.
    iteration / max_iterations: training progress, for schedules inside a loss.
    """

    boxes: Tensor | None = None
    box_valid: Tensor | None = None
    labels: Tensor | None = None
    masks: Tensor | None = None
    ignore_index: int = 255
    image_size: tuple[int, int] | None = None
    aux: dict[str, Any] = field(default_factory=dict)
    iteration: int = 0
    max_iterations: int | None = None

    @staticmethod
    def from_targets(
        targets: Sequence[dict[str, Tensor]] | None,
        image_size: tuple[int, int] | None,
        device: torch.device | str | None = None,
    ) -> "DistillContext":
        """Pad torchvision-style detection targets (``boxes`` [n_i, 4], ``labels`` [n_i]) into
        batch tensors. Images without boxes are fine (all-False ``box_valid`` row)."""
        if not targets:
            return DistillContext(image_size=image_size)
        b = len(targets)
        n = max(int(t["boxes"].shape[0]) for t in targets)
        dev = device if device is not None else targets[0]["boxes"].device
        boxes = torch.zeros(b, max(n, 1), 4, device=dev)
        labels = torch.zeros(b, max(n, 1), dtype=torch.long, device=dev)
        valid = torch.zeros(b, max(n, 1), dtype=torch.bool, device=dev)
        for i, t in enumerate(targets):  # one copy per image (not per box)
            k = int(t["boxes"].shape[0])
            if k:
                boxes[i, :k] = t["boxes"].to(dev, torch.float32)
                labels[i, :k] = t["labels"].to(dev)
                valid[i, :k] = True
        return DistillContext(boxes=boxes, box_valid=valid, labels=labels, image_size=image_size)

    def boxes_at(self, feat_hw: tuple[int, int]) -> Tensor | None:
        """Boxes rescaled from ``image_size`` to a feature map of size ``feat_hw`` (x by W, y by H)."""
        if self.boxes is None:
            return None
        if self.image_size is None:
            raise ValueError("DistillContext.boxes_at needs image_size to rescale boxes to the feature level")
        sy = feat_hw[0] / self.image_size[0]
        sx = feat_hw[1] / self.image_size[1]
        scale = self.boxes.new_tensor([sx, sy, sx, sy])
        return self.boxes * scale


def _teacher_out_of_inference_mode(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    """Every loss's forward pre-hook: a teacher map made under ``torch.inference_mode`` (how a frozen teacher
    is best run) cannot be saved for backward, so it is cloned into a normal tensor first. The Distiller
    already hands over clones; this covers losses called directly."""
    if torch.is_inference_mode_enabled():
        return None
    if len(args) > 1 and isinstance(args[1], Tensor) and args[1].is_inference():
        return (args[0], args[1].clone(), *args[2:]), kwargs
    t = kwargs.get("teacher_feat")
    if isinstance(t, Tensor) and t.is_inference():
        return args, {**kwargs, "teacher_feat": t.clone()}
    return None


class DistillLoss(nn.Module):
    """Base class: holds the channel counts and builds the student→teacher aligner.

    docs/methods.md, "Notation": align is a 1×1 conv; identity only when C_s = C and the user asks
    (``align="identity"``).
    """

    #: terms that regularise the loss's own modules rather than measure the student–teacher discrepancy
    #: (ACAM-KD's Dice diversity); the KD health guards leave them out of the collapse check (densekd.health)
    regularizer_terms: tuple[str, ...] = ()
    #: the loss compares softmax distributions of its inputs (Hinton KD's over classes, CWD's over positions): on
    #: class scores it must see the scores themselves, and the doctor warns when a learnable aligner sits there
    compares_distributions: bool = False

    def __init__(self, student_channels: int, teacher_channels: int, align: str = "conv1x1") -> None:
        super().__init__()
        if student_channels <= 0 or teacher_channels <= 0:
            raise ValueError(
                f"channel counts must be positive, got student_channels={student_channels}, "
                f"teacher_channels={teacher_channels}"
            )
        self.student_channels = int(student_channels)
        self.teacher_channels = int(teacher_channels)
        self.register_forward_pre_hook(_teacher_out_of_inference_mode, with_kwargs=True)
        if align == "conv1x1":
            self.align: nn.Module = nn.Conv2d(student_channels, teacher_channels, kernel_size=1)
        elif align == "identity":
            if student_channels != teacher_channels:
                raise ValueError(
                    f"align='identity' needs equal channels, got student {student_channels} vs "
                    f"teacher {teacher_channels}; use align='conv1x1'"
                )
            self.align = nn.Identity()
        else:
            raise ValueError(f"align must be 'conv1x1' or 'identity', got {align!r}")

    def check_pair(self, student_feat: Tensor, teacher_feat: Tensor) -> None:
        """One clear error for the shapes this loss cannot take (docs/methods.md, "Notation")."""
        if student_feat.dim() != 4 or teacher_feat.dim() != 4:
            raise ValueError(
                f"{type(self).__name__} expects 4-D [B, C, H, W] features, got student "
                f"{tuple(student_feat.shape)} and teacher {tuple(teacher_feat.shape)}"
            )
        if student_feat.shape[1] != self.student_channels or teacher_feat.shape[1] != self.teacher_channels:
            raise ValueError(
                f"{type(self).__name__} was built for student C={self.student_channels}, teacher "
                f"C={self.teacher_channels}, got student {tuple(student_feat.shape)} and teacher "
                f"{tuple(teacher_feat.shape)}"
            )
        if student_feat.shape[0] != teacher_feat.shape[0] or student_feat.shape[2:] != teacher_feat.shape[2:]:
            raise ValueError(
                f"student and teacher features differ in batch or spatial size: student "
                f"{tuple(student_feat.shape)} vs teacher {tuple(teacher_feat.shape)} (set resize=True on the pair "
                f"to interpolate the student map to the teacher's size)"
            )

    def flops_above_floor(self, student_shape: Sequence[int], teacher_shape: Sequence[int]) -> int:
        """Matrix-product FLOPs (forward + backward, as :func:`densekd.ops.flops.flop_counter` counts them) that one
        call of this module on features of these shapes performs beyond the floor of its exact form, e.g. the
        products a blockwise attention recomputes in backward to keep memory small. 0 (the default): the
        counted FLOPs are the floor. ``densekd bench`` subtracts it from the counted FLOPs."""
        return 0

    def forward(  # pragma: no cover - interface
        self, student_feat: Tensor, teacher_feat: Tensor, context: DistillContext | None = None
    ) -> dict[str, Tensor]:
        raise NotImplementedError
