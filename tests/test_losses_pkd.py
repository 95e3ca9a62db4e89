from __future__ import annotations

import math

import pytest
import torch

from _loss_helpers import check_grad_flow
from densekd.losses import build_loss


def _std_loops(x):
    n, c, h, w = x.shape
    out = torch.empty_like(x)
    for k in range(c):
        vals = [float(x[i, k, y, z]) for i in range(n) for y in range(h) for z in range(w)]
        m = sum(vals) / len(vals)
        sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))
        for i in range(n):
            for y in range(h):
                for z in range(w):
                    out[i, k, y, z] = (float(x[i, k, y, z]) - m) / (sd + 1e-6)
    return out


def test_pkd_hand_value():
    torch.manual_seed(0)
    s, t = torch.randn(1, 2, 2, 2), torch.randn(1, 2, 2, 2)
    ns, nt = _std_loops(s), _std_loops(t)
    exp = 6.0 * float(((ns - nt) ** 2).sum()) / 8 / 2
    mod = build_loss("pkd", student_channels=2, teacher_channels=2, align="identity")
    assert mod(s, t)["loss_pkd"].item() == pytest.approx(exp, rel=1e-5)
    assert mod(t.clone(), t)["loss_pkd"].item() < 1e-10
    # invariant to a positive per-channel affine change of the student (Pearson correlation)
    s2 = t * torch.tensor([2.0, 0.5]).view(1, 2, 1, 1) + 3.0
    assert mod(s2, t)["loss_pkd"].item() < 1e-8


def test_pkd_grads_and_errors():
    mod = build_loss("pkd", student_channels=3, teacher_channels=2)
    check_grad_flow(mod, torch.randn(2, 3, 4, 4), torch.randn(2, 2, 4, 4))
    with pytest.raises(ValueError, match="PKD was built for student C=3, teacher C=2"):
        mod(torch.randn(2, 4, 4, 4), torch.randn(2, 2, 4, 4))
    with pytest.raises(ValueError, match="differ in batch or spatial size"):
        mod(torch.randn(1, 3, 4, 4), torch.randn(2, 2, 4, 4))
    with pytest.raises(ValueError, match=r"N·H·W ≥ 2"):
        mod(torch.randn(1, 3, 1, 1), torch.randn(1, 2, 1, 1))
