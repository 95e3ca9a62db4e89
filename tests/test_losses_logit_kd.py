from __future__ import annotations

import math

import pytest
import torch

from _loss_helpers import check_grad_flow
from densekd.losses import DistillContext, build_loss


def _kl(pt_logits, ps_logits, T):
    zt = [v / T for v in pt_logits]
    zs = [v / T for v in ps_logits]
    lt = [v - math.log(sum(math.exp(u) for u in zt)) for v in zt]
    ls = [v - math.log(sum(math.exp(u) for u in zs)) for v in zs]
    return sum(math.exp(a) * (a - b) for a, b in zip(lt, ls))


def test_pixelwise_hand_value_with_ignore():
    torch.manual_seed(0)
    s = torch.randn(1, 3, 2, 2)
    t = torch.randn(1, 3, 2, 2)
    T = 2.0
    mod = build_loss("hinton_kd", student_channels=3, teacher_channels=3, temperature=T)
    per_pixel = {(y, x): _kl(t[0, :, y, x].tolist(), s[0, :, y, x].tolist(), T) for y in range(2) for x in range(2)}
    exp_all = sum(per_pixel.values()) / 4 * T * T
    assert mod(s, t)["loss_kd"].item() == pytest.approx(exp_all, rel=1e-5)
    # labels at 4×4 input resolution; nearest resize to 2×2 takes rows/cols 0 and 2
    masks = torch.zeros(1, 4, 4, dtype=torch.long)
    masks[0, 0, 2] = 255  # → pixel (0, 1) ignored
    masks[0, 2, 0] = 255  # → pixel (1, 0) ignored
    ctx = DistillContext(masks=masks)
    exp_valid = (per_pixel[(0, 0)] + per_pixel[(1, 1)]) / 2 * T * T
    assert mod(s, t, ctx)["loss_kd"].item() == pytest.approx(exp_valid, rel=1e-5)
    assert mod(t.clone(), t)["loss_kd"].abs().item() < 1e-7


def test_classification_logits_and_grads():
    mod = build_loss("hinton_kd", student_channels=4, teacher_channels=4, temperature=4.0)
    s, t = torch.randn(3, 4), torch.randn(3, 4)
    exp = sum(_kl(t[i].tolist(), s[i].tolist(), 4.0) for i in range(3)) / 3 * 16
    assert mod(s, t)["loss_kd"].item() == pytest.approx(exp, rel=1e-5)
    check_grad_flow(mod, torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3), own_params=False)


def test_errors():
    mod = build_loss("hinton_kd", student_channels=3, teacher_channels=3)
    with pytest.raises(ValueError, match="HintonKD was built for student C=3, teacher C=3"):
        mod(torch.randn(1, 4, 2, 2), torch.randn(1, 3, 2, 2))
    with pytest.raises(ValueError, match="differ in batch or spatial size"):
        mod(torch.randn(1, 3, 2, 3), torch.randn(1, 3, 2, 2))
    with pytest.raises(ValueError, match=r"context.masks must be \[B, H, W\] with B=1"):
        mod(torch.randn(1, 3, 2, 2), torch.randn(1, 3, 2, 2), DistillContext(masks=torch.zeros(2, 4, 4)))
    with pytest.raises(ValueError, match="align='identity' needs equal channels"):
        build_loss("hinton_kd", student_channels=3, teacher_channels=4)
