import pytest
import torch

import densekd
from densekd import DistillLoss, available_losses, build_loss, register_loss
from densekd.errors import UnknownNameError
from densekd.losses.registry import get_loss_class


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


@pytest.mark.parametrize("name", sorted(n for n in available_losses() if get_loss_class(n).__module__.startswith("densekd.")))
@pytest.mark.parametrize("as_kwarg", [False, True])
def test_every_loss_takes_a_teacher_map_made_under_inference_mode(name, as_kwarg):
    """A frozen teacher run under torch.inference_mode gives inference tensors, which autograd cannot save;
    every loss (through DistillLoss's pre-hook) takes them, positionally or by keyword."""
    from densekd import DistillContext

    torch.manual_seed(0)
    mod = build_loss(name, student_channels=4, teacher_channels=4)
    for flag in ("tokens_fitted", "prompts_fitted"):  # MasKD, FreeKD: skip the stage-1 warning; the masks
        if getattr(mod, "needs_preparation", False) and hasattr(mod, flag):  # need no fitting here
            getattr(mod, flag).fill_(True)
    with torch.inference_mode():
        ft = torch.randn(2, 4, 6, 6)
    fs = torch.randn(2, 4, 6, 6, requires_grad=True)
    ctx = DistillContext(boxes=torch.tensor([[[0.0, 0.0, 3.0, 3.0]]] * 2), box_valid=torch.ones(2, 1, dtype=torch.bool),
                         labels=torch.zeros(2, 1, dtype=torch.long), image_size=(6, 6),
                         aux={"logits": (torch.randn(2, 3, 6, 6, requires_grad=True), torch.randn(2, 3, 6, 6))})
    out = mod(fs, teacher_feat=ft, context=ctx) if as_kwarg else mod(fs, ft, ctx)
    sum(out.values()).backward()
    assert fs.grad is not None and torch.isfinite(fs.grad).all()
