import pytest
import torch

from densekd.capture import FeatureCapture, parse_spec, resolve_module
from densekd.errors import UnknownNameError
from tiny_models import TinyDetector


def run(specs, x=None):
    m = TinyDetector()
    cap = FeatureCapture(m, specs)
    m(x if x is not None else torch.rand(2, 3, 16, 16))
    return m, cap


def test_dotted_name_and_dict_keys():
    _, cap = run(["body.0", "neck:p4", "neck"])
    assert list(cap.levels("body.0")) == ["body.0"]
    assert cap.levels("body.0")["body.0"].shape == (2, 8, 8, 8)
    assert list(cap.levels("neck:p4")) == ["neck:p4"]
    assert cap.levels("neck:p4")["neck:p4"].shape == (2, 8, 4, 4)
    assert list(cap.levels("neck")) == ["neck:p3", "neck:p4"]


def test_module_called_several_times_returns_every_call():
    _, cap = run(["head", "head[1]", "head[-1]"])
    lv = cap.levels("head")
    assert list(lv) == ["head[0]", "head[1]"]
    assert [t.shape[-1] for t in lv.values()] == [8, 4]
    assert torch.equal(cap.levels("head[1]")["head[1]"], lv["head[1]"])
    assert cap.call_counts() == {"head": 2}


def test_model_output_by_empty_path():
    _, cap = run([""])
    assert list(cap.levels("")) == [":0", ":1"]


def test_unknown_name_lists_closest():
    with pytest.raises(UnknownNameError) as e:
        FeatureCapture(TinyDetector(), ["nekc"])
    assert str(e.value) == "no module named 'nekc' in TinyDetector; closest: neck"
    with pytest.raises(UnknownNameError, match=r"no module named 'body\.7' in TinyDetector; closest: ") as e:
        resolve_module(TinyDetector(), "body.7")
    assert {"body.0", "body.1"} <= set(str(e.value).split("closest: ")[1].split(", "))


def test_bad_key_call_and_spec():
    _, cap = run(["neck:p9", "head[5]", "body.0:x"])
    with pytest.raises(UnknownNameError, match=r"module 'neck' output has no key 'p9'; keys: p3, p4"):
        cap.levels("neck:p9")
    with pytest.raises(UnknownNameError, match=r"module 'head' ran 2 time\(s\); call index \[5\] does not exist"):
        cap.levels("head[5]")
    with pytest.raises(UnknownNameError, match=r"output is a Tensor, not a dict or tuple: drop ':x'"):
        cap.levels("body.0:x")
    with pytest.raises(ValueError, match=r"cannot parse capture spec 'neck\]\['"):
        parse_spec("neck][")


def test_module_that_did_not_run():
    m = TinyDetector()
    cap = FeatureCapture(m, ["post"])
    with pytest.raises(RuntimeError, match=r"module 'post' did not run during the forward pass"):
        cap.levels("post")


def test_remove_detaches_hooks():
    m, cap = run(["body.0"])
    cap.remove()
    cap.clear()
    m(torch.rand(1, 3, 16, 16))
    assert cap.call_counts() == {}
