"""Loading a state dict into a model strictly, with one error line that says what does not fit."""
from __future__ import annotations

from typing import Mapping

from torch import Tensor, nn

from ..errors import ConfigError


def load_strict(model: nn.Module, sd: Mapping[str, Tensor], what: str, hint: str = "") -> None:
    """``model.load_state_dict(sd, strict=True)``, or a ConfigError: ``{what} ({counts and examples}){hint}``.

    ``what`` says which file and which model, e.g. ``"model.teacher.checkpoint: 'x.pth' does not fit FCOS"``.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [k for k in own if k in sd and tuple(own[k].shape) != tuple(sd[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} shape mismatch(es), e.g. {k} {tuple(sd[k].shape)} in the file vs "
                         f"{tuple(own[k].shape)} in the model")
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {missing[0]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[0]}")
        raise ConfigError(f"{what} ({'; '.join(parts)}){hint}")
    model.load_state_dict(sd, strict=True)
