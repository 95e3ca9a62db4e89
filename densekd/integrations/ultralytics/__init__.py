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

The package, by concern: :mod:`.inputs` (checks on models, data, arguments), :mod:`.pairs` (which layers),
:mod:`.model` (:class:`YOLOKDModel`; its per-level losses and named terms are :class:`densekd.levels.LevelLosses`,
the Distiller's), :mod:`.config`, :mod:`.trainers`, :mod:`.checkpoint` (the ``"densekd"`` entry), :mod:`.recovery`
(NaN/Inf), :mod:`.pretrain` (pre-training checks), :mod:`.run` (:func:`distill_yolo`, :func:`train_yolo`).
"""
from __future__ import annotations

from .. import _ultralytics_offline  # noqa: F401 - sets YOLO_OFFLINE before ultralytics is imported

try:
    import ultralytics  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "densekd.integrations.ultralytics needs the 'ultralytics' package: pip install 'densekd[ultralytics]'"
    ) from e

# importable from here as before the split, beside __all__: read_kd_entry, load_yolo, normalize_pairs, RATIO_HIGH,
# RATIO_LOW (the health checks' bounds), first_batch, teacher_metric_check, recover_from_nan
from .checkpoint import read_kd_entry
from .config import YOLOKDConfig
from .inputs import load_yolo
from .model import YOLOKDModel
from .pairs import default_pairs, normalize_pairs
from .pretrain import (RATIO_HIGH, RATIO_LOW, first_batch, kd_task_ratio_check, teacher_metric_check,
                       training_loss_items)
from .recovery import recover_from_nan
from .run import distill_yolo, train_yolo
from .trainers import DistillationTrainer, OfflineDetectionTrainer

__all__ = ["DistillationTrainer", "OfflineDetectionTrainer", "YOLOKDConfig", "YOLOKDModel", "default_pairs",
           "distill_yolo", "kd_task_ratio_check", "teacher_metric_check", "train_yolo",
           "training_loss_items"]
