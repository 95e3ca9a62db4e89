"""COCO-format dataset: contiguous labels, empty images, flips, and one-line errors for malformed input."""
from __future__ import annotations

import json
import os

import pytest
import torch

from densekd.data.coco import CocoDetection, CocoFormatError, collate_detection
from densekd.data.synthetic import make_coco_rectangles


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("cocodata")
    return make_coco_rectangles(str(root), num_images=3, size=64, num_classes=2, empty_every=3,
                                category_ids=[3, 7])


def test_samples_labels_and_empty_images(coco):
    ann, img = coco
    ds = CocoDetection(ann, img, train=False)
    assert len(ds) == 3 and ds.num_classes == 2
    assert ds.cat_to_label == {3: 1, 7: 2} and ds.label_to_cat == {1: 3, 2: 7}
    image, target = ds[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
    assert target["boxes"].shape[1] == 4 and set(target["labels"].tolist()) <= {1, 2}
    raw = json.load(open(ann))
    first = [a for a in raw["annotations"] if a["image_id"] == target["image_id"]]
    x, y, w, h = first[0]["bbox"]
    assert target["boxes"][0].tolist() == [x, y, x + w, y + h]
    _, empty = ds[2]  # every 3rd image has no boxes
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
    assert len(CocoDetection(ann, img, filter_empty=True)) == 2
    images, targets = collate_detection([ds[0], ds[2]])
    assert len(images) == 2 and targets[1]["image_id"] == ds.ids[2]


def test_category_id_label_map_keeps_coco_ids(coco):
    ann, img = coco
    ds = CocoDetection(ann, img, label_map="category_id")
    assert ds.cat_to_label == {3: 3, 7: 7} and ds.num_classes == 7
    assert set(ds[0][1]["labels"].tolist()) <= {3, 7}
    with pytest.raises(Exception, match="data.label_map: expected 'contiguous' or 'category_id', got 'x'"):
        CocoDetection(ann, img, label_map="x")


def test_train_flip_mirrors_boxes(coco):
    ann, img = coco
    plain, flipped = CocoDetection(ann, img)[0], CocoDetection(ann, img, train=True, flip_prob=1.0)[0]
    assert torch.equal(flipped[0], plain[0].flip(-1))
    b = plain[1]["boxes"]
    assert torch.equal(flipped[1]["boxes"], torch.stack([64 - b[:, 2], b[:, 1], 64 - b[:, 0], b[:, 3]], 1))


def _rewrite(coco, tmp_path, edit):
    ann, img = coco
    data = json.load(open(ann))
    edit(data)
    p = tmp_path / "ann.json"
    p.write_text(json.dumps(data))
    return str(p), img


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["annotations"][0].update(bbox=[1, 2, -3, 4]), r"annotation id 1 \(image id 1\) has a bad bbox \[1, 2, -3, 4\]"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), r"annotation id 1 \(image id 1\) has a bad bbox"),
        (lambda d: d["annotations"][0].update(category_id=99), r"annotation id 1 \(image id 1\) has unknown category id 99"),
        (lambda d: d["annotations"][0].update(image_id=42), r"annotation id 1 refers to unknown image id 42"),
        (lambda d: d["images"][1].update(file_name="missing.png"), r"image id 2: image file .*missing.png' does not exist"),
        (lambda d: d.pop("categories"), r"missing list 'categories'"),
    ],
)
def test_malformed_annotations_name_file_and_id(coco, tmp_path, edit, message):
    ann, img = _rewrite(coco, tmp_path, edit)
    with pytest.raises(CocoFormatError, match=message) as e:
        CocoDetection(ann, img)
    assert str(e.value).startswith(ann) and "\n" not in str(e.value)


def test_missing_annotation_file_and_corrupt_image(coco, tmp_path):
    with pytest.raises(CocoFormatError, match="annotation file .* does not exist"):
        CocoDetection(str(tmp_path / "none.json"), "x")
    ann, img = coco
    data = json.load(open(ann))
    bad_dir = tmp_path / "imgs"
    bad_dir.mkdir()
    for im in data["images"]:
        (bad_dir / im["file_name"]).write_bytes(b"not an image")
    with pytest.raises(CocoFormatError, match=r"image id 1: cannot read"):
        CocoDetection(ann, str(bad_dir))[0]


def test_crowd_and_degenerate_boxes_are_not_targets(coco, tmp_path):
    def edit(d):
        d["annotations"][0]["iscrowd"] = 1
        d["annotations"][1]["bbox"] = [10, 10, 0, 5]
    ann, img = _rewrite(coco, tmp_path, edit)
    ds, ref = CocoDetection(ann, img), CocoDetection(*coco)
    raw = json.load(open(coco[0]))["annotations"]
    n = lambda dset, i: sum(int(dset[k][1]["boxes"].shape[0]) for k in range(len(dset)) if dset.ids[k] == i)
    dropped = {raw[0]["image_id"]: 0, raw[1]["image_id"]: 0}
    for a in raw[:2]:
        dropped[a["image_id"]] += 1
    for i, k in dropped.items():
        assert n(ds, i) == n(ref, i) - k


@pytest.mark.parametrize("bbox", [[40, 30, 50, 20], [70, 5, 10, 10], [-5, 2, 10, 10]])
def test_box_outside_the_image_names_file_annotation_and_image(coco, tmp_path, bbox):
    ann, img = _rewrite(coco, tmp_path, lambda d: d["annotations"][0].update(bbox=bbox))
    with pytest.raises(CocoFormatError) as e:
        CocoDetection(ann, img)
    msg = str(e.value)
    assert msg.startswith(f"{ann}: annotation id 1 (image id 1) has bbox {bbox!r} outside its 64×64 image")
    assert "[x, y, width, height] in pixels" in msg and "\n" not in msg


def test_box_within_rounding_tolerance_is_clipped(coco, tmp_path):
    ann, img = _rewrite(coco, tmp_path, lambda d: d["annotations"][0].update(bbox=[40, 30, 24.5, 10]))
    ds = CocoDetection(ann, img)
    assert ds[0][1]["boxes"][0].tolist() == [40, 30, 64, 40]


def test_sizes_checked_against_the_image_file(coco, tmp_path):
    def no_size(d):
        for im in d["images"]:
            im.pop("width"), im.pop("height")
        d["annotations"][0]["bbox"] = [40, 30, 50, 20]
    ann, img = _rewrite(coco, tmp_path, no_size)
    ds = CocoDetection(ann, img)  # no size in the JSON: the box is checked when the image is read
    with pytest.raises(CocoFormatError, match=r"annotation id 1 \(image id 1\) has bbox \[40, 30, 50, 20\] outside "
                                              r"its 64×64 image"):
        ds[0]
    ann, img = _rewrite(coco, tmp_path, lambda d: d["images"][0].update(width=80))
    with pytest.raises(CocoFormatError, match=r"image id 1: .*000001.png' is 64×64 pixels, the annotation file says 80×64$"):
        CocoDetection(ann, img)[0]


def test_empty_split_is_one_error(coco, tmp_path):
    ann, img = _rewrite(coco, tmp_path, lambda d: (d.update(images=[]), d.update(annotations=[])))
    with pytest.raises(CocoFormatError, match=r"ann.json: the 'images' list is empty: no sample to train on$"):
        CocoDetection(ann, img, train=True)
    ann, img = _rewrite(coco, tmp_path, lambda d: d.update(annotations=[]))
    with pytest.raises(CocoFormatError, match=r"none of its 3 images has a box, so filter_empty leaves no sample"):
        CocoDetection(ann, img, filter_empty=True)


def test_train_max_images_keeps_the_first_images(coco):
    ann, img = coco
    ds = CocoDetection(ann, img, max_images=2)
    assert ds.ids == sorted(CocoDetection(ann, img).ids)[:2]


def test_class_id_the_model_lacks_names_file_and_id(coco):
    from densekd.config import load_config
    from densekd.errors import ConfigError
    from densekd.tasks import get_task

    ann, img = coco  # categories 3 and 7 → labels 1 and 2
    cfg = load_config({"task": "detection", "model": {"num_classes": 1},
                       "data": {"train_ann": ann, "train_images": img}})
    task = get_task("detection")
    ds = task.build_dataset(cfg.data, "train")
    with pytest.raises(ConfigError, match=rf"^model.num_classes: 1, but {ann} has category id 7 \(label 2\), which a "
                                          rf"1-class model lacks; set model.num_classes=2$"):
        task.check_data(cfg.model, ds)
    cfg.model.num_classes = 5
    with pytest.raises(ConfigError, match=r"^model.num_classes: expected 2 \(categories in .*\), got 5$"):
        task.check_data(cfg.model, ds)


def test_engine_checks_the_val_set_too(coco, tmp_path):
    import densekd
    from densekd.errors import ConfigError

    ann, img = coco
    val, _ = _rewrite(coco, tmp_path, lambda d: d["categories"].append({"id": 9, "name": "extra"}))
    cfg = {"task": "detection", "output_dir": str(tmp_path / "out"),
           "model": {"num_classes": 2, "student": {"arch": "fcos", "backbone": "resnet18"}},
           "data": {"train_ann": ann, "train_images": img, "val_ann": val, "val_images": img},
           "train": {"max_iters": 1, "batch_size": 1, "num_workers": 0}}
    with pytest.raises(ConfigError, match=rf"^model.num_classes: 2, but {val} has category id 9 \(label 3\)"):
        densekd.train(cfg)
