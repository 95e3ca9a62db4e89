"""The built-in digits dataset: determinism, disjoint sources, boxes/masks/COCO agreement, idempotence, errors."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from densekd.data.digits import NUM_SEG_CLASSES, load_split_arrays, make_digits_dataset
from densekd.errors import ConfigError

SMALL = dict(n_train=6, n_val=4, n_dev=3, canvas=32, scale=(8, 14), digits_per_image=(1, 3))


def _digest(root) -> str:
    h = hashlib.sha1()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != "manifest.json":
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    return make_digits_dataset(root, seed=3, **SMALL)


def test_layout_and_counts(built):
    assert set(built.splits) == {"train", "val", "dev"}
    for name, n in (("train", 6), ("val", 4), ("dev", 3)):
        sp = built[name]
        imgs = sorted(p.name for p in sp.image_dir.glob("*.png"))
        masks = sorted(p.name for p in sp.mask_dir.glob("*.png"))
        assert imgs == masks and len(imgs) == n  # matching stems
        im = Image.open(sp.image_dir / imgs[0])
        mk = Image.open(sp.mask_dir / masks[0])
        assert im.mode == "RGB" and im.size == (32, 32)
        assert mk.mode == "L" and mk.size == (32, 32)
    assert built.num_classes == NUM_SEG_CLASSES == 11


def test_deterministic_and_seed_dependent(built, tmp_path):
    again = make_digits_dataset(tmp_path / "a", seed=3, **SMALL)
    assert _digest(again.root) == _digest(built.root)
    other = make_digits_dataset(tmp_path / "b", seed=4, **SMALL)
    assert _digest(other.root) != _digest(built.root)


def test_splits_use_disjoint_source_digits(built):
    manifest = json.loads((built.root / "manifest.json").read_text())
    src = {k: set(v) for k, v in manifest["sources"].items()}
    assert not (src["train"] & src["val"]) and not (src["train"] & src["dev"]) and not (src["val"] & src["dev"])
    assert sum(len(v) for v in src.values()) == 1797
    # the digits actually drawn come from their own split's block
    for name in ("train", "val", "dev"):
        used = {a["source_index"] for a in json.loads(built[name].annotations.read_text())["annotations"]}
        assert used and used <= src[name]


def test_boxes_masks_and_coco_agree(built):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    for name in ("train", "val"):
        sp = built[name]
        coco = COCO(str(sp.annotations))
        assert sorted(coco.getCatIds()) == list(range(1, 11))
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == [str(d) for d in range(10)]
        assert len(coco.getImgIds()) == sp.num_images
        n_anns = 0
        for img in coco.loadImgs(coco.getImgIds()):
            cls = np.asarray(Image.open(sp.mask_dir / img["file_name"]))
            anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
            union = np.zeros_like(cls, dtype=bool)
            for a in anns:
                inst = mask_utils.decode(a["segmentation"]).astype(bool)
                assert not (union & inst).any()  # digits never overlap
                union |= inst
                assert a["area"] == inst.sum() > 0
                ys, xs = np.nonzero(inst)
                x, y, w, h = a["bbox"]
                assert (x, y, x + w, y + h) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)  # tight box
                assert (cls[inst] == a["category_id"]).all()  # mask class id = category id = digit + 1
                n_anns += 1
            assert ((cls > 0) == union).all()  # nothing in the class mask outside an instance
        assert n_anns > 0


def test_load_split_arrays(built):
    imgs, masks = load_split_arrays(built["val"])
    assert imgs.shape == (4, 32, 32, 3) and imgs.dtype == np.uint8
    assert masks.shape == (4, 32, 32) and masks.max() <= 10
    # digits are brighter than the background
    fg = masks > 0
    assert imgs[fg].mean() > imgs[~fg].mean() + 50


def test_idempotent_and_rebuilds_on_change(tmp_path):
    d1 = make_digits_dataset(tmp_path, seed=1, n_train=2, n_val=2, canvas=24, scale=(8, 12))
    assert d1.built
    stamp = (d1["train"].image_dir / "000000.png").stat().st_mtime_ns
    d2 = make_digits_dataset(tmp_path, seed=1, n_train=2, n_val=2, canvas=24, scale=(8, 12))
    assert not d2.built
    assert (d2["train"].image_dir / "000000.png").stat().st_mtime_ns == stamp
    # a missing file means an incomplete build: rebuilt
    (d2["val"].mask_dir / "000001.png").unlink()
    assert make_digits_dataset(tmp_path, seed=1, n_train=2, n_val=2, canvas=24, scale=(8, 12)).built
    # other parameters: rebuilt with the new sizes
    d3 = make_digits_dataset(tmp_path, seed=1, n_train=3, n_val=2, canvas=24, scale=(8, 12))
    assert d3.built and len(list(d3["train"].image_dir.glob("*.png"))) == 3


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_train=0), "split 'train' needs a positive int of images, got 0"),
        (dict(n_val=2.5), "split 'val' needs a positive int of images, got 2.5"),
        (dict(canvas=8), "canvas must be an int ≥ 16 (pixels), got 8"),
        (dict(scale=(4, 12)), "scale must be (min, max) ints with 8 ≤ min ≤ max ≤ canvas (32)"),
        (dict(scale=(8, 40)), "scale must be (min, max) ints with 8 ≤ min ≤ max ≤ canvas (32)"),
        (dict(scale=16), "scale must be a (min, max) pair, got 16"),
        (dict(digits_per_image=(3, 1)), "digits_per_image must be (min, max) ints with 1 ≤ min ≤ max"),
        (dict(threshold=1.5), "threshold must be in (0, 1), got 1.5"),
        (dict(noise=-0.1), "noise must be in [0, 0.5], got -0.1"),
        (dict(source_fractions={"train": 1.0}), "source_fractions must name the same splits as splits"),
        (dict(source_fractions={"train": 0.999, "val": 0.001}), "give split 'val' only 2 source digits"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    args = dict(n_train=2, n_val=2, canvas=32, scale=(8, 12))
    args.update(kwargs)
    with pytest.raises(ConfigError, match="make_digits_dataset: ") as exc:
        make_digits_dataset(tmp_path, **args)
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_unknown_split_name(built):
    with pytest.raises(ConfigError, match=r"digits dataset has splits \['dev', 'train', 'val'\], not 'test'"):
        built["test"]


def test_the_real_loaders_read_it(built):
    """The COCO detection loader and the 'folder' segmentation loader read the built set as written."""
    import torch

    from densekd.data.coco import CocoDetection
    from densekd.data.segmentation import SegTransform, build_segmentation_dataset

    sp = built["val"]
    det = CocoDetection(str(sp.annotations), str(sp.image_dir), label_map="category_id")
    coco = json.loads(sp.annotations.read_text())
    img, target = det[0]
    assert img.shape == (3, 32, 32)
    anns = [a for a in coco["annotations"] if a["image_id"] == target["image_id"]]
    expect = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                           for a in anns], dtype=torch.float32)
    assert torch.equal(target["boxes"], expect)
    assert target["labels"].tolist() == [a["category_id"] for a in anns]  # digit + 1

    seg = build_segmentation_dataset("folder", built.root, "val", SegTransform(train=False), num_classes=11)
    assert len(seg) == 4
    _, mask = seg[1]
    _, masks = load_split_arrays(sp)
    assert torch.equal(mask, torch.from_numpy(masks[1].astype("int64")))
