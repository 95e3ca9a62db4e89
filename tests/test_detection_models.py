"""Detector builders, canonical distillation points, weight loading, inheriting."""
from __future__ import annotations

import urllib.error

import pytest
import torch

from densekd import Distiller, Pair
from densekd.errors import ConfigError
from densekd.models.detection import (build_detector, distill_levels, distill_specs, inherit_neck_head,
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
    with pytest.raises(ConfigError, match="mobilenet_v3_large is only available with arch faster_rcnn"):
        build_detector("fcos", "mobilenet_v3_large")
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
