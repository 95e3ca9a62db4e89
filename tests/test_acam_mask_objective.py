"""ACAM-KD switches ``mask_objective`` and ``mask_norm`` (docs/methods.md, "Optimisation of the mask modules")."""
import pytest
import torch

from densekd import build_loss
from densekd.losses.acam import ACAMKD, spatial_loss, channel_loss


def _pair(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 6, 5, 5, generator=g), torch.randn(2, 8, 5, 5, generator=g)


def _grads(objective, terms=("loss_channel", "loss_spatial"), norm="sum"):
    torch.manual_seed(0)
    mod = ACAMKD(6, 8, num_masks=3, mask_objective=objective, mask_norm=norm)
    # units large enough that the masks are not ≈ 0.5 everywhere (so every gradient is clearly non-zero)
    with torch.no_grad():
        mod.ascm.spatial_units.normal_(0, 0.5)
        mod.ascm.channel_units.normal_(0, 0.5)
    fs, ft = _pair()
    fs.requires_grad_(True)
    out = mod(fs, ft)
    sum(out[t] for t in terms).backward()
    g = {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for n, p in mod.named_parameters()}
    g["student"] = fs.grad.clone() if fs.grad is not None else torch.zeros_like(fs)
    return out, g


def test_default_is_adversarial_square_and_the_paper_preset_is_descent_sum():
    mod = build_loss("acam_kd", student_channels=6, teacher_channels=8)
    assert (mod.mask_objective, mod.mask_norm) == ("adversarial", "square")
    paper = build_loss("acam_kd_paper", student_channels=6, teacher_channels=8)
    assert (paper.mask_objective, paper.mask_norm) == ("descent", "sum")


def test_forward_values_do_not_depend_on_objective():
    outs = [_grads(o)[0] for o in ("descent", "adversarial", "detached")]
    for o in outs[1:]:
        for k in outs[0]:
            torch.testing.assert_close(o[k], outs[0][k])


def test_adversarial_reverses_mask_gradients_only():
    _, gd = _grads("descent")
    _, ga = _grads("adversarial")
    _, gx = _grads("detached")
    mask_names = [n for n in gd if n.startswith(("ascm.", "fusion.q.", "fusion.k.", "fusion.v."))
                  and not n.startswith("fusion.q.")]  # Q reads F_T: a mask parameter too, checked below
    mask_names += [n for n in gd if n.startswith("fusion.q.")]
    for n in mask_names:
        assert gd[n].abs().sum() > 0, n
        torch.testing.assert_close(ga[n], -gd[n])  # ascends exactly what descent descends
        assert gx[n].abs().sum() == 0, n  # detached: L_c + L_s never reaches the mask modules
    # student and align learn from D only in both alternatives (no path through the masks) ...
    for n in ("align.weight", "align.bias", "student"):
        torch.testing.assert_close(ga[n], gx[n])
        # ... which differs from descent, where the masks also depend on F̂_S through STCA-FF
        assert not torch.allclose(ga[n], gd[n]), n


def test_dice_is_descended_in_every_mode():
    _, gd = _grads("descent", terms=("loss_div",))
    for objective in ("adversarial", "detached"):
        _, g = _grads(objective, terms=("loss_div",))
        for n in ("ascm.spatial_units", "ascm.channel_units", "fusion.q.weight"):
            assert gd[n].abs().sum() > 0
            torch.testing.assert_close(g[n], gd[n])


def test_square_norm_is_scale_invariant_sum_norm_is_not():
    g = torch.Generator().manual_seed(1)
    sq_n, m_s = torch.rand(2, 10, generator=g), torch.rand(2, 3, 10, generator=g)
    sq_c, m_c = torch.rand(2, 4, generator=g), torch.rand(2, 3, 4, generator=g)
    torch.testing.assert_close(spatial_loss(sq_n, 0.1 * m_s, 4, norm="square"), spatial_loss(sq_n, m_s, 4, norm="square"))
    torch.testing.assert_close(channel_loss(sq_c, 0.1 * m_c, 10, norm="square"), channel_loss(sq_c, m_c, 10, norm="square"))
    torch.testing.assert_close(spatial_loss(sq_n, 0.1 * m_s, 4), 0.1 * spatial_loss(sq_n, m_s, 4))
    # square norm = Σ M² D² / (C Σ M²), written out
    ref = ((m_s ** 2) * sq_n[:, None]).sum(-1) / (4 * (m_s ** 2).sum(-1))
    torch.testing.assert_close(spatial_loss(sq_n, m_s, 4, norm="square"), ref.mean())


@pytest.mark.parametrize("kw, msg", [
    ({"mask_objective": "ascent"}, "acam_kd: mask_objective must be one of descent, adversarial, detached; got 'ascent'"),
    ({"mask_norm": "l2"}, "acam_kd: mask_norm must be one of sum, square; got 'l2'"),
])
def test_bad_switch_values(kw, msg):
    with pytest.raises(ValueError) as e:
        ACAMKD(6, 8, **kw)
    assert str(e.value) == msg


def test_z_norm_spatial_removes_the_spatial_mean():
    """z_norm="spatial" (default): masks ignore a per-channel constant added to F_fuse; "none" does not."""
    from densekd.losses.acam import ASCM

    torch.manual_seed(0)
    ascm_n, ascm_s = ASCM(8, 3, z_norm="none"), ASCM(8, 3)
    ascm_s.load_state_dict(ascm_n.state_dict())
    with torch.no_grad():
        ascm_n.spatial_units.normal_(0, 1.0)
        ascm_s.spatial_units.copy_(ascm_n.spatial_units)
    fused = torch.randn(2, 8, 4, 4)
    shifted = fused + 50 * torch.randn(1, 8, 1, 1)
    torch.testing.assert_close(ascm_s(shifted)[1], ascm_s(fused)[1], atol=1e-4, rtol=1e-4)
    assert (ascm_n(shifted)[1] - ascm_n(fused)[1]).abs().max() > 0.1
    assert ascm_s(shifted)[1].std(dim=-1).min() > 0.01  # still spatial after a huge constant offset
    with pytest.raises(ValueError, match="acam_kd: z_norm must be one of none, spatial; got 'x'"):
        ACAMKD(6, 8, z_norm="x")
