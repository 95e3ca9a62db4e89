"""2-D discrete wavelet transform of feature maps, through ``ptwt`` (PyTorch Wavelet Toolbox): differentiable,
on any device, the same coefficients as PyWavelets. FreeKD's (F1) (:mod:`densekd.losses.freekd`).

Zero padding ("zero" mode), as the official FreeKD code's ``pytorch_wavelets.DWTForward(mode='zero')``; inputs
fp32 or fp64 (ptwt takes no fp16/bf16: callers cast, with autocast off).
"""
from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

try:  # a core dependency; a clear error at first use if it is missing
    import ptwt as _ptwt
except ImportError:  # pragma: no cover - the tests set _ptwt = None instead
    _ptwt = None

#: pywt warns on every call when J exceeds its "useful" level (log2 of the side); FreeKD's official recipe runs
#: J = 3 on COCO's 7×11 P7 anyway, and callers check the sizes they need themselves (:func:`min_side_for`)
_LEVEL_WARNING = r"Level value of \d+ is too high"


def need_ptwt() -> Any:
    """The ``ptwt`` module, or one clear ImportError naming the package."""
    if _ptwt is None:
        raise ImportError("freekd needs the 'ptwt' package (PyTorch Wavelet Toolbox) for its wavelet transform: "
                          "pip install ptwt")
    return _ptwt


def min_side_for(levels: int) -> int:
    """Smallest H and W a J-level transform takes here: every level must still split ≥ 2 pixels, i.e.
    ⌈side / 2^(J−1)⌉ ≥ 2 for Haar, i.e. side > 2^(J−1) (5 for J = 3: COCO's 7×11 P7 passes). Longer
    wavelets pad more, so the bound is a floor for them."""
    return 2 ** (levels - 1) + 1


def wavelet_decompose(x: Tensor, levels: int, wavelet: str = "haar") -> tuple[Tensor, list[Tensor]]:
    """``x`` [B, C, H, W] → (low band L_J [B, C, h_J, w_J], [H_1, …, H_J]) with H_j [B, C, 3, h_j, w_j]
    (level 1 = finest first; orientations (horizontal, vertical, diagonal) stacked on dim 2, PyWavelets'
    order), h_j = ⌈H / 2^j⌉ for Haar. ``x`` must be fp32/fp64."""
    ptwt = need_ptwt()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_LEVEL_WARNING, category=UserWarning)
        coeffs = ptwt.wavedec2(x, wavelet, level=levels, mode="zero")
    highs = [torch.stack(tuple(d), dim=2) for d in reversed(coeffs[1:])]  # ptwt lists the coarsest level first
    return coeffs[0], highs


def wavelet_reconstruct(low: Tensor, highs: list[Tensor], size: tuple[int, int], wavelet: str = "haar") -> Tensor:
    """Inverse of :func:`wavelet_decompose`, cropped to ``size`` (H, W) (the zero-padded inverse is up to one
    pixel larger per odd level, e.g. 8×12 for 7×11)."""
    ptwt = need_ptwt()
    coeffs = (low, *[tuple(h.unbind(dim=2)) for h in reversed(highs)])
    out = ptwt.waverec2(coeffs, wavelet)
    return out[..., : size[0], : size[1]]
