"""The doctor's checks on a :class:`~.trainer.DistillationTrainer`, through :mod:`densekd.health` (the code
``densekd doctor`` runs; nothing here re-implements a verdict):

1. the teacher: where it came from; its metric on a few evaluation batches against chance there and against the
   student's starting point (:func:`densekd.health.chance_level`, :func:`densekd.health.teacher_metric_checks`);
2. every pair and level (:func:`densekd.health.level_checks`);
3. one training batch forward and backward (:func:`densekd.health.batch_checks`): per level the KD/task loss and
   gradient-norm ratios, a KD term that puts no gradient on the student, anything reaching the teacher.

Every random stream, buffer and train/eval mode is left as it was, and gradients are cleared.
"""
from __future__ import annotations

import math
from typing import Any, Callable

from ... import health
from .._state import module_state_preserved, rng_preserved
from .families import OBJECT_DETECTION, SEMANTIC_SEGMENTATION
from .metrics import detection_metric, segmentation_metric

#: the task names :mod:`densekd.health` uses (its chance margins)
_HEALTH_TASK = {SEMANTIC_SEGMENTATION: "segmentation", OBJECT_DETECTION: "detection"}
_HINT = ("is the teacher the checkpoint fine-tuned on this data (same labels, same preprocessing)?")


def teacher_source(trainer: Any) -> health.Check:
    t = trainer.teacher
    where = str(getattr(t, "name_or_path", "") or "") or "a model object"
    n = sum(p.numel() for p in t.parameters())
    return health.Check(health.INFO, "teacher", f"{type(t).__name__} from {where} ({n / 1e6:.2f} M parameters), "
                                                f"frozen, eval mode")


def _first_eval_batches(trainer: Any, batches: int) -> list[dict[str, Any]]:
    ds = trainer.eval_dataset
    name = next(iter(ds)) if isinstance(ds, dict) else None  # several evaluation sets: the first
    out = []
    for i, b in enumerate(trainer.get_eval_dataloader(name)):
        if i >= batches:
            break
        out.append(trainer._prepare_inputs(b))
    return out


def teacher_checks(trainer: Any, batches: int) -> list[health.Check]:
    """The teacher's metric on the first ``batches`` evaluation batches against chance and the student's start."""
    if trainer.eval_dataset is None:
        return [health.Check(health.WARN, "teacher", "no eval_dataset given, so the teacher's metric is not checked")]
    task = _HEALTH_TASK.get(trainer.task)
    if task is None:
        return [health.Check(health.WARN, "teacher", f"no metric for {trainer.task} models: the teacher's quality "
                                                     f"is not checked")]
    data = _first_eval_batches(trainer, batches)
    metric: Callable[..., dict[str, float]] = segmentation_metric if task == "segmentation" else detection_metric
    name = "mIoU" if task == "segmentation" else "AP"
    main, autocast = trainer._main_input, trainer.accelerator.autocast
    values = {}
    for role, model in (("teacher", trainer.teacher), ("student", trainer.model)):
        was = model.training
        model.eval()
        try:
            values[role] = metric(model, data, main, autocast)[name]
        finally:
            model.train(was)
    n_img = sum(int(b[main].shape[0]) for b in data)
    where = f"{n_img} evaluation image(s) ({len(data)} batch(es))"
    cfg = trainer.model.config
    chance, what = health.chance_level(task, [(None, b["labels"]) for b in data] if task == "segmentation" else data,
                                       int(cfg.num_labels), int(getattr(cfg, "semantic_loss_ignore_index", 255)),
                                       [str(cfg.id2label.get(i, i)) for i in range(int(cfg.num_labels))])
    t, s = (0.0 if math.isnan(values[r]) else values[r] for r in ("teacher", "student"))
    return health.teacher_metric_checks(task, name, t, s, chance, what, where, _HINT)


def doctor(trainer: Any, batches: int = 4, log: Callable[[str], None] = print) -> health.DoctorReport:
    """The checks of the module docstring on ``trainer``; ``log`` gets each line. Trains nothing."""
    report = health.DoctorReport()

    def emit(checks: list[health.Check]) -> None:
        for c in checks:
            report.checks.append(c)
            log(c.line())

    d = trainer.distiller
    log(f"densekd doctor: {type(trainer.model).__name__} ← {type(trainer.teacher).__name__}, {trainer.kd_method}, "
        f"weight {trainer.kd_weight:g}")
    with rng_preserved(), module_state_preserved(d):
        emit([teacher_source(trainer)])
        emit(teacher_checks(trainer, batches))
        emit(health.level_checks(d))
        pv, rest, labels = trainer._split(trainer.first_batch())
        try:
            emit(health.batch_checks(d, (pv, rest), labels, weight=trainer.kd_weight,
                                     max_iterations=int(trainer.args.max_steps) if trainer.args.max_steps > 0 else None,
                                     autocast=trainer.accelerator.autocast, context=trainer.context(pv, labels),
                                     knob="weight"))
        finally:
            d.zero_grad(set_to_none=True)
    f, w = len(report.failures), len(report.warnings)
    log(f"doctor: {f} failure(s), {w} warning(s)" + (" — do not train before fixing the failures" if f else ""))
    return report
