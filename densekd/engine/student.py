"""The plain student behind the Distiller's interface, and the optimizer of the ``train.optimizer`` section: what the
trainer builds for a run without KD and the control's plain twin (:mod:`.control`) builds beside a distilled one."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from ..distiller import task_losses


class StudentOnly(nn.Module):
    """Plain student training behind the Distiller's interface (same loop, no teacher, no KD terms)."""

    def __init__(self, student: nn.Module, task_loss: Callable[[Any, Any], Any] | None = None) -> None:
        super().__init__()
        self.student = student
        self.task_loss = task_loss
        self.kd_losses = nn.ModuleDict()
        self.iteration = 0
        self.max_iterations: int | None = None

    def forward(self, *inputs: Any, targets: Any = None, context: Any = None) -> dict[str, Tensor]:
        task = task_losses(self.student, type(self.student).__name__, self.task_loss, inputs, targets)
        loss = sum(task.values())
        return {**task, "loss_task": loss, "loss": loss}

    def trainable_parameters(self):
        return (p for p in self.student.parameters() if p.requires_grad)

    def student_state_dict(self):
        return self.student.state_dict()



def build_optimizer(o: Any, params: Sequence[Tensor]) -> torch.optim.Optimizer:
    """The ``train.optimizer`` section's optimizer over ``params`` (SGD, or AdamW with ``momentum`` as beta1)."""
    if o.type == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    return torch.optim.AdamW(params, lr=o.lr, betas=(o.momentum, 0.999), weight_decay=o.weight_decay)


__all__ = ["StudentOnly", "build_optimizer"]
