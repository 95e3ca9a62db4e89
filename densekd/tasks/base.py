"""The contract between the task-agnostic engine (``densekd/engine``) and a task (detection, segmentation).

The engine owns: config loading, the train loop (optimizer, schedule, AMP, DDP, checkpoints, logs),
the Distiller, the CLI. A task owns: its model/data config sections, model builders, datasets,
collation, the task loss (or none, if the model computes it), canonical distillation points and
evaluation. Data flows one way: config → task → engine.
"""
from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..distiller import Pair


class Task(Protocol):
    name: str  # "detection" | "segmentation"
    model_config_cls: type  # dataclass validated from the YAML ``model:`` section
    data_config_cls: type  # dataclass validated from the YAML ``data:`` section

    def build_model(self, model_cfg: Any, role: str) -> nn.Module:
        """``role`` is "student" or "teacher"; teacher weights are loaded from the config's checkpoint."""

    def build_dataset(self, data_cfg: Any, split: str) -> Dataset | None:
        """``split`` is "train" or "val". For "val" a task may return None (no validation data configured):
        the engine then skips evaluation. Training items may use python/numpy/torch global RNGs for
        augmentation: the engine loads every item under its own seed (exact resume, any num_workers)."""

    def collate(self, batch: Sequence[Any]) -> Any: ...

    def to_device(self, batch: Any, device: torch.device) -> Any: ...

    def model_inputs(self, batch: Any) -> tuple[tuple[Any, ...], Any]:
        """(inputs tuple for ``model(*inputs)``, targets)."""

    def task_loss(self) -> Any:
        """A ``task_loss(output, targets)`` callable, or None when the model computes its own losses."""

    def default_pairs(self, model_cfg: Any, method: str, method_kwargs: Mapping[str, Any]) -> list[Pair]:
        """The canonical distillation points (FPN levels the head uses; logits) for ``method``."""

    def evaluate(self, model: nn.Module, loader: Any, device: torch.device, out_dir: str | None) -> dict[str, float]:
        """Metrics of ``model`` on ``loader`` (correct under DDP: reduce across ranks, rank 0 reports).

        The engine passes the plain student (not DDP-wrapped) and a loader over this rank's shard
        (indices ``rank::world_size``, no padding); ``loader.dataset`` is the "val" dataset. Every rank must
        return the same dict; ``out_dir`` is None on ranks other than 0."""


# Optional hooks the engine calls when a task defines them (``hasattr``), not part of the required protocol:
#
#   check_data(model_cfg, dataset) -> None
#       raise a ConfigError when model and data disagree (e.g. detection: model.num_classes vs categories);
#       called on the train set and, when there is one, the val set.
#   expand_model_section(raw_model_dict) -> dict
#       called by load_config on the raw ``model:`` mapping before validation (detection: ``model.preset``
#       fills the keys the config does not set).
#   inherit(student, teacher, model_cfg) -> str | None
#       initialise the student from the teacher after both are built (detection: the paper's "inheriting"
#       of neck and head); the returned message is printed by rank 0.
#   teacher_task_loss(teacher, inputs, targets) -> Tensor
#       the frozen teacher's own task loss (a scalar with grad) on one batch; used to prepare KD modules
#       that are fitted on the teacher before training (MasKD's tokens, densekd/engine/prepare.py). Default:
#       the model's loss dict (task_loss() is None) or task_loss(teacher(*inputs), targets), summed, with
#       the teacher in train mode but its norm/dropout layers in eval.
#   eval_split_overrides(data_cfg, split) -> list[str]
#       the ``key=value`` overrides that make the engine evaluate on the named split instead of the configured
#       validation data (segmentation: ``data.val_split=<split>``; detection: ``data.splits.<split>``); one
#       ConfigError line when the data has no such split. Used by ``densekd compare --tune-split``.
#   eval_data(data_cfg) -> str | None
#       an identity of the data the engine evaluates on (equal strings: the same images); ``densekd compare
#       --tune`` refuses a tuning run scored on the table's own data.
