"""The run folder's file names and the ``kd/<level>/…`` keys: built and parsed in densekd/run_folder.py only."""
from __future__ import annotations

import pytest

from densekd import run_folder as rf


def test_file_names_are_the_documented_ones():
    assert (rf.CHECKPOINT_FILE, rf.STUDENT_FILE, rf.CONFIG_FILE, rf.LOG_FILE, rf.EVAL_LOG_FILE, rf.METRICS_FILE,
            rf.HEALTH_FILE, rf.TENSORBOARD_DIR, rf.CONSOLE_FILE, rf.CONTROL_FILE, rf.FAILED_FILE,
            rf.CONTROL_LOSS_KEY) == (
        "checkpoint.pth", "student_final.pth", "config.yaml", "log.csv", "eval.csv", "metrics.json", "health.json",
        "tb", "console.log", "control.json", "failed.json", "control/loss_task")


def test_kd_keys_round_trip():
    key = rf.kd_key("backbone:0", "loss_spatial")
    assert key == "kd/backbone:0/loss_spatial"
    assert rf.kd_term(key) == ("backbone:0", "loss_spatial")
    assert rf.kd_key("trunk", "masks", "spatial", "mean") == "kd/trunk/masks/spatial/mean"
    assert rf.mask_key("kd/trunk/masks/spatial/mean") == ("trunk", "spatial", "mean")
    assert rf.kd_level("kd/model.15/grad_norm", "grad_norm") == "model.15"
    assert rf.kd_level(rf.kd_key("trunk", "masks", "spatial", "mean"), "masks/spatial/mean") == "trunk"


@pytest.mark.parametrize("key", ["loss_task", "loss_kd", "kd/trunk/grad_norm", "kd/trunk/masks/spatial/mean",
                                 "task/grad_norm", "kd/loss_x", "lr"])
def test_only_weighted_kd_loss_terms_are_terms(key):
    assert rf.kd_term(key) is None


def test_other_keys_are_not_levels_or_masks():
    assert rf.kd_level("task/grad_norm", "grad_norm") is None
    assert rf.kd_level("kd/grad_norm", "grad_norm") is None  # no level
    assert rf.kd_level("kd/trunk/grad_ratio", "grad_norm") is None
    assert rf.mask_key("kd/trunk/loss_spatial") is None
    assert rf.mask_key("kd/trunk/distance") is None
    assert rf.mask_key("kd/trunk/masks/spatial") is None
