"""DeepLabV3 / PSPNet builders: output stride 8, named distillation points, checkpoint loading."""
import pytest
import torch
from torchvision.models.resnet import Bottleneck, ResNet
from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3
from torchvision.models.segmentation.fcn import FCNHead
from torchvision.models._utils import IntermediateLayerGetter

from densekd.capture import FeatureCapture
from densekd.errors import ConfigError
from densekd.models.segmentation import build_segmentation_model, load_segmentation_checkpoint

TINY = {
    ("deeplabv3", "resnet18"): dict(layers=[1, 1, 1, 1], decoder_channels=16),
    ("deeplabv3", "resnet50"): dict(layers=[1, 1, 1, 1], decoder_channels=16),
    ("deeplabv3", "resnet101"): dict(layers=[1, 1, 1, 1], decoder_channels=16),
    ("deeplabv3", "mobilenetv2"): dict(width_mult=0.25, decoder_channels=16),
    ("pspnet", "resnet18"): dict(layers=[1, 1, 1, 1], decoder_channels=16),
}


@pytest.mark.parametrize("arch,backbone", list(TINY))
def test_shapes_and_named_points(arch, backbone):
    torch.manual_seed(0)
    m = build_segmentation_model(arch, backbone, 5, **TINY[(arch, backbone)]).eval()
    cap = FeatureCapture(m, ["backbone", "decoder", "classifier"])
    with torch.no_grad():
        y = m(torch.randn(2, 3, 64, 48))
    assert isinstance(y, torch.Tensor) and y.shape == (2, 5, 64, 48)
    assert cap.levels("backbone")["backbone"].shape[-2:] == (8, 6)  # output stride 8
    assert cap.levels("decoder")["decoder"].shape == (2, 16, 8, 6)
    assert cap.levels("classifier")["classifier"].shape == (2, 5, 8, 6)
    assert m.num_classes == 5


def test_full_size_resnet18_is_dilated_not_strided():
    m = build_segmentation_model("deeplabv3", "resnet18", 3)
    convs = {n: c for n, c in m.backbone.named_modules() if isinstance(c, torch.nn.Conv2d)}
    assert convs["layer3.0.conv1"].stride == (1, 1) and convs["layer3.1.conv2"].dilation == (2, 2)
    assert convs["layer4.0.conv1"].dilation == (2, 2) and convs["layer4.1.conv2"].dilation == (4, 4)
    assert convs["layer4.0.downsample.0"].stride == (1, 1)
    assert m.decoder[0].convs[0][0].out_channels == 256  # ASPP default width
    with torch.no_grad():
        assert m.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 3, 32, 32)


def test_mobilenetv2_full_width_channels():
    m = build_segmentation_model("deeplabv3", "mobilenetv2", 19)
    assert m.backbone.out_channels == 320 and len(m.backbone) == 18
    with torch.no_grad():
        assert m.backbone.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 320, 4, 4)


def test_pspnet_default_widths():
    m = build_segmentation_model("pspnet", "resnet18", 19, layers=[1, 1, 1, 1])
    assert m.decoder[0].out_channels == 1024 and m.classifier.in_channels == 512


def test_loads_torchvision_deeplabv3_state_dict(tmp_path):
    torch.manual_seed(0)
    body = ResNet(Bottleneck, [1, 1, 1, 1], replace_stride_with_dilation=[False, True, True])
    tv = DeepLabV3(IntermediateLayerGetter(body, {"layer4": "out", "layer3": "aux"}), DeepLabHead(2048, 4), FCNHead(1024, 4)).eval()
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    m = build_segmentation_model("deeplabv3", "resnet50", 4, layers=[1, 1, 1, 1]).eval()
    load_segmentation_checkpoint(m, tmp_path / "tv.pth")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(tv(x)["out"], m(x), atol=1e-5)


def test_densekd_checkpoint_roundtrip_and_errors(tmp_path):
    kw = TINY[("pspnet", "resnet18")]
    a = build_segmentation_model("pspnet", "resnet18", 3, **kw)
    torch.save({"model": {"module." + k: v for k, v in a.state_dict().items()}, "iteration": 5}, tmp_path / "ck.pth")
    b = build_segmentation_model("pspnet", "resnet18", 3, **kw)
    load_segmentation_checkpoint(b, tmp_path / "ck.pth")
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    c = build_segmentation_model("pspnet", "resnet18", 5, **kw)
    with pytest.raises(ConfigError, match=r"ck\.pth does not fit pspnet/resnet18 with 5 classes \(\d+ shape mismatch"):
        load_segmentation_checkpoint(c, tmp_path / "ck.pth")
    d = build_segmentation_model("deeplabv3", "resnet18", 3, **kw)
    with pytest.raises(ConfigError, match="missing key"):
        load_segmentation_checkpoint(d, tmp_path / "ck.pth")
    with pytest.raises(ConfigError, match="checkpoint file not found: .*nope.pth"):
        load_segmentation_checkpoint(d, tmp_path / "nope.pth")
    torch.save({"iteration": 3}, tmp_path / "bad.pth")
    with pytest.raises(ConfigError, match=r"bad\.pth holds no state dict"):
        load_segmentation_checkpoint(d, tmp_path / "bad.pth")


def test_bad_names():
    with pytest.raises(ConfigError, match="unknown segmentation arch 'unet'"):
        build_segmentation_model("unet", "resnet18", 3)
    with pytest.raises(ConfigError, match="unknown segmentation backbone 'vgg16'"):
        build_segmentation_model("deeplabv3", "vgg16", 3)
    with pytest.raises(ConfigError, match="'width_mult' applies to mobilenetv2 only"):
        build_segmentation_model("deeplabv3", "resnet18", 3, width_mult=0.5)


def test_tiny_arch_checkpoint_mismatch_is_one_clear_line(tmp_path):
    a = build_segmentation_model("tiny", "resnet18", 5, width=4)
    torch.save(a.state_dict(), tmp_path / "tiny.pth")
    b = build_segmentation_model("tiny", "resnet18", 5, width=8)
    with pytest.raises(ConfigError, match=r"tiny\.pth does not fit TinySegNet with 5 classes \(\d+ shape mismatch"):
        load_segmentation_checkpoint(b, tmp_path / "tiny.pth")
    c = build_segmentation_model("tiny", "resnet18", 5, width=4)
    load_segmentation_checkpoint(c, tmp_path / "tiny.pth")
    assert all(torch.equal(c.state_dict()[k], v) for k, v in a.state_dict().items())
