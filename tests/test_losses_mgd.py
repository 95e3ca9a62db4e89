from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from _loss_helpers import check_grad_flow
from densekd.losses import build_loss


def test_mgd_hand_value_with_given_mask():
    torch.manual_seed(0)
    mod = build_loss("mgd", student_channels=2, teacher_channels=2, align="identity")
    s, t = torch.randn(1, 2, 2, 2), torch.randn(1, 2, 2, 2)
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    g0, g2 = mod.generation[0], mod.generation[2]
    with torch.no_grad():
        x = s.clone()
        x[:, :, 0, 1] = 0
        x[:, :, 1, 0] = 0
        new = F.conv2d(F.relu(F.conv2d(x, g0.weight, g0.bias, padding=1)), g2.weight, g2.bias, padding=1)
        exp = float(((new - t) ** 2).sum()) / 1
    assert mod.masked_generation_loss(s, t, mask).item() == pytest.approx(exp, rel=1e-5)


def test_mgd_mask_ratio_and_reproducible_on_device():
    mod = build_loss("mgd", student_channels=2, teacher_channels=2)
    feat = torch.zeros(4, 2, 64, 64)
    m = mod.random_mask(feat)
    assert m.shape == (4, 1, 64, 64) and m.device == feat.device
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    # fraction hidden ≈ λ = 0.65 (16384 draws: std ≈ 0.004)
    assert abs((1 - m.mean().item()) - 0.65) < 0.03
    g1 = torch.Generator(device=feat.device).manual_seed(7)
    g2 = torch.Generator(device=feat.device).manual_seed(7)
    s, t = torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 4)
    assert mod(s, t, generator=g1)["loss_mgd"].item() == mod(s, t, generator=g2)["loss_mgd"].item()
    assert build_loss("mgd", student_channels=2, teacher_channels=2, lambda_mgd=0.0).random_mask(feat).min() == 1


def test_mgd_not_zero_for_equal_features_and_grads():
    # The generator rebuilds F_T from the *masked* student feature through freshly initialised convs,
    # so the loss is not zero when F̂_S = F_T (MGD is a generation loss, not an imitation loss).
    torch.manual_seed(1)
    mod = build_loss("mgd", student_channels=2, teacher_channels=2, align="identity")
    t = torch.randn(1, 2, 4, 4)
    assert mod(t.clone(), t)["loss_mgd"].item() > 0
    check_grad_flow(build_loss("mgd", student_channels=3, teacher_channels=2, lambda_mgd=0.3),
                    torch.randn(2, 3, 4, 4), torch.randn(2, 2, 4, 4))


def test_mgd_errors():
    mod = build_loss("mgd", student_channels=3, teacher_channels=2)
    with pytest.raises(ValueError, match="MGD was built for student C=3, teacher C=2"):
        mod(torch.randn(2, 2, 4, 4), torch.randn(2, 2, 4, 4))
    with pytest.raises(ValueError, match="differ in batch or spatial size"):
        mod(torch.randn(2, 3, 4, 4), torch.randn(2, 2, 5, 4))
    with pytest.raises(ValueError, match=r"lambda_mgd \(masked ratio\) must be in \[0, 1\]"):
        build_loss("mgd", student_channels=3, teacher_channels=2, lambda_mgd=1.5)
