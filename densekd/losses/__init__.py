"""Distillation losses. Importing this package registers every method."""
from .base import DistillContext, DistillLoss
from .registry import available_losses, build_loss, get_loss_class, register_loss

from . import samkd  # noqa: F401,E402  (registers "samkd")
from . import dmkd  # noqa: F401,E402  (registers "dmkd")
from . import fitnet  # noqa: F401,E402  (registers "fitnet")
from . import logit_kd  # noqa: F401,E402  (registers "hinton_kd")
from . import cwd  # noqa: F401,E402  (registers "cwd")
from . import pkd  # noqa: F401,E402  (registers "pkd")
from . import mgd  # noqa: F401,E402  (registers "mgd")
from . import fgd  # noqa: F401,E402  (registers "fgd")

__all__ = ["DistillContext", "DistillLoss", "available_losses", "build_loss", "get_loss_class", "register_loss"]

# one import per method file; each file registers itself with @register_loss
from . import acam  # noqa: E402,F401
