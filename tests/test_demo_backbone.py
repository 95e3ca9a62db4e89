"""The detection demo's pretrained backbone (densekd.demo.backbone): single digits from the train split's sources
only, a reproducible classification pretraining, and a state dict a detector loads."""
from __future__ import annotations

import numpy as np
import pytest

from densekd import assets
from densekd.demo.backbone import BackboneSpec, DigitStream, _sources, pretrain_backbone
from densekd.demo.detection import DemoConfig
from densekd.errors import ConfigError
from densekd.models.detection import build_detector


def test_the_stream_draws_single_digits_from_the_train_sources_only():
    dp = DemoConfig().data_params()
    train, dev, val = (set(_sources(dp, s).tolist()) for s in ("train", "dev", "val"))
    assert train and not train & dev and not train & val  # the splits share no source digit
    stream = DigitStream(dp, "train", seed=0)
    assert set(stream.sources.tolist()) == train
    imgs, labels = stream.batch(16)
    assert imgs.shape == (16, 64, 64, 3) and imgs.dtype == np.uint8
    assert labels.shape == (16,) and set(labels.tolist()) <= set(range(10))
    again = DigitStream(dp, "train", seed=0).batch(16)
    assert np.array_equal(again[0], imgs) and np.array_equal(again[1], labels)  # seeded


def test_pretraining_is_reproducible_and_loads_into_the_detector(tmp_path):
    spec = BackboneSpec(iters=3, batch_size=4, eval_images=8, warmup_iters=1)
    dp = DemoConfig().data_params()
    sd, record = pretrain_backbone(spec, dp, "a command", log=lambda *_: None)
    sd2, _ = pretrain_backbone(spec, dp, "a command", log=lambda *_: None)
    assert assets.weights_sha256(sd) == assets.weights_sha256(sd2)
    assert sd and all(k.startswith("features.") for k in sd)
    assert record["command"] == "a command" and record["model"] == spec.model_spec()
    assert 0 <= record["metric"]["dev top-1"] <= 100 and record["data"]["sources"] == "train split"
    path, _ = assets.write_artifact("bb", sd, record, tmp_path)
    m = build_detector("fcos", "mobilenet_v3_small", num_classes=10, min_size=None, max_size=None, norm="bn",
                       trainable_layers=6, fpn_channels=16, width_mult=0.5, backbone_checkpoint=str(path))
    assert (m.backbone.body["0"][0].weight == sd["features.0.0.weight"]).all()


@pytest.mark.parametrize("kw, msg", [
    (dict(backbone="resnet18"), "backbone pretraining: backbone must be one of mobilenet_v3_large, mobilenet_v3_small, "
                                "got 'resnet18'"),
    (dict(iters=0), "backbone pretraining: iters must be ≥ 1, got 0"),
    (dict(width_mult=0.0), "backbone pretraining: width_mult must be > 0, got 0.0"),
])
def test_bad_pretraining_settings(kw, msg):
    with pytest.raises(ConfigError) as e:
        BackboneSpec(**kw).validate()
    assert str(e.value) == msg
