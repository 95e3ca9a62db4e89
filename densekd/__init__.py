"""densekd — knowledge distillation for dense prediction (detection and segmentation)."""
from .capture import FeatureCapture
from .distiller import Distiller, Pair
from .errors import ConfigError, DenseKDError, UnknownNameError
from .losses import DistillContext, DistillLoss, available_losses, build_loss, register_loss

__version__ = "0.1.0"
__all__ = [
    "ConfigError",
    "DenseKDError",
    "DistillContext",
    "DistillLoss",
    "Distiller",
    "FeatureCapture",
    "Pair",
    "UnknownNameError",
    "available_losses",
    "build_loss",
    "register_loss",
]
