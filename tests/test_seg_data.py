"""Segmentation datasets: layouts, label mapping, transforms and every bad input."""
import numpy as np
import pytest
import torch
from PIL import Image

from densekd.data.segmentation import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SegTransform,
    build_segmentation_dataset,
    collate_segmentation,
    make_toy_segmentation,
)
from densekd.errors import ConfigError

EVAL = SegTransform(train=False)


def _save(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _folder(tmp_path, mask, img_hw=None, split="train"):
    h, w = img_hw or mask.shape[:2]
    _save(tmp_path / split / "images" / "a.png", np.zeros((h, w, 3), np.uint8))
    _save(tmp_path / split / "masks" / "a.png", mask)
    return tmp_path


def test_cityscapes_label_ids_to_train_ids(tmp_path):
    root = tmp_path / "cs"
    img = np.zeros((4, 4, 3), np.uint8)
    lab = np.array([[7, 8, 11, 12], [26, 33, 0, 1], [6, 9, 23, 24], [31, 32, 255, 3]], np.uint8)
    _save(root / "leftImg8bit" / "val" / "aachen" / "x_000000_000019_leftImg8bit.png", img)
    _save(root / "gtFine" / "val" / "aachen" / "x_000000_000019_gtFine_labelIds.png", lab)
    ds = build_segmentation_dataset("cityscapes", root, "val", EVAL)
    assert len(ds) == 1 and ds.num_classes == 19 and ds.class_names[13] == "car"
    x, m = ds[0]
    assert x.shape == (3, 4, 4)
    expected = [[0, 1, 2, 3], [13, 18, 255, 255], [255, 255, 10, 11], [16, 17, 255, 255]]
    assert m.tolist() == expected


def test_ade20k_ids_shift_down_and_other_is_ignored(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    lab = np.array([[0, 1, 2, 150], [151, 255, 75, 1]], np.uint8)
    _save(root / "images" / "validation" / "ADE_val_00000001.jpg", np.zeros((2, 4, 3), np.uint8))
    _save(root / "annotations" / "validation" / "ADE_val_00000001.png", lab)
    ds = build_segmentation_dataset("ade20k", root, "validation", EVAL)
    assert len(ds) == 1 and ds.num_classes == 150
    _, m = ds[0]
    assert m.tolist() == [[255, 0, 1, 149], [255, 255, 74, 0]]
    with pytest.raises(ConfigError, match=r"^data.num_classes=19 but the ade20k format has 150 classes$"):
        build_segmentation_dataset("ade20k", root, "validation", EVAL, num_classes=19)
    (root / "annotations" / "validation" / "ADE_val_00000001.png").unlink()
    with pytest.raises(ConfigError, match=r"^ADE20K image .*ADE_val_00000001.jpg has no annotation .*ADE_val_00000001"
                                          r".png$"):
        build_segmentation_dataset("ade20k", root, "validation", EVAL)
    with pytest.raises(ConfigError, match=r"^ADE20K images \(data.root/images/<split>\): directory not found: "):
        build_segmentation_dataset("ade20k", root, "training", EVAL)


def test_voc_palette_and_border(tmp_path):
    make_toy_segmentation(tmp_path, "voc", splits=("train",), num_images=2, size=(32, 40), num_classes=5)
    ds = build_segmentation_dataset("voc", tmp_path, "train", EVAL)
    assert ds.num_classes == 21 and len(ds) == 2
    x, m = ds[0]
    assert x.shape == (3, 32, 40) and m.shape == (32, 40)
    assert (m[:, :2] == 255).all()  # border stays ignore
    assert set(m[:, 2:].unique().tolist()) <= set(range(5))


def test_folder_layout_and_eval_is_full_resolution(tmp_path):
    make_toy_segmentation(tmp_path, "folder", splits=("val",), num_images=3, size=(48, 40), num_classes=4)
    ds = build_segmentation_dataset("folder", tmp_path, "val", EVAL, num_classes=4)
    x, m = ds[2]
    assert x.shape == (3, 48, 40) and m.dtype == torch.int64
    raw = np.asarray(Image.open(ds.samples[2][1]))
    assert np.array_equal(m.numpy(), raw)  # eval: no resize, labels untouched


def test_mask_size_mismatch_names_file(tmp_path):
    root = _folder(tmp_path, np.zeros((8, 8), np.uint8), img_hw=(8, 10))
    ds = build_segmentation_dataset("folder", root, "train", EVAL, num_classes=3)
    with pytest.raises(ValueError, match=r"mask .*a\.png is 8x8 \(WxH\) but its image .*a\.png is 10x8"):
        ds[0]


def test_label_out_of_range_names_file_and_values(tmp_path):
    mask = np.array([[0, 1], [5, 255]], np.uint8)
    root = _folder(tmp_path, np.tile(mask, (2, 2)))
    ds = build_segmentation_dataset("folder", root, "train", EVAL, num_classes=3)
    with pytest.raises(ValueError, match=r"mask .*masks/a\.png has label\(s\) \[5\] outside \[0, 3\)"):
        ds[0]


def test_voc_out_of_range_label(tmp_path):
    make_toy_segmentation(tmp_path, "voc", splits=("val",), num_images=1, size=(16, 16))
    path = tmp_path / "SegmentationClass" / "val_0000.png"
    m = np.asarray(Image.open(path)).copy()
    m[0, 0] = 40
    im = Image.frombytes("P", (16, 16), m.tobytes())
    im.putpalette(list(range(256)) * 3)  # without a palette Pillow would renumber the indices on save
    im.save(path)
    ds = build_segmentation_dataset("voc", tmp_path, "val", EVAL)
    with pytest.raises(ValueError, match=r"val_0000\.png has label\(s\) \[40\] outside \[0, 21\)"):
        ds[0]


def test_rgb_mask_fails(tmp_path):
    root = _folder(tmp_path, np.zeros((8, 8, 3), np.uint8))
    ds = build_segmentation_dataset("folder", root, "train", EVAL, num_classes=3)
    with pytest.raises(ValueError, match=r"a\.png must be a single-channel PNG .* found mode RGB"):
        ds[0]


def test_missing_files_and_dirs(tmp_path):
    with pytest.raises(ConfigError, match="directory not found: .*leftImg8bit/train"):
        build_segmentation_dataset("cityscapes", tmp_path, "train", EVAL)
    _save(tmp_path / "train" / "images" / "b.png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "train" / "masks").mkdir()
    with pytest.raises(ConfigError, match=r"image .*b\.png has no mask .*masks/b\.png"):
        build_segmentation_dataset("folder", tmp_path, "train", EVAL, num_classes=2)
    with pytest.raises(ConfigError, match="data.num_classes is required"):
        build_segmentation_dataset("folder", tmp_path, "train", EVAL)
    with pytest.raises(ConfigError, match="Pascal VOC split list not found"):
        build_segmentation_dataset("voc", tmp_path, "train", EVAL)
    with pytest.raises(ConfigError, match="unknown data.format 'coco'"):
        build_segmentation_dataset("coco", tmp_path, "train", EVAL)
    make_toy_segmentation(tmp_path / "cs", "cityscapes", splits=("val",), num_images=1, size=(8, 8))
    with pytest.raises(ConfigError, match="data.num_classes=21 but the cityscapes format has 19"):
        build_segmentation_dataset("cityscapes", tmp_path / "cs", "val", EVAL, num_classes=21)
    (next((tmp_path / "cs" / "gtFine" / "val").rglob("*.png"))).unlink()
    with pytest.raises(ConfigError, match="has no label file .*_gtFine_labelIds.png"):
        build_segmentation_dataset("cityscapes", tmp_path / "cs", "val", EVAL)


def _coded_pair(h=12, w=20):
    """Image whose red channel encodes the label (label*50), so image/mask alignment is checkable."""
    lab = (np.arange(h * w).reshape(h, w) * 7 % 4).astype(np.uint8)
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = lab * 50
    return Image.fromarray(img), lab


def _decode(x):
    red = x[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
    return (red * 255 / 50).round().long()


def test_train_crop_flip_keep_image_and_mask_aligned():
    torch.manual_seed(0)
    img, lab = _coded_pair()
    t = SegTransform(train=True, crop_size=(8, 8), scale_range=(1.0, 1.0), flip=True)
    flips = 0
    for _ in range(12):
        x, m = t(img, lab)
        assert x.shape == (3, 8, 8) and m.shape == (8, 8)
        assert torch.equal(_decode(x), m)
        # the crop is a window of the (possibly flipped) label map
        full = torch.from_numpy(lab.astype(np.int64))
        hit = any(torch.equal(src[y:y + 8, c:c + 8], m) for src in (full, full.flip(-1))
                  for y in range(5) for c in range(13))
        assert hit
        flips += not any(torch.equal(full[y:y + 8, c:c + 8], m) for y in range(5) for c in range(13))
    assert 0 < flips < 12


def test_train_scale_and_pad_values():
    torch.manual_seed(0)
    img, lab = _coded_pair(12, 20)
    t = SegTransform(train=True, crop_size=(16, 24), scale_range=(0.5, 0.5), flip=False)
    x, m = t(img, lab)  # 6x10 after scaling, padded bottom/right to 16x24
    assert x.shape == (3, 16, 24)
    assert (m[6:] == 255).all() and (m[:, 10:] == 255).all()
    assert set(m[:6, :10].unique().tolist()) <= {0, 1, 2, 3}
    pad_value = torch.tensor([(0 - mu) / sd for mu, sd in zip(IMAGENET_MEAN, IMAGENET_STD)])
    assert torch.allclose(x[:, 10, 20], pad_value)  # image padded with 0 before normalisation
    t2 = SegTransform(train=True, crop_size=(8, 8), scale_range=(2.0, 2.0), flip=False)
    x2, m2 = t2(img, lab)
    assert x2.shape == (3, 8, 8) and set(m2.unique().tolist()) <= {0, 1, 2, 3}


def test_collate_pads_to_largest():
    a = (torch.ones(3, 4, 6), torch.zeros(4, 6, dtype=torch.long))
    b = (torch.ones(3, 5, 3), torch.ones(5, 3, dtype=torch.long))
    x, m = collate_segmentation([a, b])
    assert x.shape == (2, 3, 5, 6) and m.shape == (2, 5, 6)
    assert (m[0, 4:] == 255).all() and (m[1, :, 3:] == 255).all() and (x[1, :, :, 3:] == 0).all()
