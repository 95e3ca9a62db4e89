"""FreeKD — knowledge distillation via semantic frequency prompt (Zhang et al., CVPR 2024, arXiv 2311.12079).

Sources (read for facts; no code copied):

* the official code, https://github.com/Gumpest/FreeKD (linked from the paper's abstract):
  ``mmrazor/models/losses/freekd.py`` (``MaskModule``: the prompts and their fitting objective;
  ``FreeKDLoss``: the distillation loss), ``configs/distill/freekd/freekd_retinanet_r101-retinanet_r50_coco.py``
  (the released recipe, RetinaNet R101 → R50, 39.9 mAP in its README), ``mmrazor/models/distillers/
  single_teacher_ORI.py`` (the 1×1-conv aligners, one per FPN level) and its README (the transform is
  ``pytorch_wavelets.DWTForward(J=3, wave='haar', mode='zero')``);
* the paper's abstract (arXiv 2311.12079): prompts "plugged into the teacher model, absorbing the semantic
  frequency context during finetuning", a "pixel-wise frequency mask generated via Frequency Prompt" for the
  distillation. The paper's body could not be read from this machine, so this file cites no paper equation
  numbers: (F1)–(F6) below number the official code's steps, in the order they run.

Official defaults used here (RetinaNet recipe; the paper's detection setting):

* ``levels`` J = 3, ``wavelet`` = "haar", zero padding: ``DWTForward(J=3, mode='zero', wave='haar')`` in
  ``losses/freekd.py`` (fixed there; the padding mode is fixed here too).
* ``num_prompts`` T = 6: the recipe's ``num_tokens=6`` (the class default there is 2); prompts initialised
  N(0, 0.01²), one [T, C] set per band, J + 1 sets (``MaskModule.mask_token``).
* ``high_weight`` = 1: the recipe's ``FreeKDLoss(loss_weight=1)``.
* ``mse_weight`` = 5: the recipe's ``MSELoss(loss_weight=5)`` on the same aligned FPN features.
* ``low_weight`` = 0: the official loss has its low-band term commented out (kept here as an option).
* no temperature: there is none in the official loss or recipe.
* prompts frozen during distillation: the recipe's ``'distiller.losses': dict(lr_mult=0)``; it loads them
  pre-trained (``FreeKD_retinanet_r101_prompt.pth``).
* ``fit_steps`` = 2000, ``fit_lr`` = 1e-3 (Adam). **Decision (this file):** the prompt-fitting script is not
  released; 2000 iterations is hinted by the sibling checkpoint name ``iter_2000_4sets_slice_340.pth``
  (``mmrazor/.mim/configs/distill/freekd/retinanet_r101-retinanet_r50_coco_maskd.py``); Adam at 1e-3 is ours,
  as for MasKD (:mod:`densekd.losses.maskd`).

Other detectors: the repository's leftover configs (``mmrazor/.mim/configs/distill/freekd/``) use a loss
"WKD" that the release does not contain, with FCOS WKD 5 + MSE 10, Faster R-CNN WKD 0.8 + MSE 1, Cascade
X101 → Faster R50 WKD 1 + MSE 2: pass ``high_weight`` / ``mse_weight`` for those. The RetinaNet recipe also
distils the regression head's outputs (``bbox_head.retina_reg``, SmoothL1, weight 1): a second pair on a
head output, not part of this loss, not implemented here.

The method, for one (student, teacher) feature pair [B, C, H, W] (one FPN level):

(F1) wavelet decomposition (J levels, Haar, zero padding) of the teacher F_T and the aligned student
     F̂_S = align(F_S):  F ↦ (L_J, H_1, …, H_J), L_J the low band [B, C, h_J, w_J], H_j the high bands of
     level j [B, C, 3, h_j, w_j] (3 orientations), h_j = ⌈H / 2^j⌉. The transform is ``ptwt``'s, wrapped in
     :func:`densekd.ops.wavelet.wavelet_decompose`.
(F2) frequency prompts P_0, P_1, …, P_J, each [T, C] (P_0 for the low band, P_j for level j's high band).
(F3) pixel-wise frequency masks from the *teacher's* bands:  M_0 = σ(P_0 · L_J^T),
     M_j = σ(P_j · Σ_o H_j^T[:, :, o]) (orientations summed), each [B, T, h, w]; ``P · X`` is the product over
     channels at every pixel.
(F4) prompt fitting, on the frozen teacher (stage 1, :func:`fit_freekd_prompts`): every band is reweighted by
     its masks summed over the prompts, L̂ = (Σ_t M_0,t) ⊙ L_J, Ĥ_j = (Σ_t M_j,t) ⊙ H_j (the same mask for
     the 3 orientations), inverted to F̃_T = IDWT(L̂, Ĥ_1, …, Ĥ_J) (cropped to H × W, **Decision (this
     file)**: the official inverse returns the padded size, e.g. 8×12 for a 7×11 P7, and hands that to the
     head) and put in place of F_T in the teacher's forward; the prompts minimise the teacher's own task loss
     on F̃_T plus Σ_{b=0..J} Dice(M_b), the mean pairwise Dice of the T masks of each band (MasKD's diversity
     term, :func:`densekd.losses.acam.dice_diversity`, with the official 1e-12 per sum).
(F5) high-band loss (``loss_high``):  L_high = Σ_{j=1..J} mean_{b,t,c,o,y,x} | M_j,t ⊙ (H_j^S − H_j^T) |, the
     official ``l1_loss`` over the [B, T, C, 3, h, w] product, computed without forming it
     (Σ_t M_j,t times Σ_{c,o} |H_j^S − H_j^T|, divided by B·T·C·3·h·w). × ``high_weight``. Optional low band
     (``loss_low``, ``low_weight`` > 0): the same with M_0 and L_J.
(F6) spatial feature loss (``loss_feat``): mean (F̂_S − F_T)², × ``mse_weight`` (the recipe's MSELoss).

Gradients reach the student (through F̂_S and the differentiable transform) and the aligner, never the
teacher (F_T detached) and never the prompts during distillation (frozen, as the recipe's lr_mult=0).
Losses are computed in fp32 with autocast off (``ptwt`` takes no bf16, and the other losses do the same).

The transform: **Decision (this file)** ``ptwt`` (PyTorch Wavelet Toolbox, PyPI) rather than the official
``pytorch_wavelets``: ptwt is maintained (1.0.1, 2025) and tested against PyWavelets; ``pytorch_wavelets``
1.3.0 (2023, the last release) imports ``pkg_resources`` at import time and fails where setuptools does not
provide it (our CI venv). Both give the same coefficients and orientation order here (a one-off check on a
7×11 map, J = 3: largest difference 2e-7, pytorch_wavelets keeping its filters in fp32), and both invert a
7×11 map to 8×12.

Where it is applied: every FPN level for detection (the recipe distils all five ``neck`` outputs); the paper
also reports Cityscapes segmentation (abstract: +4.55 mIoU for PSPNet-R18) but the repository has no
segmentation recipe, so segmentation uses the task's canonical point (the logits) with the defaults above.

Not implemented, because the official loss does not contain them: the abstract's "position-aware relational
frequency loss" (a channel-wise importance weighting in third-party summaries; no such term exists in the
released ``FreeKDLoss`` or recipe), and the ``MaskModule.prob`` token-weighting head and ``custom_mask``
switches, which are built there but never used.

Wiring: ``needs_preparation = True``; the engine (:mod:`densekd.engine.prepare`) calls :meth:`FreeKD.prepare`
before the first training step for every FreeKD level with the teacher's features and a ``head_loss_fn``
that runs the frozen teacher from that level on with F̃_T in place. The fitted prompts and the
``prompts_fitted`` flag are in the KD modules' state dict, so a resumed run does not fit again. Used without
fitting, the prompts keep their random initialisation (every mask ≈ 0.5) and the loss warns once.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import at_least_fp32, min_side_for, need_ptwt, wavelet_decompose, wavelet_reconstruct
from .acam import dice_diversity
from .base import DistillContext, DistillLoss
from .fitting import fit_on_teacher, head_loss
from .registry import register_loss


def masked_l1(mask: Tensor, diff: Tensor) -> Tensor:
    """(F5) for one band: mean over [B, T, C, (3,) h, w] of |M_t ⊙ D| with ``mask`` [B, T, h, w] ≥ 0 and
    ``diff`` D [B, C, h, w] (low band) or [B, C, 3, h, w] (high band), without the [B, T, C, ...] product."""
    b, t = mask.shape[:2]
    abs_d = diff.abs()
    per_pixel = abs_d.sum(dim=tuple(range(1, abs_d.dim() - 2)))  # Σ_{c(,o)} |D| → [B, h, w]
    count = t * abs_d[0].numel() * b  # B·T·C·(3·)h·w
    return (mask.sum(dim=1) * per_pixel).sum() / count


@register_loss("freekd")
class FreeKD(DistillLoss):
    """FreeKD loss for one level: prompt-masked L1 on the teacher/student wavelet high bands + feature MSE.

    Args: student_channels, teacher_channels; num_prompts (T = 6), levels (J = 3), wavelet ("haar"),
    high_weight (1), mse_weight (5), low_weight (0: no ``loss_low`` term), align ("conv1x1" | "identity"),
    init_std (0.01, the prompts' N(0, σ²) init), fit_steps / fit_lr (stage 1, :meth:`prepare`).
    Returns ``{"loss_high", "loss_feat"}`` (``loss_feat`` only if mse_weight > 0; ``loss_low`` if low_weight > 0).
    """

    #: the engine fits the frequency prompts on the frozen teacher before training (densekd.engine.prepare)
    needs_preparation = True

    def __init__(self, student_channels: int, teacher_channels: int, num_prompts: int = 6, levels: int = 3,
                 wavelet: str = "haar", high_weight: float = 1.0, mse_weight: float = 5.0, low_weight: float = 0.0,
                 align: str = "conv1x1", init_std: float = 0.01, fit_steps: int = 2000, fit_lr: float = 1e-3) -> None:
        super().__init__(student_channels, teacher_channels, align)
        need_ptwt()
        if int(num_prompts) < 1 or int(levels) < 1:
            raise ValueError(f"freekd: num_prompts and levels must be >= 1, got num_prompts={num_prompts}, "
                             f"levels={levels}")
        weights = {"high_weight": high_weight, "mse_weight": mse_weight, "low_weight": low_weight}
        if any(not float(v) >= 0 for v in weights.values()) or not any(float(v) > 0 for v in weights.values()):
            raise ValueError(f"freekd: loss weights must be >= 0 and one of them > 0, got {weights}")
        if int(fit_steps) < 1 or not float(fit_lr) > 0:
            raise ValueError(f"freekd: fit_steps must be >= 1 and fit_lr > 0, got {fit_steps} / {fit_lr}")
        import pywt

        if wavelet not in pywt.wavelist(kind="discrete"):
            raise ValueError(f"freekd: wavelet must be a discrete pywt wavelet name such as 'haar', got {wavelet!r}")
        self.num_prompts, self.levels, self.wavelet = int(num_prompts), int(levels), wavelet
        self.high_weight, self.mse_weight, self.low_weight = float(high_weight), float(mse_weight), float(low_weight)
        self.fit_steps, self.fit_lr = int(fit_steps), float(fit_lr)
        # (F2) one [T, C] prompt set per band: index 0 the low band, j the high band of level j
        self.prompts = nn.Parameter(torch.randn(self.levels + 1, self.num_prompts, teacher_channels) * init_std,
                                    requires_grad=False)  # frozen during distillation (recipe: lr_mult=0)
        self.register_buffer("prompts_fitted", torch.tensor(False))
        self._warned = False

    # ------------------------------------------------------------------ preparation (stage 1)
    @property
    def prepared(self) -> bool:
        return bool(self.prompts_fitted)

    def prepare(self, teacher_feats_iter: Iterable[Any], head_loss_fn: Callable[[Tensor, Any], Tensor]) -> list[float]:
        """Stage 1 with this module's ``fit_steps`` / ``fit_lr`` (see :func:`fit_freekd_prompts`)."""
        return fit_freekd_prompts(self, teacher_feats_iter, head_loss_fn, self.fit_steps, self.fit_lr)

    # ------------------------------------------------------------------ the method's pieces
    def check_size(self, shape: torch.Size | tuple[int, ...], where: str = "feature map") -> None:
        """One clear error for maps too small for ``levels`` (:func:`min_side_for`)."""
        need = min_side_for(self.levels)
        if min(shape[-2:]) < need:
            raise ValueError(
                f"freekd: {where} of shape {tuple(shape)} is too small for levels={self.levels} wavelet levels: "
                f"H and W must both be >= {need} (> 2^(levels-1), so every level still splits >= 2 pixels); "
                f"set distill.kwargs.levels lower or distil a larger feature map")

    def band_masks(self, band: int, teacher_band: Tensor) -> Tensor:
        """(F3): σ(P_band · X) [B, T, h, w] for the teacher band X: [B, C, h, w] (low) or [B, C, 3, h, w]
        (high: orientations summed first)."""
        x = teacher_band.sum(dim=2) if teacher_band.dim() == 5 else teacher_band
        p = self.prompts[band].to(x.dtype)
        return torch.sigmoid(torch.einsum("tc,bchw->bthw", p, x))

    def reconstruct_teacher(self, teacher_feat: Tensor) -> tuple[Tensor, list[Tensor]]:
        """(F4): F̃_T = IDWT((Σ_t M_0,t) L_J, (Σ_t M_j,t) H_j ...) [B, C, H, W] and the masks [M_0, …, M_J]."""
        self.check_size(teacher_feat.shape, "teacher feature map")
        with torch.autocast(teacher_feat.device.type, enabled=False):
            t = at_least_fp32(teacher_feat)
            low, highs = wavelet_decompose(t, self.levels, self.wavelet)
            masks = [self.band_masks(0, low)] + [self.band_masks(j, h) for j, h in enumerate(highs, start=1)]
            low_hat = low * masks[0].sum(dim=1, keepdim=True)
            highs_hat = [h * m.sum(dim=1)[:, None, None] for h, m in zip(highs, masks[1:])]
            out = wavelet_reconstruct(low_hat, highs_hat, tuple(t.shape[-2:]), self.wavelet)
        return out.to(teacher_feat.dtype), masks

    def forward(self, student_feat: Tensor, teacher_feat: Tensor, context: DistillContext | None = None
                ) -> dict[str, Tensor]:
        self.check_pair(student_feat, teacher_feat)
        self.check_size(teacher_feat.shape)
        if not bool(self.prompts_fitted) and not self._warned:
            warnings.warn("freekd: the frequency prompts were never fitted on the teacher (fit_freekd_prompts); "
                          "masks come from their random initialisation", RuntimeWarning, stacklevel=2)
            self._warned = True
        s = self.align(student_feat)
        with torch.autocast(s.device.type, enabled=False):
            s32, t32 = at_least_fp32(s), at_least_fp32(teacher_feat.detach())
            low_t, highs_t = wavelet_decompose(t32, self.levels, self.wavelet)  # (F1)
            low_s, highs_s = wavelet_decompose(s32, self.levels, self.wavelet)
            with torch.no_grad():  # (F3) prompts frozen, teacher bands carry no grad
                masks = [self.band_masks(j, h) for j, h in enumerate(highs_t, start=1)]
            loss_high = sum(masked_l1(m, hs - ht) for m, hs, ht in zip(masks, highs_s, highs_t))  # (F5)
            out: dict[str, Tensor] = {"loss_high": self.high_weight * loss_high}
            if self.low_weight > 0:
                with torch.no_grad():
                    m0 = self.band_masks(0, low_t)
                out["loss_low"] = self.low_weight * masked_l1(m0, low_s - low_t)
            if self.mse_weight > 0:
                out["loss_feat"] = self.mse_weight * F.mse_loss(s32, t32)  # (F6)
        return out


def fit_freekd_prompts(
    loss_module: FreeKD,
    teacher_feats_iter: Iterable[Any],
    head_loss_fn: Callable[[Tensor, Any], Tensor],
    steps: int,
    lr: float = 1e-3,
) -> list[float]:
    """Stage 1 of FreeKD (F4): learn the frequency prompts on the frozen teacher, then freeze them.

    teacher_feats_iter: yields F_T [B, C, H, W] of this level, or ``(F_T, target)``; re-iterated from the
        start when exhausted (a one-shot iterator that runs dry is an error).
    head_loss_fn(reconstructed_feat, target): the teacher's task loss with F̃_T in place of this level
        (``target`` is None when the iterator yields bare tensors).
    steps, lr: Adam steps / learning rate on the prompts only.

    Minimises head_loss_fn(F̃_T) + Σ_bands Dice(M_band). Returns the per-step objective; afterwards the prompts
    have ``requires_grad=False`` and ``prompts_fitted`` is True.
    """
    if not isinstance(loss_module, FreeKD):
        raise TypeError(f"fit_freekd_prompts expects a FreeKD loss module, got {type(loss_module).__name__}")

    def objective(feat: Tensor, target: Any) -> Tensor:
        recon, masks = loss_module.reconstruct_teacher(feat)
        task = head_loss("fit_freekd_prompts", head_loss_fn, recon, target)
        # Σ over the J + 1 bands of the mean pairwise Dice (official: 1e-12 added to each of the two sums)
        dice = sum(dice_diversity(m.flatten(2), eps=2e-12) for m in masks)
        return task + dice

    history = fit_on_teacher("fit_freekd_prompts", [loss_module.prompts], teacher_feats_iter, objective, steps, lr)
    loss_module.prompts_fitted.fill_(True)
    return history
