"""pycocotools evaluation: perfect detections score 1.0; worse ones less; the table and DDP-free path."""
from __future__ import annotations

import json

import pytest

from densekd.engine.coco_eval import METRICS, evaluate_coco, format_table


def _gt_results(ann, shift=0.0, score=1.0):
    data = json.load(open(ann))
    return [{"image_id": a["image_id"], "category_id": a["category_id"],
             "bbox": [a["bbox"][0] + shift, a["bbox"][1], a["bbox"][2], a["bbox"][3]], "score": score}
            for a in data["annotations"]]


def test_perfect_detections_score_ap_one(tiny_coco):
    ann, _ = tiny_coco
    m = evaluate_coco(ann, _gt_results(ann))
    assert set(m) == set(METRICS)
    assert m["AP"] == pytest.approx(1.0) and m["AP50"] == pytest.approx(1.0) and m["AP75"] == pytest.approx(1.0)


def test_shifted_and_missing_detections_score_lower(tiny_coco):
    ann, _ = tiny_coco
    shifted = evaluate_coco(ann, _gt_results(ann, shift=4.0))
    assert shifted["AP"] < 1.0
    half = _gt_results(ann)[::2]
    assert evaluate_coco(ann, half)["AP"] < 1.0
    assert evaluate_coco(ann, []) == {k: 0.0 for k in METRICS}


def test_table_is_in_percent_and_marks_absent_sizes():
    t = format_table({"AP": 0.412, "AP50": 0.6, "AP75": 0.44, "APs": -1.0, "APm": 0.45, "APl": 0.55})
    lines = t.splitlines()
    assert lines[0].split("|")[1].strip() == "AP" and "41.2" in lines[2] and "n/a" in lines[2]
