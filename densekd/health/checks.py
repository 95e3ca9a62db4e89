"""KD health checks: one :class:`Check` line each, pure where they can be (the teacher's weights, every pair and level,
the KD/task ratio band) and on a built trainer where they must run something (the teacher against chance on a few
validation batches, one training batch forward and backward). ``densekd doctor`` (:mod:`densekd.tools.doctor`)
prints them before training; the engine prints the cheap ones when a run starts (:mod:`densekd.health`).
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import io
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..run_folder import kd_term

OK, INFO, WARN, FAIL = "ok", "info", "warn", "fail"

#: KD/task ratio band (loss and gradient norm) outside which the doctor and iteration 1 warn
RATIO_LOW, RATIO_HIGH = 0.01, 10.0
#: the teacher "scores at chance" below chance + this margin (metric on a 0–1 scale)
CHANCE_MARGIN = {"segmentation": 0.02, "detection": 0.01}
#: the doctor warns when the KD modules' forward does more matrix work than this multiple of the student's
KD_COST_HIGH = 1.0


@dataclass
class Check:
    """One line of a health report: ``status`` is ``ok``, ``info``, ``warn`` or ``fail``."""

    status: str
    topic: str
    message: str

    def line(self) -> str:
        return f"{self.status.upper():<4} {self.topic}: {self.message}"


# --------------------------------------------------------------------------- small helpers
def _fmt(x: float) -> str:
    if x is None or not math.isfinite(x):
        return str(x)
    return f"{x:.3g}"


def size_text(n: int) -> str:
    """A byte count as text: ``"512 B"``, ``"3.0 MB"`` (powers of 1000)."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"  # pragma: no cover


def flop_text(n: float) -> str:
    """A FLOP count as text: ``"3.1 GFLOP"`` (powers of 1000)."""
    for unit in ("FLOP", "kFLOP", "MFLOP", "GFLOP", "TFLOP"):
        if n < 1000 or unit == "TFLOP":
            return f"{n:.0f} {unit}" if unit == "FLOP" else f"{n:.3g} {unit}"
        n /= 1000
    return f"{n} FLOP"  # pragma: no cover


def total_norm(grads: Sequence[Tensor | None]) -> float:
    """L2 norm of a list of gradients (None = no gradient)."""
    gs = [g for g in grads if g is not None]
    if not gs:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in gs])))


def level_terms(losses: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{level: {term: value}}`` from the Distiller's ``kd/<level>/<term>`` keys (terms are ``loss_*``)."""
    out: dict[str, dict[str, Any]] = {}
    for k, v in losses.items():
        lt = kd_term(k)
        if lt is not None:
            out.setdefault(lt[0], {})[lt[1]] = v
    return out


def suggested_weight(weight: float, ratio: float) -> float:
    """The ``distill.weight`` that brings a KD/task ratio (loss or gradient, both linear in it) to 1."""
    return weight / ratio


def feature_distance(module: nn.Module, student: Tensor, teacher: Tensor) -> float | None:
    """Student–teacher feature distance at one level: 1 − the Pearson correlation between the student map
    (through the KD module's own aligner, if it has one) and the teacher map, per channel over batch and
    positions, averaged over channels. 0 = equal up to a per-channel affine map, 1 = unrelated. Independent
    of the KD term's scale and weights, so a KD term can be compared with it. None when the shapes differ."""
    with torch.no_grad():
        align = getattr(module, "align", None)
        x = align(student) if isinstance(align, nn.Module) else student
        if x.shape != teacher.shape or x.dim() < 2:
            return None
        x = x.detach().float().transpose(0, 1).reshape(x.shape[1], -1)
        y = teacher.detach().float().transpose(0, 1).reshape(teacher.shape[1], -1)
        x = x - x.mean(dim=1, keepdim=True)
        y = y - y.mean(dim=1, keepdim=True)
        corr = (x * y).sum(dim=1) / (x.norm(dim=1) * y.norm(dim=1) + 1e-12)
        return float(1.0 - corr.mean())


# --------------------------------------------------------------------------- teacher
def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def teacher_source(model_cfg: Any) -> Check:
    """Where the teacher's weights come from: a checkpoint file (size, sha256, date), torchvision weights,
    or a random initialisation (``random_init: true``, tests only: a warning)."""
    spec = getattr(model_cfg, "teacher", None)
    if spec is None:
        return Check(FAIL, "teacher", "model.teacher is not configured")
    ckpt, weights = getattr(spec, "checkpoint", None), getattr(spec, "weights", None)
    if ckpt and str(ckpt).startswith("asset:"):  # a teacher shipped in the package, checksum-verified on load
        from ..assets import resolve_checkpoint
        from ..errors import DenseKDError

        try:
            path = resolve_checkpoint(ckpt, "model.teacher.checkpoint")
        except DenseKDError as e:
            return Check(FAIL, "teacher", str(e))
        return Check(INFO, "teacher", f"weights from model.teacher.checkpoint {ckpt}: shipped with densekd, "
                                      f"checksum verified ({os.path.relpath(path)}, {size_text(os.path.getsize(path))}, "
                                      f"sha256 {_sha256(path)[:12]})")
    if ckpt:
        if not os.path.isfile(ckpt):
            return Check(FAIL, "teacher", f"model.teacher.checkpoint {ckpt!r} does not exist")
        st = os.stat(ckpt)
        when = datetime.datetime.fromtimestamp(st.st_mtime).strftime("%Y-%m-%d %H:%M")
        return Check(INFO, "teacher", f"weights from model.teacher.checkpoint {ckpt} ({size_text(st.st_size)}, "
                                      f"sha256 {_sha256(ckpt)[:12]}, modified {when})")
    if weights:
        return Check(INFO, "teacher", f"weights from torchvision {weights} (model.teacher.weights)")
    if getattr(spec, "random_init", False):
        return Check(WARN, "teacher", "randomly initialised (model.teacher.random_init: true): it teaches "
                                      "nothing; for tests only")
    return Check(FAIL, "teacher", "no weights: set model.teacher.checkpoint")


class _FirstBatches:
    """The first ``n`` batches of ``loader``; ``dataset`` is the loader's (tasks read names from it)."""

    def __init__(self, loader: Any, n: int) -> None:
        self.loader, self.n, self.dataset = loader, n, loader.dataset

    def __iter__(self) -> Iterator[Any]:
        for i, b in enumerate(self.loader):
            if i >= self.n:
                return
            yield b


def chance_level(task_name: str, batches: Iterable[Any], num_classes: int, ignore_index: int = 255,
                 class_names: Sequence[str] | None = None) -> tuple[float, str]:
    """The primary metric (0–1) a model that learned nothing scores on ``batches``, and what that means.

    segmentation: the mIoU of predicting the most frequent class everywhere (its IoU is its pixel share;
    every other class present scores 0; mIoU averages over the classes present, as
    :mod:`densekd.metrics.segmentation` does). detection: AP ≈ 0 (no box found)."""
    if task_name == "segmentation":
        counts = torch.zeros(num_classes, dtype=torch.float64)
        for batch in batches:
            masks = batch[1]
            m = masks[masks != ignore_index].long().flatten().cpu()
            m = m[(m >= 0) & (m < num_classes)]
            counts += torch.bincount(m, minlength=num_classes).double()
        total = float(counts.sum())
        if total == 0:
            return 0.0, "no labelled pixel in these batches"
        k = int(counts.argmax())
        present = int((counts > 0).sum())
        share = float(counts[k]) / total
        name = repr(class_names[k]) if class_names is not None and k < len(class_names) else f"class {k}"
        return share / present, f"predicting the most frequent class ({name}, {100 * share:.1f} % of the pixels) everywhere"
    return 0.0, "a detector that has learned nothing finds no box: AP ≈ 0"


def _quiet(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` with its printing and progress bars kept out of the report."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return fn()


#: the metric a check leads with, the first one an evaluation reports (segmentation, detection)
PRIMARY_METRICS = ("mIoU", "AP", "mAP")


def primary_value(metrics: Mapping[str, float]) -> tuple[str, float] | None:
    """``(name, value)`` of the first of :data:`PRIMARY_METRICS` in ``metrics``; None when it has none."""
    for k in PRIMARY_METRICS:
        if k in metrics:
            return k, float(metrics[k])
    return None


def teacher_checks(trainer: Any, batches: int) -> list[Check]:
    """The teacher's metric on up to ``batches`` validation batches (``eval.batch_size`` each) against chance
    (failure) and against the student's starting point on the same batches (warning)."""
    from torch.utils.data import DataLoader

    cfg, task = trainer.cfg, trainer.task
    val = trainer.val_set
    if val is None or len(val) == 0:
        return [Check(WARN, "teacher", "no validation data configured, so the teacher's metric is not checked")]
    n_img = min(len(val), batches * cfg.eval.batch_size)
    loader = DataLoader(val, batch_size=cfg.eval.batch_size, sampler=list(range(n_img)), num_workers=0,
                        collate_fn=task.collate)
    first = _FirstBatches(loader, batches)
    model = trainer.model
    t_metrics = _quiet(lambda: task.evaluate(model.teacher, first, trainer.device, None))
    s_metrics = _quiet(lambda: task.evaluate(model.student, first, trainer.device, None))
    t, s = primary_value(t_metrics), primary_value(s_metrics)
    if t is None or s is None:
        return [Check(WARN, "teacher", f"no primary metric in {sorted(t_metrics)}: the teacher's quality is not checked")]
    where = f"{n_img} validation image(s) ({math.ceil(n_img / cfg.eval.batch_size)} batch(es))"
    num_classes = getattr(getattr(cfg.model, "student", None), "num_classes", None) or getattr(cfg.model, "num_classes", 0)
    chance, what = chance_level(task.name, first, int(num_classes), getattr(task, "ignore_index", 255),
                                getattr(val, "class_names", None))
    return teacher_metric_checks(task.name, t[0], t[1], s[1], chance, what, where,
                                 "is model.teacher.checkpoint the right one (trained on this data, same classes "
                                 "and preprocessing)?")


def teacher_metric_checks(task_name: str, name: str, teacher: float, student: float, chance: float, what: str,
                          where: str, hint: str) -> list[Check]:
    """The teacher's metric ``name`` (0–1) on ``where`` against ``chance`` there (failure at chance, ending with
    ``hint``) and against the student's starting point (warning when it does not beat it). Shared by
    :func:`teacher_checks` and the integrations (:mod:`densekd.integrations.transformers`)."""
    margin = CHANCE_MARGIN.get(task_name, 0.01)
    out = []
    pct = lambda v: f"{100 * v:.2f}"  # noqa: E731
    if teacher < chance + margin:
        out.append(Check(FAIL, "teacher", f"{name} {pct(teacher)} on {where} is at chance level: {what} scores "
                                          f"{pct(chance)} there; {hint}"))
    else:
        out.append(Check(OK, "teacher", f"{name} {pct(teacher)} on {where}; chance there is {pct(chance)} ({what})"))
    if teacher <= student:
        out.append(Check(WARN, "teacher", f"does not beat the student's starting point on the same images "
                                          f"({name} {pct(teacher)} vs {pct(student)}): there is nothing to distil"))
    else:
        out.append(Check(OK, "student", f"starting point {name} {pct(student)} on the same images (the teacher is "
                                        f"{pct(teacher - student)} points ahead)"))
    return out


# --------------------------------------------------------------------------- pairs and levels
def aligner_text(module: nn.Module) -> str:
    a = getattr(module, "align", None)
    if a is None:
        return "none"
    if isinstance(a, nn.Identity):
        return "identity"
    if isinstance(a, nn.Conv2d):
        k = "×".join(str(v) for v in a.kernel_size)
        return f"{k} conv {a.in_channels}→{a.out_channels}"
    return type(a).__name__


def _stride(v: float | None) -> str:
    if v is None:
        return "?"
    return str(int(v)) if abs(v - round(v)) < 1e-6 else f"{v:.2f}"


def level_checks(distiller: Any, num_classes: int | None = None) -> list[Check]:
    """One line per pair and level: student and teacher module, shape, channels, stride, aligner, resize; and a
    warning for a pair that looks like the class scores (``num_classes`` channels on both sides) but reaches its
    loss through a learnable aligner: a logit loss compares the scores themselves (docs/methods.md, "CWD")."""
    out = []
    for info in distiller.levels:
        pair = distiller.pairs[info.pair]
        mod = distiller.kd_losses[info.key]
        ss, ts = info.student_shape, info.teacher_shape
        resize = "no"
        if tuple(ss[2:]) != tuple(ts[2:]):
            resize = f"student {'×'.join(map(str, ss[2:]))} → {'×'.join(map(str, ts[2:]))}"
        out.append(Check(INFO, f"pair {info.pair}", (
            f"{info.student} {list(ss)} ({ss[1]} ch, stride {_stride(info.stride('student'))}) ← teacher "
            f"{info.teacher} {list(ts)} ({ts[1]} ch, stride {_stride(info.stride('teacher'))}); "
            f"{pair.loss} × {pair.weight:g}; aligner {aligner_text(mod)}; resize {resize}")))
        if (num_classes and ss[1] == ts[1] == num_classes and getattr(mod, "compares_distributions", False)
                and isinstance(getattr(mod, "align", None), nn.Conv2d)):
            out.append(Check(WARN, f"pair {info.pair}", (
                f"{info.student} has {num_classes} channels on both sides, the number of classes: if these are the "
                f"class scores, {pair.loss} sees them through a learnable {aligner_text(mod)} (a map the KD term can "
                f"fit instead of the student); a logit loss compares the scores themselves: distill.kwargs.align="
                f"identity (docs/methods.md, \"CWD\")")))
    return out


# --------------------------------------------------------------------------- one batch
def _ratio(kd: float, task: float) -> float:
    if task == 0:
        return math.inf if kd > 0 else math.nan
    return kd / task


def ratio_checks(level: str, kind: str, ratio: float, weight: float, where: str,
                 knob: str = "distill.weight") -> list[Check]:
    """A warning when a KD/task ``ratio`` (``kind``: "loss" or "gradient-norm") is outside [0.01, 10], naming the
    value of ``knob`` (the setting that scales every KD term) that would bring it to 1."""
    if not math.isfinite(ratio) or RATIO_LOW <= ratio <= RATIO_HIGH:
        return []
    if ratio > RATIO_HIGH:
        what = f"KD/task {kind} ratio {_fmt(ratio)} > {RATIO_HIGH:g}: the KD term dominates the task"
    else:
        what = f"KD/task {kind} ratio {_fmt(ratio)} < {RATIO_LOW:g}: the KD term is too small to matter"
    if ratio > 0:
        what += f"; {knob}={_fmt(suggested_weight(weight, ratio))} would bring it to 1"
    return [Check(WARN, where, f"{level}: {what}")]


def cost_split(flops: Mapping[str, int], root: str, levels: Sequence[Any] = ()) -> tuple[int, int, dict[str, int]]:
    """(student, teacher, KD modules per level key) of one Distiller forward's matrix-product FLOPs counted per
    module (``flops``: module name -> FLOPs, as ``torch.utils.flop_counter.FlopCounterMode`` names them, the root
    module as ``root``). The KD modules are ``root.kd_losses.<key>`` (``levels``: :attr:`Distiller.levels`; with
    them the root is found by its KD modules' names, e.g. under DDP); the teacher is the rest."""
    for lv in levels[:1]:  # the root as the counter named it: the Distiller, or e.g. "DistributedDataParallel.module"
        tail = f".kd_losses.{lv.key}"
        root = next((n[: -len(tail)] for n in flops if n.endswith(tail)), root)
    total = int(flops.get("Global", flops.get(root, 0)))
    student = int(flops.get(f"{root}.student", 0))
    keys = [lv.key for lv in levels] or sorted({n[len(root) + 11:].split(".", 1)[0] for n in flops
                                                if n.startswith(f"{root}.kd_losses.")})
    per = {k: int(flops.get(f"{root}.kd_losses.{k}", 0)) for k in keys}
    return student, max(total - student - sum(per.values()), 0), per


def cost_checks(flops: Mapping[str, int], root: str, levels: Sequence[Any] = ()) -> list[Check]:
    """What distillation adds to a step's compute (:func:`cost_split` of one forward's FLOPs): a line with the
    student's, the teacher's and the KD modules' matrix-product FLOPs, per level, and a warning when the KD
    modules' forward does more than ``KD_COST_HIGH`` × the student's: attention over positions grows with the
    square of a level's H·W, so one fine level (an FPN's P2) can cost many student steps; it names the level that
    does most."""
    student, teacher, per = cost_split(flops, root, levels)
    kd = sum(per.values())
    where = "cost"
    text = (f"matrix products in one forward (torch.utils.flop_counter): student {flop_text(student)}, "
            f"teacher {flop_text(teacher)}, KD modules {flop_text(kd)}")
    if student > 0:
        text += f" = {_fmt(kd / student)}× the student's"
    info = {lv.key: lv for lv in levels}

    def name(key: str) -> str:
        lv = info.get(key)
        return key.split("|", 1)[-1] if lv is None else f"{lv.student} {list(lv.student_shape)}"

    if kd > 0 and len(per) > 1:
        text += "; by level: " + ", ".join(f"{name(k)} {100 * v / kd:.0f} %" for k, v in
                                            sorted(per.items(), key=lambda kv: -kv[1]))
    out = [Check(INFO, where, text)]
    if student > 0 and kd > KD_COST_HIGH * student:
        top, top_v = max(per.items(), key=lambda kv: kv[1])
        what = (f"the KD modules' forward does {_fmt(kd / student)}× the matrix work of the student's forward, "
                f"so a training step costs several plain ones (`densekd bench CONFIG` measures it)")
        if len(per) > 1:
            what += (f"; {name(top)} does {100 * top_v / kd:.0f} % of it — distilling without that level "
                     f"(distill.pairs) removes that share")
        else:
            what += f"; it all comes from {name(top)} — a level with fewer positions costs less"
        out.append(Check(WARN, where, what))
    return out


def module_flops(counter: Any) -> dict[str, int]:
    """Per module name, the FLOPs a finished ``FlopCounterMode`` counted (every operator summed)."""
    return {k: int(sum(v.values())) for k, v in counter.get_flop_counts().items()}


def one_batch_checks(trainer: Any) -> list[Check]:
    """One training batch, forward and backward, as the first training step would run it (no update)."""
    model, task, cfg = trainer.model, trainer.task, trainer.cfg
    weight = cfg.distill.weight if cfg.distill is not None else 1.0
    batch = task.to_device(next(iter(trainer.loader)), trainer.device)
    inputs, targets = task.model_inputs(batch)
    return batch_checks(model, inputs, targets, weight=weight, max_iterations=cfg.train.max_iters,
                        autocast=trainer.autocast)


def batch_checks(model: Any, inputs: Sequence[Any], targets: Any, *, weight: float = 1.0,
                 max_iterations: int | None = None, autocast: Callable[[], Any] = contextlib.nullcontext,
                 context: Any = None, knob: str = "distill.weight") -> list[Check]:
    """A :class:`~densekd.Distiller` on one batch, forward (under ``autocast()``) and backward, as a training step
    runs it, without an update: per level the KD term and the gradient norm it puts on the student next to the
    task term's, their ratios (warnings outside [0.01, 10] naming the ``knob`` value that brings them to 1), a
    failure when a KD term puts no gradient on the student or when anything reaches the teacher, and what the KD
    modules add to the step's matrix work (:func:`cost_checks`, counted on this forward). Gradients are
    cleared afterwards; the model is left in train mode (its buffers as the forward left them)."""
    from ..ops.flops import flop_counter

    model.train()
    model.iteration, model.max_iterations = 0, max_iterations
    teacher_before = {k: v.detach().clone() for k, v in model.teacher.state_dict().items()}
    where = "one batch"
    with autocast(), flop_counter() as counter:
        losses = model(*inputs, targets=targets, context=context)
    cost = cost_checks(module_flops(counter), type(model).__name__, getattr(model, "levels", ()))
    bad = {k: float(v) for k, v in losses.items() if not math.isfinite(float(v.detach()))}
    if bad:
        return [Check(FAIL, where, "non-finite loss on the first batch: " + ", ".join(f"{k}={v}" for k, v in bad.items()))]
    params = [p for p in model.student.parameters() if p.requires_grad]
    task_v = float(losses["loss_task"].detach())
    terms = level_terms(losses)
    g_task_list = torch.autograd.grad(losses["loss_task"], params, retain_graph=True, allow_unused=True)
    g_task = total_norm(g_task_list)
    out: list[Check] = []
    reached: set[int] = set()
    for level, tt in terms.items():
        v = sum(tt.values())
        kd = float(v.detach())
        if isinstance(v, Tensor) and v.requires_grad:
            gl = torch.autograd.grad(v, params, retain_graph=True, allow_unused=True)
            reached |= {i for i, g in enumerate(gl) if g is not None and bool(g.detach().abs().sum() > 0)}
            g_kd = total_norm(gl)
        else:
            g_kd = 0.0
        parts = ", ".join(f"{k} {_fmt(float(x.detach()))}" for k, x in tt.items())
        r_loss, r_grad = _ratio(kd, task_v), _ratio(g_kd, g_task)
        out.append(Check(INFO, where, (
            f"{level}: KD {_fmt(kd)} ({parts}) vs task {_fmt(task_v)}, KD/task {_fmt(r_loss)}; gradient norm on "
            f"the student: KD {_fmt(g_kd)} vs task {_fmt(g_task)}, ratio {_fmt(r_grad)}")))
        out += ratio_checks(level, "loss", r_loss, weight, where, knob)
        out += ratio_checks(level, "gradient-norm", r_grad, weight, where, knob)
        if not (g_kd > 0 and math.isfinite(g_kd)):
            out.append(Check(FAIL, "gradient", (
                f"the KD term at {level} puts {'no' if g_kd == 0 else 'a non-finite'} gradient on the student "
                f"(norm {g_kd}): distillation would do nothing there. Is the captured student output detached "
                f"(computed under no_grad, .detach(), a buffer)?")))
    for name, mod in model.kd_losses.items():
        if getattr(mod, "needs_preparation", False) and not getattr(mod, "prepared", True):
            out.append(Check(INFO, where, f"{type(mod).__name__} at {name.split('|', 1)[-1]} is fitted on the teacher "
                                          f"when training starts; measured here before that fit"))
    out += cost
    losses["loss"].backward()
    if reached and all(c.status != FAIL for c in out if c.topic == "gradient"):
        out.append(Check(OK, "gradient", f"the KD terms reach the student: {len(reached)} of its {len(params)} "
                                         f"trainable parameter tensors receive a KD gradient"))
    t_params = list(model.teacher.parameters())
    trainable = [n for n, p in model.teacher.named_parameters() if p.requires_grad]
    with_grad = [n for n, p in model.teacher.named_parameters() if p.grad is not None]
    after = model.teacher.state_dict()
    changed = [k for k, v in teacher_before.items() if not torch.equal(v, after[k].detach())]
    if trainable or with_grad or changed or model.teacher.training:
        what = []
        if trainable:
            what.append(f"{len(trainable)} parameter(s) require grad, e.g. {trainable[0]}")
        if with_grad:
            what.append(f"{len(with_grad)} received a gradient, e.g. {with_grad[0]}")
        if changed:
            what.append(f"{len(changed)} tensor(s) of its state changed, e.g. {changed[0]}")
        if model.teacher.training:
            what.append("it is in train mode")
        out.append(Check(FAIL, "gradient", "the teacher is not frozen: " + "; ".join(what)))
    else:
        out.append(Check(OK, "gradient", f"nothing reaches the teacher: no gradient on its {len(t_params)} "
                                         f"parameter tensors, its weights and buffers unchanged, eval mode"))
    model.zero_grad(set_to_none=True)
    return out


@dataclass
class DoctorReport:
    """The checks of one doctor run (``densekd doctor``, or an integration's pre-training checks), in order."""

    checks: list[Check] = field(default_factory=list)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == FAIL]

    @property
    def warnings(self) -> list[Check]:
        return [c for c in self.checks if c.status == WARN]

    @property
    def exit_status(self) -> int:
        return 1 if self.failures else 0

    def text(self) -> str:
        return "\n".join(c.line() for c in self.checks)
