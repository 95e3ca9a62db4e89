from __future__ import annotations

import math

import pytest
import torch

from _loss_helpers import check_grad_flow
from densekd.losses import build_loss


def test_cwd_hand_value():
    torch.manual_seed(0)
    s, t = torch.randn(1, 2, 2, 2), torch.randn(1, 2, 2, 2)
    tau = 4.0
    total = 0.0
    for c in range(2):
        zt = [float(v) / tau for v in t[0, c].flatten()]
        zs = [float(v) / tau for v in s[0, c].flatten()]
        lzt, lzs = math.log(sum(map(math.exp, zt))), math.log(sum(map(math.exp, zs)))
        total += sum(math.exp(a - lzt) * ((a - lzt) - (b - lzs)) for a, b in zip(zt, zs))
    exp = 3.0 * total * tau ** 2 / (1 * 2)
    mod = build_loss("cwd", student_channels=2, teacher_channels=2, align="identity")
    assert mod(s, t)["loss_cwd"].item() == pytest.approx(exp, rel=1e-5)
    assert mod(t.clone(), t)["loss_cwd"].abs().item() < 1e-6
    mod1 = build_loss("cwd", student_channels=2, teacher_channels=2, align="identity", tau=1.0, loss_weight=10.0)
    assert mod1(s, t)["loss_cwd"].item() > 0


def test_cwd_grads_and_errors():
    mod = build_loss("cwd", student_channels=3, teacher_channels=2)
    check_grad_flow(mod, torch.randn(2, 3, 4, 4), torch.randn(2, 2, 4, 4))
    with pytest.raises(ValueError, match="CWD was built for student C=3, teacher C=2"):
        mod(torch.randn(2, 2, 4, 4), torch.randn(2, 2, 4, 4))
    with pytest.raises(ValueError, match="differ in batch or spatial size"):
        mod(torch.randn(2, 3, 4, 4), torch.randn(2, 2, 4, 2))
    with pytest.raises(ValueError, match="cwd tau must be > 0"):
        build_loss("cwd", student_channels=3, teacher_channels=2, tau=0)
