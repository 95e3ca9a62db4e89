"""FreeKD (densekd/losses/freekd.py): one test per step (F1)–(F6) on hand-checked numbers, the official loss's
formula on identical inputs (written out here with pywt and an explicit [B, T, C, 3, h, w] product), gradients,
the prompt-fitting stage through the engine (detection here; segmentation with MasKD's in test_engine_prepare.py),
the registry and Distiller, bad input, bf16 autocast."""
from __future__ import annotations

import math
import os
import warnings

import numpy as np
import pytest
import pywt
import torch
import torch.nn.functional as F

from _loss_helpers import check_grad_flow
from densekd import Distiller, Pair, build_loss
from densekd.losses.freekd import FreeKD, fit_freekd_prompts
from densekd.ops import wavelet as wv
from densekd.ops import wavelet_decompose, wavelet_reconstruct


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _loss(c_s=2, c_t=2, **kw) -> FreeKD:
    kw.setdefault("align", "identity" if c_s == c_t else "conv1x1")
    return build_loss("freekd", student_channels=c_s, teacher_channels=c_t, **kw)


# the 2×2 hand case: channel 0 = [[1, 2], [3, 4]], channel 1 = [[0, 0], [0, 4]]; one Haar level gives
# LL = (a+b+c+d)/2, H = (a+b−c−d)/2, V = (a−b+c−d)/2, D = (a−b−c+d)/2 (pywt's convention):
#   channel 0: LL 5, (H, V, D) = (−2, −1, 0);  channel 1: LL 2, (H, V, D) = (−2, −2, 2)
HAND = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 4.0]]]])


# --------------------------------------------------------------------------- (F1) the wavelet transform
def test_f1_haar_decomposition_by_hand():
    low, (h1,) = wavelet_decompose(HAND, levels=1)
    assert low.flatten().tolist() == pytest.approx([5.0, 2.0])
    assert h1.shape == (1, 2, 3, 1, 1)  # [B, C, orientations, h, w]
    assert h1[0, :, :, 0, 0].tolist() == [pytest.approx([-2.0, -1.0, 0.0]), pytest.approx([-2.0, -2.0, 2.0])]
    x = torch.arange(16.0).view(1, 1, 4, 4)
    low2, highs = wavelet_decompose(x, levels=2)
    assert low2.item() == pytest.approx(120.0 / 4)  # a 2^J × 2^J block: Σ / 2^J
    assert [tuple(h.shape[-2:]) for h in highs] == [(2, 2), (1, 1)]  # finest level first
    odd = torch.rand(1, 1, 7, 11)
    _, highs = wavelet_decompose(odd, levels=3)
    assert [tuple(h.shape[-2:]) for h in highs] == [(4, 6), (2, 3), (1, 2)]  # ⌈side / 2^j⌉ (zero padding)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pywt: level 3 "too high" for a side of 7
        ref = pywt.wavedec2(odd[0, 0].double().numpy(), "haar", level=3, mode="zero")
    assert np.allclose(ref[3][0], highs[0][0, 0, 0].numpy(), atol=1e-6)


def test_f1_inverse_is_exact_on_odd_sizes():
    x = torch.randn(2, 3, 7, 11, dtype=torch.float64)
    low, highs = wavelet_decompose(x, levels=3)
    assert torch.allclose(wavelet_reconstruct(low, highs, (7, 11)), x, atol=1e-12)


# --------------------------------------------------------------------------- (F2)/(F3) prompts and masks
def test_f2_prompts_one_set_per_band_frozen_and_f3_masks_by_hand():
    torch.manual_seed(0)
    big = _loss(2, 64)
    assert big.prompts.shape == (4, 6, 64) and not big.prompts.requires_grad  # (J + 1) × T × C, frozen
    assert big.prompts.std().item() == pytest.approx(0.01, rel=0.1)  # N(0, 0.01²)
    loss = _loss(num_prompts=2, levels=1)
    with torch.no_grad():
        loss.prompts[1] = torch.tensor([[1.0, 0.0], [0.0, -1.0]])
        loss.prompts[0] = torch.tensor([[0.5, 0.0], [0.0, 0.0]])
    low, (h1,) = wavelet_decompose(HAND, levels=1)
    m1 = loss.band_masks(1, h1)  # orientations summed: channel 0 → −3, channel 1 → −2
    assert m1.shape == (1, 2, 1, 1)
    assert m1.flatten().tolist() == pytest.approx([_sig(-3.0), _sig(2.0)])
    m0 = loss.band_masks(0, low)  # LL: channel 0 → 5
    assert m0.flatten().tolist() == pytest.approx([_sig(2.5), 0.5])


# --------------------------------------------------------------------------- (F4) prompt fitting
def test_f4_reconstruction_by_hand():
    x = torch.randn(2, 3, 7, 11)
    two = _loss(3, 3, num_prompts=2, init_std=0.0)  # every mask σ(0) = 0.5: Σ_t M = 1 → F̃ = F
    rec, masks = two.reconstruct_teacher(x)
    assert torch.allclose(rec, x, atol=1e-5) and len(masks) == 4  # M_0 … M_3
    four = _loss(3, 3, num_prompts=4, init_std=0.0)  # Σ_t M = 2 → F̃ = 2F
    assert torch.allclose(four.reconstruct_teacher(x)[0], 2 * x, atol=1e-5)


def test_f4_fitting_objective_task_plus_dice_by_hand():
    """First step's objective = head loss on F̃ + Σ_bands Dice: with zero prompts every mask is 0.5, so F̃ = F
    (T = 2) and each band's Dice is 1 (identical masks): head(F) + (J + 1)."""
    x = torch.randn(2, 3, 8, 8)
    loss = _loss(3, 3, num_prompts=2, levels=2, init_std=0.0)
    hist = fit_freekd_prompts(loss, [x], lambda f, _t: f.mean(), steps=1, lr=1e-3)
    assert hist[0] == pytest.approx(x.mean().item() + 3 * 1.0, abs=1e-5)


def test_f4_dice_of_complementary_masks_by_hand():
    """Prompts ±p give masks m and 1 − m: Dice = 2 Σ m(1−m) / (Σ m² + Σ (1−m)²) per band."""
    from densekd.losses.acam import dice_diversity

    loss = _loss(1, 1, num_prompts=2, levels=1)
    x = torch.tensor([[[[0.5, -1.0], [2.0, 0.0]]]])
    with torch.no_grad():
        loss.prompts[0] = torch.tensor([[1.0], [-1.0]])
    _, masks = loss.reconstruct_teacher(x)
    m = _sig(0.75)  # LL = (0.5 − 1 + 2 + 0) / 2; the second prompt gives σ(−0.75) = 1 − m
    expected = 2 * m * (1 - m) / (m * m + (1 - m) ** 2)
    assert dice_diversity(masks[0].flatten(2), eps=2e-12).item() == pytest.approx(expected, rel=1e-6)


def test_f4_fitting_moves_only_the_prompts_then_freezes_them():
    torch.manual_seed(0)
    loss = _loss(4, 4, num_prompts=3, levels=2)
    head = torch.nn.Conv2d(4, 1, 1).requires_grad_(False)  # a frozen "teacher head"
    x = torch.randn(2, 4, 8, 8)
    feats = [(x, head(x))]  # one batch, re-iterated; the head's own output as its target
    before = loss.prompts.detach().clone()
    hist = fit_freekd_prompts(loss, feats, lambda f, y: F.mse_loss(head(f), y), steps=20, lr=0.05)
    assert len(hist) == 20 and all(math.isfinite(h) for h in hist)
    assert hist[-1] < 0.8 * hist[0]  # the objective (head loss + Dice) goes down
    assert not torch.equal(before, loss.prompts) and not loss.prompts.requires_grad and loss.prompts.grad is None
    assert head.weight.grad is None and loss.prepared
    with pytest.raises(ValueError, match="ran out after 0 of 2 steps"):
        fit_freekd_prompts(_loss(4, 4), iter([]), lambda f, y: f.sum(), steps=2)
    with pytest.raises(ValueError, match="must return a scalar tensor"):
        fit_freekd_prompts(_loss(4, 4), feats, lambda f, y: f, steps=1)


# --------------------------------------------------------------------------- (F5)/(F6) the distillation terms
def test_f5_f6_terms_by_hand():
    """Student 0, teacher HAND, T = 2, J = 1: L_high = mean_{t,c,o} M_t |H| = (σ(−3) + σ(2)) · Σ|H| / (T·C·3)
    with Σ|H| = (2+1+0) + (2+2+2) = 9; L_feat = 5 · mean(F_T²) = 5 · 46 / 8; L_low (weight 2) likewise."""
    loss = _loss(num_prompts=2, levels=1, low_weight=2.0)
    with torch.no_grad():
        loss.prompts[1] = torch.tensor([[1.0, 0.0], [0.0, -1.0]])
        loss.prompts[0] = torch.tensor([[0.5, 0.0], [0.0, 0.0]])
    loss.prompts_fitted.fill_(True)
    out = loss(torch.zeros_like(HAND), HAND)
    assert set(out) == {"loss_high", "loss_low", "loss_feat"}
    assert out["loss_high"].item() == pytest.approx((_sig(-3.0) + _sig(2.0)) * 9 / 12, rel=1e-6)
    assert out["loss_feat"].item() == pytest.approx(5 * 46 / 8, rel=1e-6)
    assert out["loss_low"].item() == pytest.approx(2 * (_sig(2.5) + 0.5) * (5 + 2) / 4, rel=1e-6)
    no_mse = _loss(levels=1, mse_weight=0.0)
    no_mse.prompts_fitted.fill_(True)
    assert set(no_mse(torch.zeros_like(HAND), HAND)) == {"loss_high"}


def _official_formula(s, t, prompts, levels, high_weight=1.0, mse_weight=5.0):
    """The official ``FreeKDLoss.forward`` + the recipe's ``MSELoss`` written out here: pywt bands, masks from
    the teacher's orientation-summed bands, ``l1_loss`` of the [B, T, C, 3, h, w] masked products."""
    def bands(x):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # pywt: a level "too high" for the side
            c = pywt.wavedec2(x.double().numpy(), "haar", level=levels, mode="zero")
        return [torch.from_numpy(np.stack(c[levels + 1 - j], axis=2)) for j in range(1, levels + 1)]

    total = 0.0
    for j, (hs, ht) in enumerate(zip(bands(s), bands(t)), start=1):
        mask = torch.sigmoid(torch.einsum("tc,bchw->bthw", prompts[j].double(), ht.sum(2)))  # [B, T, h, w]
        m = mask[:, :, None, None]  # [B, T, 1, 1, h, w]
        total = total + F.l1_loss(hs[:, None] * m, ht[:, None] * m)
    return high_weight * total.item(), mse_weight * F.mse_loss(s.double(), t.double()).item()


def test_f5_f6_equal_the_official_formula_on_identical_inputs():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 9, 13), torch.randn(2, 5, 9, 13)
    loss = _loss(5, 5, init_std=1.0)  # non-trivial masks
    loss.prompts_fitted.fill_(True)
    out = loss(s, t)
    high, feat = _official_formula(s, t, loss.prompts.detach(), levels=3)
    assert out["loss_high"].item() == pytest.approx(high, rel=1e-5)
    assert out["loss_feat"].item() == pytest.approx(feat, rel=1e-5)


def test_gradients_reach_the_student_never_the_teacher_or_prompts():
    torch.manual_seed(0)
    loss = _loss(3, 4)
    loss.prompts_fitted.fill_(True)
    check_grad_flow(loss, torch.randn(2, 3, 8, 8), torch.randn(2, 4, 8, 8))
    assert loss.prompts.grad is None and loss.align.weight.grad is not None


# --------------------------------------------------------------------------- warnings, bad input, dtypes
def test_unfitted_prompts_warn_once_fitted_are_silent():
    loss = _loss(levels=1)
    with pytest.warns(RuntimeWarning, match="never fitted"):
        loss(torch.rand(1, 2, 4, 4), torch.rand(1, 2, 4, 4))
    fitted = _loss(levels=1)
    fitted.prompts_fitted.fill_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fitted(torch.rand(1, 2, 4, 4), torch.rand(1, 2, 4, 4))
        fitted(torch.rand(1, 2, 7, 11), torch.rand(1, 2, 7, 11))  # no pywt "level too high" warning either


def test_maps_too_small_for_the_levels_fail_with_one_line():
    loss = _loss(2, 8)
    loss.prompts_fitted.fill_(True)
    with pytest.raises(ValueError) as e:
        loss(torch.rand(2, 2, 4, 4), torch.rand(2, 8, 4, 4))
    msg = str(e.value)
    assert "\n" not in msg and "(2, 8, 4, 4)" in msg and "levels=3" in msg and ">= 5" in msg
    assert "distill.kwargs.levels" in msg
    with pytest.raises(ValueError, match=r"teacher feature map of shape \(1, 8, 8, 2\) is too small for levels=3"):
        fit_freekd_prompts(loss, [torch.rand(1, 8, 8, 2)], lambda f, y: f.sum(), steps=1)
    loss(torch.rand(2, 2, 5, 5), torch.rand(2, 8, 5, 5))  # 5 = 2^(3−1) + 1 is enough


def test_bad_arguments_and_missing_package(monkeypatch):
    for kw, match in [({"levels": 0}, "levels must be >= 1"), ({"num_prompts": 0}, "num_prompts"),
                      ({"high_weight": 0.0, "mse_weight": 0.0}, "one of them > 0"),
                      ({"mse_weight": -1.0}, "must be >= 0"), ({"wavelet": "nope"}, "discrete pywt wavelet"),
                      ({"fit_steps": 0}, "fit_steps must be >= 1")]:
        with pytest.raises(ValueError, match=match):
            _loss(**kw)
    with pytest.raises(TypeError, match="build_loss\\('freekd'\\)"):
        build_loss("freekd", student_channels=2, teacher_channels=2, temperature=1.0)
    monkeypatch.setattr(wv, "_ptwt", None)
    with pytest.raises(ImportError, match="freekd needs the 'ptwt' package .*pip install ptwt"):
        _loss()


def test_bf16_autocast_on_cpu_computes_the_terms_in_fp32():
    torch.manual_seed(0)
    loss = _loss(4, 4, init_std=1.0, align="conv1x1")
    loss.prompts_fitted.fill_(True)
    s, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    ref = loss(s, t)
    s = s.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss(s, t.bfloat16())
    assert all(v.dtype == torch.float32 for v in out.values())
    for k in ref:  # only the aligner's 1×1 conv ran in bf16
        assert out[k].item() == pytest.approx(ref[k].item(), rel=3e-2)
    sum(out.values()).backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


# --------------------------------------------------------------------------- registry, Distiller, engine
def test_registry_and_build_loss():
    from densekd import available_losses
    from densekd.losses import get_loss_class

    assert "freekd" in available_losses() and get_loss_class("freekd") is FreeKD
    loss = build_loss("freekd", student_channels=3, teacher_channels=4)
    assert (loss.num_prompts, loss.levels, loss.wavelet, loss.high_weight, loss.mse_weight, loss.low_weight) == \
        (6, 3, "haar", 1.0, 5.0, 0.0)
    assert loss.needs_preparation and not loss.prepared and (loss.fit_steps, loss.fit_lr) == (2000, 1e-3)


def test_through_the_distiller_on_every_fpn_level():
    from tiny_models import TinyDetector

    torch.manual_seed(0)
    s, t = TinyDetector(width=4), TinyDetector(width=8)
    x = torch.rand(2, 3, 32, 32)  # p3 16×16, p4 8×8
    d = Distiller(s, t, [Pair("neck", loss="freekd", kwargs={"num_prompts": 2})], example_inputs=(x,))
    assert len(d.kd_losses) == 2
    with pytest.warns(RuntimeWarning, match="never fitted"):
        out = d(x, targets=torch.zeros(2))
    kd = [k for k in out if k.startswith("kd/")]
    assert {k.rsplit("/", 1)[1] for k in kd} == {"loss_high", "loss_feat"} and len(kd) == 4
    out["loss"].backward()
    assert any(p.grad is not None for p in d.student.parameters())
    assert all(p.grad is None for p in d.teacher.parameters())


def test_detection_prompts_fitted_by_the_engine_then_resumed(make_config, teacher_ckpt, tmp_path, capsys):
    """RetinaNet at 64 px: P3 (8×8) only, as P4–P7 are below 5 px there; 2 fitting steps on the frozen
    teacher's own detection loss, before the first training step; a resumed run does not fit again."""
    from densekd.engine.trainer import Trainer

    cfg = make_config(tmp_path / "o", teacher=teacher_ckpt, method="freekd", max_iters=1)
    cfg["distill"]["pairs"] = [{"student": "backbone:0", "loss": "freekd",
                                "kwargs": {"num_prompts": 2, "fit_steps": 2, "fit_lr": 0.05}}]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # "never fitted" would be raised here
        tr = Trainer(cfg)
        (mod,) = tr.model.kd_losses.values()
        before = mod.prompts.detach().clone()
        tr.run()
    tr.close()
    assert mod.prepared and not mod.prompts.requires_grad and not torch.equal(before, mod.prompts)
    out = capsys.readouterr().out
    assert out.count("prepared FreeKD at") == 1 and "2 steps" in out
    state = torch.load(os.path.join(tmp_path / "o", "checkpoint.pth"), weights_only=False)
    assert any(k.endswith("prompts_fitted") and bool(v) for k, v in state["kd_losses"].items())
    tr2 = Trainer(cfg, ["train.max_iters=2"])
    tr2.run()
    (mod2,) = tr2.model.kd_losses.values()
    tr2.close()
    assert "prepared FreeKD" not in capsys.readouterr().out and torch.equal(mod2.prompts, mod.prompts)
