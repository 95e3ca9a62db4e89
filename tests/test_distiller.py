import pytest
import torch
import torch.nn.functional as F

from densekd import Distiller, Pair
from densekd.errors import ConfigError, UnknownNameError
from tiny_models import TinyDetector, TinySegmenter


def make(pairs=None, **kw):
    torch.manual_seed(0)
    student, teacher = TinyDetector(width=4), TinyDetector(width=8)
    x = torch.rand(2, 3, 16, 16)
    pairs = pairs or [Pair("neck", kwargs={"num_masks": 2})]
    return Distiller(student, teacher, pairs, example_inputs=(x,), **kw), x


def test_builds_one_aligner_per_level_from_the_dry_run():
    d, _ = make()
    assert list(d.kd_losses) == ["0|neck:p3", "0|neck:p4"]
    for m in d.kd_losses.values():
        assert m.align.in_channels == 4 and m.align.out_channels == 8


def test_teacher_frozen_and_stays_in_eval():
    d, _ = make()
    d.train()
    assert d.student.training and not d.teacher.training
    assert all(not p.requires_grad for p in d.teacher.parameters())
    assert all(m.training for m in d.kd_losses.values())


def test_returns_task_kd_and_total():
    d, x = make()
    out = d(x, targets=torch.zeros(2))
    assert {"loss_cls", "loss_aux", "loss_task", "loss_kd", "loss"} <= set(out)
    kd = [k for k in out if k.startswith("kd/")]
    assert sorted(kd) == sorted(f"kd/neck:{lv}/{t}" for lv in ("p3", "p4") for t in ("loss_channel", "loss_spatial", "loss_div"))
    assert torch.allclose(out["loss_task"], out["loss_cls"] + out["loss_aux"])
    assert torch.allclose(out["loss_kd"], sum(out[k] for k in kd))
    assert torch.allclose(out["loss"], out["loss_task"] + out["loss_kd"])
    terms = d.kd_terms(out)
    assert set(terms) == {"loss_channel", "loss_spatial", "loss_div"}


def test_pair_weight_scales_every_term():
    d1, x = make([Pair("neck:p3", kwargs={"num_masks": 2})])
    d2, _ = make([Pair("neck:p3", weight=3.0, kwargs={"num_masks": 2})])
    o1, o2 = d1(x, targets=torch.zeros(2)), d2(x, targets=torch.zeros(2))
    assert torch.allclose(o2["loss_kd"], 3 * o1["loss_kd"])


def test_teacher_stops_after_captured_layers():
    d, x = make()
    calls = d.teacher.post_calls
    d(x, targets=torch.zeros(2))
    assert d.teacher.post_calls == calls  # the teacher never reached its post-processing
    assert d.student.post_calls > 0


def test_gradients_reach_student_and_kd_modules_never_teacher():
    d, x = make()
    t_before = {k: v.clone() for k, v in d.teacher.state_dict().items()}
    opt = torch.optim.SGD(list(d.trainable_parameters()), lr=0.1)
    out = d(x, targets=torch.zeros(2))
    out["loss"].backward()
    assert all(p.grad is not None for p in d.student.parameters())
    for name, p in d.kd_losses.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in d.teacher.parameters())
    opt.step()
    for k, v in d.teacher.state_dict().items():
        assert torch.equal(v, t_before[k]), k
    n_kd = sum(p.numel() for p in d.kd_losses.parameters())
    assert sum(p.numel() for p in d.trainable_parameters()) == sum(p.numel() for p in d.student.parameters()) + n_kd


def test_student_state_dict_is_exactly_the_plain_student():
    d, x = make()
    d(x, targets=torch.zeros(2))["loss"].backward()
    fresh = TinyDetector(width=4)
    sd = d.student_state_dict()
    assert list(sd) == list(fresh.state_dict())
    assert all(sd[k].shape == v.shape for k, v in fresh.state_dict().items())
    fresh.load_state_dict(sd)  # strict


def test_segmentation_task_loss_and_masks_in_context():
    torch.manual_seed(0)
    seen = {}

    s, t = TinySegmenter(width=4), TinySegmenter(width=8)
    x, y = torch.rand(2, 3, 16, 16), torch.randint(0, 3, (2, 16, 16))
    d = Distiller(s, t, [Pair("classifier", kwargs={"num_masks": 3})],
                  task_loss=lambda out, tgt: F.cross_entropy(out, tgt), example_inputs=(x,))
    orig = d.kd_losses["0|classifier"].forward

    def spy(a, b, context=None):
        seen["ctx"] = context
        return orig(a, b, context)

    d.kd_losses["0|classifier"].forward = spy
    out = d(x, targets=y)
    assert "loss_task_main" in out and out["loss"].requires_grad
    assert seen["ctx"].masks is y and seen["ctx"].image_size == (16, 16)


def test_shape_mismatch_and_resize():
    torch.manual_seed(0)
    s, t = TinyDetector(width=4), TinyDetector(width=8)
    x = torch.rand(2, 3, 16, 16)
    with pytest.raises(ValueError, match=r"spatial sizes differ: student neck:p3 \(2, 4, 8, 8\) vs teacher neck:p4 \(2, 8, 4, 4\); set resize=True"):
        Distiller(s, t, [Pair("neck:p3", teacher="neck:p4")], example_inputs=(x,))
    d = Distiller(s, t, [Pair("neck:p3", teacher="neck:p4", resize=True, kwargs={"num_masks": 2})], example_inputs=(x,))
    assert torch.isfinite(d(x, targets=torch.zeros(2))["loss"])
    with pytest.raises(ValueError, match=r"the student gives 2 level\(s\) \(neck:p3, neck:p4\), the teacher 1"):
        Distiller(s, t, [Pair("neck", teacher="neck:p3")], example_inputs=(x,))


def test_bad_pairs_fail_clearly():
    s, t = TinyDetector(width=4), TinyDetector(width=8)
    with pytest.raises(UnknownNameError, match=r"no module named 'nek' in TinyDetector; closest: neck"):
        Distiller(s, t, [Pair("nek")])
    with pytest.raises(ConfigError, match=r"unknown pair key\(s\) \['wieght'\]"):
        Distiller(s, t, [{"student": "neck", "wieght": 2}])
    with pytest.raises(ConfigError, match="at least one distillation pair"):
        Distiller(s, t, [])
    d = Distiller(s, t, [Pair("neck", kwargs={"num_masks": 2})], example_inputs=(torch.rand(1, 3, 16, 16),))
    with pytest.raises(TypeError, match=r"TinyDetector did not return a dict of scalar losses; pass task_loss="):
        d(torch.rand(1, 3, 16, 16))


def test_lazy_setup_warns():
    s, t = TinyDetector(width=4), TinyDetector(width=8)
    d = Distiller(s, t, [Pair("neck", kwargs={"num_masks": 2})])
    with pytest.warns(UserWarning, match="create the optimizer after this call"):
        d(torch.rand(1, 3, 16, 16), targets=torch.zeros(2))
    assert len(d.kd_losses) == 2


def test_torchvision_detector_boxes_in_transformed_coordinates():
    torchvision = pytest.importorskip("torchvision")
    from torchvision.models.detection import RetinaNet
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    def build():
        bb = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5, returned_layers=[2, 3, 4],
                                 extra_blocks=LastLevelP6P7(256, 256), norm_layer=torch.nn.BatchNorm2d)
        return RetinaNet(bb, num_classes=3, min_size=64, max_size=64)

    torch.manual_seed(0)
    s, t = build(), build()
    imgs = [torch.rand(3, 32, 32), torch.rand(3, 32, 32)]
    tg = [{"boxes": torch.tensor([[2.0, 4.0, 10.0, 20.0]]), "labels": torch.tensor([1])},
          {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    d = Distiller(s, t, [Pair("backbone", kwargs={"num_masks": 2})], example_inputs=(imgs,))
    assert len(d.kd_losses) == 5
    ctx = d._context
    d.train()
    seen = {}
    d._context = lambda inputs, targets: seen.setdefault("ctx", ctx(inputs, targets))
    out = d(imgs, targets=tg)
    c = seen["ctx"]
    assert c.image_size == (64, 64)
    assert torch.allclose(c.boxes[0, 0], torch.tensor([4.0, 8.0, 20.0, 40.0]))  # resized ×2 by the transform
    assert c.box_valid.tolist() == [[True], [False]]
    assert {"classification", "bbox_regression"} <= set(out) and torch.isfinite(out["loss"])


def test_hooks_record_only_inside_the_distiller():
    """Running the student on its own (evaluation) must not pile up captured features."""
    d, x = make()
    d(x, targets=torch.zeros(2))
    assert d._s_cap.call_counts() == {} and d._t_cap.call_counts() == {}  # dropped after the losses
    with torch.no_grad():
        for _ in range(3):
            d.student(x)
            d.teacher(x)
    assert d._s_cap.call_counts() == {} and d._t_cap.call_counts() == {}
    assert torch.isfinite(d(x, targets=torch.zeros(2))["loss"])


def test_teacher_levels_public_and_plain_tensors():
    d, x = make()
    calls = d.teacher.post_calls
    lv = d.teacher_levels((x,), "neck")
    assert list(lv) == ["neck:p3", "neck:p4"] and lv["neck:p3"].shape == (2, 8, 8, 8)
    assert not lv["neck:p3"].is_inference() and d.teacher.post_calls == calls  # stopped after the captures
    assert d._t_cap.call_counts() == {}


def test_task_losses_shared_helper():
    from densekd.distiller import task_losses

    m = TinySegmenter()
    x, y = torch.rand(1, 3, 8, 8), torch.randint(0, 3, (1, 8, 8))
    assert set(task_losses(m, "m", lambda o, t: F.cross_entropy(o, t), (x,), y)) == {"loss_task_main"}
    with pytest.raises(TypeError, match=r"^m did not return a dict of scalar losses; pass task_loss="):
        task_losses(m, "m", None, (x,), None)


class _KeywordsOnly(TinySegmenter):
    """A model called with keyword arguments only (as Hugging Face models are), returning its own loss."""

    def forward(self, *, pixel_values, labels=None):
        out = super().forward(pixel_values)
        return out if labels is None else {"loss": F.cross_entropy(out, labels)}


def test_call_hook_runs_both_networks_and_the_task_loss():
    torch.manual_seed(0)
    s, t = _KeywordsOnly(width=4), _KeywordsOnly(width=8)
    x, y = torch.rand(2, 3, 16, 16), torch.randint(0, 3, (2, 16, 16))
    seen = []

    def call(model, args):
        seen.append((model, len(args)))
        return model(pixel_values=args[0], labels=args[1] if len(args) > 1 else None)

    d = Distiller(s, t, [Pair("classifier", loss="fitnet")], example_inputs=(x,), call=call)
    assert {(m, n) for m, n in seen} == {(s, 1), (t, 1)}  # the dry run: inputs only
    seen.clear()
    out = d(x, targets=y)
    assert seen == [(s, 2), (t, 1)]  # the student with its targets (its own loss), the teacher without
    assert torch.allclose(out["loss"], out["loss_task"] + out["loss_kd"]) and out["loss_task"].requires_grad
    assert out["loss_kd"] > 0 and set(out) >= {"loss", "kd/classifier/loss_feat"}
    with pytest.raises(TypeError):  # without the hook the Distiller calls model(*args), which this model refuses
        Distiller(s, t, [Pair("classifier", loss="fitnet")], example_inputs=(x,))


def test_kd_fp32_under_autocast():
    torch.manual_seed(0)
    s, t = TinySegmenter(width=4), TinySegmenter(width=8)
    x, y = torch.rand(2, 3, 16, 16), torch.randint(0, 3, (2, 16, 16))
    task = lambda out, tgt: F.cross_entropy(out.float(), tgt)  # noqa: E731
    seen = []

    def spy(module, args):
        seen.append((args[0].dtype, args[1].dtype, torch.is_autocast_enabled("cpu")))

    for fp32, expect in ((True, (torch.float32, torch.float32, False)), (False, (torch.bfloat16, torch.bfloat16, True))):
        d = Distiller(s, t, [Pair("classifier", loss="fitnet")], task_loss=task, example_inputs=(x,), kd_fp32=fp32)
        d.kd_losses["0|classifier"].register_forward_pre_hook(spy)
        seen.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = d(x, targets=y)
        assert seen == [expect]
        assert out["loss_kd"].dtype == torch.float32
        out["loss"].backward()
        assert s.classifier.weight.grad is not None
        s.zero_grad()


def test_kd_snapshot_runs_the_kd_modules_alone():
    """kd_loss on a snapshot is forward's loss_kd on the same batch; its gradient reaches the snapshot's student
    maps and the KD modules, never either network; the captures are left empty."""
    d, x = make([Pair("neck", kwargs={"num_masks": 2}), Pair("neck:p3", loss="fitnet", weight=2.0)])
    y = torch.zeros(2)
    with torch.no_grad():
        full = d(x, targets=y)["loss_kd"]
    snap = d.kd_snapshot(x, targets=y)
    assert sorted(snap.student) == ["neck", "neck:p3"] and snap.teacher_levels("neck")["neck:p3"].shape == (2, 8, 8, 8)
    assert d._s_cap.call_counts() == {} and d._t_cap.call_counts() == {}
    loss = d.kd_loss(snap)
    assert torch.allclose(loss, full)
    loss.backward()
    leaves = [v for lv in snap.student.values() for v in lv.values()]
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in leaves)
    assert all(p.grad is None for p in d.student.parameters()) and all(p.grad is None for p in d.teacher.parameters())
    assert all(p.grad is not None for p in d.kd_losses.parameters())
