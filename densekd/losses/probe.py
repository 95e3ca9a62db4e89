"""A loss module on its own: only its parameters (aligner, mask modules, …) trained by Adam on one fixed random
student/teacher pair, its KD term and mask statistics recorded along the way. How the ACAM-KD mask collapse is
reproduced without a model or data (``benchmarks/acam_collapse_repro.py``; held by ``tests/test_acam_presets.py``).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from .registry import build_loss


def probe_loss(name: str, steps: int = 300, record_at: Sequence[int] = (0, 50, 100, 300), lr: float = 3e-3,
               student_channels: int = 16, teacher_channels: int = 32, num_masks: int = 6,
               **kwargs: Any) -> list[dict[str, float]]:
    """Train the modules of loss ``name`` (``build_loss(name, ..., **kwargs)``, seeded 0) for ``steps`` Adam steps
    on one fixed random pair (student 4×``student_channels``×16×16, teacher 4×``teacher_channels``×16×16, seed 0),
    minimising all its terms. Returns one row per step in ``record_at``: the step, ``kd`` = its KD terms (all but
    ``regularizer_terms``, e.g. ACAM-KD's L_c + L_s) over their value at step 0, and ``mask_statistics()`` when the
    module has them."""
    g = torch.Generator().manual_seed(0)
    fs = torch.randn(4, student_channels, 16, 16, generator=g)
    ft = torch.randn(4, teacher_channels, 16, 16, generator=g)
    torch.manual_seed(0)
    mod = build_loss(name, student_channels=student_channels, teacher_channels=teacher_channels,
                     num_masks=num_masks, **kwargs)
    regularizers = set(getattr(mod, "regularizer_terms", ()))
    stats = getattr(mod, "mask_statistics", None)
    opt = torch.optim.Adam(mod.parameters(), lr=lr)
    rows, first = [], None
    for step in range(steps + 1):
        out = mod(fs, ft)
        kd = float(sum(v.detach() for k, v in out.items() if k not in regularizers))
        first = kd if first is None else first
        if step in record_at:
            rows.append({"step": step, "kd": kd / first, **(stats() if callable(stats) else {})})
        if step == steps:
            break
        opt.zero_grad()
        sum(out.values()).backward()
        opt.step()
    return rows
