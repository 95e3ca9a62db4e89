"""The paper's COCO recipes parse to the paper's settings and run two iterations on tiny data."""
from __future__ import annotations

import glob
import os

import pytest
import torch

import densekd
from densekd.config import load_config
from densekd.models.detection import build_detector

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = sorted(glob.glob(os.path.join(ROOT, "configs", "detection", "*.yaml")))
EXPECTED = {  # paper numbers written beside each recipe (student, teacher, ACAM-KD)
    "retinanet": "student (plain R50) 37.4 | teacher (R101) 38.9 | ACAM-KD 41.2",
    "faster_rcnn": "student (plain R50) 38.4 | teacher (R101) 39.8 | ACAM-KD 41.4",
    "fcos": "does not report FCOS",
}


def test_all_three_recipes_exist():
    assert sorted(os.path.basename(p).split("_r101")[0] for p in RECIPES) == ["faster_rcnn", "fcos", "retinanet"]


@pytest.mark.parametrize("path", RECIPES, ids=os.path.basename)
def test_recipe_matches_the_paper_settings(path):
    cfg = load_config(path)
    arch = cfg.model.student.arch
    assert EXPECTED[arch] in open(path).read()
    assert cfg.model.teacher.arch == arch and cfg.model.teacher.backbone == "resnet101"
    assert cfg.model.student.backbone == "resnet50" and cfg.model.inherit is True
    assert cfg.distill.method == "acam_kd" and cfg.distill.kwargs == {"num_masks": 6} and cfg.distill.pairs is None
    o = cfg.train.optimizer
    assert (o.type, o.momentum, o.weight_decay) == ("sgd", 0.9, 1e-4)
    assert cfg.train.max_iters == 180000 and cfg.model.num_classes == 80 and cfg.model.min_size == 800


@pytest.mark.parametrize("path", RECIPES, ids=os.path.basename)
def test_recipe_runs_two_iterations_on_tiny_data(path, tiny_coco, tmp_path):
    ann, img = tiny_coco
    arch = load_config(path).model.student.arch
    torch.manual_seed(0)
    teacher = tmp_path / "teacher.pth"
    torch.save(build_detector(arch, "resnet18", num_classes=2, min_size=64, max_size=64).state_dict(), teacher)
    overrides = [
        f"output_dir={tmp_path / 'out'}", "model.num_classes=2", "model.min_size=64", "model.max_size=64",
        "model.student.backbone=resnet18", "model.student.backbone_checkpoint=null", "model.student.trainable_layers=1",
        "model.teacher.backbone=resnet18", f"model.teacher.checkpoint={teacher}",
        f"data.train_ann={ann}", f"data.train_images={img}", "data.val_ann=null", "data.val_images=null",
        "train.max_iters=2", "train.batch_size=2", "train.num_workers=0", "train.log_every=1",
        "train.schedule.warmup_iters=1",
    ]
    if "acam_kd" not in densekd.available_losses():  # until the lead's ACAM-KD loss is merged
        overrides.append("distill.method=test_mse")
    metrics = densekd.train(path, overrides)
    assert metrics == {}  # no validation set in the smoke run
    ck = torch.load(tmp_path / "out" / "checkpoint.pth", weights_only=True)
    assert ck["iteration"] == 2
    n_levels = 5  # P3–P7 or P2–P6
    assert len({k.split("|")[1].split(".")[0] for k in ck["kd_losses"]}) == n_levels
