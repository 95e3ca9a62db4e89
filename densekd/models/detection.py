"""torchvision detectors (RetinaNet, FCOS, Faster R-CNN) with ResNet-18/34/50/101-FPN or MobileNetV3-FPN
backbones, and their canonical distillation points.

Sizes: ``fpn_channels`` sets the FPN width, which is also the width of every head (torchvision's default and
the paper's: 256); ``head_convs`` the number of 3×3 convolutions in each RetinaNet/FCOS head tower (4). The
FCOS head's GroupNorm keeps torchvision's 32 groups at widths that are multiples of 32 from 64 on, else
:func:`gn_groups` picks a divisor that leaves ≥ 2 channels per group, so any width works. ``min_size = max_size = None`` keeps every image at its own size
(no resize; the usual 800/1333 would upscale a 64-pixel image twelvefold). :data:`PRESETS` ``"cpu"`` gathers
the settings of a detector a laptop trains from scratch in minutes (benchmarks/detection_cpu_preset.py).

Nothing is ever downloaded implicitly: models are built with ``weights=None`` and no backbone weights.
Weights come from a local file (``checkpoint``: a torchvision state dict, a torchvision reference-script
checkpoint ``{"model": ...}`` or a densekd checkpoint ``{"student": ...}``), from a local ImageNet backbone
file (``backbone_checkpoint``), or, explicitly, from a torchvision hub weights name (``weights``, e.g.
``"RetinaNet_ResNet50_FPN_Weights.COCO_V1"``) which torchvision fetches into its cache (offline: one error).

Distillation points (docs/methods.md, "Distillation points"): every FPN level the head consumes —
RetinaNet/FCOS P3–P7 = backbone keys "0", "1", "2", "p6", "p7"; Faster R-CNN P2–P6 = "0", "1", "2",
"3", "pool"; MobileNetV3 Faster R-CNN: "0", "1", "pool". The Distiller spec ``"backbone"`` takes them all.
"""
from __future__ import annotations

import math
import os
from collections import OrderedDict
from functools import partial
from typing import Any, Mapping

import torch
from torch import Tensor, nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.backbone_utils import BackboneWithFPN, resnet_fpn_backbone
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7

from ..errors import ConfigError
from .weights import load_strict

ARCHS = ("retinanet", "fcos", "faster_rcnn")
RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")
MOBILENETS = ("mobilenet_v3_large", "mobilenet_v3_small")
BACKBONES = RESNETS + MOBILENETS

#: Named presets of per-detector and model-level keys; a config's own keys win over them (like an
#: MMDetection ``_base_``). "cpu": a small detector trained from scratch on CPU — ResNet-18, 64-channel FPN
#: and heads, batch-statistics BatchNorm with every layer trainable, images at their own size.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "cpu": {
        "model": {"min_size": None, "max_size": None},
        "detector": {"backbone": "resnet18", "norm": "bn", "trainable_layers": 5, "fpn_channels": 64,
                     "head_convs": 4},
    },
}

#: FPN output keys the head uses, per (arch, backbone family).
FPN_LEVELS: dict[str, tuple[str, ...]] = {
    "retinanet": ("0", "1", "2", "p6", "p7"),  # P3–P7
    "fcos": ("0", "1", "2", "p6", "p7"),  # P3–P7
    "faster_rcnn": ("0", "1", "2", "3", "pool"),  # P2–P6
    "faster_rcnn/mobilenet_v3_large": ("0", "1", "pool"),
    "faster_rcnn/mobilenet_v3_small": ("0", "1", "pool"),
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
    min_size: int | None = 800,
    max_size: int | None = 1333,
    trainable_layers: int = 3,
    norm: str = "frozen_bn",
    checkpoint: str | None = None,
    backbone_checkpoint: str | None = None,
    weights: str | None = None,
    where: str = "model",
    fpn_channels: int = 256,
    head_convs: int = 4,
    width_mult: float = 1.0,
) -> nn.Module:
    """A torchvision detector for ``num_classes`` object categories (labels 1..K; torchvision's class 0 is
    background, so the heads have K + 1 outputs).

    ``min_size``/``max_size``: torchvision's resize (shorter side / cap on the longer side); both ``None``:
    images keep their own size. ``fpn_channels``: width of the FPN and the heads; ``head_convs``: 3×3
    convolutions per RetinaNet/FCOS head tower. ``width_mult``: MobileNetV3's channel multiplier (torchvision's
    ``width_mult``; e.g. 0.5 halves every backbone stage; MobileNets only). ``where`` is the config key used in
    error messages (e.g. ``"model.teacher"``).
    """
    _check_choice(arch, ARCHS, f"{where}.arch")
    _check_choice(backbone, BACKBONES, f"{where}.backbone")
    _check_choice(norm, ("frozen_bn", "bn"), f"{where}.norm")
    max_layers = 6 if backbone in MOBILENETS else 5
    if not 0 <= trainable_layers <= max_layers:
        raise ConfigError(f"{where}.trainable_layers: expected 0..{max_layers}, got {trainable_layers}")
    if num_classes < 1:
        raise ConfigError(f"model.num_classes: expected a positive int, got {num_classes}")
    check_sizes(min_size, max_size, "model")
    if not isinstance(fpn_channels, int) or fpn_channels < 1:
        raise ConfigError(f"{where}.fpn_channels: expected a positive int, got {fpn_channels!r}")
    if not isinstance(head_convs, int) or head_convs < 0:
        raise ConfigError(f"{where}.head_convs: expected an int >= 0, got {head_convs!r}")
    if not isinstance(width_mult, (int, float)) or isinstance(width_mult, bool) or not width_mult > 0:
        raise ConfigError(f"{where}.width_mult: expected a positive number, got {width_mult!r}")
    if width_mult != 1.0 and backbone not in MOBILENETS:
        raise ConfigError(f"{where}.width_mult: only MobileNetV3 backbones take a width multiplier "
                          f"({', '.join(MOBILENETS)}), got backbone {backbone!r} with width_mult {width_mult}")
    if arch == "faster_rcnn" and head_convs != 4:
        raise ConfigError(f"{where}.head_convs: Faster R-CNN has no convolution tower (RPN: one conv, box head: "
                          f"two fully connected layers); leave it at 4, got {head_convs}")
    norm_layer = FrozenBatchNorm2d if norm == "frozen_bn" else nn.BatchNorm2d
    kw: dict[str, Any] = dict(num_classes=num_classes + 1, min_size=min_size or 1, max_size=max_size or 1)
    C = fpn_channels

    if backbone in MOBILENETS:
        from torchvision.models import mobilenet_v3_large, mobilenet_v3_small

        body = {"mobilenet_v3_large": mobilenet_v3_large, "mobilenet_v3_small": mobilenet_v3_small}[backbone](
            weights=None, norm_layer=norm_layer, width_mult=float(width_mult))
        _load_backbone(body, backbone_checkpoint, f"{where}.backbone_checkpoint")
        fpn = _mobilenet_fpn(body, arch, trainable_layers, C)
    else:
        if arch == "faster_rcnn":
            returned, extra = [1, 2, 3, 4], LastLevelMaxPool()
        else:  # RetinaNet / FCOS: P3–P5 from C3–C5, P6/P7 from P5 (torchvision's v1 models)
            returned, extra = [2, 3, 4], LastLevelP6P7(C, C)
        fpn = resnet_fpn_backbone(
            backbone_name=backbone,
            weights=None,
            norm_layer=norm_layer,
            trainable_layers=5,  # freeze after loading the backbone weights (below)
            returned_layers=returned,
            extra_blocks=extra,
        )
        if C != 256:  # resnet_fpn_backbone fixes 256 channels: rebuild the FPN at the asked width
            fpn.fpn = FeaturePyramidNetwork(_fpn_in_channels(fpn), C, extra_blocks=extra)
            fpn.out_channels = C
        _load_backbone(fpn.body, backbone_checkpoint, f"{where}.backbone_checkpoint")
        _freeze_resnet(fpn.body, trainable_layers)
    if arch == "faster_rcnn":
        anchor = None
        if backbone in MOBILENETS:  # torchvision's fasterrcnn_mobilenet_v3_large_fpn anchors
            from torchvision.models.detection.anchor_utils import AnchorGenerator

            sizes = ((32, 64, 128, 256, 512),) * 3
            anchor = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
            kw["rpn_score_thresh"] = 0.05
        model: nn.Module = FasterRCNN(fpn, rpn_anchor_generator=anchor, **kw)
    elif arch == "retinanet":
        from torchvision.models.detection.retinanet import RetinaNetHead, _default_anchorgen

        anchors = _default_anchorgen()
        head = RetinaNetHead(C, anchors.num_anchors_per_location()[0], num_classes + 1)
        for branch in (head.classification_head, head.regression_head):
            branch.conv = branch.conv[:head_convs]
        model = RetinaNet(fpn, anchor_generator=anchors, head=head, **kw)
    else:
        from torchvision.models.detection.fcos import FCOSClassificationHead, FCOSHead, FCOSRegressionHead

        gn = partial(nn.GroupNorm, gn_groups(C))
        head = FCOSHead(C, 1, num_classes + 1, num_convs=0)
        head.classification_head = FCOSClassificationHead(C, 1, num_classes + 1, head_convs, norm_layer=gn)
        head.regression_head = FCOSRegressionHead(C, 1, head_convs, norm_layer=gn)
        model = FCOS(fpn, head=head, **kw)
    if min_size is None:
        model.transform = KeepSizeTransform.like(model.transform)

    if weights:
        load_hub_weights(model, weights, f"{where}.weights")
    if checkpoint:
        load_detector_checkpoint(model, checkpoint, f"{where}.checkpoint")
    return model


def gn_groups(channels: int) -> int:
    """GroupNorm groups of an FCOS head of width ``channels``: torchvision's 32 when the width is a multiple of 32
    of at least 64, else the largest power-of-two divisor up to 32 that leaves ≥ 2 channels per group (a 1×1 P7
    map of a small image must still give each group more than one value to normalise)."""
    if channels % 32 == 0 and channels >= 64:
        return 32
    g = math.gcd(channels, 32)
    while g > 1 and channels // g < 2:
        g //= 2
    return g


def check_sizes(min_size: int | None, max_size: int | None, where: str) -> None:
    """Both ``None`` (images keep their size) or ``0 < min_size <= max_size``."""
    if min_size is None and max_size is None:
        return
    if min_size is None or max_size is None or min_size < 1 or max_size < min_size:
        raise ConfigError(f"{where}.min_size/max_size: expected 0 < min_size <= max_size, or both null (images "
                          f"keep their own size), got {min_size}/{max_size}")


class KeepSizeTransform(GeneralizedRCNNTransform):
    """torchvision's detector transform (normalise, batch with padding to a multiple of 32) without the
    resize: every image, and its boxes, stays at its own size (model ``min_size = max_size = None``)."""

    @classmethod
    def like(cls, t: GeneralizedRCNNTransform) -> "KeepSizeTransform":
        return cls(1, 1, t.image_mean, t.image_std, size_divisible=t.size_divisible)

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None):
        return image, target

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(images keep their own size, Normalize(mean={self.image_mean}, "
                f"std={self.image_std}))")


def _fpn_in_channels(fpn: nn.Module) -> list[int]:
    return [blk[0].in_channels for blk in fpn.fpn.inner_blocks]


def _mobilenet_fpn(body: nn.Module, arch: str, trainable_layers: int, channels: int) -> nn.Module:
    """MobileNetV3 features + FPN. RetinaNet/FCOS: the last block at strides 8, 16 and 32 → P3–P5, then
    P6/P7 (the ResNet models' levels). Faster R-CNN: torchvision's fasterrcnn_mobilenet_v3_*_fpn layout
    (the strided last stage and the last layer, plus a max-pooled level)."""
    feats = body.features
    stage_indices = [0] + [i for i, b in enumerate(feats) if getattr(b, "_is_cn", False)] + [len(feats) - 1]
    num_stages = len(stage_indices)
    freeze_before = len(feats) if trainable_layers == 0 else stage_indices[num_stages - trainable_layers]
    for b in feats[:freeze_before]:
        for p in b.parameters():
            p.requires_grad_(False)
    if arch == "faster_rcnn":
        idx = [stage_indices[num_stages - 2], stage_indices[num_stages - 1]]
        extra: nn.Module = LastLevelMaxPool()
    else:
        strided = [i for i, b in enumerate(feats) if getattr(b, "_is_cn", False)]  # stride 4, 8, 16, 32 (+ stem 2)
        # last block before each of the next two downsamplings, and the last layer (stride 32)
        idx = [strided[-2] - 1, strided[-1] - 1, len(feats) - 1]
        extra = LastLevelP6P7(channels, channels)
    in_channels = [_out_channels(feats[i]) for i in idx]
    return BackboneWithFPN(feats, {str(i): str(k) for k, i in enumerate(idx)}, in_channels, channels,
                           extra_blocks=extra)


def _out_channels(block: nn.Module) -> int:
    if hasattr(block, "out_channels"):
        return int(block.out_channels)
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    return int(convs[-1].out_channels)


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
    head = ("fc.", "classifier.")  # an ImageNet classifier's head: not part of the detector's backbone
    sd = {k: v for k, v in sd.items() if not k.startswith(head)}
    own = {k: v for k, v in body.state_dict().items() if not k.startswith(head)}
    missing = [k for k in own if k not in sd and "num_batches_tracked" not in k]
    if missing:
        raise ConfigError(f"{where}: {path!r} is not a {type(body).__name__} state dict (no {missing[0]!r})")
    keep = {k: v for k, v in sd.items() if k in own}
    wrong = [k for k in own if k in keep and tuple(own[k].shape) != tuple(keep[k].shape)]
    if wrong:  # another width or depth of the same family: one line naming the first mismatched key
        k = wrong[0]
        raise ConfigError(f"{where}: {path!r} is a backbone of another architecture: {k} is {tuple(keep[k].shape)} in "
                          f"the file but {tuple(own[k].shape)} in the configured {type(body).__name__} "
                          f"({len(wrong)} mismatched tensor(s); check backbone and width_mult)")
    body.load_state_dict({**body.state_dict(), **keep}, strict=True)


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
