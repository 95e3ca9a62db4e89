"""SAMKD / DMKD: masks against hand-built examples, loss against an explicit-loop reference,
gradient flow, switches and bad inputs."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from _loss_helpers import check_grad_flow
from densekd.losses import DistillContext, build_loss
from densekd.losses.samkd import region_assignment, samkd_masks


def _region_of(y, x, h, w, s):
    return (y * s // h, x * s // w)


def _ref_masks(t, s, tau=0.5, ws=0.95, wc=0.5):
    """Explicit loops over positions: eq. 1–4 with φ = rescale to region mean 1."""
    b, c, h, w = t.shape
    ms = torch.ones(b, 1, h, w)
    mc = torch.ones(b, c, h, w)
    for bi in range(b):
        regions = {}
        for y in range(h):
            for x in range(w):
                regions.setdefault(_region_of(y, x, h, w, s), []).append((y, x))
        for _, pos in regions.items():
            sig = {p: 1 / (1 + math.exp(-sum(float(t[bi, k, p[0], p[1]]) ** 2 for k in range(c)) / (tau * c)))
                   for p in pos}
            mean_sig = sum(sig.values()) / len(pos)
            for p in pos:
                if sig[p] / mean_sig >= ws:
                    ms[bi, 0, p[0], p[1]] = 0
            for k in range(c):
                m = sum(float(t[bi, k, y, x]) for (y, x) in pos) / len(pos)
                if 1 / (1 + math.exp(-m / tau)) >= wc:
                    for (y, x) in pos:
                        mc[bi, k, y, x] = 0
    return ms, mc


def test_region_partition_divisible_and_not():
    p = region_assignment(4, 4, 2)
    assert p.shape == (16, 4) and torch.equal(p.sum(0), torch.full((4,), 4.0))
    # H=5, W=3, s=2: rows 0-2 → region row 0, rows 3-4 → 1; cols 0-1 → 0, col 2 → 1 (floor(x*2/3))
    p = region_assignment(5, 3, 2)
    assert torch.equal(p.sum(1), torch.ones(15)), "every position in exactly one region"
    rid = p.argmax(1).reshape(5, 3)
    for y in range(5):
        for x in range(3):
            ry, rx = _region_of(y, x, 5, 3, 2)
            assert rid[y, x] == ry * 2 + rx
    # H < s: empty regions are allowed
    assert region_assignment(1, 1, 4).sum(0).tolist() == [1.0] + [0.0] * 15


def test_masks_hand_built_example():
    # 1×2×4×4 teacher, scale 2: top-left region has one hot position → only it is masked spatially;
    # channel 0 positive everywhere → masked in every region, channel 1 negative in the top-left region only.
    t = torch.zeros(1, 2, 4, 4)
    t[0, 0] = 0.1
    t[0, 0, 0, 0] = 3.0
    t[0, 1] = 0.2
    t[0, 1, :2, :2] = -0.5
    ms, mc, att_s, att_c = samkd_masks(t, 2)
    exp_ms = torch.ones(1, 1, 4, 4)
    # top-left: ‖F‖²/(τC) = 9.25 → σ≈1.000 vs three σ(0.26)≈0.565; region mean ≈0.674 → φ ≈1.48 (masked)
    # and ≈0.84 (kept)
    exp_ms[0, 0, 0, 0] = 0
    # other regions: all positions equal → A_s = 1 ≥ 0.95 → masked
    exp_ms[0, 0, :2, 2:] = 0
    exp_ms[0, 0, 2:, :] = 0
    assert torch.equal(ms, exp_ms)
    exp_mc = torch.zeros(1, 2, 4, 4)
    exp_mc[0, 1, :2, :2] = 1  # mean -0.5 → σ(-1) < 0.5 → kept
    assert torch.equal(mc, exp_mc)
    # φ: each region's spatial attention has mean 1
    assert torch.allclose(F.avg_pool2d(att_s, 2), torch.ones(1, 1, 2, 2), atol=1e-6)
    assert att_c.shape == (1, 2, 4)


@pytest.mark.parametrize("s,hw", [(1, (4, 4)), (2, (4, 4)), (4, (4, 4)), (2, (5, 3)), (4, (3, 2))])
def test_masks_match_loop_reference(s, hw):
    g = torch.Generator().manual_seed(s)
    t = torch.randn(2, 3, *hw, generator=g)
    ms, mc, _, _ = samkd_masks(t, s)
    rms, rmc = _ref_masks(t, s)
    assert torch.equal(ms, rms) and torch.equal(mc, rmc)


@torch.no_grad()
def _ref_samkd(mod, s_in, t, logits=None):
    """Reference with explicit loops for masks/regions; θ applied with the module's conv weights."""
    b = t.shape[0]
    l_feat = 0.0
    for i, sc in enumerate(mod.scales):
        ms, mc = _ref_masks(t, sc)
        gs, gc = mod.gen_spatial[i], mod.gen_channel[i]
        th_s = F.conv2d(F.relu(F.conv2d(s_in * ms, gs[0].weight, gs[0].bias, padding=1)), gs[2].weight, gs[2].bias,
                        padding=1)
        th_c = F.conv2d(F.relu(F.conv2d(s_in * mc, gc[0].weight, gc[0].bias)), gc[2].weight, gc[2].bias)
        rec = 0.45 * th_s + 0.55 * th_c
        l_feat += float(((rec - t) ** 2).sum()) / b
    out = {"loss_feat": 2e-3 * l_feat}
    if logits is not None:
        ls, lt = logits
        _, k, h, w = t.shape
        total = 0.0
        for sc in mod.scales:
            for bi in range(b):
                regions = {}
                for y in range(h):
                    for x in range(w):
                        regions.setdefault(_region_of(y, x, h, w, sc), []).append((y, x))
                for pos in regions.values():
                    ft = torch.stack([t[bi, :, y, x] for y, x in pos]).flatten()
                    fs = torch.stack([s_in[bi, :, y, x] for y, x in pos]).flatten()
                    wgt = 1 - float(ft @ fs) / (float(ft.norm()) * float(fs.norm()))
                    zt = torch.stack([lt[bi, :, y, x] for y, x in pos]).mean(0)
                    zs = torch.stack([ls[bi, :, y, x] for y, x in pos]).mean(0)
                    pt, ps = zt.softmax(0), zs.softmax(0)
                    total += wgt * float((pt * (pt.log() - ps.log())).sum())
        out["loss_logit"] = 6e-6 * total / b
    return out


def test_samkd_value_matches_reference_with_logits():
    torch.manual_seed(0)
    mod = build_loss("samkd", student_channels=2, teacher_channels=2, align="identity")
    s = torch.randn(2, 2, 4, 4)
    t = torch.randn(2, 2, 4, 4)
    ls, lt = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    out = mod(s, t, DistillContext(aux={"logits": (ls, lt)}))
    ref = _ref_samkd(mod, s, t, (ls, lt))
    assert set(out) == {"loss_feat", "loss_logit"}
    assert out["loss_feat"].item() == pytest.approx(ref["loss_feat"], rel=1e-5)
    assert out["loss_logit"].item() == pytest.approx(ref["loss_logit"], rel=1e-5)
    assert out["loss_logit"].item() > 0


def test_sld_tiny_hand_case_and_zero_when_equal():
    torch.manual_seed(1)
    mod = build_loss("samkd", student_channels=2, teacher_channels=2, align="identity", scales=[1, 2])
    t = torch.randn(1, 2, 2, 2)
    ls, lt = torch.randn(1, 3, 2, 2), torch.randn(1, 3, 2, 2)
    out = mod(t.clone(), t, DistillContext(aux={"logits": (ls, lt)}))
    # student feature == teacher feature → W(R) = 1 − cos = 0 in every region → no logit loss
    assert out["loss_logit"].abs().item() < 1e-10
    s = torch.randn(1, 2, 2, 2)
    out = mod(s, t, DistillContext(aux={"logits": (ls, lt)}))
    assert out["loss_logit"].item() == pytest.approx(_ref_samkd(mod, s, t, (ls, lt))["loss_logit"], rel=1e-5)
    # equal logits → KL = 0 whatever W
    out = mod(s, t, DistillContext(aux={"logits": (lt.clone(), lt)}))
    assert out["loss_logit"].abs().item() < 1e-10


def test_samkd_feat_not_zero_for_equal_features():
    # F_rec is produced by freshly initialised generators from *masked* features, so it differs from F_T
    # even when F̂_S = F_T: SFD is a reconstruction loss, not an imitation loss.
    torch.manual_seed(2)
    mod = build_loss("samkd", student_channels=2, teacher_channels=2, align="identity", use_logits=False)
    t = torch.randn(1, 2, 4, 4)
    assert mod(t.clone(), t)["loss_feat"].item() > 0


def test_samkd_gradients_non_divisible_map():
    torch.manual_seed(3)
    mod = build_loss("samkd", student_channels=3, teacher_channels=4)
    s, t = torch.randn(2, 3, 5, 7), torch.randn(2, 4, 5, 7)
    ls = torch.randn(2, 3, 5, 7, requires_grad=True)
    lt = torch.randn(2, 3, 5, 7)
    out = check_grad_flow(mod, s, t, DistillContext(aux={"logits": (ls, lt)}))
    assert torch.isfinite(out["loss_feat"]) and torch.isfinite(out["loss_logit"])
    assert ls.grad is not None and lt.grad is None
    # every scale's generators get a gradient
    for g in list(mod.gen_spatial) + list(mod.gen_channel):
        assert g[0].weight.grad is not None


def test_samkd_tiny_map_smaller_than_scale():
    mod = build_loss("samkd", student_channels=2, teacher_channels=2, align="identity")
    s, t = torch.randn(1, 2, 1, 2), torch.randn(1, 2, 1, 2)
    out = mod(s, t, DistillContext(aux={"logits": (torch.randn(1, 3, 1, 2), torch.randn(1, 3, 1, 2))}))
    assert all(torch.isfinite(v) for v in out.values())


def test_scales_switch():
    mod = build_loss("samkd", student_channels=2, teacher_channels=2, scales=[1], use_logits=False)
    assert len(mod.gen_spatial) == 1 and len(mod.gen_channel) == 1
    with pytest.raises(ValueError, match="scales must be a non-empty list of positive integers"):
        build_loss("samkd", student_channels=2, teacher_channels=2, scales=[0])


def test_sld_only_switch_is_the_logit_term_alone():
    """Paper Table II's "SLD only" row: use_features=False builds no generators and returns loss_logit only, equal to
    the full loss's logit term on the same inputs."""
    torch.manual_seed(2)
    full = build_loss("samkd", student_channels=2, teacher_channels=2, align="identity")
    sld = build_loss("samkd", student_channels=2, teacher_channels=2, align="identity", use_features=False)
    assert len(sld.gen_spatial) == 0 and len(sld.gen_channel) == 0
    s, t = torch.randn(2, 2, 4, 4, requires_grad=True), torch.randn(2, 2, 4, 4)
    ctx = DistillContext(aux={"logits": (torch.randn(2, 3, 4, 4, requires_grad=True), torch.randn(2, 3, 4, 4))})
    got = sld(s, t, ctx)
    assert set(got) == {"loss_logit"}
    torch.testing.assert_close(got["loss_logit"], full(s, t, ctx)["loss_logit"])
    with pytest.raises(ValueError, match=r"^samkd: use_features and use_logits are both off: nothing would be "
                                         r"distilled \(paper Table II: SFD, SLD or both\)$"):
        build_loss("samkd", student_channels=2, teacher_channels=2, use_features=False, use_logits=False)


def test_samkd_bad_inputs():
    mod = build_loss("samkd", student_channels=2, teacher_channels=2)
    s, t = torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 4)
    with pytest.raises(ValueError, match=r"SLD needs the classification logits .*context.aux\['logits'\]"):
        mod(s, t)
    with pytest.raises(ValueError, match=r"SLD needs the classification logits"):
        mod(s, t, DistillContext())
    with pytest.raises(ValueError, match=r"logits must be \[B, K, h, w\] of equal shape"):
        mod(s, t, DistillContext(aux={"logits": (torch.randn(1, 3, 4, 4), torch.randn(1, 4, 4, 4))}))
    with pytest.raises(ValueError, match=r"SAMKD was built for student C=2, teacher C=2"):
        mod(torch.randn(1, 3, 4, 4), t, DistillContext(aux={"logits": (torch.randn(1, 3, 4, 4),) * 2}))
    with pytest.raises(ValueError, match=r"differ in batch or spatial size"):
        mod(torch.randn(1, 2, 4, 5), t, DistillContext(aux={"logits": (torch.randn(1, 3, 4, 4),) * 2}))


def test_dmkd_is_single_scale_sfd():
    torch.manual_seed(4)
    d = build_loss("dmkd", student_channels=2, teacher_channels=2, align="identity")
    assert d.scales == [1] and not d.use_logits
    s, t = torch.randn(2, 2, 4, 4), torch.randn(2, 2, 4, 4)
    out = d(s, t)  # no logits needed
    assert set(out) == {"loss_feat"}
    assert out["loss_feat"].item() == pytest.approx(_ref_samkd(d, s, t)["loss_feat"], rel=1e-5)
    check_grad_flow(build_loss("dmkd", student_channels=3, teacher_channels=2), torch.randn(1, 3, 4, 4),
                    torch.randn(1, 2, 4, 4))
    with pytest.raises(TypeError, match="dmkd fixes 'scales'"):
        build_loss("dmkd", student_channels=2, teacher_channels=2, scales=[1, 2])
