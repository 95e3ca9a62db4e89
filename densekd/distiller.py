"""Distiller: a frozen teacher, a student, and distillation losses on named feature pairs.

    distiller = Distiller(student, teacher, [Pair("backbone", loss="acam_kd")], example_inputs=(images,))
    optimizer = torch.optim.SGD(distiller.trainable_parameters(), lr=0.01)
    losses = distiller(images, targets=targets)      # task terms + weighted KD terms + "loss"
    losses["loss"].backward()

Data flows one way: capture → losses. The teacher runs under ``torch.inference_mode`` and only as far
as the captured layers need (a hook stops its forward once everything is captured).
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from .capture import FeatureCapture, StopForward, parse_spec
from .errors import ConfigError
from .levels import LevelInfo, LevelLosses, Pair
from .losses.base import DistillContext
from .run_folder import kd_term


@dataclass
class KDSnapshot:
    """One batch's inputs to the KD modules (:meth:`Distiller.kd_snapshot`): student and teacher maps by capture
    spec, and the context."""

    student: dict[str, "OrderedDict[str, Tensor]"]
    teacher: dict[str, "OrderedDict[str, Tensor]"]
    context: DistillContext

    def student_levels(self, spec: str) -> "OrderedDict[str, Tensor]":
        return self.student[parse_spec(spec).text]

    def teacher_levels(self, spec: str) -> "OrderedDict[str, Tensor]":
        return self.teacher[parse_spec(spec).text]


#: ``teacher_amp`` choices (see :class:`Distiller`)
TEACHER_AMP = ("auto", "bf16", "none")


def fast_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` multiplies bf16 matrices in hardware: a CUDA GPU with native bf16 (Ampere or newer), a
    CPU with AVX512-BF16 or AMX. Elsewhere bf16 autocast is emulated and slower than fp32."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except TypeError:  # torch < 2.3 has no including_emulation (and counts no emulation)
            return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        cpu = getattr(torch, "cpu", None)
        checks = [getattr(cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
        return any(bool(c()) for c in checks if c is not None)
    return False



def _is_loss_dict(out: Any) -> bool:
    return isinstance(out, Mapping) and len(out) > 0 and all(
        isinstance(v, Tensor) and v.dim() == 0 for v in out.values()
    )


def task_losses(run: Callable[..., Any], name: str, task_loss: Callable[[Any, Any], Any] | None,
                inputs: Sequence[Any], targets: Any) -> dict[str, Tensor]:
    """A model's own task loss terms on one batch, shared by the Distiller, plain training and MasKD's stage 1.

    ``task_loss is None``: the model computes its losses (torchvision detectors), ``run(*inputs, targets)``
    must return a dict of scalar losses. Otherwise ``task_loss(run(*inputs), targets)`` (a tensor becomes
    ``{"loss_task_main": ...}``). ``name`` names the model in the error.
    """
    if task_loss is None:
        out = run(*inputs, targets) if targets is not None else run(*inputs)
        if not _is_loss_dict(out):
            raise TypeError(f"{name} did not return a dict of scalar losses; pass task_loss= to compute the task "
                            f"loss from its output")
        return dict(out)
    t = task_loss(run(*inputs), targets)
    return dict(t) if isinstance(t, Mapping) else {"loss_task_main": t}


class Distiller(nn.Module):
    """Student + frozen teacher + one loss module per distilled level.

    Args:
        student, teacher: any ``nn.Module``s.
        pairs: :class:`Pair` objects (or dicts with the same keys).
        task_loss: ``task_loss(student_output, targets) -> Tensor | dict``. Leave ``None`` for models that
            compute their own losses when given targets (torchvision detectors): they are then called as
            ``student(*inputs, targets)`` and must return a dict of scalar losses.
        example_inputs: a tuple of inputs for the shape-inferring dry run. Without it the dry run happens at
            the first forward, so create the optimizer afterwards (a warning says so).
        context_module: name of a student module whose output is ``(ImageList, targets)`` (torchvision's
            ``transform``), used to get boxes in the network's own input coordinates. Found automatically
            for torchvision detectors.
        ignore_index: the label of unlabelled pixels in segmentation targets, handed to the losses as
            ``context.ignore_index`` (the engine passes the task's ``data.ignore_index``).
        teacher_amp: how the frozen teacher's forward runs. ``"none"`` (default): like the rest of the step (in
            fp32, or under the caller's autocast). ``"bf16"``: under bf16 autocast, whatever the step does; the
            captured maps are handed to the losses in fp32. ``"auto"``: ``"bf16"`` where the device has bf16
            matrix units (:func:`fast_bf16`), else ``"none"``. Not the default: measured at the papers' sizes on
            CPU (``python benchmarks/real_size.py teacher``) bf16 with channels_last takes 0.46–0.61× the fp32
            forward, but moves the captured maps by ~1 % (relative; 40× what the images' own 8-bit quantisation
            moves them) and ACAM-KD's loss by 1–1.5 %.
        teacher_channels_last: ``True``: convert the teacher's 4-D weights to ``channels_last`` (NHWC) once here,
            so its convolutions run in that layout; the captured maps are handed to the losses contiguous (NCHW).
            Exact up to fp32 rounding (measured 2e-6 relative). ``"auto"``: on CPU (measured: 0.76–0.89× the NCHW
            forward in fp32, and bf16 is only fast in NHWC) and wherever the teacher runs in bf16; not for an fp32
            teacher on a GPU (not measured here). Decided for the device the teacher is on now. ``False``
            (default): that 2e-6 is not nothing — with it on, a weight-0 distillation in the Hugging Face
            integration no longer trains its student bit for bit like the plain Trainer
            (tests/test_integration_transformers.py), and runs made before it would not be reproduced; opt in
            where the teacher's forward dominates.
        call: how a network runs on a batch, ``call(model, args)``: ``args`` are the inputs (for the student's
            own task loss, when ``task_loss`` is None, the targets follow them). Default ``model(*args)``. For
            models called with keyword arguments, or a student run through a wrapper (DDP): the Hugging Face
            integration (:mod:`densekd.integrations.transformers`).
        kd_fp32: compute every KD term in float32 with autocast off (features cast to float32), whatever
            precision the forward ran in.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        pairs: Sequence[Pair | Mapping[str, Any]],
        task_loss: Callable[[Any, Any], Tensor | Mapping[str, Tensor]] | None = None,
        example_inputs: Sequence[Any] | None = None,
        context_module: str | None = None,
        ignore_index: int = 255,
        teacher_amp: str = "none",
        teacher_channels_last: bool | str = False,
        call: Callable[[nn.Module, tuple[Any, ...]], Any] | None = None,
        kd_fp32: bool = False,
    ) -> None:
        super().__init__()
        self.ignore_index = int(ignore_index)
        self.call = call
        self.kd_fp32 = bool(kd_fp32)
        if not pairs:
            raise ConfigError("Distiller needs at least one distillation pair")
        if teacher_amp not in TEACHER_AMP:
            raise ConfigError(f"teacher_amp: expected one of {', '.join(TEACHER_AMP)}, got {teacher_amp!r}")
        if not isinstance(teacher_channels_last, bool) and teacher_channels_last != "auto":
            raise ConfigError(f"teacher_channels_last: expected true, false or 'auto', got {teacher_channels_last!r}")
        self.student = student
        self.teacher = teacher
        self.pairs = [Pair.coerce(p) for p in pairs]
        self.task_loss = task_loss
        self._freeze_teacher()
        self.teacher_amp = teacher_amp
        if teacher_channels_last == "auto":
            teacher_channels_last = self._teacher_device().type == "cpu" or self._teacher_dtype() is not None
        self.teacher_channels_last = bool(teacher_channels_last)
        if self.teacher_channels_last:
            self.teacher.to(memory_format=torch.channels_last)  # 4-D weights only; others are left as they are
        s_specs = {p.student for p in self.pairs} | {a[0] for p in self.pairs for a in p.aux.values()}
        t_specs = {p.teacher_spec for p in self.pairs} | {a[1] for p in self.pairs for a in p.aux.values()}
        for s in s_specs | t_specs:
            parse_spec(s)
        self._s_cap = FeatureCapture(student, s_specs)
        self._t_cap = FeatureCapture(teacher, t_specs)
        if context_module is None:
            tr = getattr(student, "transform", None)
            if tr is not None and any(c.__name__ == "GeneralizedRCNNTransform" for c in type(tr).__mro__):
                context_module = "transform"
        self._ctx_cap = FeatureCapture(student, [context_module]) if context_module else None
        self._context_module = context_module
        for cap in self._captures():
            cap.enabled = False  # hooks record only inside the Distiller's own dry run and forward
        self.kd_losses = LevelLosses()  # key: "<pair index>|<level label>" (densekd.levels.default_key)
        self.levels: list[LevelInfo] = []  # filled by the dry run (setup)
        self._built = False
        self.iteration = 0
        self.max_iterations: int | None = None
        if example_inputs is not None:
            self.setup(*example_inputs)

    # ----------------------------------------------------------------- teacher
    def _freeze_teacher(self) -> None:
        self.teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> "Distiller":
        super().train(mode)
        self.teacher.eval()  # the teacher stays in eval mode whatever the student does
        return self

    def _captures(self) -> list[FeatureCapture]:
        return [c for c in (self._s_cap, self._t_cap, self._ctx_cap) if c is not None]

    def _teacher_dtype(self) -> torch.dtype | None:
        """The autocast dtype of the teacher's forward (None: none of its own; see ``teacher_amp``)."""
        if self.teacher_amp == "none":
            return None
        if self.teacher_amp == "auto" and not fast_bf16(self._teacher_device()):
            return None
        return torch.bfloat16

    def _teacher_device(self) -> torch.device:
        return next((p.device for p in self.teacher.parameters()), torch.device("cpu"))

    def _run_teacher(self, inputs: Sequence[Any]) -> None:
        self._t_cap.stop_when_complete = self._built
        dtype = self._teacher_dtype()
        amp = (torch.autocast(self._teacher_device().type, dtype=dtype) if dtype is not None
               else contextlib.nullcontext())
        with torch.inference_mode(), self._t_cap.recording(), amp:
            try:
                self._call(self.teacher, tuple(inputs))
            except StopForward:
                pass
        self._t_cap.stop_when_complete = False

    def _teacher_map(self, t: Tensor) -> Tensor:
        """A captured teacher map as the losses get it: a copy (an inference-mode tensor cannot be saved for
        backward), NCHW-contiguous, and in fp32 when the teacher's own autocast made it in bf16."""
        dtype = torch.float32 if self._teacher_dtype() is not None and t.dtype == torch.bfloat16 else t.dtype
        return t.to(dtype=dtype, memory_format=torch.contiguous_format, copy=True)

    def _run_student(self, *args: Any) -> Any:
        with contextlib.ExitStack() as stack:
            for cap in (self._s_cap, self._ctx_cap):
                if cap is not None:
                    stack.enter_context(cap.recording())
            return self._call(self.student, args)

    def _call(self, model: nn.Module, args: tuple[Any, ...]) -> Any:
        return self.call(model, args) if self.call is not None else model(*args)

    # ----------------------------------------------------------------- build
    @torch.no_grad()
    def setup(self, *example_inputs: Any) -> None:
        """Dry run on ``example_inputs``: infer every level's shapes and build its loss module."""
        was_training = self.student.training
        self.student.eval()
        try:
            self._run_student(*example_inputs)
        finally:
            self.student.train(was_training)
        self._run_teacher(example_inputs)
        self._t_cap.expected_calls = self._t_cap.call_counts()
        device = next((p.device for p in self.student.parameters()), torch.device("cpu"))
        input_size = self._input_size(example_inputs)
        found = self.kd_losses.build(self.pairs, self._s_cap.levels, self._t_cap.levels, device)
        self.levels = [LevelInfo(lv.key, lv.pair, lv.s_label, lv.t_label, tuple(lv.s.shape), tuple(lv.t.shape),
                                 input_size) for lv in found]
        self._built = True
        for cap in self._captures():
            cap.clear()

    def _input_size(self, inputs: Sequence[Any]) -> tuple[int, int] | None:
        """(H, W) of the batch the student saw: a detector's resized batch tensor, else the first input's."""
        if self._ctx_cap is not None and self._ctx_cap.raw(self._context_module):
            return tuple(self._ctx_cap.raw(self._context_module)[-1][0].tensors.shape[-2:])
        x = inputs[0] if inputs else None
        return tuple(x.shape[-2:]) if isinstance(x, Tensor) and x.dim() >= 3 else None

    # ----------------------------------------------------------------- forward
    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Student parameters and every KD module's (aligners, attention, mask units)."""
        for p in self.student.parameters():
            if p.requires_grad:
                yield p
        for p in self.kd_losses.parameters():
            if p.requires_grad:
                yield p

    def student_state_dict(self) -> "OrderedDict[str, Tensor]":
        """Exactly the plain student's state dict: no KD module, no teacher."""
        return self.student.state_dict()

    def _context(self, inputs: Sequence[Any], targets: Any) -> DistillContext:
        ctx = DistillContext(iteration=self.iteration, max_iterations=self.max_iterations)
        if self._ctx_cap is not None and self._ctx_cap.raw(self._context_module):
            image_list, tgts = self._ctx_cap.raw(self._context_module)[-1]
            size = tuple(image_list.tensors.shape[-2:])
            if tgts:
                ctx = DistillContext.from_targets(tgts, size)
            else:
                ctx.image_size = size
        elif isinstance(targets, Tensor):
            ctx.masks = targets
            ctx.ignore_index = self.ignore_index
            ctx.image_size = tuple(targets.shape[-2:])
        elif isinstance(targets, Sequence) and targets and isinstance(targets[0], Mapping) and "boxes" in targets[0]:
            x = inputs[0]
            size = tuple(x.shape[-2:]) if isinstance(x, Tensor) else None
            ctx = DistillContext.from_targets(targets, size)
        ctx.iteration, ctx.max_iterations = self.iteration, self.max_iterations
        return ctx

    def forward(self, *inputs: Any, targets: Any = None, context: DistillContext | None = None) -> dict[str, Tensor]:
        """Returns task terms, ``kd/<level>/<term>`` terms (weighted), ``loss_task``, ``loss_kd`` and ``loss``."""
        if not self._built:
            warnings.warn(
                "Distiller built its KD modules at the first forward; create the optimizer after this call "
                "(or pass example_inputs=...) so it includes them",
                stacklevel=2,
            )
            self.setup(*inputs)
        task = task_losses(self._run_student, type(self.student).__name__, self.task_loss, inputs, targets)
        self._run_teacher(inputs)
        ctx = context if context is not None else self._context(inputs, targets)

        result: dict[str, Tensor] = dict(task)
        loss_task = sum(task.values())
        loss_kd = loss_task.new_zeros(()) if isinstance(loss_task, Tensor) else torch.zeros(())
        if self.kd_fp32:
            loss_kd = loss_kd.float()
        for term in self.kd_losses.terms(self.pairs, self._s_cap.levels, self._t_cap.levels, ctx, fp32=self.kd_fp32,
                                         teacher_map=self._teacher_map):
            result[term.key] = term.value
            loss_kd = loss_kd + term.value
        result["loss_task"] = loss_task
        result["loss_kd"] = loss_kd
        result["loss"] = loss_task + loss_kd
        for cap in self._captures():  # the losses hold what they need; drop the features now
            cap.clear()
        return result

    def teacher_levels(self, inputs: Sequence[Any], spec: str) -> "OrderedDict[str, Tensor]":
        """The frozen teacher's captured levels of ``spec`` (one of the pairs' teacher specs) on ``inputs``:
        run under inference mode and only as far as the captures need, returned as ordinary tensors."""
        if not self._built:
            self.setup(*inputs)
        self._run_teacher(inputs)
        try:
            return OrderedDict((k, self._teacher_map(v)) for k, v in self._t_cap.levels(spec).items())
        finally:
            self._t_cap.clear()

    def kd_snapshot(self, *inputs: Any, targets: Any = None) -> KDSnapshot:
        """What the KD modules read from one batch, frozen: every captured student map as a fresh leaf (it takes
        the gradient the KD terms send the student), the teacher's maps and the context. With :meth:`kd_loss` the
        KD modules alone can be run and timed apart from both networks (``densekd bench``'s ``modules alone``).
        The student's forward runs without gradient."""
        if not self._built:
            self.setup(*inputs)
        with torch.no_grad():
            task_losses(self._run_student, type(self.student).__name__, self.task_loss, inputs, targets)
        self._run_teacher(inputs)
        try:
            ctx = self._context(inputs, targets)
            student = {spec: OrderedDict((k, v.detach().clone().requires_grad_(v.is_floating_point()))
                                         for k, v in self._s_cap.levels(spec).items()) for spec in self._s_cap.specs}
            teacher = {spec: OrderedDict((k, v.clone()) for k, v in self._t_cap.levels(spec).items())
                       for spec in self._t_cap.specs}
        finally:
            for cap in self._captures():
                cap.clear()
        return KDSnapshot(student, teacher, ctx)

    def kd_loss(self, snapshot: KDSnapshot) -> Tensor:
        """The weighted KD loss (``loss_kd`` of :meth:`forward`) on a :meth:`kd_snapshot`: the KD modules only."""
        terms = self.kd_losses.terms(self.pairs, snapshot.student_levels, snapshot.teacher_levels,
                                     snapshot.context, fp32=self.kd_fp32, teacher_map=self._teacher_map)
        return sum((t.value for t in terms), torch.zeros((), device=self._teacher_device()))

    def kd_terms(self, losses: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Sum each KD term over levels: ``{"loss_channel": ..., "loss_spatial": ...}`` (for logs)."""
        out: dict[str, Tensor] = {}
        for k, v in losses.items():
            lt = kd_term(k)
            if lt is not None:
                out[lt[1]] = out.get(lt[1], 0) + v.detach()
        return out
