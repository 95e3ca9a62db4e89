"""The preparation stage of methods that are fitted on the frozen teacher before they distil (MasKD's receptive
tokens, :func:`densekd.losses.maskd.fit_maskd_tokens`; FreeKD's frequency prompts,
:func:`densekd.losses.freekd.fit_freekd_prompts`): Adam on the module's own parameters only, one teacher feature per
step, then those parameters frozen. A method supplies its parameters and its objective; the engine runs the stage
through the module's ``prepare`` (:mod:`densekd.engine.prepare`).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor


def fit_on_teacher(name: str, params: Sequence[Tensor], teacher_feats_iter: Iterable[Any],
                   objective: Callable[[Tensor, Any], Tensor], steps: int, lr: float = 1e-3) -> list[float]:
    """``steps`` Adam steps (learning rate ``lr``) on ``params`` only, each on the next item of
    ``teacher_feats_iter`` (``F_T`` [B, C, H, W], or ``(F_T, target)``; re-iterated from the start when exhausted, a
    one-shot iterator that runs dry is an error) minimising ``objective(F_T detached, target)`` (``target`` None for
    bare tensors). Afterwards — also after an error — ``params`` have ``requires_grad=False`` and no gradient.
    Returns the per-step objective; ``name`` (the method's fitting function) starts every error message."""
    if int(steps) < 1:
        raise ValueError(f"{name}: steps must be >= 1, got {steps}")
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    history: list[float] = []
    it = iter(teacher_feats_iter)
    try:
        for step in range(int(steps)):
            try:
                item = next(it)
            except StopIteration:
                it = iter(teacher_feats_iter)
                try:
                    item = next(it)
                except StopIteration:
                    raise ValueError(
                        f"{name}: teacher_feats_iter ran out after {step} of {steps} steps; pass a "
                        "re-iterable (e.g. a list or DataLoader-backed generator factory)"
                    ) from None
            feat, target = (item[0], item[1]) if isinstance(item, (tuple, list)) else (item, None)
            value = objective(feat.detach(), target)
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            history.append(float(value.detach()))
    finally:
        for p in params:
            p.requires_grad_(False)
            p.grad = None
    return history


def head_loss(name: str, head_loss_fn: Callable[[Tensor, Any], Tensor], feat: Tensor, target: Any) -> Tensor:
    """``head_loss_fn(feat, target)``: the teacher's task loss with ``feat`` in place of its level, which must be a
    scalar tensor (a ValueError starting with ``name`` otherwise)."""
    task = head_loss_fn(feat, target)
    if not isinstance(task, Tensor) or task.dim() != 0:
        raise ValueError(f"{name}: head_loss_fn must return a scalar tensor (the teacher's task loss), got "
                         f"{type(task).__name__} {tuple(getattr(task, 'shape', ()))}")
    return task
