"""ACAM-KD against an explicit, loop-based reading of docs/methods.md, "ACAM-KD"."""
import math

import pytest
import torch
import torch.nn.functional as F

from densekd import build_loss
from densekd.losses.acam import ACAMKD, dice_diversity, mask_statistics
from densekd.ops import attention as attention_ops


def _reversed(m):
    """m forward, −∂/∂m backward: 2·m.detach() − m has the value of m and the negated gradient."""
    return 2 * m.detach() - m


def naive_reference(mod: ACAMKD, fs, ft):
    """softmax(QKᵀ/√(C/2))V materialised, and a Python loop over masks — the formulas as written, with the
    mask objective (what L_c + L_s sees of the masks) and the mask norm (Σ M or Σ M²) of
    docs/methods.md, "Optimisation of the mask modules"."""
    s_hat = mod.align(fs)
    b, c, h, w = ft.shape
    s_masks = s_hat if mod.mask_objective == "descent" else s_hat.detach()  # the mask path's F̂_S
    to_loss = {"descent": lambda m: m, "adversarial": _reversed, "detached": torch.Tensor.detach}[mod.mask_objective]
    norm = (lambda m: (m * m).sum()) if mod.mask_norm == "square" else (lambda m: m.sum())
    if mod.fusion is not None:
        qs, kvs = (ft, s_masks) if mod.fusion.query == "teacher" else (s_masks, ft)
        q = mod.fusion.q(qs).flatten(2).transpose(1, 2)
        k = mod.fusion.k(kvs).flatten(2).transpose(1, 2)
        v = mod.fusion.v(kvs).flatten(2).transpose(1, 2)
        a = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]), dim=-1)
        fused = (a @ v).transpose(1, 2).reshape(b, c, h, w)
        if mod.fusion.residual:  # the switch: the query's own map added back
            fused = fused + qs
    else:
        fused = ft
    d = ft - s_hat
    out = {}
    div = 0.0
    if mod.ascm.channel_units is not None:
        vvec = fused.mean(dim=(2, 3))
        units = mod.ascm.channel_units
        mc = torch.stack([torch.sigmoid(units[m] * vvec) for m in range(mod.num_masks)], 1)
        mcl = to_loss(mc)
        lc = 0.0
        for m in range(mod.num_masks):
            per_b = []
            for bi in range(b):
                wgt = mcl[bi, m].view(c, 1, 1)
                per_b.append(((wgt * d[bi]) ** 2).sum() / (h * w * norm(mcl[bi, m])))
            lc = lc + torch.stack(per_b).mean()
        out["loss_channel"] = lc / mod.num_masks
        if mod.diversity == "both":
            div = div + naive_dice(mc)
    if mod.ascm.spatial_units is not None:
        z = fused.flatten(2)
        if mod.ascm.z_norm == "spatial":  # each channel standardised over its H·W positions (unbiased; 1×1: std 0)
            n = z.shape[2]
            z = (z - z.sum(2, keepdim=True) / n) / (z.std(2, keepdim=True, unbiased=n > 1) + 1e-5)
        ms = torch.stack([torch.sigmoid((mod.ascm.spatial_units[m].view(1, c, 1) * z).sum(1)) for m in range(mod.num_masks)], 1)
        msl = to_loss(ms)
        ls = 0.0
        for m in range(mod.num_masks):
            per_b = []
            for bi in range(b):
                wgt = msl[bi, m].view(1, h, w)
                per_b.append(((wgt * d[bi]) ** 2).sum() / (c * norm(msl[bi, m])))
            ls = ls + torch.stack(per_b).mean()
        out["loss_spatial"] = ls / mod.num_masks
        if mod.diversity in ("both", "spatial"):
            div = div + naive_dice(ms)
    if mod.diversity != "none":
        out["loss_div"] = div
    return out


def naive_dice(x, eps=1e-6):
    b, m, _ = x.shape
    if m < 2:
        return torch.zeros((), dtype=x.dtype)
    vals = []
    for bi in range(b):
        for i in range(m):
            for j in range(m):
                if i != j:
                    xi, xj = x[bi, i], x[bi, j]
                    vals.append(2 * (xi * xj).sum() / ((xi * xi).sum() + (xj * xj).sum() + eps))
    return torch.stack(vals).mean()


def make(**kw):
    torch.manual_seed(0)
    kw.setdefault("student_channels", 6)
    kw.setdefault("teacher_channels", 8)
    kw.setdefault("num_masks", 3)
    return build_loss("acam_kd", **kw).double()


def feats(cs=6, ct=8, b=2, h=5, w=4):
    g = torch.Generator().manual_seed(1)
    return torch.randn(b, cs, h, w, generator=g, dtype=torch.float64), torch.randn(b, ct, h, w, generator=g, dtype=torch.float64)


PAPER = {"mask_objective": "descent", "mask_norm": "sum"}  # the literal reading (preset acam_kd_paper)


@pytest.mark.parametrize("kw", [
    {}, {"query": "student"}, {"channel_units": "scalar"}, {"masks": "spatial"}, {"masks": "channel"},
    {"fusion": "teacher"}, {"diversity": "spatial"}, {"diversity": "none"}, {"num_masks": 1},
    PAPER, {**PAPER, "query": "student"}, {"mask_objective": "detached"}, {"mask_norm": "sum"},
    {"fusion_residual": True}, {"fusion_residual": True, "z_norm": "none"},
    {"fusion_residual": True, "z_norm": "none", "query": "student", **PAPER},
    {"masks": "channel", "fusion_residual": True},  # channel masks alone: the projected path under z_norm=spatial
])
def test_matches_naive_formula(kw):
    mod = make(**kw)
    fs, ft = feats()
    got = mod(fs, ft)
    ref = naive_reference(mod, fs, ft)
    assert set(got) == set(ref)
    for key in ref:
        assert torch.allclose(got[key], torch.as_tensor(ref[key], dtype=got[key].dtype), rtol=1e-6, atol=1e-9), key


def test_default_terms_and_weights():
    mod = make()
    fs, ft = feats()
    base = mod(fs, ft)
    assert set(base) == {"loss_channel", "loss_spatial", "loss_div"}
    mod.alpha, mod.lambda_div = 2.0, 3.0
    scaled = mod(fs, ft)
    assert torch.allclose(scaled["loss_channel"], 2 * base["loss_channel"])
    assert torch.allclose(scaled["loss_spatial"], 2 * base["loss_spatial"])
    assert torch.allclose(scaled["loss_div"], 3 * base["loss_div"])
    assert ACAMKD(4, 4).num_masks == 6 and ACAMKD(4, 4).alpha == 1.0 and ACAMKD(4, 4).lambda_div == 1.0


def test_switches_change_only_what_they_should():
    fs, ft = feats()
    full = make()(fs, ft)
    sp, ch = make(masks="spatial"), make(masks="channel")
    assert sp.ascm.channel_units is None and ch.ascm.spatial_units is None
    # with the same seed the spatial units are identical, so loss_spatial is unchanged by masks="spatial"
    assert torch.allclose(sp(fs, ft)["loss_spatial"], full["loss_spatial"])
    assert torch.allclose(ch(fs, ft)["loss_channel"], full["loss_channel"])
    assert "loss_channel" not in sp(fs, ft) and "loss_spatial" not in ch(fs, ft)
    # diversity scope touches only loss_div
    dsp = make(diversity="spatial")(fs, ft)
    assert torch.allclose(dsp["loss_spatial"], full["loss_spatial"]) and not torch.allclose(dsp["loss_div"], full["loss_div"])
    assert "loss_div" not in make(diversity="none")(fs, ft)
    # fusion="teacher" builds no STCA-FF; query swap changes the fused map, not the unit shapes
    assert make(fusion="teacher").fusion is None
    a, b = make(), make(query="student")
    a(fs, ft), b(fs, ft)
    assert a.last_masks["fused"].shape == b.last_masks["fused"].shape
    assert not torch.allclose(a.last_masks["fused"], b.last_masks["fused"])
    # channel_units="scalar": every channel mask ranks channels identically (same order for every m)
    sc = make(channel_units="scalar")
    sc(fs, ft)
    order = sc.last_masks["channel"][0].argsort(dim=1)
    assert sc.ascm.channel_units.shape == (3,)
    assert all(torch.equal(order[0], o) or torch.equal(order[0], o.flip(0)) for o in order)


def test_last_masks_shapes_and_detached():
    mod = make(num_masks=4)
    fs, ft = feats()
    fs.requires_grad_(True)
    mod(fs, ft)
    lm = mod.last_masks
    assert lm["channel"].shape == (2, 4, 8) and lm["spatial"].shape == (2, 4, 5, 4) and lm["fused"].shape == (2, 8, 5, 4)
    assert not any(t.requires_grad for t in lm.values())
    stats = mod.mask_statistics()
    assert set(stats) == {f"{f}/{k}" for f in ("spatial", "channel") for k in ("mean", "dice", "entropy", "std", "std_min")}
    assert 0 < stats["spatial/mean"] < 1 and 0 <= stats["spatial/entropy"] <= 1
    sp = lm["spatial"].flatten(2)  # [B, M, HW]: the per-mask spatial std, averaged over b and m / its minimum
    assert stats["spatial/std"] == pytest.approx(float(sp.std(dim=-1, unbiased=False).mean()), rel=1e-6)
    assert stats["spatial/std_min"] == pytest.approx(float(sp.std(dim=-1, unbiased=False).mean(0).min()), rel=1e-6)


def test_mask_statistics_std_is_zero_for_constant_masks_only():
    const = torch.full((2, 3, 10), 0.7)
    assert mask_statistics(const)["std"] == 0.0 and mask_statistics(const)["std_min"] == 0.0
    varying = const.clone()
    varying[:, :2, :5] = 0.1  # masks 0 and 1 vary over space, mask 2 is a constant gate
    st = mask_statistics(varying)
    assert st["std"] == pytest.approx(2 / 3 * 0.3, rel=1e-5) and st["std_min"] == 0.0


def test_dice_identical_and_disjoint():
    x = torch.rand(2, 1, 50).expand(2, 3, 50)
    assert dice_diversity(x).item() == pytest.approx(1.0, abs=1e-5)
    disjoint = torch.zeros(1, 3, 6)
    disjoint[0, 0, :2] = 1
    disjoint[0, 1, 2:4] = 1
    disjoint[0, 2, 4:] = 1
    assert dice_diversity(disjoint).item() == 0.0
    assert mask_statistics(disjoint)["dice"] == 0.0


def test_zero_loss_when_aligned_student_equals_teacher():
    mod = make(student_channels=8, teacher_channels=8, align="identity", diversity="none")
    _, ft = feats()
    out = mod(ft.clone(), ft)
    assert out["loss_channel"].item() == 0.0 and out["loss_spatial"].item() == 0.0


def test_gradients_reach_student_and_units_not_teacher():
    mod = make().float()
    fs, ft = (t.float() for t in feats())
    fs.requires_grad_(True)
    ft_before = ft.clone()
    out = mod(fs, ft)
    sum(out.values()).backward()
    assert fs.grad is not None and fs.grad.abs().sum() > 0
    for name, p in mod.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert ft.grad is None and torch.equal(ft, ft_before)


def test_bad_inputs_fail_clearly():
    mod = make()
    fs, ft = feats()
    with pytest.raises(ValueError, match=r"built for student C=6, teacher C=8"):
        mod(fs[:, :5], ft)
    with pytest.raises(ValueError, match=r"spatial size: student \(2, 6, 5, 4\) vs teacher \(2, 8, 4, 4\)"):
        mod(fs, ft[:, :, :4])
    with pytest.raises(ValueError, match=r"4-D"):
        mod(fs[0], ft[0])
    with pytest.raises(ValueError, match=r"query must be one of teacher, student; got 'both'"):
        build_loss("acam_kd", student_channels=4, teacher_channels=4, query="both")
    with pytest.raises(ValueError, match=r"masks must be one of"):
        build_loss("acam_kd", student_channels=4, teacher_channels=4, masks="none")
    with pytest.raises(ValueError, match=r"num_masks must be >= 1"):
        build_loss("acam_kd", student_channels=4, teacher_channels=4, num_masks=0)
    with pytest.raises(ValueError, match=r"align='identity' needs equal channels"):
        build_loss("acam_kd", student_channels=4, teacher_channels=8, align="identity")


def test_bf16_autocast_runs_and_is_close():
    mod = make().float()
    fs, ft = (t.float() for t in feats(h=8, w=8))
    ref = mod(fs, ft)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = mod(fs, ft)
    for k in ref:
        assert got[k].dtype == torch.float32
        assert torch.allclose(got[k], ref[k], rtol=5e-2, atol=1e-3), k


def _shapes_seen(fn):
    from torch.profiler import profile

    with profile(record_shapes=True) as prof:
        fn()
    return prof, [tuple(sh) for e in prof.events() for sh in (e.input_shapes or []) if sh]


def test_attention_never_materialises_hw_by_hw(monkeypatch):
    """docs/methods.md, "Computing ACAM-KD without the attention matrix": no N×N tensor in forward or backward
    (P is formed a few query rows at a time; its softmax and softmax backward run on those blocks only)."""
    monkeypatch.setattr(attention_ops, "ATTENTION_BLOCK_ELEMENTS", 2 * 120 * 7)  # 7 rows of N = 120 per block
    monkeypatch.setattr(attention_ops, "ATTENTION_MIN_ROWS", 1)
    mod = build_loss("acam_kd", student_channels=16, teacher_channels=32, num_masks=2, z_norm="none")
    fs, ft = torch.randn(2, 16, 12, 10, requires_grad=True), torch.randn(2, 32, 12, 10)
    prof, shapes = _shapes_seen(lambda: sum(mod(fs, ft).values()).backward())
    n = 12 * 10
    assert (2, 7, n) in shapes and (2, 1, n) in shapes  # full blocks and the tail block (120 = 17·7 + 1)
    assert not [sh for sh in shapes if len(sh) >= 2 and sh[-1] == n and sh[-2] == n]


def test_explicit_path_uses_the_blocked_kernel_on_a_cpu(monkeypatch):
    """z_norm="spatial" (the default) needs F_fuse itself: on a CPU it goes through the blocked kernel (10 products
    of N²·d where SDPA performs 14), never SDPA and never an N×N tensor."""
    monkeypatch.setattr(attention_ops, "ATTENTION_BLOCK_ELEMENTS", 2 * 120 * 7)  # 7 rows of N = 120 per block
    monkeypatch.setattr(attention_ops, "ATTENTION_MIN_ROWS", 1)
    monkeypatch.setattr(attention_ops, "BLOCKED_MIN_CHANNELS", 32)  # a COCO-sized map, scaled down
    monkeypatch.setattr(attention_ops, "BLOCKED_MIN_POSITIONS", 120)
    mod = build_loss("acam_kd", student_channels=16, teacher_channels=32, num_masks=2)
    assert mod.ascm.z_norm == "spatial"
    fs, ft = torch.randn(2, 16, 12, 10, requires_grad=True), torch.randn(2, 32, 12, 10)
    prof, shapes = _shapes_seen(lambda: sum(mod(fs, ft).values()).backward())
    names = {e.key for e in prof.key_averages()}
    assert not any("scaled_dot_product" in name for name in names)
    assert any("BlockedAttention" in name for name in names)
    n = 12 * 10
    assert (2, 7, n) in shapes and (2, 1, n) in shapes  # full blocks and the tail block (120 = 17·7 + 1)
    assert not [sh for sh in shapes if len(sh) >= 2 and sh[-1] == n and sh[-2] == n]


def test_explicit_path_on_a_small_map_uses_sdpa():
    """Below the blocked kernel's thresholds (the demos' maps) the default path runs SDPA's fused kernel."""
    from torch.profiler import profile

    mod = build_loss("acam_kd", student_channels=16, teacher_channels=32, num_masks=2)
    fs, ft = torch.randn(2, 16, 12, 10, requires_grad=True), torch.randn(2, 32, 12, 10)
    with profile() as prof:
        sum(mod(fs, ft).values()).backward()
    names = {e.key for e in prof.key_averages()}
    assert "aten::_scaled_dot_product_flash_attention_for_cpu_backward" in names
    assert not any("BlockedAttention" in name for name in names)


def test_attention_kernel_switch_forces_either_kernel(monkeypatch):
    """``attention_kernel="blocked"|"sdpa"`` overrides the size rule both ways (same values to float rounding), and
    ``flops_above_floor`` follows it; a name that is no kernel is refused with the choices."""
    from torch.profiler import profile

    from densekd.ops.attention import attention_floor_flops, blocked_attention_flops, cross_attention_flops

    fs, ft = torch.randn(2, 16, 12, 10), torch.randn(2, 32, 12, 10)

    def run(kernel):
        torch.manual_seed(0)
        mod = build_loss("acam_kd", student_channels=16, teacher_channels=32, num_masks=2, attention_kernel=kernel)
        with profile() as prof:
            out = mod(fs, ft)
        names = {e.key for e in prof.key_averages()}
        used = {"sdpa" for n in names if "scaled_dot_product" in n} | {"blocked" for n in names if "Blocked" in n}
        return mod, out, used

    auto, ref, used = run("auto")
    assert used == {"sdpa"}  # a small map: SDPA by the size rule
    blocked, got, used = run("blocked")
    assert used == {"blocked"}
    for key in ref:
        torch.testing.assert_close(got[key], ref[key], rtol=1e-5, atol=1e-6)
    b, c, n, d = 2, 32, 120, 16
    assert blocked.flops_above_floor((b, 16, 12, 10), (b, c, 12, 10)) == \
        blocked_attention_flops(b, n, d, c) - attention_floor_flops(b, n, d, c)
    monkeypatch.setattr(attention_ops, "BLOCKED_MIN_CHANNELS", 1)  # auto would now pick blocked; "sdpa" still wins
    monkeypatch.setattr(attention_ops, "BLOCKED_MIN_POSITIONS", 1)
    sdpa, _, used = run("sdpa")
    assert used == {"sdpa"}
    assert sdpa.flops_above_floor((b, 16, 12, 10), (b, c, 12, 10)) == \
        cross_attention_flops(b, n, d, c) - attention_floor_flops(b, n, d, c)
    with pytest.raises(ValueError, match="acam_kd: attention_kernel must be one of auto, blocked, sdpa; got 'flash'"):
        build_loss("acam_kd", student_channels=16, teacher_channels=32, attention_kernel="flash")


def test_sdpa_kernel_takes_the_memory_efficient_path():
    """``kernel="sdpa"`` (the default off a CPU): SDPA's flash kernel, never an explicit softmax."""
    from torch.profiler import profile

    from densekd.ops import cross_attention

    q, k = torch.randn(2, 120, 16, requires_grad=True), torch.randn(2, 120, 16, requires_grad=True)
    v = torch.randn(2, 120, 32, requires_grad=True)
    with profile() as prof:
        cross_attention(q, k, v, channels_first=True, kernel="sdpa").sum().backward()
    names = {e.key for e in prof.key_averages()}
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in names
    assert "aten::_scaled_dot_product_flash_attention_for_cpu_backward" in names
    assert not {"aten::_softmax", "aten::softmax", "aten::_softmax_backward_data"} & names


@pytest.mark.parametrize("kw", [{}, {"query": "student"}, {"masks": "spatial"}, {"masks": "channel"},
                                {"channel_units": "scalar"}, PAPER, {**PAPER, "query": "student"},
                                {"mask_objective": "detached"}])
def test_gradients_match_naive_formula(kw, monkeypatch):
    """Every parameter's and the student's gradient equal the explicit formula's, with several blocks."""
    monkeypatch.setattr(attention_ops, "ATTENTION_BLOCK_ELEMENTS", 2 * 20 * 3)  # 3 rows per block, N = 20
    monkeypatch.setattr(attention_ops, "ATTENTION_MIN_ROWS", 1)
    mod = make(**kw)
    fs, ft = feats()
    fs.requires_grad_(True)
    got = mod(fs, ft)
    sum(got.values()).backward()
    grads = {n: p.grad.clone() for n, p in mod.named_parameters()} | {"fs": fs.grad.clone()}
    mod.zero_grad()
    fs.grad = None
    sum(naive_reference(mod, fs, ft).values()).backward()
    for n, p in mod.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-7, atol=1e-10, msg=n)
    torch.testing.assert_close(grads["fs"], fs.grad, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("kw", [{}, {"z_norm": "none"}, {"z_norm": "none", "fusion_residual": True},
                                {"fusion_residual": True}])
def test_fused_is_computed_on_access_from_the_forward_state(kw):
    """last_masks["fused"] is F_fuse of that forward: equal to STCA-FF's explicit output (with the residual switch:
    A V + F_T), and unchanged by an optimizer step taken before it is read."""
    mod = make(**kw)
    fs, ft = feats()
    mod(fs, ft)
    expected = mod.fusion(ft, mod.align(fs)).detach()
    with torch.no_grad():
        for p in mod.parameters():
            p.add_(1.0)
    torch.testing.assert_close(mod.last_masks["fused"], expected)
    assert mod.last_masks["fused"] is mod.last_masks["fused"]  # computed once
    assert set(mod.last_masks) == {"fused", "channel", "spatial"} and len(mod.last_masks) == 3
    assert len(make(keep_masks=False).last_masks) == 0


def test_second_derivative_is_refused_clearly():
    mod = build_loss("acam_kd", student_channels=4, teacher_channels=4, num_masks=2)
    fs, ft = torch.randn(1, 4, 3, 3, requires_grad=True), torch.randn(1, 4, 3, 3)
    (g,) = torch.autograd.grad(sum(mod(fs, ft).values()), fs, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        g.sum().backward()


def test_channels_last_and_strided_inputs_give_the_same_loss_and_gradient():
    mod = make()
    fs, ft = feats(h=6, w=5)
    ref_fs = fs.clone().requires_grad_(True)
    ref = mod(ref_fs, ft)
    sum(ref.values()).backward()
    cl_fs = fs.clone().to(memory_format=torch.channels_last).requires_grad_(True)
    wide_t = ft.repeat_interleave(2, dim=3)[..., ::2]  # a strided view holding the teacher's values
    assert not wide_t.is_contiguous() and torch.equal(wide_t, ft)
    got = mod(cl_fs, wide_t)
    sum(got.values()).backward()
    for key in ref:
        torch.testing.assert_close(got[key], ref[key])
    torch.testing.assert_close(cl_fs.grad, ref_fs.grad)


def test_fp16_autocast_channel_mean_does_not_overflow():
    """Σ_hw F̂_S passes fp16's 65,504 at P3-like sizes; the channel mean is formed as a weighted mean instead."""
    torch.manual_seed(0)
    mod = build_loss("acam_kd", student_channels=4, teacher_channels=4, num_masks=2, align="identity")
    fs = (torch.randn(1, 4, 128, 128) + 5.0).requires_grad_(True)  # Σ over 16,384 positions ≈ 82,000
    ft = fs.detach() + 0.1 * torch.randn(1, 4, 128, 128)
    with torch.autocast("cpu", dtype=torch.float16):
        out = mod(fs, ft)
    sum(out.values()).backward()
    assert all(torch.isfinite(v) for v in out.values())
    assert torch.isfinite(mod.last_masks["channel"]).all() and torch.isfinite(fs.grad).all()


@pytest.mark.parametrize("kw", [{}, {"fusion": "teacher"}])
def test_teacher_map_made_under_inference_mode(kw):
    mod = build_loss("acam_kd", student_channels=4, teacher_channels=4, num_masks=2, **kw)
    with torch.inference_mode():
        ft = torch.randn(2, 4, 5, 5)
    fs = torch.randn(2, 4, 5, 5, requires_grad=True)
    sum(mod(fs, ft).values()).backward()
    assert fs.grad is not None and torch.isfinite(fs.grad).all()


def test_module_pickles_after_a_forward_without_its_masks():
    import io

    mod = make()
    fs, ft = feats()
    mod(fs, ft)
    buf = io.BytesIO()
    torch.save(mod, buf)
    buf.seek(0)
    again = torch.load(buf, weights_only=False)
    assert len(again.last_masks) == 0 and len(mod.last_masks) == 3  # the live module keeps its record
    for a, b in zip(mod.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def test_fused_refuses_a_feature_map_changed_in_place_after_the_forward():
    mod = make(align="identity", student_channels=8, z_norm="none")  # the lazy record of the projected path
    fs, ft = feats(cs=8)
    mod(fs, ft)
    fs.mul_(2.0)  # the student map F̂_S = F_S that the record would read
    with pytest.raises(RuntimeError, match="modified in place after the forward"):
        mod.last_masks["fused"]


@pytest.mark.parametrize("shape", [dict(b=1, h=1, w=1), dict(b=1, h=7, w=3), dict(b=3, h=2, w=5)])
@pytest.mark.parametrize("kw", [dict(num_masks=1), dict(teacher_channels=7, student_channels=5),
                                dict(fusion="teacher"), dict(align="identity", student_channels=8),
                                dict(num_masks=1, z_norm="none"), dict(fusion="teacher", z_norm="none"),
                                dict(fusion_residual=True, z_norm="none"), dict(fusion_residual=True)])
def test_odd_shapes_match_the_naive_formula_with_gradients(shape, kw, monkeypatch):
    monkeypatch.setattr(attention_ops, "ATTENTION_BLOCK_ELEMENTS", 2)  # as few rows per block as possible
    monkeypatch.setattr(attention_ops, "ATTENTION_MIN_ROWS", 1)
    mod = make(**kw)
    fs, ft = feats(cs=mod.student_channels, ct=mod.teacher_channels, **shape)
    fs.requires_grad_(True)
    got = mod(fs, ft)
    sum(got.values()).backward()
    grads = {n: p.grad.clone() for n, p in mod.named_parameters()} | {"fs": fs.grad.clone()}
    mod.zero_grad()
    fs.grad = None
    ref = naive_reference(mod, fs, ft)
    for key in ref:
        torch.testing.assert_close(got[key], torch.as_tensor(ref[key], dtype=got[key].dtype), rtol=1e-7, atol=1e-10)
    sum(ref.values()).backward()
    for n, p in mod.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-6, atol=1e-9, msg=n)
    torch.testing.assert_close(grads["fs"], fs.grad, rtol=1e-6, atol=1e-9)


def test_z_norm_spatial_is_defined_on_a_1x1_map():
    """A 1×1 map (P6/P7 of a 64-pixel image) has no spatial spread: with z_norm="spatial" (the default) its
    standardised Z is 0, its spatial masks are σ(0) = 0.5, and the loss and every gradient are finite (the unbiased
    std over one position used to be NaN and killed the detection demo at iteration 0)."""
    for fusion in ("cross_attention", "teacher"):
        mod = build_loss("acam_kd", student_channels=6, teacher_channels=8, num_masks=3, fusion=fusion)
        fs, ft = torch.randn(4, 6, 1, 1, requires_grad=True), torch.randn(4, 8, 1, 1)
        out = mod(fs, ft)
        assert all(torch.isfinite(v) for v in out.values()), out
        torch.testing.assert_close(mod.last_masks["spatial"], torch.full((4, 3, 1, 1), 0.5))
        sum(out.values()).backward()
        assert torch.isfinite(fs.grad).all()
        assert all(torch.isfinite(p.grad).all() for p in mod.parameters() if p.grad is not None)


def test_default_z_norm_is_spatial_and_the_paper_preset_keeps_none():
    assert build_loss("acam_kd", student_channels=4, teacher_channels=4).ascm.z_norm == "spatial"
    paper = build_loss("acam_kd_paper", student_channels=4, teacher_channels=4)
    assert paper.ascm.z_norm == "none"
    assert build_loss("acam_kd_paper", student_channels=4, teacher_channels=4, z_norm="spatial").ascm.z_norm == "spatial"


def test_fusion_residual_adds_the_query_map_back():
    """fusion_residual=True: F_fuse = A V + F_T (the query's own map), so the spatial masks see the teacher's spatial
    structure; False (default) is the paper's STCA-FF."""
    plain, res = make(z_norm="none"), make(z_norm="none", fusion_residual=True)
    res.load_state_dict(plain.state_dict())
    fs, ft = feats()
    plain(fs, ft)
    res(fs, ft)
    torch.testing.assert_close(res.last_masks["fused"], plain.last_masks["fused"] + ft)
    assert not plain.fusion.residual and build_loss("acam_kd", student_channels=4, teacher_channels=4).fusion.residual is False
