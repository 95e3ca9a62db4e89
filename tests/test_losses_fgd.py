from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from _loss_helpers import check_grad_flow
from densekd.losses import DistillContext, build_loss
from densekd.losses.fgd import fgd_masks


def _ctx():
    # image 8×8; level 4×4 (scale 0.5). Image 0: two overlapping boxes; image 1: no boxes.
    boxes = torch.tensor([[[0.0, 0.0, 3.0, 3.0], [2.0, 2.0, 8.0, 8.0]],
                          [[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]])
    valid = torch.tensor([[True, True], [False, False]])
    return DistillContext(boxes=boxes, box_valid=valid, labels=torch.zeros(2, 2, dtype=torch.long),
                          image_size=(8, 8))


def _ref_masks(ctx, h, w):
    bx = ctx.boxes_at((h, w))
    b, n = bx.shape[:2]
    fg = torch.zeros(b, h, w)
    for i in range(b):
        for j in range(n):
            if not ctx.box_valid[i, j]:
                continue
            x1, y1 = math.floor(bx[i, j, 0]), math.floor(bx[i, j, 1])
            x2, y2 = math.ceil(bx[i, j, 2]), math.ceil(bx[i, j, 3])
            area = 1.0 / ((y2 + 1 - y1) * (x2 + 1 - x1))
            for y in range(max(y1, 0), min(y2, h - 1) + 1):
                for x in range(max(x1, 0), min(x2, w - 1) + 1):
                    fg[i, y, x] = max(fg[i, y, x], area)
    bg = (fg == 0).float()
    for i in range(b):
        if bg[i].sum() > 0:
            bg[i] /= bg[i].sum()
    return fg, bg


def test_masks_hand_built():
    ctx = _ctx()
    fg, bg = fgd_masks(ctx.boxes_at((4, 4)), ctx.box_valid, (4, 4))
    exp_fg = torch.zeros(2, 4, 4)
    exp_fg[0, 1:, 1:] = 1 / 16  # box 2 → level (1,1,4,4): rows/cols 1..4 (clipped), area 1/(4·4)
    exp_fg[0, :3, :3] = 1 / 9  # box 1 → level (0,0,1.5,1.5): rows/cols 0..2, area 1/9 (max wins)
    assert torch.allclose(fg, exp_fg)
    exp_bg = torch.zeros(2, 4, 4)
    exp_bg[0, 0, 3] = exp_bg[0, 3, 0] = 0.5
    exp_bg[1] = 1 / 16  # no boxes: everything is background
    assert torch.allclose(bg, exp_bg)
    rfg, rbg = _ref_masks(ctx, 4, 4)
    assert torch.allclose(fg, rfg) and torch.allclose(bg, rbg)
    # a non-square level and a third, fractional box
    ctx.boxes[1, 0] = torch.tensor([1.3, 2.2, 5.9, 7.1])
    ctx.box_valid[1, 0] = True
    fg, bg = fgd_masks(ctx.boxes_at((3, 5)), ctx.box_valid, (3, 5))
    rfg, rbg = _ref_masks(ctx, 3, 5)
    assert torch.allclose(fg, rfg) and torch.allclose(bg, rbg)


@torch.no_grad()
def _ref_loss(mod, s, t, ctx):
    n, c, h, w = t.shape
    fg, bg = _ref_masks(ctx, h, w)

    def att(f):
        a = f.abs()
        sp = torch.zeros(n, h, w)
        ch = torch.zeros(n, c)
        for i in range(n):
            m = [[float(a[i, :, y, x].mean()) / 0.5 for x in range(w)] for y in range(h)]
            z = sum(math.exp(v) for row in m for v in row)
            for y in range(h):
                for x in range(w):
                    sp[i, y, x] = h * w * math.exp(m[y][x]) / z
            mc = [float(a[i, k].mean()) / 0.5 for k in range(c)]
            zc = sum(math.exp(v) for v in mc)
            for k in range(c):
                ch[i, k] = c * math.exp(mc[k]) / zc
        return sp, ch

    st, ct = att(t)
    ss, cs = att(s)
    fgl = bgl = 0.0
    for i in range(n):
        for k in range(c):
            for y in range(h):
                for x in range(w):
                    e = float(st[i, y, x] * ct[i, k] * (s[i, k, y, x] - t[i, k, y, x]) ** 2)
                    fgl += e * float(fg[i, y, x])
                    bgl += e * float(bg[i, y, x])
    attl = float((cs - ct).abs().sum() + (ss - st).abs().sum())

    def gc(block, x):
        a = F.softmax(block.conv_mask(x).flatten(1), dim=1)  # [N, HW]
        ctx_vec = torch.einsum("nch,nh->nc", x.flatten(2), a)[:, :, None, None]
        return x + block.channel_add(ctx_vec)

    rel = float(((gc(mod.context_s, s) - gc(mod.context_t, t)) ** 2).sum())
    return {"loss_fg": 1e-3 * fgl / n, "loss_bg": 5e-4 * bgl / n, "loss_attention": 5e-4 * attl / n,
            "loss_global": 5e-6 * rel / n}


def test_fgd_value_matches_reference():
    torch.manual_seed(0)
    mod = build_loss("fgd", student_channels=4, teacher_channels=4, align="identity")
    # make the GcBlock's last conv non-zero so the global term exercises context modelling
    torch.nn.init.normal_(mod.context_s.channel_add[-1].weight)
    torch.nn.init.normal_(mod.context_t.channel_add[-1].weight)
    s, t = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    ctx = _ctx()
    out = mod(s, t, ctx)
    ref = _ref_loss(mod, s, t, ctx)
    assert set(out) == set(ref)
    for k in ref:
        assert out[k].item() == pytest.approx(ref[k], rel=1e-4), k
    assert out["loss_fg"].item() > 0 and out["loss_bg"].item() > 0


def test_fgd_zero_for_equal_features_at_init():
    mod = build_loss("fgd", student_channels=4, teacher_channels=4, align="identity")
    t = torch.randn(2, 4, 4, 4)
    out = mod(t.clone(), t, _ctx())
    # focal and attention terms vanish; the global term too because the two GcBlocks' last convs are
    # zero-initialised (G(F) = F), as in the official reset_parameters
    for k, v in out.items():
        assert v.abs().item() < 1e-10, k


def test_fgd_all_images_without_boxes_and_grads():
    mod = build_loss("fgd", student_channels=3, teacher_channels=4)
    ctx = DistillContext.from_targets(
        [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}] * 2, image_size=(8, 8))
    out = check_grad_flow(mod, torch.randn(2, 3, 4, 4), torch.randn(2, 4, 4, 4), ctx)
    assert out["loss_fg"].item() == 0 and out["loss_bg"].item() > 0
    ctx = DistillContext.from_targets(
        [{"boxes": torch.tensor([[0.0, 0.0, 4.0, 4.0]]), "labels": torch.ones(1, dtype=torch.long)},
         {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}], image_size=(8, 8))
    out = check_grad_flow(mod, torch.randn(2, 3, 4, 4), torch.randn(2, 4, 4, 4), ctx)
    assert out["loss_fg"].item() > 0


def test_fgd_errors():
    mod = build_loss("fgd", student_channels=3, teacher_channels=4)
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 4, 4, 4)
    with pytest.raises(ValueError, match="fgd needs ground-truth boxes"):
        mod(s, t)
    with pytest.raises(ValueError, match="fgd needs ground-truth boxes"):
        mod(s, t, DistillContext(image_size=(8, 8)))
    with pytest.raises(ValueError, match="needs image_size"):
        ctx = _ctx()
        ctx.image_size = None
        mod(s, t, ctx)
    with pytest.raises(ValueError, match=r"context.boxes must be \[B, N, 4\] with B=2"):
        mod(s, t, DistillContext(boxes=torch.zeros(3, 1, 4), image_size=(8, 8)))
    with pytest.raises(ValueError, match="FGD was built for student C=3, teacher C=4"):
        mod(torch.randn(2, 4, 4, 4), t, _ctx())
    with pytest.raises(ValueError, match="differ in batch or spatial size"):
        mod(torch.randn(2, 3, 4, 5), t, _ctx())


def test_fgd_gradients_match_the_literal_form():
    """The factored sums (one product for eq. 4's two terms, eq. 6–7 expanded around d = F̂_S − F_T) give the
    gradients of the literal form (weighted error maps, G(F) written out) to the student map and every parameter."""
    from densekd.losses.fgd import fgd_attention

    torch.manual_seed(0)
    mod = build_loss("fgd", student_channels=3, teacher_channels=4)
    torch.nn.init.normal_(mod.context_s.channel_add[-1].weight)
    torch.nn.init.normal_(mod.context_t.channel_add[-1].weight)
    s, t, ctx = torch.randn(2, 3, 4, 5, requires_grad=True), torch.randn(2, 4, 4, 5), _ctx()

    def literal():
        fg, bg = fgd_masks(ctx.boxes_at((4, 5)), ctx.box_valid, (4, 5))
        a = mod.align(s)
        sa_t, ca_t = fgd_attention(t, mod.temp)
        sa_s, ca_s = fgd_attention(a, mod.temp)
        err = (a - t).pow(2) * sa_t[:, None] * ca_t[:, :, None, None]
        return (1e-3 * (err * fg[:, None]).sum() + 5e-4 * (err * bg[:, None]).sum()
                + 5e-4 * ((ca_s - ca_t).abs().sum() + (sa_s - sa_t).abs().sum())
                + 5e-6 * (mod.context_s(a) - mod.context_t(t)).pow(2).sum()) / 2

    params = [s, *mod.parameters()]
    want = torch.autograd.grad(literal(), params)
    got = torch.autograd.grad(sum(mod(s, t, ctx).values()), params)
    for w, g in zip(want, got):
        assert torch.allclose(w, g, rtol=1e-4, atol=1e-7)
