import pytest
import torch

import densekd
from densekd import DistillLoss, available_losses, build_loss, register_loss
from densekd.errors import UnknownNameError


def test_acam_registered_and_built():
    assert "acam_kd" in available_losses()
    loss = build_loss("acam_kd", student_channels=4, teacher_channels=8)
    assert isinstance(loss, torch.nn.Module) and isinstance(loss, DistillLoss)


def test_unknown_loss_names_closest():
    with pytest.raises(UnknownNameError) as e:
        build_loss("acam-kd", student_channels=4, teacher_channels=4)
    assert str(e.value).startswith("unknown loss 'acam-kd'; did you mean acam_kd")  # more names may follow


def test_bad_kwarg_names_the_loss():
    with pytest.raises(TypeError, match=r"build_loss\('acam_kd'\).*num_maskz"):
        build_loss("acam_kd", student_channels=4, teacher_channels=4, num_maskz=3)


def test_duplicate_registration_rejected():
    @register_loss("_dup_test")
    class A(DistillLoss):
        pass

    with pytest.raises(ValueError, match="already registered"):
        @register_loss("_dup_test")
        class B(DistillLoss):
            pass


def test_public_api():
    for name in ("Distiller", "Pair", "build_loss", "DistillContext", "FeatureCapture"):
        assert hasattr(densekd, name)
