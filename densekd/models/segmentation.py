"""Semantic segmentation models for distillation: DeepLabV3 and PSPNet at output stride 8.

Every model is a :class:`SegmentationModel` built from torchvision parts (no new dependency, ``weights=None``
always — nothing is downloaded) with the CIRKD/MasKD protocol's dilated backbones:

=================  ==========================================================================================
arch / backbone    construction
=================  ==========================================================================================
deeplabv3 / resnet18, resnet50, resnet101   torchvision ResNet; layer3 dilation 2, layer4 dilation 4 (stride 1).
                   ResNet-50/101 use torchvision's ``replace_stride_with_dilation``; ResNet-18's BasicBlocks
                   are dilated by editing their conv strides/dilations (torchvision refuses dilation there).
deeplabv3 / mobilenetv2                     torchvision MobileNetV2 ``features[:18]`` (320 channels, the last
                   1×1 1280-channel conv is dropped as in CIRKD); the stride-2 blocks 7 and 14 get stride 1,
                   blocks 7–13 dilation 2, 14–17 dilation 4.
pspnet / resnet18 (any resnet)              dilated ResNet + pyramid pooling module (bins 1, 2, 3, 6).
=================  ==========================================================================================

Forward: ``model(x)`` returns the logits ``[B, K, H, W]`` bilinearly upsampled to the input size (a plain tensor).

Named modules (the distillation points, docs/methods.md, "Distillation points"):

- ``backbone``   — the dilated trunk, output ``[B, C_b, H/8, W/8]``.
- ``decoder``    — ASPP (DeepLabV3) or PPM (PSPNet) + 3×3 conv-BN-ReLU: the decoder feature
                   ``[B, D, H/8, W/8]`` (D = ``decoder_channels``: 256 for DeepLabV3, 512 for PSPNet by default).
- ``classifier`` — the final 1×1 conv: the logits *before* upsampling ``[B, K, H/8, W/8]``.

A torchvision ``deeplabv3_resnet50/101`` state dict loads into the matching model: its keys ``classifier.0-2``
are renamed to ``decoder.0-2`` and ``classifier.4`` to ``classifier`` (``aux_classifier`` is dropped), see
:func:`load_segmentation_checkpoint`.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import mobilenet_v2, resnet18, resnet50, resnet101
from torchvision.models.resnet import BasicBlock
from torchvision.models.segmentation.deeplabv3 import ASPP

from ..errors import ConfigError
from .weights import load_strict

ARCHS = ("deeplabv3", "pspnet", "tiny")
BACKBONES = ("resnet18", "resnet50", "resnet101", "mobilenetv2")
_DEFAULT_DECODER_CHANNELS = {"deeplabv3": 256, "pspnet": 512}


# --------------------------------------------------------------------------- backbones
class ResNetTrunk(nn.Module):
    """A torchvision ResNet without ``avgpool``/``fc``; attribute names match torchvision's state dict."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        last = self.layer4[-1]
        self.out_channels = (last.bn3 if hasattr(last, "bn3") else last.bn2).num_features

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def _dilate_basic_layer(layer: nn.Sequential, dilation: int, previous_dilation: int) -> None:
    """Turn a stride-2 BasicBlock stage into a stride-1 dilated one (torchvision's convention: the first
    block's first conv keeps the previous dilation, every other 3×3 conv uses ``dilation``)."""
    for i, block in enumerate(layer):
        assert isinstance(block, BasicBlock)
        d1 = previous_dilation if i == 0 else dilation
        block.conv1.stride, block.conv1.dilation, block.conv1.padding = (1, 1), (d1, d1), (d1, d1)
        block.conv2.stride, block.conv2.dilation, block.conv2.padding = (1, 1), (dilation, dilation), (dilation, dilation)
        block.stride = 1
        if block.downsample is not None:
            block.downsample[0].stride = (1, 1)


def resnet_backbone(name: str, layers: Sequence[int] | None = None) -> ResNetTrunk:
    """Dilated (output stride 8) ResNet-18/50/101 trunk. ``layers`` overrides the block counts per stage
    (e.g. ``[1, 1, 1, 1]`` for a tiny test model)."""
    from torchvision.models.resnet import Bottleneck, ResNet

    if name == "resnet18":
        net = ResNet(BasicBlock, list(layers)) if layers else resnet18(weights=None)
        _dilate_basic_layer(net.layer3, 2, 1)
        _dilate_basic_layer(net.layer4, 4, 2)
    elif name in ("resnet50", "resnet101"):
        if layers:
            net = ResNet(Bottleneck, list(layers), replace_stride_with_dilation=[False, True, True])
        else:
            builder = resnet50 if name == "resnet50" else resnet101
            net = builder(weights=None, replace_stride_with_dilation=[False, True, True])
    else:
        raise ConfigError(f"unknown ResNet backbone {name!r}; expected one of resnet18, resnet50, resnet101")
    return ResNetTrunk(net)


def mobilenetv2_backbone(width_mult: float = 1.0) -> nn.Sequential:
    """Dilated (output stride 8) MobileNetV2 ``features[:18]``; ``out_channels`` attribute set."""
    feats = mobilenet_v2(weights=None, width_mult=width_mult).features[:18]
    for idx in range(7, 18):
        dilation = 2 if idx < 14 else 4
        block = feats[idx]
        dw = block.conv[1][0] if len(block.conv) == 4 else block.conv[0][0]  # depthwise 3×3 conv
        assert dw.groups == dw.in_channels and dw.kernel_size == (3, 3)
        dw.stride, dw.dilation, dw.padding = (1, 1), (dilation, dilation), (dilation, dilation)
        block.stride = 1
    feats.out_channels = feats[17].out_channels  # type: ignore[attr-defined]
    return feats


# --------------------------------------------------------------------------- decoders
class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling module: adaptive average pools at ``bins``, 1×1 conv to C/len(bins),
    upsample, concatenate with the input (output 2C channels)."""

    def __init__(self, in_channels: int, bins: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        red = in_channels // len(bins)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), nn.Conv2d(in_channels, red, 1, bias=False), nn.BatchNorm2d(red), nn.ReLU(inplace=True))
            for b in bins
        )
        self.out_channels = in_channels + red * len(bins)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        outs = [x] + [F.interpolate(s(x), size=size, mode="bilinear", align_corners=False) for s in self.stages]
        return torch.cat(outs, dim=1)


class SegmentationModel(nn.Module):
    """``backbone`` → ``decoder`` → ``classifier``; ``forward`` upsamples the logits to the input size."""

    def __init__(self, backbone: nn.Module, decoder: nn.Module, classifier: nn.Module, arch: str = "", backbone_name: str = "") -> None:
        super().__init__()
        self.backbone = backbone
        self.decoder = decoder
        self.classifier = classifier
        self.arch = arch
        self.backbone_name = backbone_name

    @property
    def num_classes(self) -> int:
        return self.classifier.out_channels

    def forward(self, x: Tensor) -> Tensor:
        logits = self.classifier(self.decoder(self.backbone(x)))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def build_segmentation_model(
    arch: str,
    backbone: str,
    num_classes: int,
    *,
    decoder_channels: int | None = None,
    width_mult: float = 1.0,
    layers: Sequence[int] | None = None,
    aspp_rates: Sequence[int] = (12, 24, 36),
    ppm_bins: Sequence[int] = (1, 2, 3, 6),
    dropout: float = 0.1,
    width: int = 16,
) -> nn.Module:
    """Build a randomly initialised segmenter (``weights=None``; load weights with
    :func:`load_segmentation_checkpoint`).

    Args:
        arch: "deeplabv3" or "pspnet".
        backbone: "resnet18", "resnet50", "resnet101" or "mobilenetv2".
        num_classes: K, the classifier's output channels.
        decoder_channels: D, the decoder feature's width (default 256 DeepLabV3, 512 PSPNet); small for tests.
        width_mult: MobileNetV2 width multiplier (tiny test variants).
        layers: ResNet block counts per stage, e.g. ``[1, 1, 1, 1]`` (tiny test variants).
        aspp_rates: ASPP atrous rates (12, 24, 36 at output stride 8).
        ppm_bins: PSPNet pyramid bins.
        dropout: PSPNet's dropout before the classifier (DeepLabV3's ASPP has its own 0.5).
        width: ``arch="tiny"`` only: the :class:`TinySegNet` width (its backbone is its own; ``backbone`` is ignored).
    """
    if arch not in ARCHS:
        raise ConfigError(f"unknown segmentation arch {arch!r}; expected one of {', '.join(ARCHS)}")
    if arch == "tiny":
        if not isinstance(width, int) or width < 1:
            raise ConfigError(f"width must be a positive integer for arch 'tiny', got {width!r}")
        return TinySegNet(width, num_classes)
    if backbone not in BACKBONES:
        raise ConfigError(f"unknown segmentation backbone {backbone!r}; expected one of {', '.join(BACKBONES)}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    if backbone == "mobilenetv2":
        if layers:
            raise ConfigError("'layers' applies to ResNet backbones only, not mobilenetv2 (use width_mult)")
        trunk: nn.Module = mobilenetv2_backbone(width_mult)
    else:
        if width_mult != 1.0:
            raise ConfigError(f"'width_mult' applies to mobilenetv2 only, not {backbone} (use layers)")
        trunk = resnet_backbone(backbone, layers)
    c_in = trunk.out_channels  # type: ignore[attr-defined]
    d = decoder_channels or _DEFAULT_DECODER_CHANNELS[arch]
    if arch == "deeplabv3":
        # Same layout as torchvision's DeepLabHead minus the last conv, so its state dicts load.
        decoder: nn.Module = nn.Sequential(
            ASPP(c_in, list(aspp_rates), d), nn.Conv2d(d, d, 3, padding=1, bias=False), nn.BatchNorm2d(d), nn.ReLU()
        )
    else:
        ppm = PyramidPooling(c_in, ppm_bins)
        decoder = nn.Sequential(
            ppm, nn.Conv2d(ppm.out_channels, d, 3, padding=1, bias=False), nn.BatchNorm2d(d), nn.ReLU(), nn.Dropout2d(dropout)
        )
    return SegmentationModel(trunk, decoder, nn.Conv2d(d, num_classes, 1), arch=arch, backbone_name=backbone)


def _cbr(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class TinySegNet(nn.Module):
    """A DeepLab-like segmenter for small canvases: stride-4 trunk with dilated convs, 1×1 classifier.

    Distillation points (capture specs): ``trunk`` (feature, 4·width channels, stride 4) and ``classifier``
    (logits, ``num_classes`` channels, stride 4). ``forward`` returns logits upsampled to the input size.
    The ``densekd demo`` model, and ``arch: tiny`` in segmentation configs (``width`` sets its size).
    """

    def __init__(self, width: int, num_classes: int = 11) -> None:
        super().__init__()
        w = width
        self.num_classes = num_classes
        self.stem = nn.Sequential(_cbr(3, w, 2), _cbr(w, w))
        self.trunk = nn.Sequential(
            _cbr(w, 2 * w, 2), _cbr(2 * w, 2 * w), _cbr(2 * w, 4 * w, dilation=2), _cbr(4 * w, 4 * w, dilation=4)
        )
        self.head = _cbr(4 * w, 4 * w)
        self.classifier = nn.Conv2d(4 * w, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        logits = self.classifier(self.head(self.trunk(self.stem(x))))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------- checkpoints
_TV_RENAME = {"classifier.0.": "decoder.0.", "classifier.1.": "decoder.1.", "classifier.2.": "decoder.2.", "classifier.4.": "classifier."}


def _extract_state_dict(obj: object, path: str) -> Mapping[str, Tensor]:
    if isinstance(obj, Mapping):
        for key in ("student", "model", "state_dict"):  # densekd / common wrappers
            if key in obj and isinstance(obj[key], Mapping):
                return _extract_state_dict(obj[key], path)
        if obj and all(isinstance(v, Tensor) for v in obj.values()):
            return obj  # type: ignore[return-value]
    raise ConfigError(
        f"checkpoint {path} holds no state dict (expected a state dict or a dict with 'model', 'student' or "
        f"'state_dict'); found {type(obj).__name__}" + (f" with keys {sorted(obj)[:8]}" if isinstance(obj, Mapping) else "")
    )


def load_segmentation_checkpoint(model: SegmentationModel, path: str | Path) -> SegmentationModel:
    """Load weights from a densekd checkpoint (``{"model": sd}`` / ``{"student": sd}``), a plain state dict,
    or a torchvision ``deeplabv3_*`` state dict (keys renamed, ``aux_classifier`` dropped). Missing or
    unexpected keys and shape mismatches fail naming the file and the first offending keys."""
    path = str(path)
    if not Path(path).is_file():
        raise ConfigError(f"checkpoint file not found: {path}")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    sd = dict(_extract_state_dict(obj, path))
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    if "classifier.4.weight" in sd:  # torchvision DeepLabV3
        renamed = {}
        for k, v in sd.items():
            if k.startswith("aux_classifier."):
                continue
            for old, new in _TV_RENAME.items():
                if k.startswith(old):
                    k = new + k[len(old):]
                    break
            renamed[k] = v
        sd = renamed
    name = (f"{model.arch}/{model.backbone_name} with {model.num_classes} classes" if hasattr(model, "arch")
            else f"{type(model).__name__} with {getattr(model, 'num_classes', '?')} classes")
    load_strict(model, sd, f"checkpoint {path} does not fit {name}")
    return model
