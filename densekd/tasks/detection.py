"""Detection task: torchvision detectors on COCO-format data, evaluated with pycocotools.

Config sections::

    model:
      preset: null             # "cpu": defaults for a small from-scratch detector (keys given here win)
      num_classes: 80          # object categories (without background); must match the data
      min_size: 800            # torchvision GeneralizedRCNNTransform (shorter side); null + null: no resize
      max_size: 1333
      inherit: true            # paper's "inheriting": student neck/head initialised from the teacher
      student: {arch: retinanet, backbone: resnet50, trainable_layers: 3, norm: frozen_bn,
                fpn_channels: 256, head_convs: 4, width_mult: 1.0,
                backbone_checkpoint: null, checkpoint: null, weights: null}
      teacher: {arch: retinanet, backbone: resnet101, checkpoint: path/to/teacher.pth}
    data:
      train_ann: data/coco/annotations/instances_train2017.json
      train_images: data/coco/train2017
      val_ann: data/coco/annotations/instances_val2017.json     # optional
      val_images: data/coco/val2017
      flip_prob: 0.5
      filter_empty: true
      label_map: contiguous    # or category_id (labels = COCO ids, K = 90: torchvision hub weights)
      train_max_images: null   # N: train on the first N images (id order) only, e.g. a small labelled subset
      splits:                  # optional: further evaluation splits by name (densekd compare --tune-split dev)
        dev: {ann: data/coco/annotations/dev.json, images: data/coco/dev}
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..data.coco import CocoDetection, collate_detection
from ..distiller import Pair
from ..assets import resolve_checkpoint
from ..errors import ConfigError
from ..models import detection as det


@dataclass
class DetectorConfig:
    arch: str = "retinanet"  # retinanet | fcos | faster_rcnn
    backbone: str = "resnet50"  # resnet18 | resnet34 | resnet50 | resnet101 | mobilenet_v3_large | _small
    trainable_layers: int = 3
    norm: str = "frozen_bn"  # frozen_bn (torchvision/MMDetection default) | bn
    fpn_channels: int = 256  # width of the FPN and of the heads
    head_convs: int = 4  # 3×3 convs per RetinaNet/FCOS head tower
    width_mult: float = 1.0  # MobileNetV3 channel multiplier (e.g. 0.5: a backbone with every stage half as wide)
    backbone_checkpoint: str | None = None  # local ImageNet backbone state dict, or asset:<name> (shipped, verified)
    checkpoint: str | None = None  # local full-detector weights
    weights: str | None = None  # torchvision hub weights name (downloads unless cached)
    random_init: bool = False  # teacher only: allow a randomly initialised teacher (tests; it teaches nothing)

    def validate(self, prefix: str) -> None:
        det._check_choice(self.arch, det.ARCHS, f"{prefix}.arch")
        det._check_choice(self.backbone, det.BACKBONES, f"{prefix}.backbone")
        det._check_choice(self.norm, ("frozen_bn", "bn"), f"{prefix}.norm")
        if self.fpn_channels < 1:
            raise ConfigError(f"{prefix}.fpn_channels: expected a positive int, got {self.fpn_channels}")
        if self.head_convs < 0:
            raise ConfigError(f"{prefix}.head_convs: expected an int >= 0, got {self.head_convs}")


@dataclass
class DetectionModelConfig:
    student: DetectorConfig = field(default_factory=DetectorConfig)
    teacher: DetectorConfig | None = None
    num_classes: int = 80
    min_size: int | None = 800  # null together with max_size: images keep their own size
    max_size: int | None = 1333
    inherit: bool = False
    preset: str | None = None  # filled in by expand_model_section; kept for the record

    def validate(self, prefix: str) -> None:
        if self.num_classes < 1:
            raise ConfigError(f"{prefix}.num_classes: expected a positive int, got {self.num_classes}")
        det.check_sizes(self.min_size, self.max_size, prefix)
        if self.preset is not None:
            det._check_choice(self.preset, tuple(det.PRESETS), f"{prefix}.preset")


def expand_model_section(raw: Any) -> Any:
    """``model.preset`` (:data:`densekd.models.detection.PRESETS`) → its keys, wherever the config does not
    set them itself (the config's keys win, as over an MMDetection ``_base_``); ``student`` and ``teacher``
    each get the per-detector keys."""
    if not isinstance(raw, Mapping) or raw.get("preset") is None:
        return raw
    name = raw["preset"]
    if name not in det.PRESETS:
        raise ConfigError(f"model.preset: expected one of {', '.join(det.PRESETS)} or null, got {name!r}")
    preset = det.PRESETS[name]
    out = {**preset["model"], **raw}
    for role in ("student", "teacher"):
        sub = out.get(role, {} if role == "student" else None)
        if isinstance(sub, Mapping):
            out[role] = {**preset["detector"], **sub}
    return out


@dataclass
class DetectionSplit:
    """One named evaluation split of ``data.splits``: a COCO annotation file and its image folder."""

    ann: str
    images: str


@dataclass
class DetectionDataConfig:
    train_ann: str = ""
    train_images: str = ""
    val_ann: str | None = None
    val_images: str | None = None
    flip_prob: float = 0.5
    filter_empty: bool = False
    label_map: str = "contiguous"  # or "category_id" (label = COCO category id; for torchvision hub weights)
    train_max_images: int | None = None  # train on the first N images (image-id order) of train_ann only
    splits: dict[str, DetectionSplit] = field(default_factory=dict)  # named evaluation splits, e.g. dev

    def validate(self, prefix: str) -> None:
        det._check_choice(self.label_map, ("contiguous", "category_id"), f"{prefix}.label_map")
        if self.train_max_images is not None and self.train_max_images < 1:
            raise ConfigError(f"{prefix}.train_max_images: expected a positive int or null, got {self.train_max_images}")


#: registered methods that cannot run on detection, with the reason given in the error
SEGMENTATION_ONLY = {
    "hinton_kd": "distils softmax class scores per pixel; the detection heads here score anchors with sigmoids",
    "cirkd": "relates pixel embeddings by their ground-truth classes (per-class memory bank, region pooling) "
             "and distils per-pixel class logits, which detection data and heads do not give",
}


class DetectionTask:
    name = "detection"
    model_config_cls = DetectionModelConfig
    data_config_cls = DetectionDataConfig
    expand_model_section = staticmethod(expand_model_section)

    # -------------------------------------------------------------- models
    def build_model(self, model_cfg: DetectionModelConfig, role: str) -> nn.Module:
        sub = model_cfg.student if role == "student" else model_cfg.teacher
        if sub is None:
            raise ConfigError("model.teacher: required when the config has a distill section")
        if role == "teacher" and sub.random_init and (sub.checkpoint or sub.weights):
            raise ConfigError("model.teacher.random_init: true contradicts model.teacher."
                              f"{'checkpoint' if sub.checkpoint else 'weights'}; keep one of them")
        if role == "teacher" and not (sub.checkpoint or sub.weights or sub.random_init):
            raise ConfigError(
                "model.teacher: a teacher needs trained weights: set model.teacher.checkpoint (a local file) "
                "or model.teacher.weights (a torchvision weights name) (or model.teacher.random_init: true, "
                "tests only)"
            )
        return det.build_detector(
            sub.arch, sub.backbone, num_classes=model_cfg.num_classes, min_size=model_cfg.min_size,
            max_size=model_cfg.max_size, trainable_layers=sub.trainable_layers, norm=sub.norm,
            checkpoint=resolve_checkpoint(sub.checkpoint, f"model.{role}.checkpoint"),
            backbone_checkpoint=resolve_checkpoint(sub.backbone_checkpoint, f"model.{role}.backbone_checkpoint"),
            weights=sub.weights,
            where=f"model.{role}", fpn_channels=sub.fpn_channels, head_convs=sub.head_convs,
            width_mult=sub.width_mult,
        )

    def inherit(self, student: nn.Module, teacher: nn.Module, model_cfg: DetectionModelConfig) -> str | None:
        """Optional Task hook (engine calls it after building both models): the paper's inheriting."""
        if not model_cfg.inherit:
            return None
        copied, total = det.inherit_neck_head(student, teacher)
        return f"inherited {copied}/{total} student neck/head tensors from the teacher (name and shape match)"

    def default_pairs(self, model_cfg: DetectionModelConfig, method: str, method_kwargs: Mapping[str, Any]) -> list[Pair]:
        """One pair over every FPN level the head uses (spec "backbone": all keys of the FPN output).

        ``samkd`` (with its logit term, the default) also gets ``aux={"logits": ...}``: the per-level
        classification logits of RetinaNet / FCOS (``head.classification_head.cls_logits``, one call per
        level, [B, A·K, H, W]); Faster R-CNN has no dense class logits → SFD only needs
        ``distill.kwargs.use_logits: false``. ``hinton_kd`` (softmax class scores) and ``cirkd`` (class-wise
        pixel relations) are segmentation-only."""
        if method in SEGMENTATION_ONLY:
            raise ConfigError(f"distill.method: {method} {SEGMENTATION_ONLY[method]} — it runs on segmentation only")
        aux: dict[str, tuple[str, str]] = {}
        if method == "samkd" and method_kwargs.get("use_logits", True):
            archs = {model_cfg.student.arch} | ({model_cfg.teacher.arch} if model_cfg.teacher else set())
            if not archs <= {"retinanet", "fcos"}:
                raise ConfigError(
                    f"distill.method: samkd's logit term needs per-level dense classification logits, which "
                    f"{'/'.join(sorted(archs - {'retinanet', 'fcos'}))} has not (RetinaNet, FCOS have); set "
                    f"distill.kwargs.use_logits=false for its feature term only")
            spec = "head.classification_head.cls_logits"
            aux = {"logits": (spec, spec)}
        return [Pair("backbone", loss=method, kwargs=dict(method_kwargs), aux=aux)]

    # -------------------------------------------------------------- data
    def build_dataset(self, data_cfg: DetectionDataConfig, split: str) -> CocoDetection | None:
        """``split`` "train" or "val"; "val" without ``val_ann`` returns None (no evaluation)."""
        if split == "train":
            if not data_cfg.train_ann or not data_cfg.train_images:
                raise ConfigError("data.train_ann / data.train_images: required for training")
            return CocoDetection(data_cfg.train_ann, data_cfg.train_images, train=True,
                                 flip_prob=data_cfg.flip_prob, filter_empty=data_cfg.filter_empty,
                                 label_map=data_cfg.label_map, max_images=data_cfg.train_max_images)
        if not data_cfg.val_ann:
            return None
        if not data_cfg.val_images:
            raise ConfigError("data.val_images: required with data.val_ann")
        return CocoDetection(data_cfg.val_ann, data_cfg.val_images, train=False, label_map=data_cfg.label_map)

    def eval_split_overrides(self, data_cfg: DetectionDataConfig, split: str) -> list[str]:
        """Optional Task hook (``densekd compare --tune-split``): the overrides that make the engine evaluate on
        the named split ``data.splits.<split>`` instead of ``data.val_ann``; one ConfigError line when the
        config names no such split or its files are missing."""
        named = data_cfg.splits.get(split)
        if named is None:
            have = f"it names {', '.join(sorted(data_cfg.splits))}" if data_cfg.splits else "it names none"
            raise ConfigError(f"data.splits.{split}: the detection data names no split {split!r} ({have}); add "
                              f"data.splits.{split}: {{ann: FILE.json, images: FOLDER}} (data.val_ann is the "
                              f"split the table reports)")
        for what, path, isfile in (("ann", named.ann, True), ("images", named.images, False)):
            if not (os.path.isfile(path) if isfile else os.path.isdir(path)):
                raise ConfigError(f"data.splits.{split}.{what}: {'file' if isfile else 'folder'} {path!r} "
                                  f"does not exist")
        return [f"data.val_ann={named.ann}", f"data.val_images={named.images}"]

    def eval_data(self, data_cfg: DetectionDataConfig) -> str | None:
        """Optional Task hook: what the engine evaluates on (the resolved ``data.val_ann``), None without it;
        two configs with the same value are scored on the same images."""
        return os.path.realpath(data_cfg.val_ann) if data_cfg.val_ann else None

    def check_data(self, model_cfg: DetectionModelConfig, dataset: CocoDetection) -> None:
        """Optional Task hook (train and val sets): the model's classes must be the data's categories."""
        k = model_cfg.num_classes
        if dataset.num_classes > k:
            label = min(lbl for lbl in dataset.label_to_cat if lbl > k)
            raise ConfigError(
                f"model.num_classes: {k}, but {dataset.ann_file} has category id {dataset.label_to_cat[label]} "
                f"(label {label}), which a {k}-class model lacks; set model.num_classes={dataset.num_classes}"
            )
        if dataset.num_classes != k:
            raise ConfigError(
                f"model.num_classes: expected {dataset.num_classes} (categories in {dataset.ann_file}), got {k}"
            )

    def collate(self, batch: Sequence[Any]) -> Any:
        return collate_detection(list(batch))

    def to_device(self, batch: Any, device: torch.device) -> Any:
        images, targets = batch
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in t.items()}
                   for t in targets]
        return images, targets

    def model_inputs(self, batch: Any) -> tuple[tuple[Any, ...], Any]:
        images, targets = batch
        return (images,), targets

    def task_loss(self) -> Any:
        return None  # torchvision detectors return their loss dict when given targets

    # -------------------------------------------------------------- evaluation
    def evaluate(self, model: nn.Module, loader: Any, device: torch.device, out_dir: str | None) -> dict[str, float]:
        from ..engine.coco_eval import evaluate_detector

        return evaluate_detector(model, loader, device, loader.dataset, out_dir)
