from __future__ import annotations

import pytest
import torch

from densekd.losses import build_loss
from densekd.losses.acam import ACAMKD


@pytest.mark.parametrize("name,key,value,terms", [
    ("acam_kd_student_query", "query", "student", {"loss_channel", "loss_spatial", "loss_div"}),
    ("acam_kd_spatial", "masks", "spatial", {"loss_spatial", "loss_div"}),
    ("acam_kd_channel", "masks", "channel", {"loss_channel", "loss_div"}),
    ("acam_kd_teacher_fusion", "fusion", "teacher", {"loss_channel", "loss_spatial", "loss_div"}),
])
def test_variant_equals_acam_with_switch(name, key, value, terms):
    torch.manual_seed(0)
    v = build_loss(name, student_channels=3, teacher_channels=4, num_masks=2)
    torch.manual_seed(0)
    ref = ACAMKD(3, 4, num_masks=2, **{key: value})
    assert isinstance(v, ACAMKD) and v.fixed_switches == {key: value}
    v.load_state_dict(ref.state_dict())  # same modules: the variant builds exactly what the switch builds
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 4, 4, 4)
    out, exp = v(s, t), ref(s, t)
    assert set(out) == terms == set(exp)
    for k in terms:
        assert torch.allclose(out[k], exp[k])
    if key == "fusion":
        assert v.fusion is None
    if key == "query":
        assert v.fusion.query == "student"


def test_variant_rejects_its_fixed_switch():
    with pytest.raises(TypeError, match=r"acam_kd_spatial fixes masks='spatial'; use 'acam_kd'"):
        build_loss("acam_kd_spatial", student_channels=3, teacher_channels=4, masks="both")
