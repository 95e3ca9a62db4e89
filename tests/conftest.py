"""Shared fixtures: a tiny generated COCO-format dataset and a tiny detection config."""
from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# Ultralytics (tests/test_integration_ultralytics.py): settings and fonts in a throw-away dir, no network probe
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", __import__("tempfile").mkdtemp(prefix="densekd-ultralytics-"))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
sys.path.insert(0, os.path.dirname(__file__))
import _kd_test_loss  # noqa: E402,F401  (registers "test_mse")

from densekd.data.synthetic import make_coco_rectangles  # noqa: E402


@pytest.fixture(scope="session")
def tiny_coco(tmp_path_factory):
    """(ann_file, img_dir) of 4 generated 64×64 images with 2 categories, one image without boxes."""
    root = tmp_path_factory.mktemp("coco")
    return make_coco_rectangles(str(root), num_images=4, size=64, num_classes=2, empty_every=4)


@pytest.fixture(scope="session")
def teacher_ckpt(tmp_path_factory):
    """A (random) ResNet-18 RetinaNet teacher state dict file for 2 classes at 64 px."""
    from densekd.models.detection import build_detector

    torch.manual_seed(1)
    path = str(tmp_path_factory.mktemp("teacher") / "teacher.pth")
    torch.save(build_detector("retinanet", "resnet18", num_classes=2, min_size=64, max_size=64).state_dict(), path)
    return path


def tiny_config(ann, img, out, teacher=None, arch="retinanet", method=None, **train):
    """A detection config dict for the tiny data: ResNet-18 at 64 px, 2 iterations; with ``teacher`` (a
    checkpoint path) it distils with ``method`` (default: ACAM-KD with 2 masks)."""
    cfg = {
        "task": "detection",
        "output_dir": str(out),
        "seed": 0,
        "model": {
            "num_classes": 2, "min_size": 64, "max_size": 64, "inherit": teacher is not None,
            "student": {"arch": arch, "backbone": "resnet18", "trainable_layers": 1},
        },
        "data": {"train_ann": ann, "train_images": img, "val_ann": ann, "val_images": img},
        "train": {"max_iters": 2, "batch_size": 2, "num_workers": 0, "log_every": 1, "checkpoint_every": 0,
                  "eval_every": -1, "optimizer": {"lr": 0.01}, **train},
    }
    if teacher:
        cfg["model"]["teacher"] = {"arch": arch, "backbone": "resnet18", "trainable_layers": 0, "checkpoint": teacher}
        cfg["distill"] = {"method": method or "acam_kd", "weight": 1.0,
                          "kwargs": {"num_masks": 2} if method in (None, "acam_kd") else {}}
    return cfg


@pytest.fixture
def make_config(tiny_coco):
    ann, img = tiny_coco
    return lambda out, **kw: tiny_config(ann, img, out, **kw)


@pytest.fixture
def fake_assets(tmp_path, monkeypatch):
    """A copy of the shipped assets (densekd/assets/*.pt, *.json) in a folder the test may damage."""
    import shutil

    from densekd import assets

    d = tmp_path / "assets"
    d.mkdir()
    for p in assets.ASSETS_DIR.glob("*.*"):
        if p.suffix in (".pt", ".json"):
            shutil.copy(p, d / p.name)
    monkeypatch.setattr(assets, "ASSETS_DIR", d)
    return d
