"""``densekd doctor CONFIG [key=value …] [--batches N] [--control N]``: check a distillation config before training.

Builds what ``densekd train`` would build (the engine's :class:`~densekd.engine.trainer.Trainer`), trains nothing
and prints one report of the health checks (:mod:`densekd.health`: what each check says and when it fails).
With ``--control N`` it also runs the control probe (:func:`control_probe`): the run's first N
iterations beside a plain twin, both then scored on the ``--batches`` validation batches; a warning when KD makes
the student worse beyond the measured noise (``train.control`` does the same inside a run).
Exit status of the command: 0 no failure (warnings allowed), 1 a check failed, 2 the config cannot be built.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Mapping, Sequence

from ..config import load_config
from ..engine.control import CONTROL_BATCHES, ControlResult
from ..engine.prepare import prepare_for_trainer
from ..engine.trainer import Trainer
from ..errors import ConfigError
from ..health import (FAIL, INFO, WARN, Check, DoctorReport, level_checks, one_batch_checks, teacher_checks,
                      teacher_source)


def doctor(config: Any, overrides: Sequence[str] | Mapping[str, Any] | None = None, batches: int = 4,
           log: Callable[[str], None] = print, control: int = 0) -> DoctorReport:
    """Check a distillation config without training (see :mod:`densekd.health`); ``log`` gets each line as it
    is found. ``control`` = N > 0: also the control probe, N iterations of the run beside a plain twin
    (:func:`control_probe`; a warning when KD makes the student worse beyond the noise).
    Bad input (a config that cannot be built) raises :class:`~densekd.errors.ConfigError`."""
    if batches < 1:
        raise ConfigError(f"doctor --batches: expected a positive int, got {batches}")
    if control < 0:
        raise ConfigError(f"doctor --control: expected a positive number of iterations, got {control}")
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
        emit(level_checks(trainer.model, getattr(cfg.data, "num_classes", None)))
        emit(one_batch_checks(trainer))
    finally:
        trainer.close()
    if control:
        res = control_probe(cfg, control, batches)
        emit([Check(WARN if res.worse else INFO, "control", res.message())])
    f, w = len(report.failures), len(report.warnings)
    log(f"doctor: {f} failure(s), {w} warning(s)" + (" — do not train before fixing the failures" if f else ""))
    return report


def control_probe(config: Any, iters: int, batches: int = CONTROL_BATCHES) -> ControlResult:
    """``densekd doctor --control N``: build the run as ``densekd train`` would (with ``train.control=true``,
    ``train.control_iters=N``: :mod:`densekd.engine.control`), train its first N iterations with the plain twin,
    then compare both on ``batches`` validation batches. Writes nothing."""
    cfg = load_config(config)
    if not 1 <= iters <= cfg.train.max_iters:
        raise ConfigError(f"doctor --control: expected N between 1 and train.max_iters={cfg.train.max_iters}, "
                          f"got {iters}")
    trainer = Trainer(cfg, ["train.resume=false", "train.num_workers=0", "train.control=true",
                            f"train.control_iters={iters}"])
    try:
        ctl = trainer.control
        if ctl is None:  # cannot happen for a config with a distill section, which doctor requires
            raise ConfigError("doctor --control: the run has no control twin (train.control is false)")
        ctl.batches = batches
        prepare_for_trainer(trainer)
        epoch = 0
        trainer.sampler.set_position(0, 0)
        data = iter(trainer.loader)
        while trainer.iteration < iters:
            try:
                batch = next(data)
            except StopIteration:
                epoch += 1
                trainer.sampler.set_position(epoch, 0)
                data = iter(trainer.loader)
                continue
            batch = trainer.task.to_device(batch, trainer.device)
            inputs, targets = trainer.task.model_inputs(batch)
            trainer.train_step(inputs, targets)
        return ctl.finish(trainer)
    finally:
        trainer.close()


__all__ = ["DoctorReport", "control_probe", "doctor"]
