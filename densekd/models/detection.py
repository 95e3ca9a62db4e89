"""torchvision detectors (RetinaNet, FCOS, Faster R-CNN) with ResNet-18/34/50/101-FPN or MobileNetV3-FPN
backbones, and their canonical distillation points.

Nothing is ever downloaded implicitly: models are built with ``weights=None`` and no backbone weights.
Weights come from a local file (``checkpoint``: a torchvision state dict, a torchvision reference-script
checkpoint ``{"model": ...}`` or a densekd checkpoint ``{"student": ...}``), from a local ImageNet backbone
file (``backbone_checkpoint``), or, explicitly, from a torchvision hub weights name (``weights``, e.g.
``"RetinaNet_ResNet50_FPN_Weights.COCO_V1"``) which torchvision fetches into its cache (offline: one error).

Distillation points (methods.md, "Distillation points"): every FPN level the head consumes —
RetinaNet/FCOS P3–P7 = backbone keys "0", "1", "2", "p6", "p7"; Faster R-CNN P2–P6 = "0", "1", "2",
"3", "pool"; MobileNetV3 Faster R-CNN: "0", "1", "pool". The Distiller spec ``"backbone"`` takes them all.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any, Mapping

import torch
from torch import Tensor, nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.backbone_utils import _mobilenet_extractor, resnet_fpn_backbone
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from ..errors import ConfigError
from .weights import load_strict

ARCHS = ("retinanet", "fcos", "faster_rcnn")
RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")
BACKBONES = RESNETS + ("mobilenet_v3_large",)

#: FPN output keys the head uses, per (arch, backbone family).
FPN_LEVELS: dict[str, tuple[str, ...]] = {
    "retinanet": ("0", "1", "2", "p6", "p7"),  # P3–P7
    "fcos": ("0", "1", "2", "p6", "p7"),  # P3–P7
    "faster_rcnn": ("0", "1", "2", "3", "pool"),  # P2–P6
    "faster_rcnn/mobilenet_v3_large": ("0", "1", "pool"),
}


def distill_levels(arch: str, backbone: str) -> tuple[str, ...]:
    """The FPN keys of ``model.backbone``'s output that the head consumes."""
    return FPN_LEVELS.get(f"{arch}/{backbone}", FPN_LEVELS[arch])


def distill_specs(arch: str, backbone: str) -> list[str]:
    """Explicit Distiller specs, one per level: ``["backbone:0", "backbone:1", ...]``."""
    return [f"backbone:{k}" for k in distill_levels(arch, backbone)]


def _check_choice(value: str, choices: tuple[str, ...], where: str) -> None:
    if value not in choices:
        raise ConfigError(f"{where}: expected one of {', '.join(choices)}, got {value!r}")


def build_detector(
    arch: str,
    backbone: str = "resnet50",
    num_classes: int = 80,
    min_size: int = 800,
    max_size: int = 1333,
    trainable_layers: int = 3,
    norm: str = "frozen_bn",
    checkpoint: str | None = None,
    backbone_checkpoint: str | None = None,
    weights: str | None = None,
    where: str = "model",
) -> nn.Module:
    """A torchvision detector for ``num_classes`` object categories (labels 1..K; torchvision's class 0 is
    background, so the heads have K + 1 outputs).

    ``where`` is the config key used in error messages (e.g. ``"model.teacher"``).
    """
    _check_choice(arch, ARCHS, f"{where}.arch")
    _check_choice(backbone, BACKBONES, f"{where}.backbone")
    _check_choice(norm, ("frozen_bn", "bn"), f"{where}.norm")
    if backbone == "mobilenet_v3_large" and arch != "faster_rcnn":
        raise ConfigError(f"{where}.backbone: mobilenet_v3_large is only available with arch faster_rcnn, got {arch!r}")
    max_layers = 6 if backbone == "mobilenet_v3_large" else 5
    if not 0 <= trainable_layers <= max_layers:
        raise ConfigError(f"{where}.trainable_layers: expected 0..{max_layers}, got {trainable_layers}")
    if num_classes < 1:
        raise ConfigError(f"model.num_classes: expected a positive int, got {num_classes}")
    norm_layer = FrozenBatchNorm2d if norm == "frozen_bn" else nn.BatchNorm2d
    kw: dict[str, Any] = dict(num_classes=num_classes + 1, min_size=min_size, max_size=max_size)

    if backbone == "mobilenet_v3_large":
        from torchvision.models import mobilenet_v3_large

        body = mobilenet_v3_large(weights=None, norm_layer=norm_layer)
        _load_backbone(body, backbone_checkpoint, f"{where}.backbone_checkpoint")
        fpn = _mobilenet_extractor(body, True, trainable_layers)
        from torchvision.models.detection.anchor_utils import AnchorGenerator

        anchor_sizes = ((32, 64, 128, 256, 512),) * 3
        aspect_ratios = ((0.5, 1.0, 2.0),) * len(anchor_sizes)
        model: nn.Module = FasterRCNN(
            fpn, rpn_anchor_generator=AnchorGenerator(anchor_sizes, aspect_ratios), rpn_score_thresh=0.05, **kw
        )
    else:
        if arch == "faster_rcnn":
            returned, extra = [1, 2, 3, 4], LastLevelMaxPool()
        else:  # RetinaNet / FCOS: P3–P5 from C3–C5, P6/P7 from P5 (torchvision's v1 models)
            returned, extra = [2, 3, 4], LastLevelP6P7(256, 256)
        fpn = resnet_fpn_backbone(
            backbone_name=backbone,
            weights=None,
            norm_layer=norm_layer,
            trainable_layers=5,  # freeze after loading the backbone weights (below)
            returned_layers=returned,
            extra_blocks=extra,
        )
        _load_backbone(fpn.body, backbone_checkpoint, f"{where}.backbone_checkpoint")
        _freeze_resnet(fpn.body, trainable_layers)
        cls = {"retinanet": RetinaNet, "fcos": FCOS, "faster_rcnn": FasterRCNN}[arch]
        model = cls(fpn, **kw)

    if weights:
        load_hub_weights(model, weights, f"{where}.weights")
    if checkpoint:
        load_detector_checkpoint(model, checkpoint, f"{where}.checkpoint")
    return model


def _freeze_resnet(body: nn.Module, trainable_layers: int) -> None:
    """torchvision's rule: train the last ``trainable_layers`` of layer4, layer3, layer2, layer1, conv1."""
    layers = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
    if trainable_layers == 5:
        layers.append("bn1")
    for name, p in body.named_parameters():
        if all(not name.startswith(layer) for layer in layers):
            p.requires_grad_(False)


def _load_backbone(body: nn.Module, path: str | None, where: str) -> None:
    if not path:
        return
    sd = _read_state_dict(path, where)
    sd = {k: v for k, v in sd.items() if not k.startswith("fc.") and not k.startswith("classifier.")}
    own = body.state_dict()
    missing = [k for k in own if k not in sd and "num_batches_tracked" not in k]
    if missing:
        raise ConfigError(f"{where}: {path!r} is not a {type(body).__name__} state dict (no {missing[0]!r})")
    _load_checked(body, {k: v for k, v in sd.items() if k in own}, path, where)


def _read_state_dict(path: str, where: str) -> dict[str, Tensor]:
    if not os.path.isfile(path):
        raise ConfigError(f"{where}: no such file {path!r}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - one line whatever went wrong
        raise ConfigError(f"{where}: cannot read {path!r} as a PyTorch checkpoint: {str(e).splitlines()[0]}") from None
    if isinstance(obj, Mapping):
        for key in ("student", "model", "state_dict"):  # densekd / torchvision references / generic
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ConfigError(
            f"{where}: {path!r} holds neither a state dict nor a checkpoint with a 'student'/'model' state dict"
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _load_checked(model: nn.Module, sd: Mapping[str, Tensor], path: str, where: str) -> None:
    load_strict(model, sd, f"{where}: {path!r} does not fit the configured {type(model).__name__}",
                hint="; check arch, backbone and num_classes")


def load_detector_checkpoint(model: nn.Module, path: str, where: str = "checkpoint") -> None:
    """Load a local state dict / torchvision reference checkpoint / densekd checkpoint into ``model``."""
    _load_checked(model, _read_state_dict(path, where), path, where)


def load_hub_weights(model: nn.Module, name: str, where: str = "weights") -> None:
    """Load torchvision hub weights by enum name (``"RetinaNet_ResNet50_FPN_Weights.COCO_V1"``): torchvision
    reads them from its cache ($TORCH_HOME/hub/checkpoints) or downloads them; offline → one clear error."""
    from torchvision.models import get_weight

    try:
        w = get_weight(name)
    except (ValueError, KeyError, AttributeError):
        raise ConfigError(
            f"{where}: {name!r} is not a torchvision weights name (expected e.g. "
            f"'RetinaNet_ResNet50_FPN_Weights.COCO_V1')"
        ) from None
    try:
        sd = w.get_state_dict(progress=False, check_hash=False)
    except Exception as e:  # noqa: BLE001 - URLError, socket errors, HTTP errors...
        cache = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(w.url))
        raise ConfigError(
            f"{where}: cannot get {name!r}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
            f"(offline? place the file at {cache} or give a local file as checkpoint:)"
        ) from None
    _load_checked(model, sd, name, where)


def inherit_neck_head(student: nn.Module, teacher: nn.Module) -> tuple[int, int]:
    """The paper's "inheriting" strategy: copy the teacher's neck (FPN) and head tensors into the student
    wherever name and shape match. Returns (copied, total) counts over the student's neck/head tensors."""
    prefixes = ("backbone.fpn.", "head.", "rpn.", "roi_heads.")
    s_sd, t_sd = student.state_dict(), teacher.state_dict()
    copied, total = 0, 0
    with torch.no_grad():
        for k, v in s_sd.items():
            if not k.startswith(prefixes):
                continue
            total += 1
            t = t_sd.get(k)
            if t is not None and t.shape == v.shape:
                v.copy_(t)
                copied += 1
    return copied, total


def count_parameters(model: nn.Module) -> "OrderedDict[str, int]":
    out: "OrderedDict[str, int]" = OrderedDict()
    out["total"] = sum(p.numel() for p in model.parameters())
    out["trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return out
