"""Distil Hugging Face ``transformers`` vision models with any densekd method, inside the ``Trainer``.

    from transformers import TrainingArguments
    from densekd.integrations.transformers import DistillationTrainer

    trainer = DistillationTrainer(model=student, teacher=teacher, method="acam_kd",      # pairs=None: defaults
                                  args=TrainingArguments("out", bf16=True, ...),
                                  train_dataset=train, eval_dataset=val, data_collator=collate)
    trainer.train()
    trainer.save_model("out/student")     # the plain student: from_pretrained("out/student") loads it

Modules: :mod:`.trainer` (the Trainer subclass, checkpoints, logs), :mod:`.families` (tasks, default pairs per
model family, label-set checks), :mod:`.checks` (the doctor's checks through :mod:`densekd.health`),
:mod:`.metrics` (mIoU, COCO AP of Hugging Face outputs), :mod:`.data` (densekd's segmentation folders as Trainer
datasets) and :mod:`.cli` (``densekd hf``). Needs ``pip install "densekd[transformers]"``.
"""
from __future__ import annotations

try:
    import transformers  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("densekd.integrations.transformers needs the 'transformers' package: "
                      "pip install 'densekd[transformers]'") from e

from .checks import doctor
from .families import FAMILIES, check_pair_of_models, default_pairs, model_task
from .metrics import SegmentationMetrics, detection_metric, segmentation_metric
from .trainer import KD_STATE_FILE, DistillationTrainer, HealthCheckError, load_model

__all__ = ["DistillationTrainer", "FAMILIES", "HealthCheckError", "KD_STATE_FILE", "SegmentationMetrics",
           "check_pair_of_models", "default_pairs", "detection_metric", "doctor", "load_model", "model_task",
           "segmentation_metric"]
