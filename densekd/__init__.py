"""densekd — knowledge distillation for dense prediction (detection and segmentation)."""
from .capture import FeatureCapture
from .distiller import Distiller, Pair
from .errors import ConfigError, DenseKDError, UnknownNameError
from .losses import DistillContext, DistillLoss, available_losses, build_loss, register_loss

__version__ = "0.1.0"


def train(config, overrides=None):
    """Train from a YAML path / dict / Config (with ``key=value`` overrides); returns the final metrics.
    See :func:`densekd.engine.train`."""
    from .engine import train as _train

    return _train(config, overrides)


def evaluate(config, checkpoint=None, overrides=None):
    """Evaluate a config's student with weights from ``checkpoint``. See :func:`densekd.engine.evaluate`."""
    from .engine import evaluate as _evaluate

    return _evaluate(config, checkpoint, overrides)

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
    "evaluate",
    "register_loss",
    "train",
]
