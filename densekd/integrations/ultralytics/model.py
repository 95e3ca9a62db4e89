"""The training-time model: the student, the frozen teacher and one densekd loss per pair, as Ultralytics' trainer
calls it (a batch dict in, ``(loss_vector, loss_items)`` out)."""
from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from ...capture import StopForward, resolve_module
from ...errors import ConfigError, UnknownNameError
from ...levels import LevelLosses, Pair, Term, single_levels
from ...losses.base import DistillContext
from ...losses.registry import available_losses
from .pretrain import training_loss_items

#: attributes Ultralytics sets on "the model" that belong to the student
_FORWARDED = frozenset({"nc", "names", "args", "stride", "yaml", "end2end", "criterion", "class_weights", "task",
                        "pt_path"})


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


def _pair_key(pair: int, label: str) -> str:
    """The KD module of pair ``pair`` is ``kd.p<pair>`` (one level per pair; the checkpoints' state-dict keys)."""
    return f"p{pair}"


def _kd_name(term: str) -> str:
    return "kd_" + (term[5:] if term.startswith("loss_") else term)


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
            if p.aux:
                raise ConfigError(f"pair {i} ({p.student}): aux maps are not captured by the YOLO integration; "
                                  f"expected a pair without aux, found aux={sorted(p.aux)}")
        self._s_names = [p.student for p in self.pairs]
        self._t_names = [p.teacher_spec for p in self.pairs]
        self.kd = LevelLosses(key=_pair_key)
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
        for i, p in enumerate(self.pairs):
            for role, v, spec in (("student", s_feats[p.student], p.student), ("teacher", t_feats[p.teacher_spec],
                                                                              p.teacher_spec)):
                if not isinstance(v, Tensor) or v.dim() != 4:
                    raise ConfigError(f"pair {i}: the {role}'s layer {spec!r} returns "
                                      f"{type(v).__name__ if not isinstance(v, Tensor) else tuple(v.shape)}, "
                                      f"not a [B, C, H, W] feature map")
        names: list[str] = []
        device = next(student.parameters()).device
        for lv in self.kd.levels(self.pairs, single_levels(s_feats), single_levels(t_feats)):
            p = self.pairs[lv.pair]
            self.kd.build_level(p, lv, device)
            for term in self.kd.level_terms(p, lv, self._empty_context(x), fp32=True):  # the loss items' names
                if _kd_name(term.name) not in names:
                    names.append(_kd_name(term.name))
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

    def named_terms(self, s_feats: Mapping[str, Tensor], t_feats: Mapping[str, Tensor],
                    ctx: DistillContext) -> list[Term]:
        """The weighted KD terms of every pair (``kd/<level>/<term>``, :class:`densekd.levels.Term`), the
        Distiller's mechanism, in fp32 with autocast off; ``s_feats`` / ``t_feats``: ``{layer name: feature map}``."""
        return self.kd.terms(self.pairs, single_levels(s_feats), single_levels(t_feats), ctx, fp32=True)

    def kd_terms(self, s_feats: Mapping[str, Tensor], t_feats: Mapping[str, Tensor],
                 ctx: DistillContext) -> tuple[Tensor, dict[str, Tensor]]:
        """(weighted KD total, ``{kd_<term>: value summed over pairs}``), computed in fp32 with autocast off."""
        first = s_feats[self.pairs[0].student]
        total = torch.zeros((), device=first.device, dtype=torch.float32)
        items = {n: torch.zeros((), device=first.device) for n in self.kd_item_names}
        for term in self.named_terms(s_feats, t_feats, ctx):
            total = total + term.value
            items[_kd_name(term.name)] = items[_kd_name(term.name)] + term.value.detach()
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
