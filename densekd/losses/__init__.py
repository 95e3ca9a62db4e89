"""Distillation losses. Importing this package registers every method."""
from .base import DistillContext, DistillLoss
from .registry import available_losses, build_loss, get_loss_class, register_loss


__all__ = ["DistillContext", "DistillLoss", "available_losses", "build_loss", "get_loss_class", "register_loss"]

# one import per method file; each file registers itself with @register_loss
from . import acam  # noqa: E402,F401
