"""ACAM-KD ablation variants as named registry entries (paper Tables 8–10; docs/methods.md, "ACAM-KD switches").

Each is :class:`~densekd.losses.acam.ACAMKD` with one switch fixed, so a recipe can name the variant
instead of passing kwargs:

* ``acam_kd_student_query``  — STCA-FF with the student asking (``query="student"``, Table 9).
* ``acam_kd_spatial``        — spatial masks only (``masks="spatial"``, Table 8).
* ``acam_kd_channel``        — channel masks only (``masks="channel"``, Table 8).
* ``acam_kd_teacher_fusion`` — adaptive teacher mask: ASCM fed with F_T, no STCA-FF (``fusion="teacher"``,
  Table 10).
* ``acam_kd_paper``          — the literal reading of the mask objective (``mask_objective="descent"``,
  ``mask_norm="sum"``): measured to collapse (docs/methods.md, "Optimisation of the mask modules").

Every variant takes ``acam_kd``'s defaults (adversarial masks, Σ M² norm, ``z_norm="spatial"``) and differs only in its
own switch; ``acam_kd_paper`` also defaults to the literal ``z_norm="none"`` (a caller may set it).

Passing the fixed switch again is an error (use ``acam_kd`` with kwargs to combine switches freely).
"""
from __future__ import annotations

from typing import Any

from .acam import ACAMKD
from .registry import register_loss


def _fixed(name: str, defaults: dict[str, Any] | None = None, **fixed: Any) -> type[ACAMKD]:
    """A thin ACAMKD subclass with ``fixed`` switch values (functools.partial-like, but a real class);
    ``defaults``: switches whose default differs from acam_kd's but that a caller may still set."""
    defaults = dict(defaults or {})

    def __init__(self, student_channels: int, teacher_channels: int, **kwargs: Any) -> None:
        clash = sorted(set(kwargs) & set(fixed))
        if clash:
            raise TypeError(f"{name} fixes {', '.join(f'{k}={fixed[k]!r}' for k in clash)}; use 'acam_kd' to set it")
        ACAMKD.__init__(self, student_channels, teacher_channels, **fixed, **{**defaults, **kwargs})

    cls_name = "ACAMKD_" + "".join(part.capitalize() for part in name.split("_")[2:])
    cls = type(cls_name, (ACAMKD,), {"__init__": __init__, "fixed_switches": dict(fixed), "preset_defaults": defaults,
                                     "__doc__": f"ACAM-KD with {fixed} (registry name {name!r})."})
    return register_loss(name)(cls)


ACAMKDStudentQuery = _fixed("acam_kd_student_query", query="student")
ACAMKDSpatial = _fixed("acam_kd_spatial", masks="spatial")
ACAMKDChannel = _fixed("acam_kd_channel", masks="channel")
ACAMKDTeacherFusion = _fixed("acam_kd_teacher_fusion", fusion="teacher")

# docs/methods.md, "Optimisation of the mask modules": the literal reading of the paper, kept as a preset so
# the measured collapse can be reproduced and compared. The mask modules *descend* L_c + L_s with the MasKD Σ M
# normalisation; L_s = Σ M² D² / (C Σ M) is proportional to the masks' scale, so descent drives every mask to
# ≈ 0 within ~100 iterations and the KD term with it (benchmarks/acam_collapse_repro.py; tests/test_acam_presets.py).
# It also keeps the literal ASCM's z_norm="none" (acam_kd's default is "spatial" since 2026-12-05); a caller may set it.
ACAMKDPaper = _fixed("acam_kd_paper", defaults={"z_norm": "none"}, mask_objective="descent", mask_norm="sum")
ACAMKDPaper.__doc__ = ("ACAM-KD read literally (registry name 'acam_kd_paper'): the mask modules descend L_c + L_s "
                       "normalised by Σ M (mask_objective='descent', mask_norm='sum'), literal ASCM (z_norm='none' "
                       "unless set). Measured to collapse every mask "
                       "to ≈ 0 and switch distillation off; kept to reproduce that "
                       "(docs/methods.md, 'Optimisation of the mask modules').")
