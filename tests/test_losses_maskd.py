from __future__ import annotations

import math
import warnings

import pytest
import torch

from _loss_helpers import check_grad_flow
from densekd.losses import build_loss
from densekd.losses.maskd import MasKD, fit_maskd_tokens


def _sig(x):
    return 1 / (1 + math.exp(-x))


@torch.no_grad()
def _ref(mod, s, t):
    """Explicit loops: masks from F_T with the fixed tokens, MasKD/ACAM-style normalised masked errors."""
    b, c, h, w = t.shape
    su = mod.ascm.spatial_units
    cu = mod.ascm.channel_units
    m = su.shape[0]
    lc = ls = 0.0
    for bi in range(b):
        v = [float(t[bi, k].mean()) for k in range(c)]
        for mi in range(m):
            ms = {(y, x): _sig(sum(float(su[mi, k]) * float(t[bi, k, y, x]) for k in range(c)))
                  for y in range(h) for x in range(w)}
            mc = [_sig(float(cu[mi, k]) * v[k]) for k in range(c)]
            num_c = num_s = 0.0
            for k in range(c):
                for y in range(h):
                    for x in range(w):
                        d = float(t[bi, k, y, x] - s[bi, k, y, x])
                        num_c += (mc[k] * d) ** 2
                        num_s += (ms[(y, x)] * d) ** 2
            lc += num_c / (h * w * sum(mc))
            ls += num_s / (c * sum(ms.values()))
    return lc / (b * m), ls / (b * m)


def test_maskd_hand_value_with_fixed_tokens():
    torch.manual_seed(0)
    mod = build_loss("maskd", student_channels=2, teacher_channels=2, align="identity", num_masks=3)
    with torch.no_grad():
        mod.ascm.spatial_units.normal_()
        mod.ascm.channel_units.normal_()
    mod.tokens_fitted.fill_(True)
    s, t = torch.randn(2, 2, 2, 2), torch.randn(2, 2, 2, 2)
    out = mod(s, t)
    assert set(out) == {"loss_channel", "loss_spatial"}
    lc, ls = _ref(mod, s, t)
    assert out["loss_channel"].item() == pytest.approx(lc, rel=1e-5)
    assert out["loss_spatial"].item() == pytest.approx(ls, rel=1e-5)
    assert all(v.item() == 0 for v in mod(t.clone(), t).values())
    sp = build_loss("maskd", student_channels=2, teacher_channels=2, masks="spatial")
    sp.tokens_fitted.fill_(True)
    assert set(sp(s, t)) == {"loss_spatial"}


def test_tokens_frozen_during_distillation_and_unfitted_warning():
    mod = build_loss("maskd", student_channels=3, teacher_channels=4)
    assert all(not p.requires_grad for p in mod.ascm.parameters())
    with pytest.warns(RuntimeWarning, match="never fitted"):
        check_grad_flow(mod, torch.randn(2, 3, 4, 4), torch.randn(2, 4, 4, 4))
    assert all(p.grad is None for p in mod.ascm.parameters())
    assert mod.align.weight.grad is not None


def test_fit_tokens_learns_freezes_and_stops_warning():
    torch.manual_seed(1)
    mod = build_loss("maskd", student_channels=4, teacher_channels=4, num_masks=2)
    before = [p.detach().clone() for p in mod.ascm.parameters()]
    feats = [torch.randn(2, 4, 4, 4) for _ in range(3)]
    targets = [f * (f > 0) for f in feats]  # a "head" whose loss prefers keeping positive activations
    data = list(zip(feats, targets))
    calls = []

    def head_loss(masked, target):
        calls.append(masked.requires_grad)
        return ((masked - target) ** 2).mean()

    hist = fit_maskd_tokens(mod, data, head_loss, steps=40, lr=0.05)
    assert len(hist) == 40 and hist[-1] < hist[0]
    assert all(calls), "masked features must carry the tokens' graph"
    assert any(not torch.equal(a, p) for a, p in zip(before, mod.ascm.parameters()))
    assert bool(mod.tokens_fitted) and all(not p.requires_grad and p.grad is None for p in mod.ascm.parameters())
    assert all(not f.requires_grad for f in feats)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mod(torch.randn(2, 4, 4, 4), feats[0])
    assert "tokens_fitted" in dict(mod.named_buffers())


def test_fit_tokens_errors():
    mod = build_loss("maskd", student_channels=2, teacher_channels=2)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        fit_maskd_tokens(mod, [torch.randn(1, 2, 2, 2)], lambda m, t: m.mean(), steps=0)
    with pytest.raises(ValueError, match="ran out after 0 of 2 steps"):
        fit_maskd_tokens(mod, iter([]), lambda m, t: m.mean(), steps=2)
    with pytest.raises(ValueError, match="head_loss_fn must return a scalar tensor"):
        fit_maskd_tokens(mod, [torch.randn(1, 2, 2, 2)], lambda m, t: m, steps=1)
    assert all(not p.requires_grad for p in mod.ascm.parameters()), "tokens re-frozen after an error"
    with pytest.raises(TypeError, match="expects a MasKD loss module"):
        fit_maskd_tokens(build_loss("fitnet", student_channels=2, teacher_channels=2), [], lambda m, t: m, 1)
    with pytest.raises(ValueError, match="MasKD was built for student C=2, teacher C=2"), \
            pytest.warns(RuntimeWarning, match="never fitted"):
        mod(torch.randn(1, 3, 2, 2), torch.randn(1, 2, 2, 2))
    assert isinstance(mod, MasKD)
