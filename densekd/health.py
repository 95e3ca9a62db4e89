"""KD health: the checks ``densekd doctor`` runs before training and the guards the engine runs during it.

Distillation fails in two quiet ways: it does nothing (a teacher that was never loaded, a KD term that is 0
or puts no gradient on the student, masks that collapsed) or it wrecks training (a KD term thousands of times
the task loss). This module says so, in one line each, before the run is lost.

**Before training** — :func:`doctor` (``densekd doctor CONFIG [key=value …] [--batches N]``) builds what
``densekd train`` would build, trains nothing and prints one report:

* teacher: where its weights came from (:func:`teacher_source`); its metric on up to N validation batches
  against chance on the same batches (:func:`chance_level`): **failure** at chance ("is its checkpoint the
  right one?"); a warning when it does not beat the student's starting point there (:func:`teacher_checks`);
* every pair and level: student and teacher module, shape, channels, stride, aligner, resize
  (:func:`level_checks`);
* one training batch, forward and backward (:func:`one_batch_checks`): per level the KD term and the
  gradient norm it puts on the student, the task term's beside it, and their ratios; a warning when a ratio is
  above 10 or below 0.01, with the ``distill.weight`` that would bring it to 1 (both scale linearly with
  it); **failure** when a KD term puts no gradient on the student or anything reaches the teacher.

Exit status of the command: 0 no failure (warnings allowed), 1 a check failed, 2 the config cannot be built.

**During training** — :class:`TrainingGuards`, run by the engine (:mod:`densekd.engine.trainer`, on by
default, ``train.guards: false`` turns them off). At start the cheap checks above print one line each
(teacher source, levels); at iteration 1 the KD/task loss and gradient ratios per level (the doctor's
thresholds). Then, per level, into ``log.csv`` and TensorBoard (column names in the trainer's docstring): the
KD/task loss ratio every ``log_every``, the gradient-norm ratio at iteration 1 and every
``train.grad_ratio_every`` iterations, the student–teacher feature distance (:func:`feature_distance`) and,
for KD modules with ``mask_statistics()`` (ACAM-KD), each mask statistic. One-line warnings, each printed
once and kept for the end-of-run summary and ``health.json``, when

* a KD term (each ``kd/<level>/loss_*``) falls below 1 % of its first value while the feature distance has
  not fallen to half of its own (collapse: distillation switched itself off; terms a loss lists in
  ``regularizer_terms``, such as ACAM-KD's Dice diversity, do not count);
* ACAM-KD masks' mean leaves [0.01, 0.99], or the spatial masks' smallest per-mask spatial std falls below
  1e-3 once they have left their initial state (≈ 0.5 everywhere, constant too): after having been above
  1e-3, or with a mask's mean more than 0.25 from 0.5, i.e. gates ≈ 0 or 1 over the whole image
  (collapse, saturation; methods.md, "Optimisation of the mask modules");
* the KD/task gradient-norm ratio exceeds 100 (divergence ahead);
* one level's KD/task gradient-norm ratio is 10× or more the median of the other levels' (one level, e.g. the
  1×1 P6/P7 maps of a small detector's FPN, dominates the distillation): the warning names the level and the
  pair weight that brings it to the others' median.
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import io
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from .errors import ConfigError

OK, INFO, WARN, FAIL = "ok", "info", "warn", "fail"

#: KD/task ratio band (loss and gradient norm) outside which the doctor and iteration 1 warn
RATIO_LOW, RATIO_HIGH = 0.01, 10.0
#: KD/task gradient-norm ratio above which training warns of divergence
GRAD_RATIO_DIVERGENCE = 100.0
#: one level's KD/task gradient-norm ratio at least this many times the median of the other levels': it dominates
LEVEL_DOMINANCE = 10.0
#: a KD term below this fraction of its first value is "collapsed" (if the feature distance has not fallen)
COLLAPSE_FRACTION = 0.01
#: the feature distance "has fallen" once it is below this fraction of its first value
DISTANCE_FALLEN = 0.5
#: ACAM-KD mask mean band and smallest per-mask spatial std
MASK_MEAN_LOW, MASK_MEAN_HIGH, MASK_STD_MIN = 0.01, 0.99, 1e-3
#: a spatial mask "was spatial" once its per-mask spatial std reached this (fresh masks under z_norm="spatial" start
#: at a spatial std of ~1e-3: units N(0, 0.01²) over a standardised Z — not yet a selection that can "fall")
MASK_STD_WAS_SPATIAL = 1e-2
#: a mask whose mean is this far from 0.5 (its initial value) is a gate, not a fresh mask
MASK_GATE_SHIFT = 0.25
#: the teacher "scores at chance" below chance + this margin (metric on a 0–1 scale)
CHANCE_MARGIN = {"segmentation": 0.02, "detection": 0.01}
#: the file the engine writes into the run folder
HEALTH_FILE = "health.json"


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


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"  # pragma: no cover


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
        if k.startswith("kd/") and "/" in k[3:]:
            level, term = k[3:].rsplit("/", 1)
            if term.startswith("loss_"):
                out.setdefault(level, {})[term] = v
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
        from .assets import resolve_checkpoint
        from .errors import DenseKDError

        try:
            path = resolve_checkpoint(ckpt, "model.teacher.checkpoint")
        except DenseKDError as e:
            return Check(FAIL, "teacher", str(e))
        return Check(INFO, "teacher", f"weights from model.teacher.checkpoint {ckpt}: shipped with densekd, "
                                      f"checksum verified ({os.path.relpath(path)}, {_size(os.path.getsize(path))}, "
                                      f"sha256 {_sha256(path)[:12]})")
    if ckpt:
        if not os.path.isfile(ckpt):
            return Check(FAIL, "teacher", f"model.teacher.checkpoint {ckpt!r} does not exist")
        st = os.stat(ckpt)
        when = datetime.datetime.fromtimestamp(st.st_mtime).strftime("%Y-%m-%d %H:%M")
        return Check(INFO, "teacher", f"weights from model.teacher.checkpoint {ckpt} ({_size(st.st_size)}, "
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


def _primary(metrics: Mapping[str, float]) -> tuple[str, float] | None:
    for k in ("mIoU", "AP", "mAP"):
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
    t, s = _primary(t_metrics), _primary(s_metrics)
    if t is None or s is None:
        return [Check(WARN, "teacher", f"no primary metric in {sorted(t_metrics)}: the teacher's quality is not checked")]
    name, tv = t
    where = f"{n_img} validation image(s) ({math.ceil(n_img / cfg.eval.batch_size)} batch(es))"
    num_classes = getattr(getattr(cfg.model, "student", None), "num_classes", None) or getattr(cfg.model, "num_classes", 0)
    chance, what = chance_level(task.name, first, int(num_classes), getattr(task, "ignore_index", 255),
                                getattr(val, "class_names", None))
    margin = CHANCE_MARGIN.get(task.name, 0.01)
    out = []
    pct = lambda v: f"{100 * v:.2f}"  # noqa: E731
    if tv < chance + margin:
        out.append(Check(FAIL, "teacher", f"{name} {pct(tv)} on {where} is at chance level: {what} scores "
                                          f"{pct(chance)} there; is model.teacher.checkpoint the right one "
                                          f"(trained on this data, same classes and preprocessing)?"))
    else:
        out.append(Check(OK, "teacher", f"{name} {pct(tv)} on {where}; chance there is {pct(chance)} ({what})"))
    sv = s[1]
    if tv <= sv:
        out.append(Check(WARN, "teacher", f"does not beat the student's starting point on the same images "
                                          f"({name} {pct(tv)} vs {pct(sv)}): there is nothing to distil"))
    else:
        out.append(Check(OK, "student", f"starting point {name} {pct(sv)} on the same images (the teacher is "
                                        f"{pct(tv - sv)} points ahead)"))
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


def level_checks(distiller: Any) -> list[Check]:
    """One line per pair and level: student and teacher module, shape, channels, stride, aligner, resize."""
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
    return out


# --------------------------------------------------------------------------- one batch
def _ratio(kd: float, task: float) -> float:
    if task == 0:
        return math.inf if kd > 0 else math.nan
    return kd / task


def ratio_checks(level: str, kind: str, ratio: float, weight: float, where: str) -> list[Check]:
    """A warning when a KD/task ``ratio`` (``kind``: "loss" or "gradient-norm") is outside [0.01, 10]."""
    if not math.isfinite(ratio) or RATIO_LOW <= ratio <= RATIO_HIGH:
        return []
    if ratio > RATIO_HIGH:
        what = f"KD/task {kind} ratio {_fmt(ratio)} > {RATIO_HIGH:g}: the KD term dominates the task"
    else:
        what = f"KD/task {kind} ratio {_fmt(ratio)} < {RATIO_LOW:g}: the KD term is too small to matter"
    if ratio > 0:
        what += f"; distill.weight={_fmt(suggested_weight(weight, ratio))} would bring it to 1"
    return [Check(WARN, where, f"{level}: {what}")]


def one_batch_checks(trainer: Any) -> list[Check]:
    """One training batch, forward and backward, as the first training step would run it (no update)."""
    model, task, cfg = trainer.model, trainer.task, trainer.cfg
    weight = cfg.distill.weight if cfg.distill is not None else 1.0
    batch = task.to_device(next(iter(trainer.loader)), trainer.device)
    inputs, targets = task.model_inputs(batch)
    model.train()
    model.iteration, model.max_iterations = 0, cfg.train.max_iters
    teacher_before = {k: v.detach().clone() for k, v in model.teacher.state_dict().items()}
    where = "one batch"
    with trainer.autocast():
        losses = model(*inputs, targets=targets)
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
        out += ratio_checks(level, "loss", r_loss, weight, where)
        out += ratio_checks(level, "gradient-norm", r_grad, weight, where)
        if not (g_kd > 0 and math.isfinite(g_kd)):
            out.append(Check(FAIL, "gradient", (
                f"the KD term at {level} puts {'no' if g_kd == 0 else 'a non-finite'} gradient on the student "
                f"(norm {g_kd}): distillation would do nothing there. Is the captured student output detached "
                f"(computed under no_grad, .detach(), a buffer)?")))
    for name, mod in model.kd_losses.items():
        if getattr(mod, "needs_preparation", False) and not getattr(mod, "prepared", True):
            out.append(Check(INFO, where, f"{type(mod).__name__} at {name.split('|', 1)[-1]} is fitted on the teacher "
                                          f"when training starts; measured here before that fit"))
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


# --------------------------------------------------------------------------- the doctor
@dataclass
class DoctorReport:
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


def doctor(config: Any, overrides: Sequence[str] | Mapping[str, Any] | None = None, batches: int = 4,
           log: Callable[[str], None] = print) -> DoctorReport:
    """Check a distillation config without training (see the module docstring); ``log`` gets each line as it
    is found. Bad input (a config that cannot be built) raises :class:`~densekd.errors.ConfigError`."""
    from .config import load_config
    from .engine.trainer import Trainer

    if batches < 1:
        raise ConfigError(f"doctor --batches: expected a positive int, got {batches}")
    cfg = load_config(config, overrides)
    if cfg.distill is None:
        raise ConfigError("distill: the config has no distill section, so there is no teacher or KD term to "
                          "check (doctor checks distillation configs)")
    report = DoctorReport()

    def emit(checks: Iterable[Check]) -> None:
        for c in checks:
            report.checks.append(c)
            log(c.line())

    name = config if isinstance(config, (str, os.PathLike)) else "config"
    log(f"densekd doctor: {name} — {cfg.task}, {cfg.distill.method}, distill.weight {cfg.distill.weight:g}")
    emit([teacher_source(cfg.model)])
    trainer = Trainer(cfg, ["train.resume=false", "train.num_workers=0"])
    try:
        emit(teacher_checks(trainer, batches))
        emit(level_checks(trainer.model))
        emit(one_batch_checks(trainer))
    finally:
        trainer.close()
    f, w = len(report.failures), len(report.warnings)
    log(f"doctor: {f} failure(s), {w} warning(s)" + (" — do not train before fixing the failures" if f else ""))
    return report


# --------------------------------------------------------------------------- guards during training
def _mask_shifts(level: str, masks: Mapping[str, Tensor] | None) -> dict[str, float]:
    """``kd/<level>/masks/<family>/shift_max``: the largest distance of one mask's mean (over batch and
    positions) from 0.5, its value at initialisation (σ of units ~ N(0, 0.01²)); 0.5 for a mask that has
    become a gate ≈ 0 or ≈ 1 everywhere. Tells constant gates from freshly initialised masks."""
    out: dict[str, float] = {}
    if not isinstance(masks, Mapping):
        return out
    for fam in ("spatial", "channel"):
        if fam in masks:
            m = masks[fam].detach().float()
            per_mask = m.flatten(2).mean(dim=2).mean(dim=0)  # [M]
            out[f"kd/{level}/masks/{fam}/shift_max"] = float((per_mask - 0.5).abs().max())
    return out


class _DistanceHook:
    """Forward pre-hook on a KD module: records :func:`feature_distance` while its guards ask for it."""

    def __init__(self, guards: "TrainingGuards", level: str) -> None:
        self.guards, self.level = guards, level

    def __call__(self, module: nn.Module, args: tuple) -> None:
        if self.guards.recording and len(args) >= 2 and isinstance(args[0], Tensor) and isinstance(args[1], Tensor):
            d = feature_distance(module, args[0], args[1])
            if d is not None:
                self.guards.distances[self.level] = d


class TrainingGuards:
    """The in-training checks of one :class:`~densekd.Distiller` (see the module docstring).

    The engine calls, per iteration: :meth:`begin` (before the forward), :meth:`kd_gradients` (after the
    forward, before backward), :meth:`task_gradient` (after backward and unscaling, before clipping); per log
    row: :meth:`row_extras` (before the cross-rank mean), :meth:`ratios` and :meth:`check` (after it).
    Gradient norms are over the student's trainable parameters. The KD term's are measured with
    ``torch.autograd.grad`` (one extra backward per level, graph kept); the task term's is the total
    gradient minus their sum (exact; the training update itself is computed as without guards), or, under
    DDP, where the total is already averaged over ranks, a further ``autograd.grad`` of the task term.
    """

    def __init__(self, distiller: Any, *, distill_weight: float = 1.0, grad_every: int = 100,
                 world_size: int = 1, enabled: bool = True) -> None:
        self.distiller = distiller
        self.weight = float(distill_weight)
        self.grad_every = int(grad_every)
        self.world_size = world_size
        self.enabled = enabled
        self.modules: dict[str, nn.Module] = {}
        self.level_pair: dict[str, int] = {}  # level → index of its pair in distiller.pairs
        for info in distiller.levels:
            self.modules.setdefault(info.student, distiller.kd_losses[info.key])
            self.level_pair.setdefault(info.student, info.pair)
        self.first: dict[str, float] = {}  # "kd/<level>" and "distance/<level>" at the first row
        self.peaks: dict[str, float] = {}  # largest "spatial_std_min/<level>" so far
        self.fired: list[str] = []
        self.warnings: list[dict[str, Any]] = []
        self.first_lines: list[str] = []  # the iteration-1 lines (kept across a resume)
        self.distances: dict[str, float] = {}
        self.recording = False
        self.grad_now = False
        self._pending: dict[str, float] = {}
        self._kd_sum: list[Tensor] | None = None
        self._task_norm: float | None = None
        self._hooks = [m.register_forward_pre_hook(_DistanceHook(self, lv)) for lv, m in self.modules.items()]

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    # -- state (kept in the training checkpoint, so a resumed run keeps its first values and warnings)
    def state_dict(self) -> dict[str, Any]:
        return {"first": dict(self.first), "peaks": dict(self.peaks), "fired": list(self.fired), "warnings": [dict(w) for w in self.warnings],
                "first_lines": list(self.first_lines)}

    def load_state_dict(self, state: Mapping[str, Any] | None) -> None:
        if not state:
            return
        self.first = dict(state.get("first", {}))
        self.peaks = dict(state.get("peaks", {}))
        self.fired = list(state.get("fired", []))
        self.warnings = [dict(w) for w in state.get("warnings", [])]
        self.first_lines = list(state.get("first_lines", []))

    # -- per iteration
    def begin(self, iteration: int, log_now: bool) -> None:
        """Before the forward of 0-based ``iteration``: measure gradient norms at iteration 1 and every
        ``grad_every``-th; record feature distances when this iteration's row is logged."""
        n = iteration + 1
        self.grad_now = self.enabled and self.grad_every > 0 and (n == 1 or n % self.grad_every == 0)
        self.recording = self.enabled and log_now

    def kd_gradients(self, losses: Mapping[str, Tensor], params: Sequence[Tensor], scale: float | None = None) -> None:
        """After the forward: the gradient norm each level's KD term puts on ``params``."""
        if not self.grad_now:
            return
        self._kd_sum, self._task_norm = None, None
        for level, terms in level_terms(losses).items():
            v = sum(terms.values())
            if not (isinstance(v, Tensor) and v.requires_grad):
                self._pending[f"kd/{level}/grad_norm"] = 0.0
                continue
            gs = torch.autograd.grad(v * scale if scale else v, params, retain_graph=True, allow_unused=True)
            gs = [torch.zeros_like(p) if g is None else g.detach() for g, p in zip(gs, params)]
            if scale:
                gs = [g / scale for g in gs]
            self._pending[f"kd/{level}/grad_norm"] = total_norm(gs)
            if self._kd_sum is None:
                self._kd_sum = gs
            else:
                torch._foreach_add_(self._kd_sum, gs)
        if self.world_size > 1:  # the total gradient will be averaged over ranks: measure the task's directly
            t = losses["loss_task"]
            gs = torch.autograd.grad(t * scale if scale else t, params, retain_graph=True, allow_unused=True)
            self._task_norm = total_norm(gs) / (scale or 1.0)
            self._kd_sum = None

    def task_gradient(self, params: Sequence[Tensor]) -> None:
        """After backward (and unscaling): the task term's gradient norm and the KD/task ratios."""
        if not self.grad_now:
            return
        if self._task_norm is not None:
            task = self._task_norm
        else:
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            task = total_norm(torch._foreach_sub(grads, self._kd_sum) if self._kd_sum is not None else grads)
        self._kd_sum, self._task_norm = None, None
        self._pending["task/grad_norm"] = task
        for key in [k for k in self._pending if k.endswith("/grad_norm") and k.startswith("kd/")]:
            self._pending[key[: -len("grad_norm")] + "grad_ratio"] = _ratio(self._pending[key], task)

    # -- per log row
    def row_extras(self) -> dict[str, float]:
        """Mask statistics (last forward), feature distances (this row's step) and gradient norms measured
        since the last row, for the log row. Non-finite values are left out."""
        if not self.enabled:
            return {}
        extras: dict[str, float] = {}
        for level, mod in self.modules.items():
            stats = getattr(mod, "mask_statistics", None)
            if callable(stats):
                for k, v in stats().items():
                    extras[f"kd/{level}/masks/{k}"] = float(v)
                extras.update(_mask_shifts(level, getattr(mod, "last_masks", None)))
            if level in self.distances:
                extras[f"kd/{level}/distance"] = self.distances[level]
        extras.update(self._pending)
        self._pending = {}
        self.distances = {}
        return {k: v for k, v in extras.items() if math.isfinite(v)}

    def ratios(self, row: Mapping[str, float]) -> dict[str, float]:
        """Per level, the KD/task loss ratio of the row's means: ``kd/<level>/kd_task_ratio``."""
        if not self.enabled or "loss_task" not in row:
            return {}
        out = {}
        for level, terms in level_terms(row).items():
            r = _ratio(sum(terms.values()), row["loss_task"])
            if math.isfinite(r):
                out[f"kd/{level}/kd_task_ratio"] = r
        return out

    def _warn(self, key: str, iteration: int, kind: str, level: str, text: str) -> str | None:
        if key in self.fired:
            return None
        self.fired.append(key)
        msg = f"iteration {iteration}: {text}"
        self.warnings.append({"iteration": iteration, "kind": kind, "level": level, "message": msg})
        return msg

    def check(self, iteration: int, row: Mapping[str, float]) -> list[str]:
        """The warnings this row raises for the first time (each is printed once); also keeps them."""
        if not self.enabled:
            return []
        new: list[str | None] = []
        terms_by_level = level_terms(row)
        for level, mod in self.modules.items():
            terms = terms_by_level.get(level, {})
            reg = set(getattr(mod, "regularizer_terms", ()))
            counted = {k: v for k, v in terms.items() if k not in reg}
            dist = row.get(f"kd/{level}/distance")
            d0 = self.first.get(f"distance/{level}")
            if d0 is None and dist is not None:
                self.first[f"distance/{level}"] = d0 = dist
            for term, kd in counted.items():  # each term: one ACAM-KD branch can die while the other lives
                k0 = self.first.get(f"kd/{level}/{term}")
                if k0 is None:
                    self.first[f"kd/{level}/{term}"] = kd
                elif (k0 > 0 and kd < COLLAPSE_FRACTION * k0 and dist is not None and d0 is not None
                      and dist > DISTANCE_FALLEN * d0):
                    new.append(self._warn(f"collapse|{level}|{term}", iteration, "collapse", level, (
                        f"the KD term {term} at {level} fell to {100 * kd / k0:.3g} % of its first value "
                        f"({_fmt(kd)} vs {_fmt(k0)}) while the student–teacher feature distance has not fallen to "
                        f"half of its own ({_fmt(dist)} vs {_fmt(d0)}): it has stopped distilling")))
            new += self._mask_warnings(iteration, level, mod, row)
            gr = row.get(f"kd/{level}/grad_ratio")
            if gr is not None and gr > GRAD_RATIO_DIVERGENCE:
                gk, gt = row.get(f"kd/{level}/grad_norm"), row.get("task/grad_norm")
                new.append(self._warn(f"grad_ratio|{level}", iteration, "divergence", level, (
                    f"at {level} the KD term's gradient on the student is {_fmt(gr)}× the task's (norm "
                    f"{_fmt(gk)} vs {_fmt(gt)}) > {GRAD_RATIO_DIVERGENCE:g}: divergence ahead; "
                    f"distill.weight={_fmt(suggested_weight(self.weight, gr))} would bring it to 1")))
        new += self._dominance_warnings(iteration, row)
        return [m for m in new if m]

    def _dominance_warnings(self, iteration: int, row: Mapping[str, float]) -> list[str | None]:
        """A level whose KD/task gradient-norm ratio is ≥ :data:`LEVEL_DOMINANCE` × the median of the other
        levels' (rows with gradient ratios only): named, with the weight of its pair that evens it."""
        ratios = {lv: row[f"kd/{lv}/grad_ratio"] for lv in self.modules
                  if math.isfinite(row.get(f"kd/{lv}/grad_ratio", math.nan)) and row[f"kd/{lv}/grad_ratio"] > 0}
        if len(ratios) < 2:
            return []
        out: list[str | None] = []
        for lv, r in ratios.items():
            others = sorted(v for k, v in ratios.items() if k != lv)
            mid = len(others) // 2
            median = others[mid] if len(others) % 2 else 0.5 * (others[mid - 1] + others[mid])
            if r < LEVEL_DOMINANCE * median:
                continue
            i = self.level_pair.get(lv)
            pairs = getattr(self.distiller, "pairs", [])
            shared = i is not None and sum(1 for p in self.level_pair.values() if p == i) > 1
            own = (pairs[i].weight / self.weight) if i is not None and i < len(pairs) and self.weight else 1.0
            fix = (f"give {lv} its own pair with weight {_fmt(own * median / r)}" if shared else
                   f"a weight of {_fmt(own * median / r)} on its pair (distill.pairs[{i}], now {_fmt(own)}) evens it")
            out.append(self._warn(f"dominance|{lv}", iteration, "level_dominance", lv, (
                f"at {lv} the KD term's gradient on the student is {_fmt(r / median)}× the other levels' (KD/task "
                f"gradient-norm ratio {_fmt(r)} vs their median {_fmt(median)}): one level dominates the "
                f"distillation; {fix} (× distill.weight {_fmt(self.weight)})")))
        return out

    def _mask_warnings(self, iteration: int, level: str, mod: nn.Module, row: Mapping[str, float]) -> list[str | None]:
        """ACAM-KD mask collapse and saturation (methods.md, "Optimisation of the mask modules")."""
        out: list[str | None] = []
        norm = getattr(mod, "mask_norm", None)
        for fam in ("spatial", "channel"):
            mean = row.get(f"kd/{level}/masks/{fam}/mean")
            if mean is None:
                continue
            if mean < MASK_MEAN_LOW:
                if norm == "square":
                    why = ("their sigmoids saturate at 0: under mask_norm=square the KD term is a mask-weighted mean "
                           "and stays on, but the masks' gradients vanish and they no longer select")
                else:
                    why = (f"under mask_norm={norm or 'sum'} loss_{fam} scales with these masks, so it is switched "
                           f"off (methods.md, Optimisation of the mask modules)")
                out.append(self._warn(f"mask_low|{level}|{fam}", iteration, "mask_collapse", level,
                                      f"ACAM-KD {fam} masks at {level} collapsed: mean {_fmt(mean)} < "
                                      f"{MASK_MEAN_LOW:g}; {why}"))
            elif mean > MASK_MEAN_HIGH:
                out.append(self._warn(f"mask_high|{level}|{fam}", iteration, "mask_saturation", level,
                                      f"ACAM-KD {fam} masks at {level} saturated at 1: mean {_fmt(mean)} > "
                                      f"{MASK_MEAN_HIGH:g}, so they select nothing and the term is a plain "
                                      f"feature distance"))
        std = row.get(f"kd/{level}/masks/spatial/std_min")
        # freshly initialised masks are ≈ 0.5 everywhere, (nearly) constant too: the warning needs masks that were
        # spatial at an earlier row (std_min ≥ 1e-2: it "fell") or that have become gates ≈ 0 or 1 everywhere
        peak = self.peaks.get(f"spatial_std_min/{level}", 0.0)
        if std is not None:
            self.peaks[f"spatial_std_min/{level}"] = max(peak, std)
        mean = row.get(f"kd/{level}/masks/spatial/mean")
        collapsed = mean is not None and not MASK_MEAN_LOW <= mean <= MASK_MEAN_HIGH  # said above, better
        gates = row.get(f"kd/{level}/masks/spatial/shift_max", 0.0) > MASK_GATE_SHIFT
        if std is not None and std < MASK_STD_MIN and (peak >= MASK_STD_WAS_SPATIAL or gates) and not collapsed:
            what = "; some masks are gates ≈ 0 or ≈ 1 everywhere" if gates else ""
            out.append(self._warn(f"mask_std|{level}", iteration, "mask_saturation", level, (
                f"ACAM-KD spatial masks at {level} are constant over the image (per-mask spatial std {std:.2g} < "
                f"{MASK_STD_MIN:g}{what}): ASCM's spatial selection is off; is distill.kwargs.z_norm \"none\"? "
                f"\"spatial\" (the default) standardises the fused map over space (methods.md)")))
        return out

    def first_row_checks(self, row: Mapping[str, float]) -> list[str]:
        """The iteration-1 lines, one per level: KD/task loss and gradient-norm ratios with the doctor's
        thresholds (a ``WARN`` line's warning is kept with the others; a gradient ratio above 100 is left to
        :meth:`check`'s divergence warning)."""
        lines: list[str] = []
        if not self.enabled:
            return lines
        for level, terms in level_terms(row).items():
            kd, task = sum(terms.values()), row.get("loss_task", math.nan)
            r = _ratio(kd, task)
            text = f"{level}: KD {_fmt(kd)} vs task {_fmt(task)}, KD/task {_fmt(r)}"
            gk, gt = row.get(f"kd/{level}/grad_norm"), row.get("task/grad_norm")
            gr = row.get(f"kd/{level}/grad_ratio", math.nan)
            if gk is not None and gt is not None:
                text += f"; gradient norm on the student: KD {_fmt(gk)} vs task {_fmt(gt)}, ratio {_fmt(gr)}"
            found = ratio_checks(level, "loss", r, self.weight, "iteration 1")
            if not gr > GRAD_RATIO_DIVERGENCE:
                found += ratio_checks(level, "gradient-norm", gr, self.weight, "iteration 1")
            if gk is not None and gk == 0:
                found.append(Check(WARN, "iteration 1", f"the KD term at {level} puts no gradient on the student: "
                                                        f"distillation does nothing there (is the captured output "
                                                        f"detached?)"))
            for c in found:
                self._warn(f"iteration1|{c.message}", 1, "start", level, c.message)
            status = WARN if found else OK
            if found:
                text += " — " + "; ".join(c.message.split(": ", 1)[1] for c in found)
            line = Check(status, "iteration 1", text).line()
            self.first_lines.append(line)
            lines.append(line)
        return lines

    def summary(self) -> list[str]:
        """End-of-run lines: every warning, or that there was none."""
        if not self.warnings:
            return ["health: no warnings (KD/task ratios, gradient norms and mask statistics in log.csv)"]
        return [f"health: {len(self.warnings)} warning(s) during this run (also in {HEALTH_FILE}):"] + \
               [f"  {w['message']}" for w in self.warnings]


def write_health(out_dir: str, iteration: int, checks: Sequence[str], warnings: Sequence[Mapping[str, Any]],
                 finished: bool) -> str:
    """``health.json`` in the run folder: ``{"iteration", "finished", "checks": [lines], "warnings":
    [{"iteration", "kind", "level", "message"}]}`` (read by ``densekd compare`` and the demo)."""
    path = os.path.join(out_dir, HEALTH_FILE)
    tmp = path + ".part"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"iteration": iteration, "finished": finished, "checks": list(checks),
                   "warnings": [dict(w) for w in warnings]}, f, indent=1)
    os.replace(tmp, path)
    return path


def read_health(run_dir: str) -> dict[str, Any] | None:
    """A run folder's ``health.json``, or None when it has none."""
    path = os.path.join(run_dir, HEALTH_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)
