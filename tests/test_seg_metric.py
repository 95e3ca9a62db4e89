"""Known-answer tests for the confusion-matrix mIoU (densekd.metrics.segmentation)."""
import math

import pytest
import torch

from densekd.metrics.segmentation import ConfusionMatrix, format_iou_table, metrics_from_confusion


def test_perfect_prediction_is_one():
    gt = torch.randint(0, 4, (2, 16, 16))
    gt[0, :2] = 255
    cm = ConfusionMatrix(4)
    cm.update(gt.clone().masked_fill(gt == 255, 0), gt)
    m = cm.compute()
    assert m["mIoU"] == 1.0 and m["pixel_acc"] == 1.0


def test_hand_computed_confusion_matrix():
    # gt:   0 0 1 1 2 255      pred: 0 1 1 1 0 2   (class 3 never appears)
    gt = torch.tensor([[[0, 0, 1, 1, 2, 255]]])
    pred = torch.tensor([[[0, 1, 1, 1, 0, 2]]])
    cm = ConfusionMatrix(4)
    cm.update(pred, gt)
    expected = torch.tensor([[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    assert torch.equal(cm.mat, expected)
    m = cm.compute(["a", "b", "c", "d"])
    # IoU_a = 1/(1+1+1), IoU_b = 2/(2+1), IoU_c = 0/(0+0+1); d absent from GT and prediction → NaN, excluded
    assert m["IoU/a"] == pytest.approx(1 / 3)
    assert m["IoU/b"] == pytest.approx(2 / 3)
    assert m["IoU/c"] == 0.0
    assert math.isnan(m["IoU/d"])
    assert m["mIoU"] == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert m["pixel_acc"] == pytest.approx(3 / 5)
    table = format_iou_table(m)
    assert "| d | n/a |" in table and "| **mIoU** | 33.33 |" in table


def test_accumulates_over_updates_and_accepts_logits():
    gt = torch.tensor([[[0, 1], [1, 1]]])
    logits = torch.zeros(1, 2, 2, 2)
    logits[:, 1] = 1.0  # predicts class 1 everywhere
    cm = ConfusionMatrix(2)
    cm.update(logits, gt)
    cm.update(logits, gt)
    assert torch.equal(cm.mat, torch.tensor([[0, 2], [0, 6]]))
    m = cm.compute()
    assert m["mIoU"] == pytest.approx((0 + 6 / 8) / 2)


def test_predicted_but_absent_class_counts_as_zero():
    m = metrics_from_confusion(torch.tensor([[3, 1], [0, 0]]))
    assert m["IoU/1"] == 0.0 and m["mIoU"] == pytest.approx(0.75 / 2)


def test_label_out_of_range_fails():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=r"target labels \[3, 7\] are outside \[0, 3\)"):
        cm.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.tensor([[[0, 3], [7, 255]]]))


def test_shape_mismatch_fails():
    with pytest.raises(ValueError, match="prediction shape"):
        ConfusionMatrix(3).update(torch.zeros(1, 2, 3, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long))
