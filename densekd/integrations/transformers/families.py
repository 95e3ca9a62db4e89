"""Model families: each Hugging Face model's task, its default distillation pairs and what its loss context needs.

Default pairs (module names of the ``*For*`` model, student and teacher alike):

==============================  ===========================  ==================================================
family (``config.model_type``)  task                         default pairs
==============================  ===========================  ==================================================
``segformer``                   semantic segmentation        the logits before upsampling,
                                                             ``decode_head.classifier`` ``[B, K, H/4, W/4]``
``upernet``                     semantic segmentation        the logits, ``decode_head.classifier``
                                                             ``[B, K, H/4, W/4]``
``rt_detr``, ``rt_detr_v2``,    object detection             every multi-scale map the decoder reads,
``d_fine``                                                   ``model.decoder_input_proj.{i}`` (one pair per
                                                             level, strides 8/16/32)
==============================  ===========================  ==================================================

Segmentation follows :func:`densekd.tasks.segmentation.segmentation_pairs` (the engine's rule: the logits, M =
number of labels for ACAM-KD; CIRKD on the embedding before the classifier with the logits beside it). DETR-family
detectors have no dense class logits (their queries do not correspond between two models), so their default
pairs are the encoder's maps as the decoder reads them. Any other module can be paired by name.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from ...capture import parse_spec, resolve_module
from ...distiller import Pair
from ...errors import ConfigError, UnknownNameError
from ...losses.base import DistillContext
from ...losses.registry import available_losses
from ...tasks.detection import SEGMENTATION_ONLY
from ...tasks.segmentation import segmentation_pairs

SEMANTIC_SEGMENTATION = "semantic segmentation"
OBJECT_DETECTION = "object detection"


def _task_mappings() -> dict[str, Any]:
    from transformers.models.auto import modeling_auto as ma

    return {
        SEMANTIC_SEGMENTATION: ma.MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES,
        OBJECT_DETECTION: ma.MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES,
        "universal segmentation": ma.MODEL_FOR_UNIVERSAL_SEGMENTATION_MAPPING_NAMES,
        "instance segmentation": ma.MODEL_FOR_INSTANCE_SEGMENTATION_MAPPING_NAMES,
        "image classification": ma.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
        "depth estimation": ma.MODEL_FOR_DEPTH_ESTIMATION_MAPPING_NAMES,
        "backbone": ma.MODEL_FOR_BACKBONE_MAPPING_NAMES,
        "feature extraction": ma.MODEL_MAPPING_NAMES,
    }


def model_task(model: nn.Module) -> str:
    """The task of a Hugging Face model class ("semantic segmentation", "object detection", ...), by the auto
    mappings that list it; ``"unknown"`` for a class none lists."""
    name = type(model).__name__
    for task, mapping in _task_mappings().items():
        for v in mapping.values():
            if name == v or (isinstance(v, (tuple, list)) and name in v):
                return task
    return "unknown"


def _model_type(model: nn.Module) -> str:
    return str(getattr(getattr(model, "config", None), "model_type", "") or "")


# --------------------------------------------------------------------------- per-family pairs
def _segmentation(logits: str, embedding: str) -> Callable[..., list[Pair]]:
    def pairs(student: nn.Module, teacher: nn.Module, method: str, weight: float,
              kwargs: Mapping[str, Any]) -> list[Pair]:
        t_logits = FAMILIES[_model_type(teacher)].logits if _model_type(teacher) in FAMILIES else logits
        t_emb = FAMILIES[_model_type(teacher)].embedding if _model_type(teacher) in FAMILIES else embedding
        if t_logits is None or t_emb is None:
            raise ConfigError(f"the teacher {type(teacher).__name__} has no default segmentation pairs; pass pairs=")
        out = segmentation_pairs(method, kwargs, int(student.config.num_labels), logits=(logits, t_logits),
                                 embedding=(embedding, t_emb))
        for p in out:
            p.weight = float(weight)
        return out

    return pairs


def _detr_levels(model: nn.Module) -> list[str]:
    proj = model.get_submodule("model.decoder_input_proj")
    return [f"model.decoder_input_proj.{i}" for i in range(len(proj))]


def _detr(student: nn.Module, teacher: nn.Module, method: str, weight: float,
          kwargs: Mapping[str, Any]) -> list[Pair]:
    if method in SEGMENTATION_ONLY:
        raise ConfigError(f"method {method} {SEGMENTATION_ONLY[method]} — it runs on segmentation only")
    if method == "samkd" and kwargs.get("use_logits", True):
        raise ConfigError("method samkd's logit term needs per-level dense classification logits, which DETR-family "
                          "detectors have not (their class scores are per query); pass method_kwargs="
                          "{'use_logits': False} for its feature term only")
    try:
        s_lv, t_lv = _detr_levels(student), _detr_levels(teacher)
    except AttributeError:
        raise ConfigError(f"the teacher {type(teacher).__name__} has no model.decoder_input_proj; pass pairs= to "
                          f"choose what to distil") from None
    if len(s_lv) != len(t_lv):
        raise ConfigError(f"the student's decoder reads {len(s_lv)} feature levels, the teacher's {len(t_lv)}; pass "
                          f"pairs= to choose which to distil")
    return [Pair(s, t if t != s else None, loss=method, weight=float(weight), kwargs=dict(kwargs))
            for s, t in zip(s_lv, t_lv)]


def detection_context(pixel_values: Tensor, labels: Sequence[Mapping[str, Tensor]]) -> DistillContext:
    """Hugging Face detection labels (``class_labels``, ``boxes`` as normalised cx, cy, w, h) as densekd's loss
    context: boxes (x1, y1, x2, y2) in pixels of ``pixel_values`` (what FGD's masks need)."""
    h, w = pixel_values.shape[-2:]
    targets = []
    for t in labels:
        b = t["boxes"].float()
        scale = b.new_tensor([w, h, w, h])
        xyxy = torch.cat([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], dim=1) * scale
        targets.append({"boxes": xyxy, "labels": t["class_labels"].long()})
    return DistillContext.from_targets(targets, (int(h), int(w)), pixel_values.device)


@dataclass(frozen=True)
class Family:
    """What densekd knows of one model family: its task, default pairs and (segmentation) the module names of
    its logits and of the embedding before the classifier."""

    task: str
    pairs: Callable[[nn.Module, nn.Module, str, float, Mapping[str, Any]], list[Pair]]
    logits: str | None = None
    embedding: str | None = None


FAMILIES: dict[str, Family] = {
    "segformer": Family(SEMANTIC_SEGMENTATION, _segmentation("decode_head.classifier", "decode_head.activation"),
                        "decode_head.classifier", "decode_head.activation"),
    "upernet": Family(SEMANTIC_SEGMENTATION, _segmentation("decode_head.classifier", "decode_head.fpn_bottleneck"),
                      "decode_head.classifier", "decode_head.fpn_bottleneck"),
    "rt_detr": Family(OBJECT_DETECTION, _detr),
    "rt_detr_v2": Family(OBJECT_DETECTION, _detr),
    "d_fine": Family(OBJECT_DETECTION, _detr),
}


# --------------------------------------------------------------------------- checks on the two models
_GENERIC_LABEL = re.compile(r"^(LABEL_)?\d+$")


def _labels(model: nn.Module) -> list[str]:
    cfg = model.config
    id2label = getattr(cfg, "id2label", None) or {}
    return [str(id2label.get(i, id2label.get(str(i), i))) for i in range(int(cfg.num_labels))]


def check_pair_of_models(student: nn.Module, teacher: nn.Module) -> str:
    """The task both models share; one line when the teacher is of another task or label set."""
    for role, m in (("student", student), ("teacher", teacher)):
        if not isinstance(m, nn.Module) or getattr(m, "config", None) is None:
            raise ConfigError(f"{role} must be a Hugging Face model (a PreTrainedModel), got {type(m).__name__}")
    ts, tt = model_task(student), model_task(teacher)
    if ts != tt:
        raise ConfigError(f"the teacher {type(teacher).__name__} is a {tt} model, the student "
                          f"{type(student).__name__} a {ts} model: distil a teacher of the student's task")
    ls, lt = _labels(student), _labels(teacher)
    if len(ls) != len(lt):
        raise ConfigError(f"the teacher predicts {len(lt)} labels ({_few(lt)}), the student {len(ls)} ({_few(ls)}): "
                          f"the teacher must be fine-tuned on the student's label set")
    for i, (a, b) in enumerate(zip(ls, lt)):
        if a.strip().lower() != b.strip().lower() and not (_GENERIC_LABEL.match(a) or _GENERIC_LABEL.match(b)):
            raise ConfigError(f"label {i} is {b!r} for the teacher but {a!r} for the student: the teacher must be "
                              f"fine-tuned on the student's label set, in the same order")
    return ts


def _few(names: Sequence[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


def default_pairs(student: nn.Module, teacher: nn.Module, method: str = "acam_kd", weight: float = 1.0,
                  method_kwargs: Mapping[str, Any] | None = None) -> list[Pair]:
    """The family's default pairs for ``method`` (module docstring); one line for a family densekd has none for."""
    family = FAMILIES.get(_model_type(student))
    if family is None:
        raise ConfigError(f"no default pairs for {type(student).__name__} (model_type {_model_type(student)!r}; "
                          f"defaults exist for {', '.join(sorted(FAMILIES))}): pass pairs= with module names")
    return family.pairs(student, teacher, method, float(weight), dict(method_kwargs or {}))


def normalize_pairs(pairs: Sequence[Any], method: str, weight: float, kwargs: Mapping[str, Any]) -> list[Pair]:
    """Pairs from module names (``"decode_head.classifier"``, the same name on both sides), ``(student, teacher)``
    tuples, dicts with :class:`~densekd.Pair`'s keys (method, weight and kwargs default to the trainer's) or
    Pairs."""
    out: list[Pair] = []
    for p in pairs:
        if isinstance(p, Pair):
            out.append(p)
        elif isinstance(p, Mapping):
            out.append(Pair.coerce({"loss": method, "weight": weight, "kwargs": dict(kwargs), **p}))
        elif isinstance(p, (tuple, list)) and len(p) == 2 and all(isinstance(x, str) for x in p):
            out.append(Pair(p[0], p[1], method, float(weight), dict(kwargs)))
        elif isinstance(p, str):
            out.append(Pair(p, None, method, float(weight), dict(kwargs)))
        else:
            raise ConfigError(f"a pair must be a module name, a (student, teacher) tuple of names, a dict or a Pair, "
                              f"got {p!r}")
    if not out:
        raise ConfigError("pairs: empty; pass None for the family's default pairs")
    return out


def check_pairs(pairs: Sequence[Pair], student: nn.Module, teacher: nn.Module) -> None:
    """Every pair's method is registered and its modules exist on each side (one line with the closest names)."""
    for i, p in enumerate(pairs):
        if p.loss not in available_losses():
            raise UnknownNameError(f"pair {i} ({p.student}): unknown method {p.loss!r}; available: "
                                   f"{', '.join(available_losses())}")
        specs = [("student", student, p.student), ("teacher", teacher, p.teacher_spec)]
        specs += [(role, m, a[j]) for a in p.aux.values() for j, (role, m) in enumerate((("student", student),
                                                                                        ("teacher", teacher)))]
        for role, model, spec in specs:
            try:
                resolve_module(model, parse_spec(spec).path)
            except UnknownNameError as e:
                raise UnknownNameError(f"pair {i}: the {role} has no module {spec!r} ({e})") from None
            except ValueError as e:
                raise ConfigError(f"pair {i}: {e}") from None
