"""MasKD — masked distillation with receptive tokens (Huang et al., ICLR 2023).

docs/methods.md, "MasKD": M tokens fitted on the frozen teacher with its task loss + Dice, then frozen; the
loss is ACAM-KD's masked loss. It is the "fixed teacher mask" row of ACAM-KD Table 10. Two stages:

1. :func:`fit_maskd_tokens` learns the receptive tokens (mask units) on the *frozen teacher*: for teacher
   features F_T the masks are M_s = σ(S_s F_T) (and M_c = σ(S_c ⊙ mean_hw F_T) for the channel family), the
   teacher's own head is run on the masked feature and its task loss plus the pairwise Dice of the masks
   (MasKD's diversity term) is minimised with respect to the tokens only.
   **Decision (this file):** the masked feature is the token *average* (1/M) Σ_m M_m ⊙ F_T — MasKD's
   ``forward_train`` with its per-image token weights (``weight_mask``) replaced by uniform weights; the
   token-weighting head (``prob``) and the late "custom mask" multiplication by the student's own masks
   (hunto/MasKD ``mmrazor/mmrazor/models/losses/maskd.py``) are not implemented.
2. The :class:`MasKD` loss then uses the frozen masks (``requires_grad=False``) computed from F_T with
   ACAM-KD's masked channel / spatial losses (:func:`densekd.losses.acam.channel_loss` /
   :func:`~densekd.losses.acam.spatial_loss`, the MasKD-style normalisation, α = 1) and no diversity term
   (the tokens no longer move). ``masks="spatial"`` keeps only the spatial family, which is MasKD's own
   (it has no channel tokens); the default ``"both"`` matches ACAM-KD's loss form (docs/methods.md, "MasKD").
   Weight: α = 1 as ACAM-KD (the official MasKD RetinaNet config uses ``loss_weight=7`` on its own,
   token-weighted, normalisation — not comparable one to one).

Wiring: the module declares ``needs_preparation = True``; the engine (:mod:`densekd.engine.prepare`) calls
:meth:`MasKD.prepare` before the first training step for every MasKD level: it iterates the teacher
feature of that level over training batches (teacher eval, no grad) and passes a ``head_loss_fn`` that runs
the teacher from that level on with the masked feature in place (other levels unmasked) and returns the
teacher's own task loss (detection: the torchvision detector's loss dict; segmentation: cross-entropy of
the logits). ``fit_steps`` / ``fit_lr`` (constructor kwargs, so ``distill.kwargs.fit_steps``) set the stage;
**Decision (this file):** defaults 2000 Adam steps at lr 1e-3 — not checked against MasKD's own schedule.
The fitted tokens and the ``tokens_fitted`` flag are saved with the KD modules in the checkpoint, so a
resumed run does not fit again. Used outside the engine without :func:`fit_maskd_tokens`, the tokens keep
their random N(0, 0.01²) initialisation (masks ≈ 0.5 everywhere, close to a scaled FitNet) and the loss
warns once.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Iterable

import torch
from torch import Tensor

from .acam import ACAMKD, dice_diversity
from .base import DistillContext
from .fitting import fit_on_teacher, head_loss
from .registry import register_loss


@register_loss("maskd")
class MasKD(ACAMKD):
    """MasKD loss for one level: ACAM-KD's masked losses with fixed teacher masks (tokens frozen).

    Args: student_channels, teacher_channels, num_masks (M = 6 for detection as MasKD's configs),
    alpha (1), masks (``"both"`` | ``"spatial"`` | ``"channel"``), channel_units, align, init_std,
    keep_masks — as :class:`ACAMKD`; fit_steps, fit_lr — stage 1 (:meth:`prepare`).
    Returns ``{"loss_channel", "loss_spatial"}`` (enabled families).
    """

    def __init__(self, student_channels: int, teacher_channels: int, num_masks: int = 6, alpha: float = 1.0,
                 masks: str = "both", channel_units: str = "vector", align: str = "conv1x1",
                 init_std: float = 0.01, keep_masks: bool = True, fit_steps: int = 2000,
                 fit_lr: float = 1e-3) -> None:
        if int(fit_steps) < 1 or not float(fit_lr) > 0:
            raise ValueError(f"maskd: fit_steps must be >= 1 and fit_lr > 0, got {fit_steps} / {fit_lr}")
        super().__init__(student_channels, teacher_channels, num_masks=num_masks, alpha=alpha, lambda_div=0.0,
                         channel_units=channel_units, masks=masks, fusion="teacher", diversity="none",
                         align=align, init_std=init_std, keep_masks=keep_masks,
                         # MasKD's own form: the Σ M normalisation; the tokens are frozen, so L_c + L_s never
                         # reaches them ("detached") and the student learns from D alone
                         mask_objective="detached", mask_norm="sum",
                         z_norm="none")  # MasKD's tokens read the teacher's map as it is (no standardisation)
        self.fit_steps, self.fit_lr = int(fit_steps), float(fit_lr)
        self.ascm.requires_grad_(False)  # the receptive tokens are fixed during distillation
        self.register_buffer("tokens_fitted", torch.tensor(False))
        self._warned = False

    #: the engine fits the receptive tokens on the frozen teacher before training (densekd.engine.prepare)
    needs_preparation = True
    #: the training guards' mask warnings (densekd.health.guards) name MasKD, not ACAM-KD, and say what a constant
    #: spatial mask means here: MasKD has no z_norm, and its tokens no longer move
    mask_label = "MasKD"
    constant_spatial_hint = ("the receptive tokens, fitted on the teacher's task loss and then frozen "
                             "(distill.kwargs.fit_steps), select no region at this level, so its spatial term weighs "
                             "every position alike there (docs/methods.md, \"MasKD\")")

    @property
    def prepared(self) -> bool:
        return bool(self.tokens_fitted)

    def prepare(self, teacher_feats_iter: Iterable[Any], head_loss_fn: Callable[[Tensor, Any], Tensor]) -> list[float]:
        """Stage 1 with this module's ``fit_steps`` / ``fit_lr`` (see :func:`fit_maskd_tokens`)."""
        return fit_maskd_tokens(self, teacher_feats_iter, head_loss_fn, self.fit_steps, self.fit_lr)

    def forward(self, student_feat: Tensor, teacher_feat: Tensor, context: DistillContext | None = None
                ) -> dict[str, Tensor]:
        if not bool(self.tokens_fitted) and not self._warned:
            warnings.warn("maskd: the receptive tokens were never fitted on the teacher (fit_maskd_tokens); "
                          "masks come from their random initialisation", RuntimeWarning, stacklevel=2)
            self._warned = True
        return super().forward(student_feat, teacher_feat, context)

    def masked_teacher(self, teacher_feat: Tensor) -> dict[str, Tensor]:
        """Stage-1 inputs: ``{"spatial": (1/M) Σ_m M_s,m ⊙ F_T, "channel": ...}`` and the masks
        ``"mask_spatial"`` [B, M, HW] / ``"mask_channel"`` [B, M, C] (enabled families only)."""
        m_c, m_s = self.ascm(teacher_feat)
        b, c, h, w = teacher_feat.shape
        out: dict[str, Tensor] = {}
        if m_s is not None:
            out["spatial"] = teacher_feat * m_s.mean(1).view(b, 1, h, w)
            out["mask_spatial"] = m_s
        if m_c is not None:
            out["channel"] = teacher_feat * m_c.mean(1).view(b, c, 1, 1)
            out["mask_channel"] = m_c
        return out


def fit_maskd_tokens(
    loss_module: MasKD,
    teacher_feats_iter: Iterable[Any],
    head_loss_fn: Callable[[Tensor, Any], Tensor],
    steps: int,
    lr: float = 1e-3,
) -> list[float]:
    """Stage 1 of MasKD: learn the receptive tokens on the frozen teacher, then freeze them.

    teacher_feats_iter: yields the teacher feature of this level ``F_T`` [B, C, H, W], or ``(F_T, target)``;
        re-iterated from the start when exhausted (a one-shot iterator that runs dry is an error).
    head_loss_fn(masked_feat, target): the teacher's task loss with its head run on ``masked_feat``
        (``target`` is None when the iterator yields bare tensors). Called once per enabled mask family.
    steps, lr: Adam steps / learning rate on the tokens only.

    Minimises Σ_families head_loss_fn(masked feature) + Dice(masks) (MasKD's objective). Returns the
    per-step objective; afterwards the tokens have ``requires_grad=False`` and ``tokens_fitted`` is True.
    """
    if not isinstance(loss_module, MasKD):
        raise TypeError(f"fit_maskd_tokens expects a MasKD loss module, got {type(loss_module).__name__}")

    def objective(feat: Tensor, target: Any) -> Tensor:
        masked = loss_module.masked_teacher(feat)
        value = feat.new_zeros(())
        for fam in ("spatial", "channel"):
            if fam in masked:
                task = head_loss("fit_maskd_tokens", head_loss_fn, masked[fam], target)
                value = value + task + dice_diversity(masked[f"mask_{fam}"])
        return value

    history = fit_on_teacher("fit_maskd_tokens", list(loss_module.ascm.parameters()), teacher_feats_iter, objective,
                             steps, lr)
    loss_module.tokens_fitted.fill_(True)
    return history
