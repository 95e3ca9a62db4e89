"""Distil Ultralytics YOLO detectors with any densekd method, inside Ultralytics' own trainer.

    from densekd.integrations.ultralytics import distill_yolo
    trainer = distill_yolo(student="yolov8n.yaml", teacher="teacher.pt", data="data.yaml",
                           method="acam_kd", epochs=100, imgsz=640)      # any Ultralytics train argument
    trainer.best                                                         # runs/detect/train/weights/best.pt

Ultralytics keeps its data pipeline, task loss, EMA, AMP, warm-up, logging, validation, ``resume`` and
``best.pt``. What densekd adds:

- :class:`YOLOKDModel` wraps the student during training (as Ultralytics' own ``distill_model=`` wrapper does):
  the frozen teacher runs under ``torch.inference_mode`` only up to the last distilled layer, forward hooks
  capture both networks' feature maps, and one densekd loss module per pair adds its terms to the task loss,
  computed in fp32 even under AMP. The KD modules (aligners, ACAM-KD's attention and masks, MGD's generator)
  are parameters of the wrapped model, so Ultralytics' optimizer trains them with the student.
- Default pairs: the layers the student's ``Detect`` head reads (its ``f`` indices), paired in order with the
  teacher's — found from the models, so any width and family (v8, 11, …) works on either side; channel
  mismatches are handled by each loss's 1×1 aligner.
- :class:`DistillationTrainer` saves ``last.pt`` / ``best.pt`` with the *plain student* as the model (the EMA,
  as Ultralytics does), so ``YOLO("best.pt")`` predicts, validates and exports as any Ultralytics checkpoint,
  without densekd installed; the KD modules' state, method, pairs and teacher path go in an extra
  ``"densekd"`` entry (plain tensors and strings) that :func:`distill_yolo` reads to resume.
- KD terms appear as ``kd_<term>`` columns in Ultralytics' progress bar and ``results.csv``.
- Before the first epoch, :attr:`DistillationTrainer.pretrain_checks` run (each ``check(trainer) -> dict``):
  the teacher's mAP on the validation split and the KD/task loss ratio of one training batch, with a warning
  when KD would dominate (> 10×) or barely register (< 0.01×) and the weight that would make them equal.
- Nothing is downloaded, at any step (:mod:`densekd.integrations._ultralytics_offline`).

One device per run: Ultralytics' multi-GPU mode re-launches its trainer in subprocesses from command-line
arguments, which cannot carry the teacher.
"""
from __future__ import annotations

import contextlib
import io
import math
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _ultralytics_offline as _offline  # sets YOLO_OFFLINE before ultralytics is imported
from ._state import module_state_preserved, rng_preserved
from ..capture import StopForward, resolve_module
from ..distiller import Pair
from ..errors import ConfigError, UnknownNameError
from ..losses.base import DistillContext
from ..losses.registry import available_losses, build_loss

try:
    from ultralytics.cfg import DEFAULT_CFG, DEFAULT_CFG_DICT
    from ultralytics.models.yolo.detect import DetectionTrainer
    from ultralytics.nn.tasks import guess_model_task, load_checkpoint, yaml_model_load
    from ultralytics.utils import LOGGER
    from ultralytics.utils.torch_utils import ModelEMA, unwrap_model
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "densekd.integrations.ultralytics needs the 'ultralytics' package: pip install 'densekd[ultralytics]'"
    ) from e

__all__ = ["DistillationTrainer", "OfflineDetectionTrainer", "YOLOKDConfig", "YOLOKDModel", "default_pairs",
           "distill_yolo", "kd_task_ratio_check", "teacher_metric_check", "train_yolo",
           "training_loss_items"]

_CKPT_KEY = "densekd"
_CKPT_FORMAT = 1
_DETECT_HEADS = ("Detect", "v10Detect")  # plain detection heads (YOLO26's Detect is end-to-end, still "Detect")
#: attributes Ultralytics sets on "the model" that belong to the student
_FORWARDED = frozenset({"nc", "names", "args", "stride", "yaml", "end2end", "criterion", "class_weights", "task",
                        "pt_path"})


# --------------------------------------------------------------------------- checks on inputs
def _where(x: Any) -> str:
    return f"'{x}'" if isinstance(x, (str, Path)) else type(x).__name__


def _check_detector(model: nn.Module, role: str, where: Any) -> nn.Module:
    """The model's Detect head; one line if it is not an Ultralytics detection model."""
    layers = getattr(model, "model", None)
    if not isinstance(layers, nn.Sequential) or len(layers) == 0:
        raise ConfigError(f"{role} {_where(where)} is a {type(model).__name__}, not an Ultralytics YOLO model")
    head = layers[-1]
    name = type(head).__name__
    if name not in _DETECT_HEADS:
        try:
            task = guess_model_task(model)
        except Exception:  # noqa: BLE001 - only for the message
            task = "non-detection"
        raise ConfigError(f"{role} {_where(where)} is a {task} model (head {name}); distill_yolo distils detection "
                          f"models: expected a head of type Detect")
    return head


def _local_file(x: str | Path, role: str) -> Path:
    s = str(x)
    if "://" in s:
        raise ConfigError(f"{role} '{s}' is a URL; densekd does not download: pass a local file")
    try:
        return Path(_offline.local_asset(s))
    except FileNotFoundError:
        raise ConfigError(f"{role} '{s}' does not exist; densekd does not download weights: pass a local .pt file"
                          + (" or a model YAML such as 'yolov8n.yaml'" if role == "student" else "")) from None


def load_yolo(x: Any, role: str) -> nn.Module:
    """A detection model from a ``.pt`` path, a ``YOLO`` object or a ``DetectionModel`` (frozen copy untouched)."""
    if isinstance(x, (str, Path)):
        if not str(x).endswith(".pt"):
            raise ConfigError(f"{role} '{x}' must be a trained Ultralytics checkpoint (.pt)")
        path = _local_file(x, role)
        try:
            model = load_checkpoint(path)[0]
        except Exception as e:  # noqa: BLE001 - any unreadable file gets one line
            raise ConfigError(f"{role} '{x}' is not a readable Ultralytics checkpoint: {str(e).splitlines()[0]}") from None
    elif isinstance(x, nn.Module):
        inner = getattr(x, "model", None)  # ultralytics.YOLO holds its DetectionModel in .model; a model, its layers
        model = inner if isinstance(inner, nn.Module) and not isinstance(inner, nn.Sequential) else x
    else:
        raise ConfigError(f"{role} must be a .pt path, a YOLO object or a DetectionModel, got {type(x).__name__}")
    _check_detector(model, role, x)
    return model


def _check_student(student: Any) -> str:
    """The student as Ultralytics' ``model=`` argument (a YAML or a .pt path), checked to be a detector."""
    if not isinstance(student, (str, Path)):
        raise ConfigError(f"student must be a model YAML or a .pt path, got {type(student).__name__}")
    s = str(student)
    if s.endswith((".yaml", ".yml")):
        if "://" in s:
            raise ConfigError(f"student '{s}' is a URL; densekd does not download: pass a local file")
        try:
            cfg = yaml_model_load(s)
        except Exception:  # noqa: BLE001 - FileNotFoundError and parse errors alike
            raise ConfigError(f"student '{s}': no such model YAML (a file, or a name Ultralytics ships such as "
                              f"'yolov8n.yaml')") from None
        head = str(cfg.get("head", [[None, None, "?"]])[-1][2])
        if head not in _DETECT_HEADS:
            raise ConfigError(f"student '{s}' builds a {head} head; distill_yolo distils detection models: expected "
                              f"a head of type Detect")
        return s
    load_yolo(s, "student")
    return str(_local_file(s, "student"))


def _check_data(data: Any, split: str) -> str:
    """The data YAML exists and its image folders are on disk (else Ultralytics may run its ``download:``)."""
    import yaml

    from ultralytics.utils import DATASETS_DIR

    if data is None:
        raise ConfigError("data: missing; expected an Ultralytics data YAML with train/val image folders")
    s = str(data)
    if "://" in s:
        raise ConfigError(f"data '{s}' is a URL; densekd does not download datasets: pass a local data YAML")
    p = Path(s)
    if not p.is_file():
        raise ConfigError(f"data '{s}' does not exist (expected an Ultralytics data YAML with train/val image folders)")
    try:
        cfg = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"data '{s}' is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"data '{s}' must hold a mapping with train/val/names, got {type(cfg).__name__}")
    for key in ("train", split):
        if key not in cfg:
            raise ConfigError(f"data '{s}' has no '{key}:' entry (keys: {', '.join(map(str, cfg))})")
    if "names" not in cfg and "nc" not in cfg:
        raise ConfigError(f"data '{s}' has neither 'names:' nor 'nc:'")
    root = Path(cfg.get("path") or p.parent)
    if not root.is_absolute() and not root.exists():
        root = DATASETS_DIR / root
    for key in ("train", split):
        entries = cfg[key] if isinstance(cfg[key], list) else [cfg[key]]
        for e in entries:
            q = Path(str(e))  # Ultralytics resolves train/val/test/minival against `path`, other keys against cwd
            q = q if q.is_absolute() or key not in ("train", "val", "test", "minival") else root / q
            if not q.exists():
                raise ConfigError(f"data '{s}': {key} images '{q}' not found (densekd does not download datasets)")
    return s


# --------------------------------------------------------------------------- pairs
def _layer(x: Any) -> str:
    if isinstance(x, int) or (isinstance(x, str) and x.isdigit()):
        return f"model.{int(x)}"
    if isinstance(x, str):
        return x
    raise ConfigError(f"a YOLO pair layer must be an index (15) or a module name ('model.15'), got {x!r}")


def default_pairs(student: nn.Module, teacher: nn.Module, method: str = "acam_kd", weight: float = 1.0,
                  kwargs: Mapping[str, Any] | None = None) -> list[Pair]:
    """One pair per feature level the Detect heads read: student ``Detect.f[i]`` with teacher ``Detect.f[i]``."""
    fs = list(_check_detector(student, "student", student).f)
    ft = list(_check_detector(teacher, "teacher", teacher).f)
    if len(fs) != len(ft):
        raise ConfigError(f"the student's Detect head reads {len(fs)} levels (layers {fs}), the teacher's {len(ft)} "
                          f"(layers {ft}); pass pairs= to choose which to distil")
    return [Pair(student=f"model.{s}", teacher=f"model.{t}", loss=method, weight=weight, kwargs=dict(kwargs or {}))
            for s, t in zip(fs, ft)]


def normalize_pairs(pairs: Sequence[Any], method: str, weight: float, kwargs: Mapping[str, Any]) -> list[Pair]:
    """Pairs from indices (``15``), names (``"model.15"``), ``(student, teacher)`` tuples, dicts or Pairs."""
    out: list[Pair] = []
    for p in pairs:
        if isinstance(p, Pair):
            out.append(p)
        elif isinstance(p, Mapping):
            q = {"loss": method, "weight": weight, "kwargs": dict(kwargs), **p}
            q["student"] = _layer(q.get("student")) if "student" in q else q.get("student")
            if q.get("teacher") is not None:
                q["teacher"] = _layer(q["teacher"])
            out.append(Pair.coerce(q))
        elif isinstance(p, (tuple, list)) and len(p) == 2:
            out.append(Pair(_layer(p[0]), _layer(p[1]), method, weight, dict(kwargs)))
        else:
            out.append(Pair(_layer(p), None, method, weight, dict(kwargs)))
    if not out:
        raise ConfigError("pairs: empty; pass None for the Detect head's input layers")
    return out


# --------------------------------------------------------------------------- capture
@contextlib.contextmanager
def _capture(model: nn.Module, names: Sequence[str], stop: bool = False) -> Iterator[dict[str, Any]]:
    """Outputs of the named submodules during one forward; with ``stop``, end the forward (StopForward) once all
    have run — a YOLO model runs its layers in index order, so nothing after the last distilled layer runs."""
    out: dict[str, Any] = {}
    unique = list(dict.fromkeys(names))

    def make(name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, _i: Any, o: Any) -> None:
            out[name] = o
            if stop and len(out) == len(unique):
                raise StopForward()
        return hook

    handles = [model.get_submodule(n).register_forward_hook(make(n)) for n in unique]
    try:
        yield out
    finally:
        for h in handles:
            h.remove()


def _kd_name(term: str) -> str:
    return "kd_" + (term[5:] if term.startswith("loss_") else term)


# --------------------------------------------------------------------------- the training-time model
class YOLOKDModel(nn.Module):
    """The student (``student_model``), the frozen teacher (``teacher_model``, not a submodule: it is neither
    trained, averaged by the EMA nor saved) and one densekd loss per pair (``kd``, trained with the student).

    ``forward(batch_dict)`` returns Ultralytics' ``(loss_vector, loss_items)`` with the KD total appended to the
    vector (× batch size, like the task terms) and each KD term summed over pairs as ``kd_<term>`` in the items;
    ``forward(images)`` is the student's. Attributes Ultralytics reads or sets on its model (``names``, ``args``,
    ``stride``, ``criterion``, ``fuse()``, ...) are the student's.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, pairs: Sequence[Pair], imgsz: int = 64) -> None:
        super().__init__()
        self.student_model = student
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.__dict__["teacher_model"] = teacher  # deliberately not registered (see class docstring)
        self.pairs = [Pair.coerce(p) for p in pairs]
        self.iteration = 0
        self.max_iterations: int | None = None
        for i, p in enumerate(self.pairs):
            if p.loss not in available_losses():
                raise UnknownNameError(f"pair {i} ({p.student}): unknown method {p.loss!r}; available: "
                                       f"{', '.join(available_losses())}")
            for role, model, spec in (("student", student, p.student), ("teacher", teacher, p.teacher_spec)):
                try:
                    resolve_module(model, spec)
                except UnknownNameError as e:
                    raise UnknownNameError(f"pair {i}: the {role} has no layer {spec!r} ({e})") from None
        self._s_names = [p.student for p in self.pairs]
        self._t_names = [p.teacher_spec for p in self.pairs]
        self.kd = nn.ModuleDict()
        self._build(imgsz)

    # -- Ultralytics reads and sets these on "the model": they are the student's
    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            modules = self.__dict__.get("_modules")
            if not modules or "student_model" not in modules or name.startswith("__"):
                raise
            return getattr(modules["student_model"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        modules = self.__dict__.get("_modules")
        if name in _FORWARDED and modules and "student_model" in modules:
            setattr(modules["student_model"], name, value)
        else:
            super().__setattr__(name, value)

    def _apply(self, fn: Callable[..., Any], recurse: bool = True) -> "YOLOKDModel":
        super()._apply(fn, recurse)
        teacher = self.__dict__.get("teacher_model")
        if teacher is not None:
            teacher._apply(fn)  # .to(device) moves the unregistered teacher too (BaseModel._apply takes fn only)
        return self

    # -- build
    @torch.no_grad()
    def _build(self, imgsz: int) -> None:
        student, teacher = self.student_model, self.teacher_model
        x = torch.zeros(1, int(student.yaml.get("channels", 3)), imgsz, imgsz,
                        device=next(student.parameters()).device)
        was = student.training
        student.eval()
        try:
            with _capture(student, self._s_names) as s_feats:
                student(x)
        finally:
            student.train(was)
        t_feats = self._teacher_features(x.to(next(teacher.parameters()).device))
        names: list[str] = []
        for i, p in enumerate(self.pairs):
            s, t = s_feats[p.student], t_feats[p.teacher_spec]
            for role, v, spec in (("student", s, p.student), ("teacher", t, p.teacher_spec)):
                if not isinstance(v, Tensor) or v.dim() != 4:
                    raise ConfigError(f"pair {i}: the {role}'s layer {spec!r} returns "
                                      f"{type(v).__name__ if not isinstance(v, Tensor) else tuple(v.shape)}, "
                                      f"not a [B, C, H, W] feature map")
            kwargs = dict(p.kwargs)
            kwargs.setdefault("student_channels", s.shape[1])
            kwargs.setdefault("teacher_channels", t.shape[1])
            loss = build_loss(p.loss, **kwargs).to(next(student.parameters()).device)
            self.kd[f"p{i}"] = loss
            s_al = s.float() if s.shape[2:] == t.shape[2:] else F.interpolate(s.float(), size=t.shape[2:])
            for term in loss(s_al, t.float().clone(), self._empty_context(x)):
                if _kd_name(term) not in names:
                    names.append(_kd_name(term))
        self.kd_item_names = tuple(names)

    @staticmethod
    def _empty_context(img: Tensor) -> DistillContext:
        return DistillContext(image_size=tuple(img.shape[-2:]))

    # -- forward
    def _teacher_features(self, img: Tensor) -> dict[str, Any]:
        with torch.inference_mode(), _capture(self.teacher_model, self._t_names, stop=True) as feats:
            try:
                self.teacher_model(img)
            except StopForward:
                pass
        return feats

    def context(self, batch: Mapping[str, Any]) -> DistillContext:
        """Ground-truth boxes of an Ultralytics batch (normalised xywh) in pixels of ``batch["img"]`` (for FGD)."""
        img = batch["img"]
        b, _, h, w = img.shape
        ctx = self._empty_context(img)
        if "bboxes" in batch and "batch_idx" in batch:
            xywh = batch["bboxes"].float() * img.new_tensor([w, h, w, h], dtype=torch.float32)
            xyxy = torch.cat([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1)
            idx, cls = batch["batch_idx"].long().view(-1), batch["cls"].long().view(-1)
            ctx = DistillContext.from_targets(
                [{"boxes": xyxy[idx == i], "labels": cls[idx == i]} for i in range(b)], (h, w), img.device)
        ctx.iteration, ctx.max_iterations = self.iteration, self.max_iterations
        return ctx

    def kd_terms(self, s_feats: Mapping[str, Tensor], t_feats: Mapping[str, Tensor],
                 ctx: DistillContext) -> tuple[Tensor, dict[str, Tensor]]:
        """(weighted KD total, ``{kd_<term>: value summed over pairs}``), computed in fp32 with autocast off."""
        first = s_feats[self.pairs[0].student]
        total = torch.zeros((), device=first.device, dtype=torch.float32)
        items = {n: torch.zeros((), device=first.device) for n in self.kd_item_names}
        with torch.autocast(device_type=first.device.type, enabled=False):
            for i, p in enumerate(self.pairs):
                s, t = s_feats[p.student].float(), t_feats[p.teacher_spec].float()
                if s.shape[2:] != t.shape[2:]:
                    if not p.resize:
                        raise ValueError(f"pair {i}: student {p.student} {tuple(s.shape)} and teacher {p.teacher_spec} "
                                         f"{tuple(t.shape)} differ in spatial size; set resize=True on the pair")
                    s = F.interpolate(s, size=t.shape[2:], mode="bilinear", align_corners=False)
                for term, value in self.kd[f"p{i}"](s, t, ctx).items():
                    v = p.weight * value.float()
                    total = total + v
                    items[_kd_name(term)] = items[_kd_name(term)] + v.detach()
        return total, items

    def forward(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(x, dict):
            return self.loss(x, *args, **kwargs)
        return self.student_model(x, *args, **kwargs)

    def loss(self, batch: dict[str, Any], preds: Any = None) -> tuple[Tensor, dict[str, Tensor]]:
        student = self.student_model
        teacher = self.__dict__.get("teacher_model")
        if not self.training or teacher is None:  # validation during training: the task loss, KD items zero
            preds = student(batch["img"]) if preds is None else preds
            task, items = student.loss(batch, preds)
            zero = task.new_zeros(1)
            return torch.cat([task, zero]), {**items, **{n: zero[0] for n in self.kd_item_names}}
        img = batch["img"]
        t_feats = self._teacher_features(img)
        with _capture(student, self._s_names) as s_feats:
            preds = student(img)
        task, items = student.loss(batch, preds)
        kd_total, kd_items = self.kd_terms(s_feats, t_feats, self.context(batch))
        vec = torch.cat([task, (kd_total * img.shape[0]).reshape(1).to(task.dtype)])
        return vec, {**items, **kd_items}

    def measure(self, batch: dict[str, Any]) -> tuple[float, float]:
        """(task loss, KD loss) of one batch, per image as in Ultralytics' loss items, as the first training step
        computes them (:func:`training_loss_items`: train mode, BatchNorm on the batch's statistics), leaving the
        running statistics, the modules' modes and every random stream as they were."""
        items = training_loss_items(self, batch)
        kd = set(self.kd_item_names)
        task = sum(v for k, v in items.items() if k not in kd)
        return float(task), float(sum(v for k, v in items.items() if k in kd))


# --------------------------------------------------------------------------- configuration
@dataclass
class YOLOKDConfig:
    """What distillation :class:`DistillationTrainer` adds to an Ultralytics run.

    teacher: a trained detection ``.pt`` (or the loaded model); method/weight/method_kwargs: the densekd loss,
    pair weight and loss keyword arguments used by the default pairs; pairs: ``None`` for the Detect head's
    input layers, or a list (see :func:`normalize_pairs`); check: run :attr:`DistillationTrainer.pretrain_checks`.
    """

    teacher: Any
    method: str = "acam_kd"
    weight: float = 1.0
    method_kwargs: dict[str, Any] = field(default_factory=dict)
    pairs: list[Pair] | None = None
    check: bool = True
    _teacher_model: nn.Module | None = field(default=None, repr=False)

    def teacher_model(self) -> nn.Module:
        if self._teacher_model is None:
            self._teacher_model = load_yolo(self.teacher, "teacher")
        return self._teacher_model

    def teacher_path(self) -> str | None:
        return str(self.teacher) if isinstance(self.teacher, (str, Path)) else None


# --------------------------------------------------------------------------- trainers
class OfflineDetectionTrainer(DetectionTrainer):
    """Ultralytics' ``DetectionTrainer`` that never touches the network (fonts, AMP-check weights, asset downloads,
    Platform and usage events). Used for teachers and plain baselines, and as the base of distillation."""

    def __init__(self, cfg: Any = DEFAULT_CFG, overrides: dict[str, Any] | None = None,
                 _callbacks: dict[str, Any] | None = None) -> None:
        with _offline.offline():
            super().__init__(cfg, overrides, _callbacks)

    def run_callbacks(self, event: str) -> None:
        _offline.drop_network_callbacks(self.callbacks)
        super().run_callbacks(event)

    def train(self) -> None:
        with _offline.offline():
            super().train()


class DistillationTrainer(OfflineDetectionTrainer):
    """Ultralytics detection training of the student, distilled from ``kd.teacher`` with densekd losses."""

    def __init__(self, cfg: Any = DEFAULT_CFG, overrides: dict[str, Any] | None = None,
                 _callbacks: dict[str, Any] | None = None, kd: YOLOKDConfig | None = None) -> None:
        if kd is None:
            raise ConfigError("DistillationTrainer needs kd=YOLOKDConfig(teacher=...)")
        self.kd_config = kd
        #: ``check(trainer) -> dict`` run once before the first epoch (fresh runs only); results in ``kd_check``
        self.pretrain_checks: list[Callable[[Any], dict[str, Any]]] = (
            [teacher_metric_check, kd_task_ratio_check] if kd.check else [])
        self.kd_check: dict[str, Any] = {}
        super().__init__(cfg, overrides, _callbacks)
        self.add_callback("on_pretrain_routine_end", _run_pretrain_checks)
        self.add_callback("on_train_batch_start", _set_kd_iteration)

    def get_dataset(self) -> dict[str, Any]:
        _check_data(self.args.data, self.args.split or "val")
        return super().get_dataset()

    def setup_model(self) -> Any:
        ckpt = super().setup_model()
        student = self.model
        _check_detector(student, "student", self.args.model)
        teacher = self.kd_config.teacher_model()
        kd = self.kd_config
        pairs = kd.pairs if kd.pairs is not None else default_pairs(student, teacher, kd.method, kd.weight,
                                                                     kd.method_kwargs)
        self.model = YOLOKDModel(student, teacher, pairs)
        entry = (ckpt or {}).get(_CKPT_KEY) if self.resume else None
        if entry:
            self.model.kd.load_state_dict(entry["kd"])
        return ckpt

    def _load_checkpoint_state(self, ckpt: dict[str, Any]) -> None:
        """Ultralytics' restore, with the EMA rebuilt around the wrapper: the checkpoint's EMA is the plain student."""
        ema_student = ckpt.get("ema")
        super()._load_checkpoint_state({**ckpt, "ema": None})
        if self.ema and ema_student is not None:
            self.ema = ModelEMA(self.model)
            self.ema.ema.student_model.load_state_dict(ema_student.float().state_dict())
            entry = ckpt.get(_CKPT_KEY) or {}
            if entry.get("kd_ema"):
                self.ema.ema.kd.load_state_dict(entry["kd_ema"])
            self.ema.updates = ckpt["updates"]

    def _handle_nan_recovery(self, epoch: int) -> bool:
        """Ultralytics' NaN/Inf recovery (reload ``last.pt``, redo the epoch; at most 3 times in a row), for the
        wrapped model. Ultralytics' own reads the checkpoint's EMA as its distillation wrapper (``student_model``,
        ``projector``); ours holds the plain student, and the KD modules are in the ``"densekd"`` entry. The
        detection and the limits follow Ultralytics 8.4's ``BaseTrainer._handle_nan_recovery`` (one device: no
        DDP broadcast)."""
        loss_nan = self.loss is not None and not bool(torch.isfinite(self.loss).all())
        fitness_nan = self.fitness is not None and not np.isfinite(self.fitness)
        if not (loss_nan or fitness_nan):
            return False
        reason = "Loss NaN/Inf" if loss_nan else "Fitness NaN/Inf"
        if epoch == self.start_epoch:
            LOGGER.warning(f"{reason} detected but can not recover from last.pt...")
            return False  # as Ultralytics: nothing to go back to in the first epoch, training continues
        if not self.last.exists():
            raise RuntimeError(f"{reason} detected but no valid last.pt is available for recovery")
        self.nan_recovery_attempts += 1
        if self.nan_recovery_attempts > 3:
            raise RuntimeError(f"Training failed: NaN persisted for {self.nan_recovery_attempts} epochs")
        ckpt = torch.load(self.last, map_location="cpu", weights_only=False)
        entry = ckpt.get(_CKPT_KEY) if isinstance(ckpt, dict) else None
        ema = ckpt.get("ema") if isinstance(ckpt, dict) else None
        if not entry or not isinstance(ema, nn.Module):
            raise RuntimeError(f"{reason} detected in epoch {epoch + 1}; cannot recover: {self.last} holds "
                               f"{'no EMA model' if not isinstance(ema, nn.Module) else 'no densekd entry'}")
        student_sd = ema.float().state_dict()
        kd_sd = entry.get("kd_ema") or entry["kd"]
        if not all(torch.isfinite(v).all() for sd in (student_sd, kd_sd) for v in sd.values()
                   if isinstance(v, Tensor) and v.is_floating_point()):
            raise RuntimeError(f"Checkpoint {self.last} is corrupted with NaN/Inf weights")
        LOGGER.warning(f"{reason} detected (attempt {self.nan_recovery_attempts}/3), recovering from last.pt...")
        self._model_train()
        model = unwrap_model(self.model)
        model.student_model.load_state_dict(student_sd)  # the model restarts from the EMA, as Ultralytics does
        model.kd.load_state_dict(kd_sd)
        self._load_checkpoint_state(ckpt)  # optimizer, scaler, EMA (rebuilt around the wrapper), best fitness
        self.scheduler.last_epoch = epoch - 1
        return True

    def kd_state(self) -> dict[str, Any]:
        """The ``"densekd"`` checkpoint entry: only tensors, numbers and strings (loads with ``weights_only``)."""
        kd = self.kd_config
        model = unwrap_model(self.model)

        def cpu(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
            return {k: v.detach().cpu().clone() for k, v in sd.items()}

        return {
            "format": _CKPT_FORMAT,
            "teacher": kd.teacher_path(),
            "method": kd.method,
            "weight": kd.weight,
            "method_kwargs": dict(kd.method_kwargs),
            "pairs": [{**asdict(p), "aux": {k: list(v) for k, v in p.aux.items()}} for p in model.pairs],
            "kd": cpu(model.kd.state_dict()),
            "kd_ema": cpu(self.ema.ema.kd.state_dict()) if self.ema else {},
        }

    def save_model(self) -> bool:
        """Ultralytics' checkpoints with the plain student as the model, plus the ``"densekd"`` entry."""
        wrapper, wrapper_ema = self.model, self.ema.ema
        self.model, self.ema.ema = unwrap_model(wrapper).student_model, wrapper_ema.student_model
        try:
            ok = super().save_model()
        finally:
            self.model, self.ema.ema = wrapper, wrapper_ema
        written = [self.last]
        if self.best_fitness == self.fitness:
            written.append(self.best)
        if self.save_period > 0 and self.epoch % self.save_period == 0:
            written.append(self.wdir / f"epoch{self.epoch}.pt")
        ckpt = torch.load(self.last, map_location="cpu", weights_only=False)
        ckpt[_CKPT_KEY] = self.kd_state()
        buf = io.BytesIO()
        torch.save(ckpt, buf)
        for f in written:
            f.write_bytes(buf.getvalue())
        return ok


def _set_kd_iteration(trainer: DistillationTrainer) -> None:
    model = unwrap_model(trainer.model)
    model.iteration += 1
    if model.max_iterations is None:
        model.max_iterations = trainer.epochs * len(trainer.train_loader)


def _run_pretrain_checks(trainer: DistillationTrainer) -> None:
    if trainer.start_epoch > 0:  # resumed: checked when the run started
        return
    for check in trainer.pretrain_checks:
        trainer.kd_check.update(check(trainer) or {})


# --------------------------------------------------------------------------- pre-training checks
def first_batch(trainer: Any) -> dict[str, Any]:
    """The first training batch as the loop would see it (augmented, preprocessed), without consuming the
    loader or any random stream."""
    ds = trainer.train_loader.dataset
    n = min(len(ds), trainer.train_loader.batch_size or 1)
    with rng_preserved():
        batch = ds.collate_fn([ds[i] for i in range(n)])
        return trainer.preprocess_batch(batch)


def training_loss_items(model: nn.Module, batch: Mapping[str, Any]) -> dict[str, float]:
    """Ultralytics' loss items (``{"box_loss": …, …}``, per image) of ``model`` on ``batch`` as a training step
    computes them: the model in train mode (BatchNorm normalises with the batch's statistics; a distillation
    wrapper keeps its teacher in eval), no gradient. The model's buffers and modes and Python's, NumPy's and
    torch's random streams are left as they were, so measuring does not shift the run. Works for any model that
    Ultralytics' trainer calls with a batch dict: a plain ``DetectionModel``, :class:`YOLOKDModel`, Ultralytics'
    own ``DistillationModel``."""
    model = unwrap_model(model)
    with torch.no_grad(), rng_preserved(), module_state_preserved(model):
        model.train()
        _, items = model(dict(batch))
    return {k: float(v) for k, v in items.items()}


#: bounds of the KD/task loss ratio outside which :func:`kd_task_ratio_check` warns
RATIO_HIGH, RATIO_LOW = 10.0, 0.01


def kd_task_ratio_check(trainer: Any) -> dict[str, Any]:
    """KD/task loss ratio on the first training batch, computed as the first training step will (train mode, see
    :func:`training_loss_items`); warns when KD would dominate or vanish and says which pair weight makes the two
    equal."""
    model = unwrap_model(trainer.model)
    task, kd = model.measure(first_batch(trainer))
    ratio = kd / task if task > 0 else math.inf
    weights = sorted({p.weight for p in model.pairs})
    LOGGER.info(f"densekd: first batch: task loss {task:.4g}, KD loss {kd:.4g}, KD/task {ratio:.3g}")
    if ratio > RATIO_HIGH or ratio < RATIO_LOW:
        what = "KD would dominate the task loss" if ratio > RATIO_HIGH else "KD would barely move the student"
        if len(weights) == 1 and ratio > 0 and math.isfinite(ratio):
            fix = f"weight={weights[0] / ratio:.3g} (now {weights[0]:g}) would make them equal"
        else:
            fix = f"scale every pair's weight by {1 / ratio:.3g} to make them equal" if ratio > 0 and \
                math.isfinite(ratio) else "check the teacher and the pairs"
        msg = f"densekd: KD/task loss ratio {ratio:.3g} on the first batch (KD {kd:.4g}, task {task:.4g}): {what}; {fix}"
        LOGGER.warning(msg)
        warnings.warn(msg, UserWarning, stacklevel=2)
    return {"task_loss": task, "kd_loss": kd, "kd_task_ratio": ratio}


def teacher_metric_check(trainer: Any) -> dict[str, Any]:
    """The teacher's mAP on the run's validation split (a copy is validated: Ultralytics fuses what it checks)."""
    import copy

    teacher = copy.deepcopy(unwrap_model(trainer.model).teacher_model)
    validator = trainer.get_validator()
    validator.args.plots = False
    validator.args.save_json = False
    with rng_preserved():
        stats = validator(model=teacher)
    m, m50 = float(stats.get("metrics/mAP50-95(B)", float("nan"))), float(stats.get("metrics/mAP50(B)", float("nan")))
    LOGGER.info(f"densekd: teacher on '{trainer.args.split}': mAP50-95 {m:.4f}, mAP50 {m50:.4f}")
    return {"teacher_map50_95": m, "teacher_map50": m50}


# --------------------------------------------------------------------------- one call
_MULTI_DEVICE = "distill_yolo trains on one device"


def _check_train_args(args: Mapping[str, Any]) -> dict[str, Any]:
    import difflib

    out = dict(args)
    for k in out:
        if k not in DEFAULT_CFG_DICT:
            close = difflib.get_close_matches(k, list(DEFAULT_CFG_DICT), n=1)
            raise ConfigError(f"unknown Ultralytics train argument {k!r}" + (f" (did you mean {close[0]!r}?)" if close
                                                                               else ""))
    dev = out.get("device")
    if dev is not None and ("," in str(dev) or isinstance(dev, (list, tuple))):
        raise ConfigError(f"{_MULTI_DEVICE}; got device={dev!r} (Ultralytics' multi-GPU mode relaunches its trainer "
                          f"from command-line arguments, which cannot carry the teacher)")
    return out


def _add_callbacks(trainer: Any, callbacks: Mapping[str, Sequence[Callable[[Any], None]]] | None) -> None:
    for event, fns in (callbacks or {}).items():
        if event not in trainer.callbacks:
            raise ConfigError(f"callbacks: unknown Ultralytics event {event!r}; events: {', '.join(trainer.callbacks)}")
        for fn in fns:
            trainer.add_callback(event, fn)


def read_kd_entry(path: str | Path) -> dict[str, Any]:
    """The ``"densekd"`` entry of a checkpoint written by :class:`DistillationTrainer` (one line if absent)."""
    p = _local_file(path, "resume")
    ckpt = torch.load(p, map_location="cpu", weights_only=False)
    entry = ckpt.get(_CKPT_KEY) if isinstance(ckpt, dict) else None
    if not entry:
        raise ConfigError(f"resume '{path}' has no '{_CKPT_KEY}' entry: it was not written by densekd's YOLO trainer "
                          f"(resume Ultralytics' own runs with YOLO(...).train(resume=True))")
    return entry


def distill_yolo(student: str | Path | None = None, teacher: Any = None, data: str | Path | None = None,
                 method: str = "acam_kd", pairs: Sequence[Any] | None = None, weight: float = 1.0,
                 method_kwargs: Mapping[str, Any] | None = None, resume: str | Path | None = None,
                 check: bool = True, callbacks: Mapping[str, Sequence[Callable[[Any], None]]] | None = None,
                 **train_args: Any) -> DistillationTrainer:
    """Distil ``student`` (a model YAML such as ``"yolov8n.yaml"``, or a ``.pt`` to fine-tune) from ``teacher``
    (a trained detection ``.pt``) on ``data`` (an Ultralytics data YAML) with densekd's ``method``.

    ``train_args`` are Ultralytics' train arguments (``epochs``, ``imgsz``, ``batch``, ``project``, ``name``, ...).
    ``resume="…/weights/last.pt"`` continues an interrupted run: teacher, method and pairs come from the
    checkpoint (``teacher=`` overrides the path if it moved). ``callbacks``: ``{event: [fn(trainer), ...]}`` added
    to Ultralytics' callbacks. Returns the finished trainer (``.best``, ``.last``, ``.metrics``, ``.kd_check``).
    """
    if "distill_model" in train_args:
        raise ConfigError("distill_model= is Ultralytics' own distillation; pass the teacher as teacher=")
    args = _check_train_args(train_args)
    with _offline.offline():
        if resume:
            entry = read_kd_entry(resume)
            kd = YOLOKDConfig(teacher=teacher if teacher is not None else entry["teacher"], method=entry["method"],
                              weight=entry["weight"], method_kwargs=dict(entry.get("method_kwargs", {})),
                              pairs=[Pair.coerce({**p, "aux": {k: tuple(v) for k, v in p["aux"].items()}})
                                     for p in entry["pairs"]], check=check)
            if kd.teacher is None:
                raise ConfigError(f"resume '{resume}': the run's teacher was a model object; pass teacher=")
            kd.teacher_model()
            overrides = {**args, "resume": str(resume), "model": str(resume)}
            if data is not None:
                overrides["data"] = str(_check_data(data, args.get("split") or "val"))
        else:
            if student is None or teacher is None:
                raise ConfigError("distill_yolo needs student= (a model YAML or .pt) and teacher= (a trained .pt)")
            if method not in available_losses():
                raise UnknownNameError(f"unknown method {method!r}; available: {', '.join(available_losses())}")
            kwargs = dict(method_kwargs or {})
            kd = YOLOKDConfig(teacher=teacher, method=method, weight=float(weight), method_kwargs=kwargs,
                              pairs=normalize_pairs(pairs, method, float(weight), kwargs) if pairs is not None
                              else None, check=check)
            kd.teacher_model()
            overrides = {**args, "model": _check_student(student),
                         "data": _check_data(data, args.get("split") or "val")}
        trainer = DistillationTrainer(overrides=overrides, kd=kd)
        _add_callbacks(trainer, callbacks)
        trainer.train()
    return trainer


def train_yolo(model: str | Path, data: str | Path,
               callbacks: Mapping[str, Sequence[Callable[[Any], None]]] | None = None,
               **train_args: Any) -> OfflineDetectionTrainer:
    """Plain Ultralytics detection training (teachers, baselines, or Ultralytics' own ``distill_model=``), with
    the same offline guarantees as :func:`distill_yolo`. Returns the finished trainer."""
    args = _check_train_args(train_args)
    with _offline.offline():
        overrides = {**args, "model": _check_student(model), "data": _check_data(data, args.get("split") or "val")}
        if args.get("distill_model") is not None:
            load_yolo(args["distill_model"], "distill_model")
            overrides["distill_model"] = str(_local_file(args["distill_model"], "distill_model"))
        trainer = OfflineDetectionTrainer(overrides=overrides)
        _add_callbacks(trainer, callbacks)
        trainer.train()
    return trainer
