"""State the integrations' pre-training checks must leave as they found it (shared by every integration)."""
from __future__ import annotations

import contextlib
import random
from typing import Iterator

import numpy as np
import torch
from torch import nn


@contextlib.contextmanager
def rng_preserved() -> Iterator[None]:
    """Leave Python's, NumPy's and torch's random streams as they were (a check must not shift the run)."""
    py, npy, th = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.random.set_rng_state(th)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


@contextlib.contextmanager
def module_state_preserved(model: nn.Module) -> Iterator[None]:
    """Leave every buffer (BatchNorm running statistics and counters) and every train/eval flag of ``model`` as
    it was."""
    modes = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        for m, mode in modes:
            m.training = mode
