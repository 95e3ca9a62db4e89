"""Shared checks for the loss tests (not a test module)."""
from __future__ import annotations

import torch


def check_grad_flow(loss_mod, s, t, context=None, own_params=True):
    """Gradients reach the student input and (optionally) the loss's own parameters, never the teacher."""
    s = s.clone().requires_grad_(True)
    t = t.clone()
    t0 = t.clone()
    assert not t.requires_grad
    out = loss_mod(s, t, context)
    total = sum(out.values())
    total.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0, "no gradient reached the student input"
    assert t.grad is None, "the teacher tensor received a gradient"
    assert torch.equal(t, t0), "the teacher tensor was modified"
    if own_params:
        params = [p for p in loss_mod.parameters() if p.requires_grad]
        assert params, "loss has no trainable parameters"
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params), "no gradient on loss params"
    return out
