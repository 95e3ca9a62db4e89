"""Segmentation through the engine: the Cityscapes recipes parse and smoke-run (2 iterations on tiny generated
Cityscapes-layout data), resume is exact, and 2-process DDP training/evaluation gives the single-process mIoU."""
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import densekd
from densekd.config import load_config
from densekd.data.segmentation import make_toy_segmentation
from densekd.engine.trainer import Trainer, TrainingInterrupted
from densekd.models.segmentation import build_segmentation_model

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "configs" / "segmentation").glob("*.yaml"))
TEACHER_TINY = {"layers": [1, 1, 1, 1], "decoder_channels": 16}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("cityscapes")
    make_toy_segmentation(root, "cityscapes", num_images=4, size=(64, 64), num_classes=3)
    torch.manual_seed(1)
    teacher = build_segmentation_model("deeplabv3", "resnet101", 19, **TEACHER_TINY)
    torch.save(teacher.state_dict(), root / "teacher.pth")
    return root


def tiny_overrides(recipe: Path, root: Path, out: Path, **extra) -> dict:
    raw = load_config(recipe)
    o = {
        "output_dir": str(out), "data.root": str(root), "data.crop_size": [32, 32],
        "model.student.backbone_checkpoint": None, "model.student.decoder_channels": 16,
        "train.max_iters": 2, "train.batch_size": 2, "train.num_workers": 0, "train.checkpoint_every": 0,
        "train.log_every": 1, "eval.batch_size": 2,
    }
    if raw.model.student.backbone == "mobilenetv2":
        o["model.student.width_mult"] = 0.25
    else:
        o["model.student.layers"] = [1, 1, 1, 1]
    if raw.model.teacher is not None:
        o.update({"model.teacher.checkpoint": str(root / "teacher.pth"),
                  **{f"model.teacher.{k}": v for k, v in TEACHER_TINY.items()}})
    o.update(extra)
    return o


def test_there_are_four_recipes():
    assert [p.name for p in RECIPES] == [
        "deeplabv3_r101_mbv2_acamkd.yaml", "deeplabv3_r101_pspnet_r18_acamkd.yaml",
        "deeplabv3_r101_r18_acamkd.yaml", "deeplabv3_r101_teacher.yaml"]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_follows_the_paper_protocol(recipe):
    cfg = load_config(recipe)
    t = cfg.train
    assert cfg.task == "segmentation" and cfg.data.format == "cityscapes"
    assert cfg.data.crop_size == [512, 1024] and cfg.data.scale_range == [0.5, 2.0]
    assert t.max_iters == 40000 and t.optimizer.type == "sgd" and t.optimizer.lr == 0.02
    assert t.optimizer.weight_decay == 5e-4 and t.schedule.type == "poly" and t.schedule.power == 0.9
    assert t.batch_size * 8 == 16  # per process × the 8 processes the header's torchrun line uses
    text = recipe.read_text()
    assert "78.07" in text  # the teacher's number
    if cfg.distill is not None:
        assert cfg.distill.method == "acam_kd" and cfg.model.teacher.backbone == "resnet101"
        expected = {("deeplabv3", "mobilenetv2"): ("73.12", "76.21"), ("deeplabv3", "resnet18"): ("72.96", "77.53"),
                    ("pspnet", "resnet18"): ("72.55", "75.99")}[(cfg.model.student.arch, cfg.model.student.backbone)]
        assert re.search(rf"student without KD {expected[0]} \| teacher 78.07 \| ACAM-KD {expected[1]}", text)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_smoke_runs(recipe, toy, tmp_path):
    torch.manual_seed(0)
    metrics = densekd.train(str(recipe), tiny_overrides(recipe, toy, tmp_path))
    assert 0.0 <= metrics["mIoU"] <= 1.0 and 0.0 <= metrics["pixel_acc"] <= 1.0
    assert "IoU/road" in metrics
    assert (tmp_path / "student_final.pth").is_file() and (tmp_path / "eval_iou.md").is_file()
    log = (tmp_path / "log.csv").read_text()
    if "teacher" not in recipe.stem:
        assert "kd/classifier/loss_spatial" in log  # ACAM-KD on the logits
    # the saved student is the plain student (no KD modules) and re-evaluates to the same numbers
    again = densekd.evaluate(str(recipe), str(tmp_path / "student_final.pth"), tiny_overrides(recipe, toy, tmp_path))
    assert again["mIoU"] == pytest.approx(metrics["mIoU"])


def test_resume_after_interruption_is_exact(toy, tmp_path, monkeypatch):
    """3 iterations == interrupted (SIGTERM) after 1 + resumed to 3 (crossing an epoch: 4 images, batch 2),
    poly schedule, ACAM-KD, random scale/crop/flip, dropout."""
    recipe = REPO / "configs" / "segmentation" / "deeplabv3_r101_pspnet_r18_acamkd.yaml"
    kw = {"train.max_iters": 3, "train.eval_every": -1}
    densekd.train(str(recipe), tiny_overrides(recipe, toy, tmp_path / "full", **kw))

    from densekd.tasks.segmentation import SegmentationTask

    calls = {"n": 0}
    orig = SegmentationTask.to_device

    def to_device(self, batch, device):
        calls["n"] += 1
        if calls["n"] == 2:  # 1st call: the Distiller's example batch; 2nd: iteration 1 → save after it, stop
            os.kill(os.getpid(), signal.SIGTERM)
        return orig(self, batch, device)

    monkeypatch.setattr(SegmentationTask, "to_device", to_device)
    with pytest.raises(TrainingInterrupted, match="at iteration 1"):
        densekd.train(str(recipe), tiny_overrides(recipe, toy, tmp_path / "split", **kw))
    monkeypatch.setattr(SegmentationTask, "to_device", orig)
    t = Trainer(str(recipe), tiny_overrides(recipe, toy, tmp_path / "split", **kw))
    assert t.iteration == 1
    t.run()
    full = torch.load(tmp_path / "full" / "checkpoint.pth", weights_only=False)
    split = torch.load(tmp_path / "split" / "checkpoint.pth", weights_only=False)
    assert split["iteration"] == 3
    for part in ("student", "kd_losses"):
        assert full[part].keys() == split[part].keys()
        for k in full[part]:
            assert torch.equal(full[part][k], split[part][k]), f"{part}.{k}"


def test_ddp_training_and_evaluation_match_single_process(toy, tmp_path):
    """torchrun 2 processes (gloo): 2 distillation iterations, then whole-image evaluation sharded over the ranks;
    the reduced mIoU equals a single-process evaluation of the same saved student."""
    recipe = REPO / "configs" / "segmentation" / "deeplabv3_r101_r18_acamkd.yaml"
    o = tiny_overrides(recipe, toy, tmp_path / "ddp")
    args = [f"{k}={json.dumps(v)}" for k, v in o.items()]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "densekd",
         "train", str(recipe), *args],
        env=env, capture_output=True, text=True, timeout=300, cwd=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert ddp["iteration"] == 2
    single = densekd.evaluate(str(recipe), str(tmp_path / "ddp" / "student_final.pth"), o)
    assert ddp["mIoU"] == pytest.approx(single["mIoU"], abs=1e-12)
    assert ddp["pixel_acc"] == pytest.approx(single["pixel_acc"], abs=1e-12)
