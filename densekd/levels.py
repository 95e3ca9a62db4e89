"""Distilled levels: one loss module per level, built from the captured shapes, and the weighted, named KD terms.

The one mechanism behind :class:`densekd.Distiller` and the Ultralytics integration
(:class:`densekd.integrations.ultralytics.YOLOKDModel`); each captures the feature maps its own way and hands them
here as *level readers*, ``spec -> {label: tensor}`` (:meth:`densekd.capture.FeatureCapture.levels`, or one entry
per module for a YOLO model)::

    losses = LevelLosses()
    for level in losses.build(pairs, s_capture.levels, t_capture.levels, device):   # once, on a dry run
        ...                                                                          # level.s / level.t: shapes
    for term in losses.terms(pairs, s_capture.levels, t_capture.levels, ctx):      # every step
        result[term.key] = term.value                     # "kd/<level>/<term>", pair.weight × the loss's term

A spec that yields several levels (an FPN dict, a shared head's calls) gets one loss module per level; a level's
label is the student's (it names the ``kd/<level>/<term>`` keys, :mod:`densekd.run_folder`).
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ConfigError
from .losses.base import DistillContext
from .losses.registry import build_loss
from .run_folder import kd_key

#: ``spec -> {label: tensor}``: the captured levels of one capture spec, in order
LevelReader = Callable[[str], "Mapping[str, Tensor]"]


@dataclass
class Pair:
    """One distillation point.

    student / teacher: capture specs (see :mod:`densekd.capture`); ``teacher`` defaults to ``student``.
    A spec that yields several levels (an FPN dict, a shared head's calls) gets one loss module per level.
    loss / kwargs: registry name and its keyword arguments (channels are inferred).
    weight: multiplies every term of this pair.
    resize: interpolate the student map to the teacher's spatial size instead of failing on a mismatch.
    aux: further (student spec, teacher spec) pairs handed to the loss in ``context.aux[name]``, level by
         level (e.g. SAMKD's classification logits).
    """

    student: str
    teacher: str | None = None
    loss: str = "acam_kd"
    weight: float = 1.0
    kwargs: dict[str, Any] = field(default_factory=dict)
    resize: bool = False
    aux: dict[str, tuple[str, str]] = field(default_factory=dict)

    @staticmethod
    def coerce(p: "Pair | Mapping[str, Any]") -> "Pair":
        if isinstance(p, Pair):
            return p
        if isinstance(p, Mapping):
            known = set(Pair.__dataclass_fields__)
            unknown = set(p) - known
            if unknown:
                raise ConfigError(f"unknown pair key(s) {sorted(unknown)}; allowed: {sorted(known)}")
            if "student" not in p:
                raise ConfigError("a distillation pair needs 'student' (a module name)")
            q = dict(p)
            q["aux"] = {k: tuple(v) for k, v in q.get("aux", {}).items()}
            return Pair(**q)
        raise ConfigError(f"a distillation pair must be a Pair or a dict, got {type(p).__name__}")

    @property
    def teacher_spec(self) -> str:
        return self.teacher if self.teacher is not None else self.student


@dataclass
class LevelInfo:
    """One distilled level as the dry run found it (:attr:`Distiller.levels`; read by :mod:`densekd.health`).

    key: the level's entry in ``Distiller.kd_losses``; pair: index into ``Distiller.pairs``; student / teacher:
    level labels (the student's names the ``kd/<level>/<term>`` loss keys); shapes as captured (before any
    resize); input_size: (H, W) of the batch the networks saw (after a detector's own resize), or None."""

    key: str
    pair: int
    student: str
    teacher: str
    student_shape: tuple[int, ...]
    teacher_shape: tuple[int, ...]
    input_size: tuple[int, int] | None = None

    def stride(self, role: str) -> float | None:
        """Input height / feature height of ``role`` ("student" or "teacher"), None when unknown."""
        shape = self.student_shape if role == "student" else self.teacher_shape
        if self.input_size is None or len(shape) < 4 or shape[2] == 0:
            return None
        return self.input_size[0] / shape[2]


class Level(NamedTuple):
    """One distilled level of one pair on one batch: ``pair`` is the index into the pairs, ``index`` the level's
    position within the pair, ``key`` its loss module's entry; the captured maps as they came."""

    pair: int
    index: int
    key: str
    s_label: str
    s: Tensor
    t_label: str
    t: Tensor


class Term(NamedTuple):
    """One weighted KD term: ``value`` is the pair's weight × the loss's ``name`` term on the student's ``level``."""

    level: str
    name: str
    value: Tensor

    @property
    def key(self) -> str:
        """``kd/<level>/<name>`` (:func:`densekd.run_folder.kd_key`)."""
        return kd_key(self.level, self.name)


def default_key(pair: int, label: str) -> str:
    """``<pair index>|<level label>``, dots made slashes (``nn.ModuleDict`` keys may not contain '.')."""
    return f"{pair}|{label}".replace(".", "/")


def check_shapes(pair: Pair, s_label: str, s: Tensor, t_label: str, t: Tensor) -> None:
    """One line when a student map cannot be distilled from its teacher map (batch, rank, or spatial size without
    ``resize``)."""
    if s.dim() != t.dim() or s.shape[0] != t.shape[0]:
        raise ValueError(
            f"cannot distill student {s_label} {tuple(s.shape)} from teacher {t_label} {tuple(t.shape)}: "
            f"batch size or rank differs"
        )
    if s.shape[2:] != t.shape[2:] and not pair.resize:
        raise ValueError(
            f"spatial sizes differ: student {s_label} {tuple(s.shape)} vs teacher {t_label} "
            f"{tuple(t.shape)}; set resize=True on this pair to interpolate the student map"
        )


class LevelLosses(nn.ModuleDict):
    """One densekd loss module per distilled level (``key -> module``), built from captured shapes, giving
    weighted, named terms.

    key: ``key(pair index, student level label) -> str`` names each level's module (its state-dict prefix);
    default :func:`default_key`.
    """

    def __init__(self, key: Callable[[int, str], str] = default_key) -> None:
        super().__init__()
        self._key_of = key

    def levels(self, pairs: Sequence[Pair], s_levels: LevelReader, t_levels: LevelReader) -> Iterator[Level]:
        """Every pair's levels, student and teacher matched in order (one line if their counts differ)."""
        for i, pair in enumerate(pairs):
            s_lv, t_lv = s_levels(pair.student), t_levels(pair.teacher_spec)
            if len(s_lv) != len(t_lv):
                raise ValueError(
                    f"pair {pair.student!r} → {pair.teacher_spec!r}: the student gives {len(s_lv)} level(s) "
                    f"({', '.join(s_lv)}), the teacher {len(t_lv)} ({', '.join(t_lv)})"
                )
            for j, ((s_label, s), (t_label, t)) in enumerate(zip(s_lv.items(), t_lv.items())):
                yield Level(i, j, self._key_of(i, s_label), s_label, s, t_label, t)

    def build_level(self, pair: Pair, level: Level, device: torch.device | str | None = None) -> None:
        """Check one level's shapes and build its loss module (channels inferred from the captured maps), unless its
        key already holds one."""
        check_shapes(pair, level.s_label, level.s, level.t_label, level.t)
        if level.key in self:
            return
        kwargs = dict(pair.kwargs)
        kwargs.setdefault("student_channels", level.s.shape[1])
        kwargs.setdefault("teacher_channels", level.t.shape[1])
        module = build_loss(pair.loss, **kwargs)
        self[level.key] = module.to(device) if device is not None else module

    def build(self, pairs: Sequence[Pair], s_levels: LevelReader, t_levels: LevelReader,
              device: torch.device | str | None = None) -> list[Level]:
        """:meth:`build_level` for every level of every pair; returns the levels found."""
        found: list[Level] = []
        for lv in self.levels(pairs, s_levels, t_levels):
            self.build_level(pairs[lv.pair], lv, device)
            found.append(lv)
        return found

    def level_terms(self, pair: Pair, level: Level, ctx: DistillContext, fp32: bool = False,
                    aux: Mapping[str, tuple[Tensor, Tensor]] | None = None,
                    teacher_map: Callable[[Tensor], Tensor] | None = None) -> list[Term]:
        """One level's loss terms, each × the pair's weight and named by the student's level label.

        The teacher's map is copied, by ``teacher_map`` if given (the Distiller's makes it fp32 after a bf16 teacher
        and NCHW-contiguous), else cloned (an inference-mode tensor cannot be saved for backward); a student map of
        another spatial size is interpolated (bilinear) to the teacher's where the pair allows ``resize``. ``aux``:
        ``{name: (student map, teacher map)}`` handed to the loss as ``ctx.aux``. ``fp32``: autocast off and every
        map and term in float32, whatever precision the networks ran in."""
        cast: Callable[[Tensor], Tensor] = (lambda x: x.float()) if fp32 else (lambda x: x)
        copy: Callable[[Tensor], Tensor] = teacher_map if teacher_map is not None else (lambda x: x.clone())
        precision = torch.autocast(device_type=level.s.device.type, enabled=False) if fp32 else contextlib.nullcontext()
        with precision:
            s, t = cast(level.s), cast(copy(level.t))
            if s.shape[2:] != t.shape[2:]:
                check_shapes(pair, level.s_label, s, level.t_label, t)
                s = F.interpolate(s, size=t.shape[2:], mode="bilinear", align_corners=False)
            if aux:
                ctx = DistillContext(**{**ctx.__dict__, "aux": {
                    name: (cast(sa), cast(copy(ta))) for name, (sa, ta) in aux.items()}})
            return [Term(level.s_label, name, pair.weight * cast(value))
                    for name, value in self[level.key](s, t, ctx).items()]

    def terms(self, pairs: Sequence[Pair], s_levels: LevelReader, t_levels: LevelReader, ctx: DistillContext,
              fp32: bool = False, teacher_map: Callable[[Tensor], Tensor] | None = None) -> list[Term]:
        """:meth:`level_terms` of every level of every pair, in pair and level order; a pair's ``aux`` specs are
        read with the same readers and matched to its levels in order."""
        out: list[Term] = []
        aux: dict[int, dict[str, tuple[list[Tensor], list[Tensor]]]] = {}
        for lv in self.levels(pairs, s_levels, t_levels):
            pair = pairs[lv.pair]
            if pair.aux and lv.pair not in aux:
                aux[lv.pair] = {name: (list(s_levels(a[0]).values()), list(t_levels(a[1]).values()))
                                for name, a in pair.aux.items()}
            level_aux = {name: (sv[lv.index], tv[lv.index]) for name, (sv, tv) in aux[lv.pair].items()} \
                if pair.aux else None
            out += self.level_terms(pair, lv, ctx, fp32, level_aux, teacher_map)
        return out


def single_levels(maps: Mapping[str, Tensor]) -> LevelReader:
    """A level reader for captures that hold one map per spec (``{spec: tensor}``): ``spec -> {spec: tensor}``."""
    return lambda spec: OrderedDict([(spec, maps[spec])])


__all__ = ["Level", "LevelInfo", "LevelLosses", "LevelReader", "Pair", "Term", "check_shapes", "default_key",
           "single_levels"]
