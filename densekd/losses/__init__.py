"""Distillation losses. Importing this package registers every method."""
from .base import DistillContext, DistillLoss
from .registry import available_losses, build_loss, get_loss_class, register_loss


__all__ = ["DistillContext", "DistillLoss", "available_losses", "build_loss", "get_loss_class", "register_loss"]

# one import per method file; each file registers itself with @register_loss
from . import acam  # noqa: E402,F401
from . import samkd  # noqa: E402,F401  ("samkd")
from . import dmkd  # noqa: E402,F401  ("dmkd")
from . import fitnet  # noqa: E402,F401  ("fitnet")
from . import logit_kd  # noqa: E402,F401  ("hinton_kd")
from . import cwd  # noqa: E402,F401  ("cwd")
from . import pkd  # noqa: E402,F401  ("pkd")
from . import mgd  # noqa: E402,F401  ("mgd")
from . import fgd  # noqa: E402,F401  ("fgd")
from . import maskd  # noqa: E402,F401  ("maskd")
from . import freekd  # noqa: E402,F401  ("freekd")
from . import acam_variants  # noqa: E402,F401  ("acam_kd_student_query", "acam_kd_spatial", ...)
