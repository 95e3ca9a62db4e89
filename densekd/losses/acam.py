"""ACAM-KD: Adaptive and Cooperative Attention Masking for Knowledge Distillation.

Lan & Tian, ICCV 2025 (arXiv 2503.06307). Every equation and decision below follows docs/methods.md, "ACAM-KD";
comments cite its sub-sections by name.

Per distilled level::

    F̂_S = align(F_S)                                     (Notation: 1×1 conv)
    F_fuse = softmax(Q Kᵀ / √(C/2)) V                     (STCA-FF; Q from F_T, K, V from F̂_S)
    M_s = σ(S_s Z),  M_c = σ(S_c ⊙ v)                      (ASCM; Z = flatten(F_fuse), v = mean_hw F_fuse)
    L = α (L_c + L_s) + λ (Dice(M_s) + Dice(M_c))          (Losses)

How the mask modules learn (docs/methods.md, "Optimisation of the mask modules", revised after measurement): by
default they *ascend* L_c + L_s through a gradient reversal on M_c and M_s while the student and the aligner
descend it, and L_c, L_s are normalised by Σ M² (a mask-weighted mean of D², invariant to the masks' scale);
Dice is descended by the mask modules. Read literally (descent on L with the Σ M norm) every mask collapses to
≈ 0 within ~100 iterations and the KD term with it (``python benchmarks/acam_collapse_repro.py``); that reading
is kept as the registry preset ``acam_kd_paper`` (densekd/losses/acam_variants.py).

How it is computed (docs/methods.md, "Computing ACAM-KD without the attention matrix"). ASCM reads F_fuse
only through two linear maps, S_s Z and mean_hw Z, so with ``z_norm="none"``, or with the channel masks alone,
training never forms F_fuse: both maps are moved inside the attention (``STCAFF.project``) and a blockwise kernel
(``densekd.ops.ProjectedAttention``, flash-style: P built a few query rows at a time, recomputed in backward from
the row log-sum-exp) returns exactly what ASCM needs. The values are the explicit formula's (tests: against
softmax(QKᵀ)V, gradcheck, every parameter's gradient). F_fuse itself is computed with
``scaled_dot_product_attention`` (never the N×N matrix) when the spatial masks' ``z_norm="spatial"`` (the
default) needs all of it, with ``fusion="teacher"``, and when ``last_masks["fused"]`` is read.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import (affine, at_least_fp32, cross_attention, pointwise, projected_attention, reverse_grad,
                   squared_error_sums)
from ..ops.attention import (ATTENTION_KERNELS, attention_floor_flops, blocked_attention_flops,
                             cross_attention_flops, cross_attention_kernel, projected_attention_flops)
from .base import DistillContext, DistillLoss
from .registry import register_loss

_CHOICES = {
    "query": ("teacher", "student"),
    "channel_units": ("vector", "scalar"),
    "masks": ("both", "spatial", "channel"),
    "fusion": ("cross_attention", "teacher"),
    "diversity": ("both", "spatial", "none"),
    "mask_objective": ("descent", "adversarial", "detached"),
    "mask_norm": ("sum", "square"),
    "z_norm": ("none", "spatial"),
    "attention_kernel": ATTENTION_KERNELS,
}


def _check_choice(name: str, value: str) -> None:
    if value not in _CHOICES[name]:
        raise ValueError(f"acam_kd: {name} must be one of {', '.join(_CHOICES[name])}; got {value!r}")


class STCAFF(nn.Module):
    """Student–teacher cross-attention feature fusion (docs/methods.md, "STCA-FF").

    Q = W_q * F_T (C → C/2), K = W_k * F̂_S (C → C/2), V = W_v * F̂_S (C → C), all 1×1 convs.
    No multi-head split, residual, norm or output projection (the spec adds none).
    ``query="student"`` swaps the roles (paper Table 9): Q from F̂_S, K and V from F_T.
    ``residual=True`` (a switch, not the paper): F_fuse = A V + the query's own map, as every Transformer
    cross-attention layer adds its query back (docs/methods.md, "The fused map carries one pattern").
    ``kernel``: how the attention is computed when F_fuse is formed (:func:`densekd.ops.cross_attention`:
    ``"auto"``, ``"blocked"`` or ``"sdpa"``; the same values, rounded differently).
    """

    def __init__(self, channels: int, query: str = "teacher", residual: bool = False, kernel: str = "auto") -> None:
        super().__init__()
        _check_choice("query", query)
        _check_choice("attention_kernel", kernel)
        self.query = query
        self.residual = bool(residual)
        self.kernel = kernel
        d_qk = max(channels // 2, 1)
        self.q = nn.Conv2d(channels, d_qk, kernel_size=1)
        self.k = nn.Conv2d(channels, d_qk, kernel_size=1)
        self.v = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, teacher_feat: Tensor, student_aligned: Tensor) -> Tensor:
        q_src, kv_src = (teacher_feat, student_aligned) if self.query == "teacher" else (student_aligned, teacher_feat)
        b, c, h, w = kv_src.shape
        # [B, HW, ·] made contiguous right away, so each conv output is freed before the attention runs
        q = self.q(q_src).flatten(2).transpose(1, 2).contiguous()  # [B, HW, C/2]
        k = self.k(kv_src).flatten(2).transpose(1, 2).contiguous()  # [B, HW, C/2]
        v = self.v(kv_src).flatten(2).transpose(1, 2).contiguous()  # [B, HW, C]
        fused = cross_attention(q, k, v, channels_first=True, kernel=self.kernel)  # A V; A never materialised
        fused = fused.view(b, c, h, w)
        return fused + q_src if self.residual else fused

    def project(self, teacher: Tensor, student_aligned: Tensor, hw: tuple[int, int], spatial_units: Tensor | None,
                channel_mean: bool, keep_fused: bool = True
                ) -> tuple[Tensor | None, Tensor | None, Callable[[], Tensor] | None]:
        """ASCM's two reads of F_fuse, computed without F_fuse, from F_T and F̂_S flattened to [B, C, HW]:
        (S_s Z [B, M, HW] or None, mean_hw F_fuse [B, C] or None, and with ``keep_fused`` a function that
        returns F_fuse itself [B, C, H, W] when called, else None).

        Both reads are linear in F_fuse = P V, so they move inside the attention (associativity):
        S_s Z = (S_s W_v) X Pᵀ + (S_s b_v) 1ᵀ Pᵀ and mean_hw F_fuse = W_v X (Pᵀ1) / HW + b_v (rows of P sum
        to 1), with X the key/value source [B, C, HW]. Exact (tested against the explicit formula); only the
        M projected rows of V enter the attention, so forward + backward do 4 products of size N×N×C/2 (SDPA
        on two V heads: 14) and neither V nor F_fuse is kept for backward (measured: benchmarks/acam_loss.py).
        """
        q_src, x = (teacher, student_aligned) if self.query == "teacher" else (student_aligned, teacher)
        b, c, n = x.shape
        q = pointwise(self.q, q_src)  # Q: [B, C/2, HW]
        k = pointwise(self.k, x)  # K: [B, C/2, HW]
        wv, bv = self.v.weight.flatten(1).to(x.dtype), self.v.bias.to(x.dtype)  # V = W_v X + b_v, never formed
        units = spatial_units.to(x.dtype) if spatial_units is not None else x.new_zeros(0, c)
        vt = affine(x, units @ wv, units @ bv)  # S_s V: [B, M, HW]
        y, cs = projected_attention(q, k, vt)  # blockwise; P never formed whole (densekd.ops.attention)
        mean = None
        if channel_mean:  # mean_hw (P V) = (1/HW) Σ_j cs_j V_j = W_v (X cs / HW) + b_v, since Σ_j cs_j = HW
            # weights cs / HW sum to 1: a weighted mean of X, so fp16 cannot overflow (a sum over HW could)
            xc = torch.bmm(x, (cs / n).to(x.dtype).unsqueeze(2)).squeeze(2)
            mean = F.linear(xc, wv, bv)
            if self.residual:
                mean = mean + q_src.mean(dim=2)
        if self.residual and spatial_units is not None:  # S_s (P V + Q_src) = S_s P V + S_s Q_src
            y = y + torch.einsum("mc,bcn->bmn", units, q_src)
        spatial = y if spatial_units is not None else None
        if not keep_fused:
            return spatial, mean, None
        qd, kd, xd = q.detach(), k.detach(), x.detach()
        wvd, bvd = wv.detach().clone(), bv.detach().clone()  # the weights as they were at this forward
        version = xd._version  # X may be the caller's own map (align="identity", or query="student")

        def fused() -> Tensor:
            if xd._version != version:
                raise RuntimeError("acam_kd: last_masks['fused'] cannot be computed: the feature map it reads was "
                                   "modified in place after the forward; read it before changing the features")
            with torch.no_grad():
                v = affine(xd, wvd, bvd).transpose(1, 2)  # V: [B, HW, C]
                out = cross_attention(qd.transpose(1, 2), kd.transpose(1, 2), v, channels_first=True,
                                      kernel=self.kernel).view(b, c, *hw)
                return out + q_src.detach().view(b, c, *hw) if self.residual else out

        return spatial, mean, fused


class ASCM(nn.Module):
    """Adaptive spatial-channel masking (docs/methods.md, "ASCM").

    M selection units per family, initialised N(0, 0.01²). Spatial masks M_s = σ(S_s Z) [B, M, HW]
    (dot product over channels, sigmoid after the product). Channel masks, **Decision** (ASCM):
    M_c = σ(S_c ⊙ v) [B, M, C] with ``channel_units="vector"``; the outer-product reading
    (``"scalar"``: one scalar per mask, M_c[b,m,c] = σ(s_m · v[b,c])) is the documented alternative.
    """

    def __init__(self, channels: int, num_masks: int, channel_units: str = "vector", init_std: float = 0.01,
                 spatial: bool = True, channel: bool = True, z_norm: str = "spatial") -> None:
        super().__init__()
        _check_choice("channel_units", channel_units)
        _check_choice("z_norm", z_norm)
        self.channel_mode = channel_units
        self.z_norm = z_norm
        # Both families are always drawn, in a fixed order, so a switch that drops one leaves the other's
        # initialisation unchanged (the ablations differ in what they should and nothing else).
        s_init = torch.randn(num_masks, channels) * init_std
        c_init = torch.randn(num_masks, channels) * init_std if channel_units == "vector" else torch.randn(num_masks) * init_std
        self.spatial_units = nn.Parameter(s_init) if spatial else None
        self.channel_units = nn.Parameter(c_init) if channel else None

    def forward(self, fused: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """Returns (channel masks [B, M, C] or None, spatial masks [B, M, HW] or None)."""
        logits = mean = None
        if self.spatial_units is not None:
            z = fused.flatten(2)  # Z: [B, C, HW]
            if self.z_norm == "spatial":  # docs/methods.md, "Spatial masks must be spatial": each
                # channel standardised over space, so that S_s Z varies over positions instead of saturating σ on
                # Z's spatial mean. Unbiased std over H·W > 1 positions; a 1×1 map (P6/P7 of a small image) has no
                # spatial spread: its standardised Z is 0 and its spatial masks σ(0) = 0.5 (never NaN)
                n = z.shape[2]
                z = (z - z.mean(dim=2, keepdim=True)) / (z.std(dim=2, keepdim=True, unbiased=n > 1) + 1e-5)
            logits = torch.einsum("mc,bcn->bmn", self.spatial_units.to(z.dtype), z)  # S_s Z
        if self.channel_units is not None:
            mean = fused.mean(dim=(2, 3))  # v: [B, C]
        return self.masks_from(logits, mean)

    def masks_from(self, spatial_logits: Tensor | None, channel_mean: Tensor | None
                   ) -> tuple[Tensor | None, Tensor | None]:
        """(M_c, M_s) from ASCM's two reads of F_fuse: S_s Z [B, M, HW] and v = mean_hw F_fuse [B, C]."""
        m_c = m_s = None
        if self.spatial_units is not None and spatial_logits is not None:
            m_s = torch.sigmoid(spatial_logits)  # σ(S_s Z): sigmoid after the product
        if self.channel_units is not None and channel_mean is not None:
            v = channel_mean
            units = self.channel_units.to(v.dtype)
            if self.channel_mode == "vector":
                m_c = torch.sigmoid(units.unsqueeze(0) * v.unsqueeze(1))  # σ(S_c ⊙ v): [B, M, C]
            else:
                m_c = torch.sigmoid(units.view(1, -1, 1) * v.unsqueeze(1))  # σ(s_m v_c): [B, M, C]
        return m_c, m_s


class MaskRecord(Mapping):
    """``last_masks`` of a forward: a read-only mapping of detached tensors. An entry given as a function
    (ACAM-KD's ``"fused"``, which training never forms) is computed on first access and then kept; until then
    the record holds that forward's Q, K and key/value map. Not pickled with its module (see ACAMKD)."""

    def __init__(self, items: dict[str, Tensor | Callable[[], Tensor]] | None = None) -> None:
        self._items = dict(items or {})

    def __getitem__(self, key: str) -> Tensor:
        value = self._items[key]
        if not isinstance(value, Tensor):
            value = self._items[key] = value()
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"MaskRecord({', '.join(self._items)})"


def dice_diversity(masks: Tensor, eps: float = 1e-6) -> Tensor:
    """Mean pairwise Dice over ordered pairs i ≠ j (docs/methods.md, "Losses" — as in MasKD).

    masks [B, M, N]: d_ij = 2 Σ_n X_in X_jn / (Σ_n X_in² + Σ_n X_jn² + ε), averaged over b and i ≠ j.
    Identical masks give 1, disjoint masks 0. With M = 1 there is no pair and the term is 0.
    """
    b, m, _ = masks.shape
    if m < 2:
        return masks.new_zeros(())
    x = at_least_fp32(masks)
    gram = torch.bmm(x, x.transpose(1, 2))  # [B, M, M]: Σ_n X_in X_jn
    sq = torch.diagonal(gram, dim1=1, dim2=2)  # [B, M]: Σ_n X_in²
    d = 2 * gram / (sq.unsqueeze(2) + sq.unsqueeze(1) + eps)
    off_diag = d.sum(dim=(1, 2)) - torch.diagonal(d, dim1=1, dim2=2).sum(dim=1)
    return (off_diag / (m * (m - 1))).mean()


def _mask_norm(m: Tensor, norm: str) -> Tensor:
    """Σ over the mask's last dimension of M ("sum", MasKD) or of M² ("square", scale-invariant)."""
    return (m * m).sum(dim=-1) if norm == "square" else m.sum(dim=-1)


def channel_loss(diff_sq_c: Tensor, m_c: Tensor, hw: int, eps: float = 1e-12, norm: str = "sum") -> Tensor:
    """L_c = (1/M) Σ_m mean_b [ Σ_{c,h,w} (M_c D)² / (H·W · Σ_c M_c) ] (docs/methods.md, "Losses"; ``norm="sum"``,
    MasKD's form and this function's default). ACAM-KD passes ``norm="square"``
    (docs/methods.md, "Optimisation of the mask modules"): the denominator is H·W · Σ_c M_c².

    ``diff_sq_c`` [B, C] = Σ_hw D², so Σ_{c,h,w} (M_c[b,m,c] D[b,c,h,w])² = Σ_c M_c² · diff_sq_c: one
    einsum over all masks, no loop, no [B, M, C, H, W] tensor. ``norm="square"`` divides by Σ_c M_c²
    instead (a mask-weighted mean of D², invariant to the masks' scale).
    """
    num = torch.einsum("bmc,bc->bm", m_c * m_c, diff_sq_c)
    den = hw * _mask_norm(m_c, norm) + eps
    return (num / den).mean()  # mean over b and m = (1/M) Σ_m mean_b


def spatial_loss(diff_sq_n: Tensor, m_s: Tensor, c: int, eps: float = 1e-12, norm: str = "sum") -> Tensor:
    """L_s = (1/M) Σ_m mean_b [ Σ_{c,h,w} (M_s D)² / (C · Σ_hw M_s) ]; ``diff_sq_n`` [B, HW] = Σ_c D².

    ``norm="square"``: divide by C · Σ_hw M_s² instead (scale-invariant, see :func:`channel_loss`).
    """
    num = torch.einsum("bmn,bn->bm", m_s * m_s, diff_sq_n)
    den = c * _mask_norm(m_s, norm) + eps
    return (num / den).mean()


def mask_statistics(masks: Tensor, eps: float = 1e-12) -> dict[str, float]:
    """Collapse diagnostics for one mask family [B, M, N] (docs/methods.md, "Optimisation of the mask modules").

    mean: mean mask value. dice: mean pairwise Dice (1 = all masks identical). entropy: entropy of each
    mask normalised to a distribution over its N positions, divided by log N (1 = uniform, 0 = one spike),
    averaged over b and m. std: each mask's standard deviation over its N positions (for spatial masks: its
    spatial std; 0 = a constant gate, docs/methods.md, "Spatial masks must be spatial"), averaged over b and m;
    std_min: the smallest of the M per-mask stds (each averaged over b), so one constant mask shows.
    """
    x = at_least_fp32(masks.detach())
    n = x.shape[-1]
    p = x / (x.sum(dim=-1, keepdim=True) + eps)
    ent = -(p * (p + eps).log()).sum(dim=-1) / max(math.log(n), eps)
    std = x.std(dim=-1, unbiased=False)  # [B, M]
    return {"mean": float(x.mean()), "dice": float(dice_diversity(x)), "entropy": float(ent.mean()),
            "std": float(std.mean()), "std_min": float(std.mean(dim=0).min())}


@register_loss("acam_kd")
class ACAMKD(DistillLoss):
    """ACAM-KD for one distilled level: align → STCA-FF → ASCM → masked losses + Dice diversity.

    Args:
        student_channels, teacher_channels: channels of F_S and F_T.
        num_masks: M per family; 6 for detection, number of classes for segmentation (docs/methods.md, "ASCM").
        alpha, lambda_div: α and λ of the total loss (both 1, docs/methods.md, "Losses").
        query: ``"teacher"`` (default) or ``"student"`` — which side asks in STCA-FF (paper Table 9).
        channel_units: ``"vector"`` (default Decision) or ``"scalar"`` (outer-product reading).
        masks: ``"both"`` | ``"spatial"`` | ``"channel"`` (paper Table 8).
        fusion: ``"cross_attention"`` (STCA-FF) or ``"teacher"`` (ASCM fed with F_T: the adaptive teacher
            mask of paper Table 10; no STCA-FF module is built).
        diversity: ``"both"`` (Decision: Dice(M_s) + Dice(M_c)), ``"spatial"`` or ``"none"``.
        align: ``"conv1x1"`` or ``"identity"`` (equal channels only).
        keep_masks: store detached ``last_masks`` after each forward (for plots and logs). ``"fused"`` is
            computed when first read; until the next forward the record holds this forward's Q, K and
            key/value map (about two feature maps per level). ``False`` keeps nothing.
        mask_objective: how L_c + L_s trains the mask modules (STCA-FF and ASCM; align is always trained
            by L). ``"adversarial"`` (default, docs/methods.md, "Optimisation of the mask modules"): the
            masks *ascend* L_c + L_s (gradient reversal on the masks before the masked losses), i.e. they
            seek where the student still lags, while the student descends it; Dice is still descended.
            ``"descent"`` (the literal reading, preset ``acam_kd_paper``): the masks are part of the graph of
            L and descend it like the student — measured to collapse every mask to ≈ 0 with the Σ M norm
            (L_c, L_s are then proportional to the masks' scale). ``"detached"``: L_c + L_s does not reach the
            mask modules at all (trained by Dice only; a control). In ``"adversarial"`` and ``"detached"``
            STCA-FF reads a detached F̂_S, so the student's gradient comes from D only.
        z_norm: ``"spatial"`` (default since 2026-12-05, docs/methods.md, "Spatial masks must be spatial"): Z
            standardised per channel over space before the spatial units (otherwise, on post-ReLU features and on
            detection's P4–P7, the spatial masks saturate to constant 0/1 gates, measured); defined for every map
            size (a 1×1 map gives masks 0.5). ``"none"``: the literal ASCM (the preset ``acam_kd_paper``).
        fusion_residual: ``False`` (default: the paper's STCA-FF, no residual). ``True`` adds the query's own map to
            the attention output (F_fuse = A V + F_T), as a Transformer cross-attention layer does: measured on the
            detection demo, A V alone carries about one spatial pattern (its first singular component holds
            84–95 % of the standardised variance at P3–P5), so every spatial mask is a function of it and the M
            masks are identical (benchmarks/detection_where_kd.py).
        attention_kernel: ``"auto"`` (default: on a CPU the blocked exact attention for maps of 128 channels and
            256 positions or more, where it is faster, else SDPA;
            docs/methods.md, "Computing ACAM-KD without the attention matrix"), ``"blocked"`` or ``"sdpa"`` to
            force one: the same values, rounded differently,
            e.g. to reproduce a run made before the blocked kernel (commit 39aa098), or on a CPU whose crossover
            differs (``python benchmarks/blocked_attention.py --sweep``). Only the explicit path (``z_norm="spatial"``
            with spatial masks, and ``last_masks["fused"]``) calls it.
        mask_norm: ``"square"`` (default, docs/methods.md, "Optimisation of the mask modules": divide by
            Σ M², so the loss is a mask-weighted mean of D², invariant to the masks' scale; adversarial masks
            with the Σ M norm saturate at 1, measured) or ``"sum"`` (divide by Σ M, MasKD's form; the preset
            ``acam_kd_paper``).

    Returns ``{"loss_channel", "loss_spatial", "loss_div"}`` (only the terms the switches enable),
    with α and λ applied. After each forward, ``last_masks`` holds ``{"channel": [B,M,C],
    "spatial": [B,M,H,W], "fused": [B,C,H,W]}`` (detached; only the families that were computed).
    """

    regularizer_terms = ("loss_div",)  # Dice diversity: not a student–teacher distance (densekd.health guards)

    def __init__(
        self,
        student_channels: int,
        teacher_channels: int,
        num_masks: int = 6,
        alpha: float = 1.0,
        lambda_div: float = 1.0,
        query: str = "teacher",
        channel_units: str = "vector",
        masks: str = "both",
        fusion: str = "cross_attention",
        diversity: str = "both",
        align: str = "conv1x1",
        init_std: float = 0.01,
        keep_masks: bool = True,
        mask_objective: str = "adversarial",  # docs/methods.md, "Optimisation of the mask modules"
        mask_norm: str = "square",  # idem: adversarial and the Σ M² norm go together
        z_norm: str = "spatial",  # docs/methods.md, "Spatial masks must be spatial"
        fusion_residual: bool = False,
        attention_kernel: str = "auto",  # densekd.ops.cross_attention: "auto" | "blocked" | "sdpa"
    ) -> None:
        super().__init__(student_channels, teacher_channels, align=align)
        for name, value in (("query", query), ("channel_units", channel_units), ("masks", masks),
                            ("fusion", fusion), ("diversity", diversity), ("mask_objective", mask_objective),
                            ("mask_norm", mask_norm), ("z_norm", z_norm), ("attention_kernel", attention_kernel)):
            _check_choice(name, value)
        if int(num_masks) < 1:
            raise ValueError(f"acam_kd: num_masks must be >= 1, got {num_masks}")
        self.num_masks = int(num_masks)
        self.alpha = float(alpha)
        self.lambda_div = float(lambda_div)
        self.masks = masks
        self.fusion_mode = fusion
        self.diversity = diversity
        self.keep_masks = keep_masks
        self.mask_objective = mask_objective
        self.mask_norm = mask_norm
        c = teacher_channels
        # Each level has its own align / STCA-FF / ASCM (docs/methods.md, "ACAM-KD": nothing is shared).
        self.fusion = (STCAFF(c, query=query, residual=fusion_residual, kernel=attention_kernel)
                       if fusion == "cross_attention" else None)
        self.ascm = ASCM(c, self.num_masks, channel_units=channel_units, init_std=init_std,
                         spatial=masks in ("both", "spatial"), channel=masks in ("both", "channel"), z_norm=z_norm)
        self.last_masks: Mapping[str, Tensor] = MaskRecord()

    def __getstate__(self) -> dict:
        # last_masks is a per-forward diagnostic (it may hold a pending computation): never pickled or saved
        state = dict(super().__getstate__())
        state["last_masks"] = MaskRecord()
        return state

    def forward(self, student_feat: Tensor, teacher_feat: Tensor, context: DistillContext | None = None
                ) -> dict[str, Tensor]:
        self.check_pair(student_feat, teacher_feat)
        teacher_feat = teacher_feat.detach()
        b, c, h, w = teacher_feat.shape
        # F̂_S as [B, C, HW]; every use below reads this one tensor, so its gradients accumulate in one buffer
        s_hat = pointwise(self.align, student_feat.flatten(2))
        t_flat = teacher_feat.flatten(2)
        # docs/methods.md, "Ablation baselines": fusion="teacher" feeds ASCM with F_T (adaptive teacher mask).
        # mask_objective != "descent": the mask path reads a detached F̂_S (the student learns from D only)
        s_for_masks = s_hat if self.mask_objective == "descent" else s_hat.detach()
        self.last_masks = MaskRecord()  # the previous forward's record (and what it holds) is let go first
        fused: Tensor | Callable[[], Tensor] | None  # None only when nothing is kept
        if self.fusion is not None and not self._needs_fused():
            # STCA-FF + ASCM without forming F_fuse (see STCAFF.project); the same values as the explicit path
            logits, mean, fused = self.fusion.project(t_flat, s_for_masks, (h, w), self.ascm.spatial_units,
                                                      self.ascm.channel_units is not None, self.keep_masks)
            m_c, m_s = self.ascm.masks_from(logits, mean)
        else:  # fusion="teacher", or z_norm="spatial" with spatial masks (needs all of F_fuse)
            fused = (self.fusion(teacher_feat, s_for_masks.view(b, c, h, w)) if self.fusion is not None
                     else teacher_feat)
            m_c, m_s = self.ascm(fused)
            fused = fused.detach()
        # what L_c / L_s see of the masks (Dice always sees m_c, m_s themselves)
        to_loss = {"descent": lambda m: m, "adversarial": reverse_grad,
                   "detached": Tensor.detach}[self.mask_objective]

        # D = F_T − F̂_S; the losses need only Σ_hw D² [B, C] and Σ_c D² [B, HW] (in fp32 under autocast)
        sq_c, sq_n = squared_error_sums(t_flat, s_hat)
        out: dict[str, Tensor] = {}
        div = sq_c.new_zeros(())
        if m_c is not None:
            out["loss_channel"] = self.alpha * channel_loss(sq_c, to_loss(at_least_fp32(m_c)), h * w, norm=self.mask_norm)
            if self.diversity == "both":
                div = div + dice_diversity(m_c)
        if m_s is not None:
            out["loss_spatial"] = self.alpha * spatial_loss(sq_n, to_loss(at_least_fp32(m_s)), c, norm=self.mask_norm)
            if self.diversity in ("both", "spatial"):
                div = div + dice_diversity(m_s)
        if self.diversity != "none":
            out["loss_div"] = self.lambda_div * div

        if self.keep_masks:
            assert fused is not None
            kept: dict[str, Tensor | Callable[[], Tensor]] = {"fused": fused}  # a function: F_fuse on first access
            if m_c is not None:
                kept["channel"] = m_c.detach()
            if m_s is not None:
                kept["spatial"] = m_s.detach().view(b, -1, h, w)
            self.last_masks = MaskRecord(kept)
        return out

    def _needs_fused(self) -> bool:
        """Whether ASCM needs all of F_fuse: only to standardise Z for the spatial masks (``z_norm="spatial"``);
        the channel masks read mean_hw F_fuse, which the projected path gives (``masks="channel"`` never needs it)."""
        return self.ascm.z_norm == "spatial" and self.ascm.spatial_units is not None

    def flops_above_floor(self, student_shape, teacher_shape) -> int:
        """What the attention performs beyond the floor of its exact form (densekd.ops.attention, FLOPs section),
        per forward + backward at one level of teacher shape [B, C, H, W], N = H·W, d = C/2:

        * projected path (``z_norm="none"``, or channel masks only): the kernel does 2·B·N²·(4d + 3M + 3)
          against a floor of 2·B·N²·(3d + 3M + 1) — QᵀK is recomputed in backward instead of keeping P (N×N), with
          the log-sum-exp as one more row, and P's column sums are taken as a product: 2·B·N²·(d + 2) above;
        * explicit path (``z_norm="spatial"`` with spatial masks, F_fuse formed) against a floor of
          2·B·N²·(3d + 3C) = 9·B·N²·C (QKᵀ, PV, ∂V, ∂P, ∂Q, ∂K once each): on a CPU the blocked kernel performs
          2·B·N²·(4d + 3C + 1), QKᵀ recomputed with the log-sum-exp row: 2·B·N²·(d + 1) above; elsewhere (a GPU,
          or a map too small for it: :func:`~densekd.ops.attention.cross_attention_kernel`) SDPA on two V heads
          performs 14·B·N²·C: 5·B·N²·C above. The device is the module's own (its parameters');
        * ``fusion="teacher"``: no attention, 0.
        """
        if self.fusion is None:
            return 0
        b, c, h, w = (int(x) for x in teacher_shape)
        n, d = h * w, self.fusion.q.out_channels
        if not self._needs_fused():
            m = 0 if self.ascm.spatial_units is None else self.ascm.spatial_units.shape[0]
            return projected_attention_flops(b, n, d, m) - attention_floor_flops(b, n, d, m, column_sums=True)
        if cross_attention_kernel(self.fusion.q.weight.device, self.fusion.kernel, c, n) == "blocked":
            return blocked_attention_flops(b, n, d, c) - attention_floor_flops(b, n, d, c)
        return cross_attention_flops(b, n, d, c) - attention_floor_flops(b, n, d, c)

    def mask_statistics(self) -> dict[str, float]:
        """``{"spatial/mean", "spatial/dice", "spatial/entropy", "spatial/std", "spatial/std_min",
        "channel/..."}`` of the last forward (see :func:`mask_statistics`)."""
        stats: dict[str, float] = {}
        for fam in ("spatial", "channel"):
            if fam in self.last_masks:
                m = self.last_masks[fam]
                for k, v in mask_statistics(m.flatten(2)).items():
                    stats[f"{fam}/{k}"] = v
        return stats
