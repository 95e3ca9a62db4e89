"""The ACAM-KD default does not collapse; the literal reading (preset ``acam_kd_paper``) does.

docs/methods.md, "Optimisation of the mask modules": with the Σ M normalisation L_s = Σ M² D² / (C Σ M) is
proportional to the masks' scale, so mask modules that *descend* it shrink every mask towards 0 — the
smallest loss is no mask at all — and the KD term goes to ≈ 0 with them (distillation silently switched off).
The default makes the masks *ascend* L_c + L_s (they seek where the student lags) and normalises by Σ M², which
is invariant to the masks' scale: the masks stay inside (0, 1) and the KD term stays alive.
Both are run on the committed repro (densekd.losses.probe, as benchmarks/acam_collapse_repro.py runs it: fixed
random features, 300 steps).
"""
import pytest

from densekd import available_losses, build_loss
from densekd.losses.probe import probe_loss


@pytest.fixture(scope="module")
def runs():
    return {name: probe_loss(name, record_at=(0, 300)) for name in ("acam_kd", "acam_kd_paper")}


@pytest.fixture(scope="module")
def literal_ascm():
    """The default mask objective with the literal ASCM (z_norm="none", the default before 2026-12-05)."""
    return probe_loss("acam_kd", record_at=(300,), z_norm="none")


def test_default_masks_stay_inside_and_the_kd_term_stays_alive(runs):
    end = runs["acam_kd"][-1]
    assert end["step"] == 300
    for fam in ("spatial", "channel"):
        assert 0.05 <= end[f"{fam}/mean"] <= 0.95, (fam, end)
    assert end["kd"] > 0.10, end


def test_spatial_masks_without_z_norm_saturate_into_gates_and_the_default_keeps_them_spatial(runs, literal_ascm):
    """Documents docs/methods.md, "Spatial masks must be spatial" (why z_norm="spatial" is the default): F_fuse = A V
    averages V over many positions, so with z_norm="none" S_s Z barely varies over space and σ turns each spatial
    mask into a near-constant gate (here some at ≈ 1, some at ≈ 0: the mean stays ≈ 0.5). The default standardises
    Z over space first and the masks vary."""
    assert literal_ascm[-1]["spatial/std_min"] < 1e-3
    end = runs["acam_kd"][-1]
    assert end["spatial/std_min"] > 0.1 and end["kd"] > 0.10, end


def test_paper_preset_still_collapses(runs):
    end = runs["acam_kd_paper"][-1]
    assert end["spatial/mean"] < 0.05 and end["kd"] < 0.10, end


def test_every_ablation_variant_takes_the_new_default_and_differs_in_its_own_switch_only():
    variants = {"acam_kd_student_query": {"query": "student"}, "acam_kd_spatial": {"masks": "spatial"},
                "acam_kd_channel": {"masks": "channel"}, "acam_kd_teacher_fusion": {"fusion": "teacher"},
                "acam_kd_paper": {"mask_objective": "descent", "mask_norm": "sum"}}
    assert set(variants) <= set(available_losses())
    base = build_loss("acam_kd", student_channels=4, teacher_channels=4)
    switches = ("mask_objective", "mask_norm", "masks", "diversity", "alpha", "lambda_div", "fusion_mode")
    assert base.ascm.z_norm == "spatial"
    for name, fixed in variants.items():
        mod = build_loss(name, student_channels=4, teacher_channels=4)
        assert mod.fixed_switches == fixed
        differ = {s for s in switches if getattr(mod, s) != getattr(base, s)}
        expected = {"fusion_mode" if k == "fusion" else k for k in fixed if k != "query"}
        assert differ == expected, name
        if "query" in fixed:
            assert mod.fusion.query == "student" and base.fusion.query == "teacher"
