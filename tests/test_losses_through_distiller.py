"""Every loss of this branch runs inside the Distiller on a tiny detector / segmenter (CPU, 16 px)."""
from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch

from densekd import Distiller, Pair
from tiny_models import TinyDetector, TinySegmenter


def _det(pair):
    torch.manual_seed(0)
    s, t = TinyDetector(width=4), TinyDetector(width=8)
    x = torch.rand(2, 3, 16, 16)
    return Distiller(s, t, [pair], example_inputs=(x,)), x


@pytest.mark.parametrize("pair", [
    Pair("neck", loss="samkd", aux={"logits": ("head", "head")}),
    Pair("neck", loss="dmkd"),
    Pair("neck", loss="fitnet"),
    Pair("neck", loss="mgd"),
    Pair("neck", loss="cwd"),
    Pair("neck", loss="pkd"),
    Pair("neck", loss="maskd", kwargs={"num_masks": 2}),
    Pair("neck", loss="acam_kd_teacher_fusion", kwargs={"num_masks": 2}),
], ids=lambda p: p.loss)
def test_detector_pairs(pair):
    d, x = _det(pair)
    with pytest.warns(RuntimeWarning, match="never fitted") if pair.loss == "maskd" else nullcontext():
        out = d(x, targets=torch.zeros(2))
    kd_terms = [k for k in out if k.startswith("kd/")]
    assert kd_terms and all(torch.isfinite(out[k]) for k in kd_terms)
    if pair.loss == "samkd":
        assert any(k.endswith("/loss_logit") for k in kd_terms)
    out["loss"].backward()
    assert any(p.grad is not None for p in d.student.parameters())


def test_segmenter_hinton_kd_with_ignore_masks():
    torch.manual_seed(0)
    s, t = TinySegmenter(width=4), TinySegmenter(width=8)
    x = torch.rand(2, 3, 16, 16)
    y = torch.randint(0, 3, (2, 16, 16))
    y[:, :8] = 255
    d = Distiller(s, t, [Pair("classifier", loss="hinton_kd")], task_loss=lambda o, tg: o.mean() * 0,
                  example_inputs=(x,))
    out = d(x, targets=y)
    assert torch.isfinite(out["loss_kd"]) and out["loss_kd"] > 0

