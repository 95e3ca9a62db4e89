from __future__ import annotations

import pytest
import torch

from _loss_helpers import check_grad_flow
from densekd.losses import build_loss


def test_fitnet_hand_value():
    mod = build_loss("fitnet", student_channels=2, teacher_channels=2, align="identity")
    s = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 1.0]]]])
    t = torch.zeros(1, 2, 2, 2)
    # (1+4+9+16+1)/8
    assert mod(s, t)["loss_feat"].item() == pytest.approx(31 / 8)
    assert mod(t.clone(), t)["loss_feat"].item() == 0.0
    mod2 = build_loss("fitnet", student_channels=2, teacher_channels=2, align="identity", loss_weight=2.0)
    assert mod2(s, t)["loss_feat"].item() == pytest.approx(62 / 8)


def test_fitnet_grads_and_errors():
    mod = build_loss("fitnet", student_channels=3, teacher_channels=2)
    check_grad_flow(mod, torch.randn(2, 3, 4, 4), torch.randn(2, 2, 4, 4))
    with pytest.raises(ValueError, match="FitNet was built for student C=3, teacher C=2"):
        mod(torch.randn(2, 4, 4, 4), torch.randn(2, 2, 4, 4))
    with pytest.raises(ValueError, match="differ in batch or spatial size"):
        mod(torch.randn(2, 3, 4, 4), torch.randn(2, 2, 3, 4))
