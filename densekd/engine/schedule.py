"""Learning-rate schedules as a pure function of the iteration (so resuming needs only the iteration).

lr(it) = base_lr × warmup(it) × decay(it)
  warmup (linear, torchvision/MMDetection): warmup_factor → 1 over warmup_iters
  step:     gamma ** (number of milestones in ``steps`` that are <= it)
  cosine:   0.5 (1 + cos(π it / max_iters))
  poly:     (1 - it / max_iters) ** power
  constant: 1
"""
from __future__ import annotations

import math

from ..config import ScheduleConfig


def lr_factor(cfg: ScheduleConfig, it: int, max_iters: int) -> float:
    if cfg.type == "step":
        decay = cfg.gamma ** sum(1 for s in cfg.steps if it >= s)
    elif cfg.type == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * min(it, max_iters) / max_iters))
    elif cfg.type == "poly":
        decay = max(0.0, 1.0 - it / max_iters) ** cfg.power
    else:
        decay = 1.0
    if it < cfg.warmup_iters:
        alpha = it / cfg.warmup_iters
        decay *= cfg.warmup_factor * (1.0 - alpha) + alpha
    return decay
