"""The run folder the engine writes, and the keys of its logs: every file name and every ``kd/<level>/…`` key is
spelt here only; the engine, the health guards, compare, bench and the demos take them from this module.

A run folder (``output_dir`` of one ``densekd train``)::

    checkpoint.pth      resumable training state (engine)
    student_final.pth   the plain student's state dict (engine)
    config.yaml         the resolved config (engine)
    log.csv             one row per logged iteration (engine; columns below)
    eval.csv            one JSON line per evaluation during training (engine)
    metrics.json        the final metrics, train_seconds, train_iterations (engine)
    health.json         start-up checks and guard warnings (densekd.health)
    control.json        with train.control: the distilled student against its plain twin (densekd.engine.control)
    tb/                 TensorBoard scalars (engine)
    console.log         the run's console output when ``densekd compare --jobs N`` trains it in a worker
    failed.json         ``densekd compare --tune``: the run stopped on a non-finite loss (read back, not retried)

``log.csv``'s column of the plain twin (``train.control``): :data:`CONTROL_LOSS_KEY`.

Keys (``Distiller.forward``'s outputs and ``log.csv``'s columns) of one distilled level: ``kd/<level>/<term>``,
a weighted KD loss term (terms are ``loss_*``; ``<level>`` is the student's level label, e.g. ``classifier`` or
``backbone:0``, and holds no ``/``); and the guards' ``kd/<level>/<name>`` columns (``grad_norm``,
``kd_task_ratio``, ``distance``, ``masks/<family>/<statistic>``, …).
"""
from __future__ import annotations

CHECKPOINT_FILE = "checkpoint.pth"
STUDENT_FILE = "student_final.pth"
CONFIG_FILE = "config.yaml"
LOG_FILE = "log.csv"
EVAL_LOG_FILE = "eval.csv"
METRICS_FILE = "metrics.json"
HEALTH_FILE = "health.json"
TENSORBOARD_DIR = "tb"
CONSOLE_FILE = "console.log"
CONTROL_FILE = "control.json"
FAILED_FILE = "failed.json"

CONTROL_LOSS_KEY = "control/loss_task"

KD_PREFIX = "kd/"
TERM_PREFIX = "loss_"
MASKS = "masks"


def kd_key(level: str, *name: str) -> str:
    """``kd/<level>/<name>``: a KD term (``kd_key("trunk", "loss_mse")``) or a guard column of one level
    (``kd_key("trunk", "masks", "spatial", "mean")``)."""
    return "/".join((KD_PREFIX + level, *name))


def kd_term(key: str) -> tuple[str, str] | None:
    """``(level, term)`` of a weighted KD loss term ``kd/<level>/loss_*``; None for any other key."""
    if key.startswith(KD_PREFIX) and "/" in key[len(KD_PREFIX):]:
        level, term = key[len(KD_PREFIX):].rsplit("/", 1)
        if term.startswith(TERM_PREFIX):
            return level, term
    return None


def kd_level(key: str, name: str) -> str | None:
    """The level of a ``kd/<level>/<name>`` key (``kd_level("kd/trunk/grad_norm", "grad_norm") == "trunk"``);
    None when ``key`` is not one."""
    tail = "/" + name
    if key.startswith(KD_PREFIX) and key.endswith(tail) and len(key) > len(KD_PREFIX) + len(tail):
        return key[len(KD_PREFIX):-len(tail)]
    return None


def mask_key(key: str) -> tuple[str, str, str] | None:
    """``(level, family, statistic)`` of a mask-statistics column ``kd/<level>/masks/<family>/<statistic>``;
    None for any other key."""
    if key.startswith(KD_PREFIX):
        parts = key[len(KD_PREFIX):].rsplit("/", 3)
        if len(parts) == 4 and parts[1] == MASKS and all(parts):
            return parts[0], parts[2], parts[3]
    return None


__all__ = ["CHECKPOINT_FILE", "CONFIG_FILE", "CONSOLE_FILE", "CONTROL_FILE", "CONTROL_LOSS_KEY", "EVAL_LOG_FILE",
           "FAILED_FILE", "HEALTH_FILE", "LOG_FILE", "METRICS_FILE", "STUDENT_FILE", "TENSORBOARD_DIR", "kd_key",
           "kd_level", "kd_term", "mask_key"]
