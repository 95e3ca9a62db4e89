"""Name → loss class. Adding a method = one file in ``losses/`` + one ``@register_loss`` line."""
from __future__ import annotations

import difflib
from typing import Callable, TypeVar

from torch import nn

from ..errors import UnknownNameError

_LOSSES: dict[str, type[nn.Module]] = {}
T = TypeVar("T", bound=type)


def register_loss(name: str) -> Callable[[T], T]:
    def deco(cls: T) -> T:
        if name in _LOSSES and _LOSSES[name] is not cls:
            raise ValueError(f"loss name {name!r} is already registered to {_LOSSES[name].__name__}")
        _LOSSES[name] = cls  # type: ignore[assignment]
        return cls

    return deco


def available_losses() -> list[str]:
    return sorted(_LOSSES)


def get_loss_class(name: str) -> type[nn.Module]:
    if name not in _LOSSES:
        close = difflib.get_close_matches(name, list(_LOSSES), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownNameError(f"unknown loss {name!r}{hint} (available: {', '.join(available_losses())})")
    return _LOSSES[name]


def build_loss(name: str, **kwargs) -> nn.Module:
    """Build a registered distillation loss, e.g.
    ``build_loss("acam_kd", student_channels=128, teacher_channels=256, num_masks=6)``."""
    cls = get_loss_class(name)
    try:
        return cls(**kwargs)
    except TypeError as e:  # unknown/missing keyword → one line naming the loss
        raise TypeError(f"build_loss({name!r}): {e}") from None
