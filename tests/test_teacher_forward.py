"""The teacher's forward in bf16 autocast and channels_last (Distiller teacher_amp / teacher_channels_last, the
engine's distill.teacher_amp / distill.teacher_channels_last).

Tolerance. A change of how the teacher runs is made a default only when it moves the captured maps less than the
images' own 8-bit quantisation does (uniform ±0.5/255 per pixel: the precision the data have anyway). channels_last
in fp32 does (on the shipped demo teacher here; at the papers' sizes 2e-6 against 2.5e-4, benchmarks/real_size.py
teacher), so it is the default on CPU; bf16 does not (demo teacher 4.4e-3 against 2.7e-3; R101s at the papers'
sizes ~1e-2 against 2.5e-4), so it is opt-in: its own tests check what it promises, maps within 1e-2 and KD losses
within 1e-3 on the trained demo teacher (measured 4.4e-3 and ≤ 4.3e-4 over acam_kd, fitnet, cwd, mgd, pkd).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from densekd import distiller as distiller_mod
from densekd.distiller import Distiller, fast_bf16
from densekd.errors import ConfigError

DEMO = str(Path(__file__).resolve().parents[1] / "configs" / "compare" / "demo_methods.yaml")
MAP_TOL, LOSS_TOL = 1e-2, 1e-3


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from densekd.data.digits import make_digits_dataset

    root = tmp_path_factory.mktemp("digits")
    make_digits_dataset(str(root), n_train=16, n_val=4)
    return str(root)


def _demo(digits, tmp_path, method="acam_kd", *extra):
    from densekd.engine.trainer import Trainer

    ov = [f"data.root={digits}", "data.max_images=null", "train.batch_size=8", f"output_dir={tmp_path}",
          "train.resume=false", f"distill.method={method}", "distill.teacher_amp=none",
          "distill.teacher_channels_last=false", *extra]
    if method != "acam_kd":
        ov.append("distill.kwargs={}")
    tr = Trainer(DEMO, ov)
    batch = tr.task.to_device(next(iter(tr.loader)), tr.device)
    inputs, targets = tr.task.model_inputs(batch)
    return tr, inputs, targets


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("method", ["acam_kd", "fitnet"])
def test_bf16_teacher_maps_and_kd_loss_agree_with_fp32(digits, tmp_path, method):
    tr, inputs, targets = _demo(digits, tmp_path, method)
    d = tr.model
    try:
        spec = d.pairs[0].teacher_spec
        ref = d.teacher_levels(inputs, spec)
        d.teacher_amp = "bf16"
        maps = d.teacher_levels(inputs, spec)
        for k, v in maps.items():
            assert v.dtype == torch.float32 and v.is_contiguous()
            assert 0 < _rel(v, ref[k]) < MAP_TOL  # > 0: the forward did run in bf16
        losses = {}
        for amp in ("none", "bf16"):
            d.teacher_amp = amp
            with torch.no_grad():
                losses[amp] = float(d(*inputs, targets=targets)["loss_kd"])
        assert losses["bf16"] != losses["none"]
        assert abs(losses["bf16"] - losses["none"]) <= LOSS_TOL * abs(losses["none"])
    finally:
        tr.close()


def test_channels_last_teacher_is_within_the_data_quantisation(digits, tmp_path):
    tr, inputs, targets = _demo(digits, tmp_path)
    tr2, _, _ = _demo(digits, tmp_path / "cl", "acam_kd", "distill.teacher_channels_last=true")
    try:
        assert tr.model.teacher_channels_last is False and tr2.model.teacher_channels_last is True
        w = [p for p in tr2.model.teacher.parameters() if p.dim() == 4]
        assert w and all(p.is_contiguous(memory_format=torch.channels_last) for p in w)
        assert any(not p.is_contiguous() for p in w)  # (a 1×1 kernel is contiguous in both layouts)
        spec = tr.model.pairs[0].teacher_spec
        ref, maps = tr.model.teacher_levels(inputs, spec), tr2.model.teacher_levels(inputs, spec)
        # the yardstick: the same fp32 maps of the images with their 8-bit quantisation redrawn
        std = torch.tensor(tr.cfg.data.std).view(1, 3, 1, 1)
        noisy = inputs[0] + (torch.rand(inputs[0].shape, generator=torch.Generator().manual_seed(0)) - 0.5) / 255 / std
        quant = tr.model.teacher_levels((noisy,), spec)
        for k, v in maps.items():
            assert v.is_contiguous() and v.dtype == torch.float32
            assert _rel(v, ref[k]) < 1e-2 * _rel(quant[k], ref[k])  # far inside it (fp32 rounding)
        with torch.no_grad():  # the losses read NCHW views of the maps: the step runs and gives the same loss
            a = tr.model(*inputs, targets=targets)["loss_kd"]
            b = tr2.model(*inputs, targets=targets)["loss_kd"]
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    finally:
        tr.close()
        tr2.close()


def _tiny_distiller(example: bool = True, **kw) -> Distiller:
    student = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1))
    teacher = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1))
    return Distiller(student, teacher, [{"student": "0", "loss": "fitnet"}], task_loss=lambda out, t: out.mean(),
                     example_inputs=(torch.randn(2, 3, 8, 8),) if example else None, **kw)


def test_teacher_channels_last_auto(monkeypatch):
    assert _tiny_distiller().teacher_channels_last is False  # the default: off (exact only up to fp32 rounding)
    d = _tiny_distiller(teacher_channels_last="auto")
    assert d.teacher_channels_last is True  # on CPU (measured faster there)
    assert d.teacher[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert _tiny_distiller(teacher_channels_last=False).teacher[0].weight.is_contiguous()
    # elsewhere only for a bf16 teacher (an fp32 GPU teacher keeps NCHW: not measured)
    monkeypatch.setattr(Distiller, "_teacher_device", lambda self: torch.device("cuda"))
    monkeypatch.setattr(distiller_mod, "fast_bf16", lambda device: True)
    assert _tiny_distiller(example=False, teacher_channels_last="auto").teacher_channels_last is False
    assert _tiny_distiller(example=False, teacher_amp="bf16", teacher_channels_last="auto").teacher_channels_last
    assert _tiny_distiller(example=False, teacher_amp="auto", teacher_channels_last="auto").teacher_channels_last


@pytest.mark.parametrize("fast", [True, False])
def test_teacher_amp_auto_follows_the_device(monkeypatch, fast):
    monkeypatch.setattr(distiller_mod, "fast_bf16", lambda device: fast)
    d = _tiny_distiller(teacher_amp="auto")
    assert d._teacher_dtype() == (torch.bfloat16 if fast else None)
    maps = d.teacher_levels((torch.randn(2, 3, 8, 8),), "0")
    assert maps["0"].dtype == torch.float32  # handed over in fp32 either way
    assert _tiny_distiller(teacher_amp="none")._teacher_dtype() is None  # "none" whatever the device
    assert _tiny_distiller()._teacher_dtype() is None  # the Distiller's own default: as the step
    assert _tiny_distiller(teacher_amp="bf16")._teacher_dtype() == torch.bfloat16


def test_fast_bf16_by_device(monkeypatch):
    assert fast_bf16("meta") is False
    assert isinstance(fast_bf16("cpu"), bool)
    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        monkeypatch.setattr(torch.cpu, name, lambda: False, raising=False)
    assert fast_bf16("cpu") is False
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert fast_bf16("cpu") is True


def test_bad_teacher_amp_is_one_line(make_config, teacher_ckpt, tmp_path):
    with pytest.raises(ConfigError, match=r"^teacher_amp: expected one of auto, bf16, none, got 'fp16'$"):
        _tiny_distiller(teacher_amp="fp16")
    from densekd.config import load_config

    cfg = make_config(tmp_path, teacher=teacher_ckpt)
    with pytest.raises(ConfigError, match=r"distill.teacher_amp: expected one of 'auto', 'bf16', 'none', got 'fp16'"):
        load_config(cfg, ["distill.teacher_amp=fp16"])
    assert load_config(cfg).distill.teacher_amp == "none" and load_config(cfg).distill.teacher_channels_last is False
    assert load_config(cfg, ["distill.teacher_channels_last=auto"]).distill.teacher_channels_last == "auto"
    with pytest.raises(ConfigError, match=r"^teacher_channels_last: expected true, false or 'auto', got 'nhwc'$"):
        _tiny_distiller(teacher_channels_last="nhwc")
    with pytest.raises(ConfigError, match=r"^distill.teacher_channels_last: expected bool or one of 'auto', got 'nhwc'$"):
        load_config(cfg, ["distill.teacher_channels_last=nhwc"])
