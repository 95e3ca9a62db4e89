"""Semantic segmentation task: DeepLabV3 / PSPNet students and teachers, cross-entropy, mIoU.

YAML sections (validated by :class:`SegModelConfig` and :class:`SegDataConfig`)::

    model:
      student: {arch: deeplabv3, backbone: resnet18, num_classes: 19, backbone_checkpoint: null}
      teacher: {arch: deeplabv3, backbone: resnet101, num_classes: 19, checkpoint: teacher.pth}
      distill_decoder: false      # also distill the decoder feature (docs/methods.md, "Where it is applied")
    data:
      format: cityscapes          # cityscapes | voc | folder
      root: data/cityscapes
      crop_size: [512, 1024]
      scale_range: [0.5, 2.0]

Distillation points (``default_pairs``): the logits before upsampling (module ``classifier``), and with
``distill_decoder: true`` the decoder feature (module ``decoder``). For ``acam_kd`` the number of masks M is
the number of classes (docs/methods.md, "ASCM": M = number of classes for segmentation) unless the
method's kwargs set ``num_masks``. ``cirkd`` distils the embedding before the classifier (``decoder``) with
the logits (``classifier``) alongside.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..data.segmentation import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SegTransform,
    build_segmentation_dataset,
    collate_segmentation,
)
from ..config import from_dict
from ..distiller import Pair
from ..assets import resolve_checkpoint
from ..errors import ConfigError
from ..metrics.segmentation import ConfusionMatrix, format_iou_table
from ..models.segmentation import SegmentationModel, build_segmentation_model, load_segmentation_checkpoint


# --------------------------------------------------------------------------- config
@dataclass
class SegModelSpec:
    """One network. ``checkpoint``: full model weights (densekd checkpoint, state dict, or torchvision
    ``deeplabv3_*``); ``backbone_checkpoint``: a torchvision ImageNet classification state dict for the
    backbone only (students start from ImageNet weights in the CIRKD/MasKD protocol). Both are local paths.
    ``random_init``: a teacher without ``checkpoint`` is refused unless this is true (tests only)."""

    arch: str = "deeplabv3"
    backbone: str = "resnet18"
    num_classes: int = 19
    checkpoint: str | None = None
    backbone_checkpoint: str | None = None
    decoder_channels: int | None = None
    width_mult: float = 1.0
    layers: list[int] | None = None
    aspp_rates: list[int] = field(default_factory=lambda: [12, 24, 36])
    ppm_bins: list[int] = field(default_factory=lambda: [1, 2, 3, 6])
    dropout: float = 0.1
    width: int = 16  # arch "tiny" only (the demo's TinySegNet)
    sync_bn: bool = False  # student only: SyncBatchNorm across DDP ranks (CUDA), as the CIRKD/MasKD protocol
    random_init: bool = False  # teacher only: allow a randomly initialised teacher (tests; it teaches nothing)

    def validate(self, where: str = "model") -> None:
        from ..models.segmentation import ARCHS, BACKBONES

        if self.arch not in ARCHS:
            raise ConfigError(f"{where}.arch: unknown {self.arch!r}; expected one of {', '.join(ARCHS)}")
        if self.backbone not in BACKBONES:
            raise ConfigError(f"{where}.backbone: unknown {self.backbone!r}; expected one of {', '.join(BACKBONES)}")
        if self.num_classes < 1:
            raise ConfigError(f"{where}.num_classes: expected a positive integer, found {self.num_classes}")


@dataclass
class SegModelConfig:
    """The YAML ``model:`` section."""

    student: SegModelSpec = field(default_factory=SegModelSpec)
    teacher: SegModelSpec | None = None
    distill_decoder: bool = False

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "model") -> "SegModelConfig":
        return from_dict(cls, data, where)

    def validate(self, where: str = "model") -> None:
        if self.teacher is not None and self.teacher.num_classes != self.student.num_classes:
            raise ConfigError(
                f"{where}.teacher.num_classes={self.teacher.num_classes} differs from "
                f"{where}.student.num_classes={self.student.num_classes}"
            )


@dataclass
class SegDataConfig:
    """The YAML ``data:`` section (see :mod:`densekd.data.segmentation` for the layouts)."""

    format: str = "cityscapes"
    root: str = "data/cityscapes"
    num_classes: int | None = None
    ignore_index: int = 255
    train_split: str = "train"
    val_split: str = "val"
    crop_size: list[int] = field(default_factory=lambda: [512, 1024])
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    flip: bool = True
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    class_names: list[str] | None = None
    max_images: int | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "data") -> "SegDataConfig":
        return from_dict(cls, data, where)

    def validate(self, where: str = "data") -> None:
        from ..data.segmentation import FORMATS

        if self.format not in FORMATS:
            raise ConfigError(f"{where}.format: unknown {self.format!r}; expected one of {', '.join(FORMATS)}")
        if len(self.crop_size) != 2 or min(self.crop_size) < 1:
            raise ConfigError(f"{where}.crop_size: expected [height, width] > 0, found {self.crop_size}")
        lo_hi = self.scale_range
        if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1]:
            raise ConfigError(f"{where}.scale_range: expected [low, high] with 0 < low <= high, found {lo_hi}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ConfigError(f"{where}.mean/std: expected 3 values each, found {self.mean} / {self.std}")


# --------------------------------------------------------------------------- helpers
#: registered methods that cannot run on segmentation (they need GT boxes)
NEEDS_BOXES = ("fgd",)
#: methods distilled on the embedding (the last feature before the classifier) with the logits as ``aux``
EMBEDDING_AND_LOGITS = ("cirkd",)


def _embedding_module(arch: str) -> str:
    """The last feature before the 1×1 classifier: ``decoder`` (DeepLabV3 ASPP / PSPNet PPM + 3×3 conv–BN–ReLU,
    CIRKD's ``x_feat_after_aspp``), ``head`` for TinySegNet (its 3×3 conv–BN–ReLU before the classifier)."""
    return "head" if arch == "tiny" else "decoder"



def _accepts(method: str, name: str) -> bool:
    """Whether the registered loss ``method`` takes the keyword ``name`` (searched along its class MRO,
    so ``**kwargs`` subclasses such as the ACAM-KD variants count)."""
    import inspect

    from ..losses.registry import get_loss_class

    for cls in get_loss_class(method).__mro__:
        init = cls.__dict__.get("__init__")
        if init is not None and name in inspect.signature(init).parameters:
            return True
    return False


def cross_entropy_loss(logits: Tensor, targets: Tensor, ignore_index: int = 255) -> dict[str, Tensor]:
    """Pixel-wise cross-entropy over non-ignored pixels: ``{"loss_ce": ...}``."""
    if logits.shape[-2:] != targets.shape[-2:]:
        logits = F.interpolate(logits, size=targets.shape[-2:], mode="bilinear", align_corners=False)
    return {"loss_ce": F.cross_entropy(logits.float(), targets.long(), ignore_index=ignore_index)}


def _load_backbone(model: SegmentationModel, path: str) -> None:
    if not Path(path).is_file():
        raise ConfigError(f"backbone_checkpoint file not found: {path}")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, Mapping) and "state_dict" in sd:
        sd = sd["state_dict"]
    if model.backbone_name == "mobilenetv2":  # torchvision MobileNetV2: features.N.* → N.* (N < 18)
        sd = {k[len("features."):]: v for k, v in sd.items() if k.startswith("features.")}
    own = model.backbone.state_dict()
    sd = {k: v for k, v in sd.items() if k in own}
    missing = [k for k in own if k not in sd]
    if missing:
        raise ConfigError(
            f"backbone_checkpoint {path} lacks {len(missing)} key(s) of the {model.backbone_name} backbone, "
            f"e.g. {missing[:3]}"
        )
    model.backbone.load_state_dict(sd)


# --------------------------------------------------------------------------- the task
def segmentation_pairs(method: str, method_kwargs: Mapping[str, Any], num_classes: int,
                       logits: tuple[str, str] = ("classifier", "classifier"),
                       embedding: tuple[str, str] = ("decoder", "decoder"), distill_embedding: bool = False,
                       decoder: tuple[str, str] | None = None) -> list[Pair]:
    """The canonical segmentation pairs for ``method`` given the (student, teacher) module names of the logits
    before upsampling and of the embedding (the last feature before the classifier): the logits, with
    ``distill_embedding`` also ``decoder`` (default: the embedding). ``num_masks`` = ``num_classes`` for methods
    that take it (acam_kd, its variants, maskd); ``cirkd``: one pair on the embedding with the logits as
    ``aux["logits"]``; ``samkd``: the logits as ``aux["logits"]``; box-needing methods fail in one line. Used by
    the engine's task and by the integrations (Hugging Face SegFormer)."""
    kwargs = dict(method_kwargs)
    if method in NEEDS_BOXES:
        raise ConfigError(f"distill.method: {method} needs ground-truth boxes, which segmentation data has "
                          f"not; it runs on detection only")
    if _accepts(method, "num_masks"):  # acam_kd, its variants, maskd: M = number of classes
        kwargs.setdefault("num_masks", num_classes)

    def pair(names: tuple[str, str], **kw: Any) -> Pair:  # teacher None when it is the student's name
        return Pair(names[0], names[1] if names[1] != names[0] else None, loss=method, **kw)

    if method in EMBEDDING_AND_LOGITS:  # cirkd: one pair, embedding + logits (distill_embedding is moot)
        kwargs.setdefault("num_classes", num_classes)
        return [pair(embedding, kwargs=kwargs, aux={"logits": logits})]
    logits_aux = {"logits": logits} if method == "samkd" else {}
    pairs = [pair(logits, kwargs=dict(kwargs), aux=dict(logits_aux))]
    if distill_embedding:
        # the decoder level's SLD term uses the logits (same resolution as the decoder feature)
        pairs.append(pair(decoder or embedding, kwargs=dict(kwargs), aux=dict(logits_aux)))
    return pairs


class SegmentationTask:
    """Implements :class:`densekd.tasks.base.Task` for semantic segmentation."""

    name = "segmentation"
    model_config_cls = SegModelConfig
    data_config_cls = SegDataConfig

    def __init__(self, ignore_index: int = 255) -> None:
        self.ignore_index = ignore_index

    # -- models
    def build_model(self, model_cfg: SegModelConfig, role: str) -> nn.Module:
        if role not in ("student", "teacher"):
            raise ValueError(f"role must be 'student' or 'teacher', got {role!r}")
        spec = getattr(model_cfg, role)
        if spec is None:
            raise ConfigError(f"model.{role} is not configured")
        if role == "teacher" and spec.random_init and spec.checkpoint:
            raise ConfigError("model.teacher.random_init: true contradicts model.teacher.checkpoint "
                              f"{spec.checkpoint!r}; keep one of them")
        if role == "teacher" and not spec.checkpoint and not spec.random_init:
            raise ConfigError(
                "model.teacher.checkpoint: not set, so the teacher would be randomly initialised and teach "
                "nothing; give the trained teacher's weights (or model.teacher.random_init: true, tests only)")
        model = build_segmentation_model(
            spec.arch,
            spec.backbone,
            spec.num_classes,
            decoder_channels=spec.decoder_channels,
            width_mult=spec.width_mult,
            layers=spec.layers,
            aspp_rates=spec.aspp_rates,
            ppm_bins=spec.ppm_bins,
            dropout=spec.dropout,
            width=spec.width,
        )
        if spec.backbone_checkpoint:
            _load_backbone(model, spec.backbone_checkpoint)
        if spec.checkpoint:  # a file, or asset:<name> (a shipped, checksum-verified teacher)
            load_segmentation_checkpoint(model, resolve_checkpoint(spec.checkpoint, f"model.{role}.checkpoint"))
        if spec.sync_bn and role == "student" and dist.is_available() and dist.is_initialized() and torch.cuda.is_available():
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # keeps the module names
        return model

    # -- data
    def build_dataset(self, data_cfg: SegDataConfig, split: str) -> Dataset:
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        self.ignore_index = data_cfg.ignore_index
        transform = SegTransform(
            train=split == "train",
            crop_size=tuple(data_cfg.crop_size),
            scale_range=tuple(data_cfg.scale_range),
            flip=data_cfg.flip,
            mean=data_cfg.mean,
            std=data_cfg.std,
            ignore_index=data_cfg.ignore_index,
        )
        return build_segmentation_dataset(
            data_cfg.format,
            data_cfg.root,
            data_cfg.train_split if split == "train" else data_cfg.val_split,
            transform,
            num_classes=data_cfg.num_classes,
            ignore_index=data_cfg.ignore_index,
            class_names=data_cfg.class_names,
            max_images=data_cfg.max_images,
        )

    def eval_split_overrides(self, data_cfg: SegDataConfig, split: str) -> list[str]:
        """Optional Task hook (``densekd compare --tune-split``): the overrides that make the engine evaluate on
        the split folder ``split`` of ``data.root`` instead of ``data.val_split``; one ConfigError line when the
        data has no such split."""
        import dataclasses

        try:
            self.build_dataset(dataclasses.replace(data_cfg, val_split=split), "val")
        except ConfigError as e:
            raise ConfigError(f"data.val_split: the {data_cfg.format} data in data.root={data_cfg.root} has no "
                              f"split {split!r} ({e}; the table reports data.val_split={data_cfg.val_split})") from None
        return [f"data.val_split={split}"]

    def eval_data(self, data_cfg: SegDataConfig) -> str:
        """Optional Task hook: what the engine evaluates on (layout, resolved root, split, image limit); two
        configs with the same value are scored on the same images."""
        limit = f" (first {data_cfg.max_images})" if data_cfg.max_images is not None else ""
        return f"{data_cfg.format} {os.path.realpath(data_cfg.root)} split {data_cfg.val_split}{limit}"

    def check_data(self, model_cfg: SegModelConfig, dataset: Dataset) -> None:
        """Called by the engine once the training set is built: class counts must agree."""
        k = getattr(dataset, "num_classes", None)
        for role in ("student", "teacher"):
            spec = getattr(model_cfg, role)
            if spec is not None and k is not None and spec.num_classes != k:
                raise ConfigError(f"model.{role}.num_classes={spec.num_classes} but the dataset has {k} classes (data)")

    def collate(self, batch: Sequence[Any]) -> tuple[Tensor, Tensor]:
        return collate_segmentation(batch, self.ignore_index)

    def to_device(self, batch: tuple[Tensor, Tensor], device: torch.device) -> tuple[Tensor, Tensor]:
        images, masks = batch
        return images.to(device, non_blocking=True), masks.to(device, non_blocking=True)

    def model_inputs(self, batch: tuple[Tensor, Tensor]) -> tuple[tuple[Tensor], Tensor]:
        images, masks = batch
        return (images,), masks

    # -- losses
    def task_loss(self):
        ignore = self.ignore_index

        def loss(logits: Tensor, targets: Tensor) -> dict[str, Tensor]:
            return cross_entropy_loss(logits, targets, ignore)

        return loss

    def default_pairs(self, model_cfg: SegModelConfig, method: str, method_kwargs: Mapping[str, Any]) -> list[Pair]:
        """Logits before upsampling (``classifier``); with ``model.distill_decoder`` also ``decoder``.
        docs/methods.md, "Distillation points" (segmentation) and docs/methods.md, "ASCM" (M = number of classes).
        ``cirkd``: one pair on the embedding (``decoder``; ``head`` for arch tiny) with the logits as
        ``aux["logits"]`` and ``num_classes`` from the student."""
        teacher = model_cfg.teacher or model_cfg.student
        return segmentation_pairs(method, method_kwargs, model_cfg.student.num_classes,
                                  embedding=(_embedding_module(model_cfg.student.arch), _embedding_module(teacher.arch)),
                                  distill_embedding=model_cfg.distill_decoder,
                                  decoder=("decoder", "decoder"))

    # -- evaluation
    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Any, device: torch.device, out_dir: str | None) -> dict[str, float]:
        """Whole-image evaluation at full resolution: ``{"mIoU", "pixel_acc", "IoU/<class>" ...}``.

        Under torch.distributed each rank scores its shard and the confusion matrices are summed across ranks;
        every rank returns the same metrics and writes ``eval_metrics.json`` / ``eval_iou.md`` to ``out_dir``
        when given one (the engine passes it on rank 0 only). The loader must shard without padding (the
        engine's ``ShardSampler``; a padded ``DistributedSampler`` would score some images twice). The model is
        run unwrapped (``model.module`` for DDP), so ranks with fewer images do not stall a collective."""
        dataset = loader.dataset
        model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        num_classes = getattr(model, "num_classes", None) or getattr(dataset, "num_classes")
        names = getattr(dataset, "class_names", None)
        if names is not None and len(names) != num_classes:
            raise ConfigError(
                f"the model predicts {num_classes} classes but the dataset has {len(names)} "
                f"(model.student.num_classes vs data)"
            )
        cm = ConfusionMatrix(num_classes, self.ignore_index, device=device)
        was_training = model.training
        model.eval()
        try:
            for batch in loader:
                (images,), masks = self.model_inputs(self.to_device(batch, device))
                logits = model(images)
                cm.update(logits.argmax(dim=1), masks)
        finally:
            model.train(was_training)
        metrics = cm.compute(names)
        if out_dir is not None:
            os.makedirs(out_dir, exist_ok=True)
            with open(os.path.join(out_dir, "eval_metrics.json"), "w") as f:
                json.dump(metrics, f, indent=2)
            with open(os.path.join(out_dir, "eval_iou.md"), "w") as f:
                f.write(format_iou_table(metrics) + "\n")
        return metrics
