"""Detector builders, canonical distillation points, weight loading, inheriting."""
from __future__ import annotations

import urllib.error

import pytest
import torch

from densekd import Distiller, Pair
from densekd.errors import ConfigError
from densekd.models.detection import (build_detector, distill_levels, distill_specs, gn_groups, inherit_neck_head,
                                      load_detector_checkpoint)


def _small(arch, backbone="resnet18", **kw):
    return build_detector(arch, backbone, num_classes=2, min_size=64, max_size=64, trainable_layers=1, **kw)


@pytest.mark.parametrize("arch, backbone, levels", [
    ("retinanet", "resnet18", ("0", "1", "2", "p6", "p7")),
    ("fcos", "resnet34", ("0", "1", "2", "p6", "p7")),
    ("faster_rcnn", "resnet18", ("0", "1", "2", "3", "pool")),
    ("faster_rcnn", "mobilenet_v3_large", ("0", "1", "pool")),
])
def test_builders_expose_the_fpn_levels_the_head_uses(arch, backbone, levels):
    m = _small(arch, backbone).eval()
    assert distill_levels(arch, backbone) == levels
    assert distill_specs(arch, backbone)[0] == "backbone:0"
    with torch.no_grad():
        feats = m.backbone(torch.rand(1, 3, 64, 64))
    assert tuple(feats) == levels
    # K + 1 outputs: labels 1..K, 0 = background
    if arch == "faster_rcnn":
        assert m.roi_heads.box_predictor.cls_score.out_features == 3
    else:
        assert m.head.classification_head.num_classes == 3


def test_trainable_layers_freeze_the_backbone_stem():
    m = _small("retinanet")
    trainable = {n.split(".")[0] for n, p in m.backbone.body.named_parameters() if p.requires_grad}
    assert trainable == {"layer4"}
    assert all(p.requires_grad for p in m.backbone.fpn.parameters())


def test_distiller_backbone_spec_distills_every_level():
    s, t = _small("retinanet"), _small("retinanet")
    images = [torch.rand(3, 64, 64)]
    d = Distiller(s, t, [Pair("backbone", loss="test_mse")], example_inputs=(images,))
    assert sorted(d.kd_losses) == sorted(f"0|backbone:{k}" for k in distill_levels("retinanet", "resnet18"))
    out = d(images, targets=[{"boxes": torch.tensor([[4.0, 4, 30, 30]]), "labels": torch.tensor([1])}])
    assert torch.isfinite(out["loss"]) and out["loss_kd"] > 0


def test_checkpoint_formats_load_and_mismatch_is_one_line(tmp_path):
    ref = _small("fcos")
    sd = ref.state_dict()
    for i, obj in enumerate([sd, {"student": sd, "iteration": 3}, {"model": sd},
                             {f"module.{k}": v for k, v in sd.items()}]):
        p = tmp_path / f"w{i}.pth"
        torch.save(obj, p)
        m = _small("fcos")
        load_detector_checkpoint(m, str(p))
        assert all(torch.equal(m.state_dict()[k], v) for k, v in sd.items())
    with pytest.raises(ConfigError, match=r"model.teacher.checkpoint: .* does not fit the configured FCOS \(.*shape mismatch"):
        build_detector("fcos", "resnet18", num_classes=5, min_size=64, max_size=64,
                       checkpoint=str(tmp_path / "w0.pth"), where="model.teacher")
    with pytest.raises(ConfigError, match=r"^model.teacher.checkpoint: no such file '.*nope.pth'$"):
        _small("fcos", checkpoint=str(tmp_path / "nope.pth"), where="model.teacher")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(ConfigError, match="cannot read .* as a PyTorch checkpoint"):
        _small("fcos", checkpoint=str(tmp_path / "junk.pth"))


def test_backbone_checkpoint_loads_imagenet_style_weights(tmp_path):
    from torchvision.models import resnet18

    torch.manual_seed(3)
    net = resnet18(weights=None)
    p = tmp_path / "r18.pth"
    torch.save(net.state_dict(), p)
    m = _small("retinanet", backbone_checkpoint=str(p))
    assert torch.equal(m.backbone.body.layer2[0].conv1.weight, net.layer2[0].conv1.weight)
    assert not m.backbone.body.layer2[0].conv1.weight.requires_grad  # frozen after loading


def test_offline_hub_weights_name_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty cache → torchvision would download

    def offline(*a, **k):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "urlopen", offline)
    with pytest.raises(ConfigError) as e:
        build_detector("retinanet", "resnet50", num_classes=90, weights="RetinaNet_ResNet50_FPN_Weights.COCO_V1",
                       where="model.teacher")
    msg = str(e.value)
    assert msg.startswith("model.teacher.weights: cannot get 'RetinaNet_ResNet50_FPN_Weights.COCO_V1'")
    assert "offline?" in msg and "retinanet_resnet50_fpn_coco" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match="'Nope.X' is not a torchvision weights name"):
        _small("retinanet", weights="Nope.X")


def test_bad_builder_arguments():
    with pytest.raises(ConfigError, match="model.student.backbone: expected one of .*got 'resnet152'"):
        build_detector("retinanet", "resnet152", where="model.student")
    with pytest.raises(ConfigError, match=r"^model.head_convs: Faster R-CNN has no convolution tower .*got 2$"):
        build_detector("faster_rcnn", "resnet18", head_convs=2)
    with pytest.raises(ConfigError, match=r"^model.fpn_channels: expected a positive int, got 0$"):
        build_detector("fcos", "resnet18", fpn_channels=0)
    with pytest.raises(ConfigError, match=r"^model.min_size/max_size: expected 0 < min_size <= max_size, or both "
                                          r"null \(images keep their own size\), got None/64$"):
        build_detector("fcos", "resnet18", min_size=None, max_size=64)
    with pytest.raises(ConfigError, match="trainable_layers: expected 0..5, got 7"):
        build_detector("fcos", "resnet18", trainable_layers=7)


def test_inherit_copies_matching_neck_and_head_only():
    torch.manual_seed(0)
    teacher = build_detector("retinanet", "resnet34", num_classes=2, min_size=64, max_size=64)
    student = _small("retinanet")  # resnet18: same C3–C5 widths as resnet34, so every tensor matches
    body_before = {k: v.clone() for k, v in student.backbone.body.state_dict().items()}
    copied, total = inherit_neck_head(student, teacher)
    assert copied == total > 0
    assert torch.equal(student.head.classification_head.cls_logits.weight, teacher.head.classification_head.cls_logits.weight)
    assert torch.equal(student.backbone.fpn.layer_blocks[0][0].weight, teacher.backbone.fpn.layer_blocks[0][0].weight)
    assert all(torch.equal(v, student.backbone.body.state_dict()[k]) for k, v in body_before.items())
    big = build_detector("retinanet", "resnet50", num_classes=2, min_size=64, max_size=64)
    copied, total = inherit_neck_head(_small("retinanet"), big)  # R50 FPN inputs are 4× wider
    assert 0 < copied < total


# ----------------------------------------------------------------------------------- sizes, presets
def _cpu(arch, backbone="resnet18", **kw):
    kw = {"num_classes": 3, "min_size": None, "max_size": None, "norm": "bn", "trainable_layers": 5,
          "fpn_channels": 64, **kw}
    return build_detector(arch, backbone, **kw)


@pytest.mark.parametrize("arch", ["retinanet", "fcos"])
def test_fpn_and_head_width_and_depth(arch):
    m = _cpu(arch, fpn_channels=48, head_convs=2).eval()  # 48: GroupNorm falls back to 16 groups
    with torch.no_grad():
        feats = m.backbone(torch.rand(1, 3, 64, 64))
        out = m([torch.rand(3, 64, 64)])
    assert {v.shape[1] for v in feats.values()} == {48}
    for branch in (m.head.classification_head, m.head.regression_head):
        assert len(branch.conv) == 2 if arch == "retinanet" else sum(isinstance(x, torch.nn.Conv2d) for x in branch.conv) == 2
    if arch == "fcos":
        gns = [x for x in m.head.classification_head.conv if isinstance(x, torch.nn.GroupNorm)]
        assert gns and all(g.num_groups == 16 and g.num_channels == 48 for g in gns)
        assert _cpu(arch).head.classification_head.conv[1].num_groups == 32  # a multiple of 32 keeps torchvision's 32
        assert [gn_groups(c) for c in (256, 64, 32, 16, 8, 2, 1)] == [32, 32, 16, 8, 4, 1, 1]
    assert set(out[0]) == {"boxes", "scores", "labels"}
    assert all(p.requires_grad for p in m.parameters())  # from scratch: every layer trains
    assert any(isinstance(x, torch.nn.BatchNorm2d) for x in m.backbone.body.modules())


@pytest.mark.parametrize("backbone", ["mobilenet_v3_large", "mobilenet_v3_small"])
@pytest.mark.parametrize("arch", ["retinanet", "fcos"])
def test_mobilenet_backbones_give_p3_to_p7(arch, backbone):
    m = _cpu(arch, backbone, trainable_layers=6).eval()
    with torch.no_grad():
        feats = m.backbone(torch.rand(1, 3, 128, 128))
    assert tuple(feats) == distill_levels(arch, backbone) == ("0", "1", "2", "p6", "p7")
    assert [v.shape[-1] for v in feats.values()] == [16, 8, 4, 2, 1]  # strides 8, 16, 32, 64, 128
    frozen = _cpu(arch, backbone, trainable_layers=1)
    assert not frozen.backbone.body["0"][0].weight.requires_grad and frozen.backbone.fpn.inner_blocks[0][0].weight.requires_grad


def test_images_keep_their_own_size():
    m = _cpu("fcos", "mobilenet_v3_small", trainable_layers=6).eval()
    assert "keep their own size" in repr(m.transform)
    images = [torch.rand(3, 40, 72), torch.rand(3, 64, 50)]
    targets = [{"boxes": torch.tensor([[2.0, 3, 30, 20]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[5.0, 5, 45, 60]]), "labels": torch.tensor([2])}]
    image_list, out_targets = m.transform(images, targets)
    assert image_list.image_sizes == [(40, 72), (64, 50)]
    assert tuple(image_list.tensors.shape[-2:]) == (64, 96)  # padded to a multiple of 32, not resized
    assert torch.equal(out_targets[0]["boxes"], targets[0]["boxes"])
    with torch.no_grad():
        dets = m(images)
    assert all(d["boxes"].numel() == 0 or d["boxes"][:, 2].max() <= im.shape[-1] for d, im in zip(dets, images))
    resized = build_detector("fcos", "mobilenet_v3_small", num_classes=3, min_size=128, max_size=128).eval()
    assert resized.transform(images)[0].image_sizes[0] == (71, 128)  # the usual path still resizes


def test_distiller_finds_boxes_through_the_keep_size_transform():
    s, t = (_cpu("fcos", "mobilenet_v3_small", trainable_layers=6) for _ in range(2))
    images = [torch.rand(3, 64, 64)]
    d = Distiller(s, t, [Pair("backbone", loss="fgd")], example_inputs=(images,))
    assert d._context_module == "transform"
    out = d(images, targets=[{"boxes": torch.tensor([[4.0, 4, 30, 30]]), "labels": torch.tensor([1])}])
    assert torch.isfinite(out["loss"]) and out["kd/backbone:0/loss_fg"] > 0  # boxes reached FGD


def test_cpu_preset_fills_only_what_the_config_leaves_out():
    from densekd.config import load_config, to_dict

    base = {"task": "detection", "data": {}}
    cfg = load_config({**base, "model": {"preset": "cpu", "num_classes": 10, "student": {"arch": "fcos"},
                                         "teacher": {"arch": "fcos", "backbone": "resnet34", "fpn_channels": 128}}})
    m, s, t = cfg.model, cfg.model.student, cfg.model.teacher
    assert (m.min_size, m.max_size, m.preset) == (None, None, "cpu")
    assert (s.backbone, s.norm, s.trainable_layers, s.fpn_channels, s.head_convs) == ("resnet18", "bn", 5, 64, 4)
    assert (t.backbone, t.norm, t.fpn_channels) == ("resnet34", "bn", 128)  # the config's own keys win
    assert load_config(to_dict(cfg)) == cfg  # config.yaml written by a run loads back to the same config
    over = load_config({**base, "model": {"num_classes": 2, "student": {"arch": "fcos"}}},
                       ["model.preset=cpu", "model.min_size=32", "model.max_size=64"])
    assert (over.model.min_size, over.model.max_size, over.model.student.fpn_channels) == (32, 64, 64)
    plain = load_config({**base, "model": {"num_classes": 2}})
    assert (plain.model.min_size, plain.model.student.fpn_channels, plain.model.student.norm) == (800, 256, "frozen_bn")
    with pytest.raises(ConfigError, match=r"^model.preset: expected one of cpu or null, got 'gpu'$"):
        load_config({**base, "model": {"preset": "gpu"}})


def test_mobilenet_width_mult_and_a_classification_pretrained_backbone(tmp_path):
    """A torchvision MobileNetV3 classifier's weights (its classifier head ignored) load into the detector's
    backbone at the same width; the student of the detection demo is a ×0.5 MobileNetV3-Small."""
    from torchvision.models import mobilenet_v3_small

    torch.manual_seed(0)
    net = mobilenet_v3_small(weights=None, num_classes=10, width_mult=0.5, norm_layer=torch.nn.BatchNorm2d)
    p = tmp_path / "mbv3s_05.pth"
    torch.save(net.state_dict(), p)
    m = build_detector("fcos", "mobilenet_v3_small", num_classes=10, min_size=None, max_size=None, norm="bn",
                       trainable_layers=6, fpn_channels=32, width_mult=0.5, backbone_checkpoint=str(p))
    assert torch.equal(m.backbone.body["3"].block[0][0].weight, net.features[3].block[0][0].weight)
    full = build_detector("fcos", "mobilenet_v3_small", num_classes=10, min_size=None, max_size=None, norm="bn",
                          trainable_layers=6, fpn_channels=32)
    assert sum(q.numel() for q in m.backbone.body.parameters()) < 0.4 * sum(q.numel() for q in full.backbone.body.parameters())
    with torch.no_grad():
        feats = m.eval().backbone(torch.rand(1, 3, 64, 64))
    assert [v.shape[-1] for v in feats.values()] == [8, 4, 2, 1, 1]


def test_a_backbone_of_another_width_is_one_line_naming_the_key_and_both_shapes(tmp_path):
    from torchvision.models import mobilenet_v3_small

    p = tmp_path / "mbv3s_10.pth"
    torch.save(mobilenet_v3_small(weights=None).state_dict(), p)
    with pytest.raises(ConfigError) as e:
        build_detector("fcos", "mobilenet_v3_small", num_classes=10, width_mult=0.5, backbone_checkpoint=str(p),
                       where="model.student")
    msg = str(e.value)
    assert msg.startswith(f"model.student.backbone_checkpoint: '{p}' is a backbone of another architecture: "
                          "features.0.0.weight is (16, 3, 3, 3) in the file but (8, 3, 3, 3) in the configured "
                          "MobileNetV3 (")
    assert "check backbone and width_mult" in msg and "\n" not in msg


def test_width_mult_is_checked():
    with pytest.raises(ConfigError, match=r"^model.width_mult: only MobileNetV3 backbones take a width multiplier "):
        build_detector("fcos", "resnet18", width_mult=0.5)
    with pytest.raises(ConfigError, match=r"^model.student.width_mult: expected a positive number, got 0$"):
        build_detector("fcos", "mobilenet_v3_small", width_mult=0, where="model.student")
