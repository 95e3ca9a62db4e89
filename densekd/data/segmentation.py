"""Semantic segmentation datasets (Cityscapes, Pascal VOC, generic image/mask folder) and transforms.

Layouts (``root`` is the config's ``data.root``):

- ``cityscapes``: ``leftImg8bit/<split>/<city>/<name>_leftImg8bit.png`` with
  ``gtFine/<split>/<city>/<name>_gtFine_labelIds.png``. labelIds are mapped to the official 19 trainIds
  (:data:`CITYSCAPES_LABEL_TO_TRAIN`); every other id becomes 255 (ignore).
- ``voc``: ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png`` (palette PNG: the pixel values are class
  ids 0–20, 255 = object border = ignore), ids listed in ``ImageSets/Segmentation/<split>.txt``.
- ``folder``: ``<split>/images/<stem>.{png,jpg,jpeg}`` with ``<split>/masks/<stem>.png`` (single-channel PNG
  of class ids; ``ignore_index`` allowed).
- ``ade20k``: ADE20K's SceneParsing release (``ADEChallengeData2016``): ``images/<split>/<stem>.jpg`` with
  ``annotations/<split>/<stem>.png``, splits ``training`` / ``validation``. Its 150 classes are ids 1–150 and 0 is
  "other": ids are shifted down by one and 0 becomes 255 (ignore), as SegFormer's ``do_reduce_labels`` does.

Every sample is checked when loaded: a mask whose size differs from its image, a multi-channel mask, or a label
outside ``[0, num_classes)`` that is not the ignore index fails with one line naming the file (and the values).

Transforms: training = random scale (``scale_range``), pad to the crop size (image 0, mask ``ignore_index``),
random crop, horizontal flip, normalise. Evaluation = full resolution, no resize, normalise. A batch is
``(images [B, 3, H, W] float, masks [B, H, W] int64)``; images of different sizes in one batch are padded to the
largest (image 0, mask ignore — padded pixels are never scored).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import ConfigError

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)
#: Official cityscapesScripts labelId → trainId for the 19 evaluated classes; all other ids → 255.
CITYSCAPES_LABEL_TO_TRAIN = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
    27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}
VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_IMG_EXTS = (".png", ".jpg", ".jpeg")


# --------------------------------------------------------------------------- transforms
@dataclass
class SegTransform:
    """Paired image/mask transform. ``train=False``: full resolution, only normalisation."""

    train: bool
    crop_size: tuple[int, int] = (512, 1024)
    scale_range: tuple[float, float] = (0.5, 2.0)
    flip: bool = True
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD
    ignore_index: int = 255

    def __call__(self, image: Image.Image, mask: np.ndarray) -> tuple[Tensor, Tensor]:
        img = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)  # [3, H, W] uint8
        msk = torch.from_numpy(mask.astype(np.int64))  # [H, W]
        if self.train:
            img, msk = self._augment(img, msk)
        x = img.float().div_(255.0)
        mean = torch.tensor(self.mean, dtype=x.dtype).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(3, 1, 1)
        return (x - mean) / std, msk

    def _augment(self, img: Tensor, msk: Tensor) -> tuple[Tensor, Tensor]:
        # Random numbers come from torch's RNG (seeded per DataLoader worker by torch), so a seeded run repeats.
        lo, hi = self.scale_range
        s = lo + (hi - lo) * float(torch.rand(()))
        h, w = msk.shape
        nh, nw = max(1, int(round(h * s))), max(1, int(round(w * s)))
        if (nh, nw) != (h, w):
            img = F.interpolate(img[None].float(), size=(nh, nw), mode="bilinear", align_corners=False)[0]
            img = img.round_().clamp_(0, 255).to(torch.uint8)
            msk = F.interpolate(msk[None, None].float(), size=(nh, nw), mode="nearest")[0, 0].long()
        ch, cw = self.crop_size
        ph, pw = max(ch - nh, 0), max(cw - nw, 0)
        if ph or pw:  # pad bottom/right: image 0, mask ignore
            img = F.pad(img, (0, pw, 0, ph), value=0)
            msk = F.pad(msk, (0, pw, 0, ph), value=self.ignore_index)
        H, W = msk.shape
        y = int(torch.randint(0, H - ch + 1, ()))
        x = int(torch.randint(0, W - cw + 1, ()))
        img, msk = img[:, y:y + ch, x:x + cw], msk[y:y + ch, x:x + cw]
        if self.flip and float(torch.rand(())) < 0.5:
            img, msk = img.flip(-1), msk.flip(-1)
        return img.contiguous(), msk.contiguous()


# --------------------------------------------------------------------------- dataset
class SegmentationDataset(Dataset):
    """A list of (image file, mask file) pairs with a label mapping and a :class:`SegTransform`.

    ``label_map``: optional 256-entry lookup table applied to the raw mask values (Cityscapes labelIds →
    trainIds). Items are ``(image [3, H, W] float, mask [H, W] int64)``.
    """

    def __init__(
        self,
        samples: Sequence[tuple[Path, Path]],
        num_classes: int,
        transform: SegTransform,
        ignore_index: int = 255,
        label_map: np.ndarray | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        self.samples = [(Path(a), Path(b)) for a, b in samples]
        self.num_classes = num_classes
        self.transform = transform
        self.ignore_index = ignore_index
        self.label_map = label_map
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        if len(self.class_names) != num_classes:
            raise ConfigError(f"data.class_names has {len(self.class_names)} names for num_classes={num_classes}")

    def __len__(self) -> int:
        return len(self.samples)

    def load_mask(self, index: int) -> np.ndarray:
        """The checked label map (after ``label_map``) of sample ``index``, int64 [H, W]."""
        img_path, mask_path = self.samples[index]
        return self._load(img_path, mask_path)[1]

    def _load(self, img_path: Path, mask_path: Path) -> tuple[Image.Image, np.ndarray]:
        image = Image.open(img_path).convert("RGB")
        m = Image.open(mask_path)
        if m.mode not in ("L", "P", "I", "I;16", "1"):
            raise ValueError(
                f"mask {mask_path} must be a single-channel PNG of class ids (mode L or P), found mode {m.mode}"
            )
        if m.size != image.size:
            raise ValueError(
                f"mask {mask_path} is {m.size[0]}x{m.size[1]} (WxH) but its image {img_path} is "
                f"{image.size[0]}x{image.size[1]}"
            )
        mask = np.asarray(m).astype(np.int64)
        if self.label_map is not None:
            if mask.min() < 0 or mask.max() >= len(self.label_map):
                raise ValueError(f"mask {mask_path} has raw ids outside [0, {len(self.label_map)})")
            mask = self.label_map[mask]
        if mask.size and 0 <= mask.min() and mask.max() < 65536:  # bincount: much faster than np.unique
            values = np.flatnonzero(np.bincount(mask.ravel()))
        else:
            values = np.unique(mask)
        bad = values[((values < 0) | (values >= self.num_classes)) & (values != self.ignore_index)]
        if bad.size:
            raise ValueError(
                f"mask {mask_path} has label(s) {bad[:10].tolist()} outside [0, {self.num_classes}) that are not "
                f"the ignore index {self.ignore_index}"
            )
        return image, mask

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image, mask = self._load(*self.samples[index])
        return self.transform(image, mask)


def collate_segmentation(batch: Sequence[tuple[Tensor, Tensor]], ignore_index: int = 255) -> tuple[Tensor, Tensor]:
    """Stack ``(image, mask)`` items; pads to the largest size (image 0, mask ``ignore_index``) if they differ."""
    H = max(int(im.shape[-2]) for im, _ in batch)
    W = max(int(im.shape[-1]) for im, _ in batch)
    images = batch[0][0].new_zeros(len(batch), 3, H, W)
    masks = torch.full((len(batch), H, W), ignore_index, dtype=torch.int64)
    for i, (im, m) in enumerate(batch):  # one copy per image
        images[i, :, : im.shape[-2], : im.shape[-1]] = im
        masks[i, : m.shape[-2], : m.shape[-1]] = m
    return images, masks


# --------------------------------------------------------------------------- layouts
def _need_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise ConfigError(f"{what}: directory not found: {path}")
    return path


def cityscapes_samples(root: str | Path, split: str) -> list[tuple[Path, Path]]:
    root = Path(root)
    img_dir = _need_dir(root / "leftImg8bit" / split, "Cityscapes images (data.root)")
    gt_dir = _need_dir(root / "gtFine" / split, "Cityscapes labels (data.root)")
    out = []
    for img in sorted(img_dir.glob("*/*_leftImg8bit.png")):
        stem = img.name[: -len("_leftImg8bit.png")]
        mask = gt_dir / img.parent.name / f"{stem}_gtFine_labelIds.png"
        if not mask.is_file():
            raise ConfigError(f"Cityscapes image {img} has no label file {mask}")
        out.append((img, mask))
    if not out:
        raise ConfigError(f"no Cityscapes images (*/*_leftImg8bit.png) under {img_dir}")
    return out


def voc_samples(root: str | Path, split: str) -> list[tuple[Path, Path]]:
    root = Path(root)
    list_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not list_file.is_file():
        raise ConfigError(f"Pascal VOC split list not found: {list_file}")
    ids = [ln.strip() for ln in list_file.read_text().splitlines() if ln.strip()]
    out = []
    for i in ids:
        img, mask = root / "JPEGImages" / f"{i}.jpg", root / "SegmentationClass" / f"{i}.png"
        if not img.is_file():
            raise ConfigError(f"{list_file} lists {i!r} but the image {img} does not exist")
        if not mask.is_file():
            raise ConfigError(f"{list_file} lists {i!r} but the mask {mask} does not exist")
        out.append((img, mask))
    if not out:
        raise ConfigError(f"Pascal VOC split list {list_file} is empty")
    return out


def folder_samples(root: str | Path, split: str) -> list[tuple[Path, Path]]:
    base = Path(root) / split
    img_dir = _need_dir(base / "images", "image folder (data.root/<split>/images)")
    mask_dir = _need_dir(base / "masks", "mask folder (data.root/<split>/masks)")
    out = []
    for img in sorted(p for p in img_dir.iterdir() if p.suffix.lower() in _IMG_EXTS):
        mask = mask_dir / f"{img.stem}.png"
        if not mask.is_file():
            raise ConfigError(f"image {img} has no mask {mask} (masks must be PNGs with the same stem)")
        out.append((img, mask))
    if not out:
        raise ConfigError(f"no images ({', '.join(_IMG_EXTS)}) under {img_dir}")
    return out


def ade20k_samples(root: str | Path, split: str) -> list[tuple[Path, Path]]:
    root = Path(root)
    img_dir = _need_dir(root / "images" / split, "ADE20K images (data.root/images/<split>)")
    ann_dir = _need_dir(root / "annotations" / split, "ADE20K annotations (data.root/annotations/<split>)")
    out = []
    for img in sorted(p for p in img_dir.iterdir() if p.suffix.lower() in _IMG_EXTS):
        mask = ann_dir / f"{img.stem}.png"
        if not mask.is_file():
            raise ConfigError(f"ADE20K image {img} has no annotation {mask}")
        out.append((img, mask))
    if not out:
        raise ConfigError(f"no ADE20K images ({', '.join(_IMG_EXTS)}) under {img_dir}")
    return out


def ade20k_label_map() -> np.ndarray:
    """ADE20K ids 1–150 → 0–149, 0 ("other") and everything above 150 → 255 (ignore)."""
    lut = np.full(256, 255, dtype=np.int64)
    lut[1:151] = np.arange(150)
    return lut


def cityscapes_label_map() -> np.ndarray:
    lut = np.full(256, 255, dtype=np.int64)
    for label_id, train_id in CITYSCAPES_LABEL_TO_TRAIN.items():
        lut[label_id] = train_id
    return lut


FORMATS = ("cityscapes", "voc", "folder", "ade20k")


def build_segmentation_dataset(
    format: str,
    root: str | Path,
    split: str,
    transform: SegTransform,
    num_classes: int | None = None,
    ignore_index: int = 255,
    class_names: Sequence[str] | None = None,
    max_images: int | None = None,
) -> SegmentationDataset:
    """A dataset of the given layout (``cityscapes`` | ``voc`` | ``folder`` | ``ade20k``) and split directory name."""
    if format == "cityscapes":
        samples, names, label_map, k = cityscapes_samples(root, split), CITYSCAPES_CLASSES, cityscapes_label_map(), 19
    elif format == "voc":
        samples, names, label_map, k = voc_samples(root, split), VOC_CLASSES, None, 21
    elif format == "ade20k":
        samples, names, label_map, k = ade20k_samples(root, split), None, ade20k_label_map(), 150
    elif format == "folder":
        if num_classes is None:
            raise ConfigError("data.num_classes is required for the 'folder' format")
        samples, names, label_map, k = folder_samples(root, split), None, None, num_classes
    else:
        raise ConfigError(f"unknown data.format {format!r}; expected one of {', '.join(FORMATS)}")
    if num_classes is not None and num_classes != k:
        raise ConfigError(f"data.num_classes={num_classes} but the {format} format has {k} classes")
    if class_names is not None:
        names = class_names
    if max_images is not None:
        samples = samples[:max_images]
    return SegmentationDataset(samples, k, transform, ignore_index, label_map, names)


# --------------------------------------------------------------------------- toy data (tests, demos)
def make_toy_segmentation(
    root: str | Path,
    format: str = "cityscapes",
    splits: Sequence[str] = ("train", "val"),
    num_images: int = 4,
    size: tuple[int, int] = (64, 64),
    num_classes: int = 3,
    seed: int = 0,
) -> Path:
    """Write a tiny dataset in the given layout: random rectangles whose colour encodes their class, so a
    model can learn it. Cityscapes masks use real labelIds (road 7, car 26, sky 23, ... and unlabeled 0 → 255);
    VOC/folder masks hold class ids ``0..num_classes-1`` with a 255 border strip. Returns ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    h, w = size
    city_ids = [7, 26, 23, 11, 24, 8, 21, 17, 33, 31]  # labelIds of trainIds 0, 13, 10, 2, 11, 1, 8, 5, 18, 16
    palette = rng.integers(0, 256, size=(max(num_classes, len(city_ids)), 3))
    for split in splits:
        ids = []
        for i in range(num_images):
            cls = np.zeros((h, w), dtype=np.int64)
            for _ in range(4):
                y0, x0 = rng.integers(0, h), rng.integers(0, w)
                y1, x1 = y0 + rng.integers(max(1, h // 8), h // 2 + 2), x0 + rng.integers(max(1, w // 8), w // 2 + 2)
                cls[y0:y1, x0:x1] = rng.integers(0, num_classes)
            img = palette[cls].astype(np.float64) + rng.normal(0, 12, size=(h, w, 3))
            img = np.clip(img, 0, 255).astype(np.uint8)
            if format == "cityscapes":
                mask = np.asarray(city_ids, dtype=np.uint8)[cls]
                mask[:, :2] = 0  # unlabeled → ignore
                city = f"city{i % 2}"
                name = f"{city}_{i:06d}_000019"
                (root / "leftImg8bit" / split / city).mkdir(parents=True, exist_ok=True)
                (root / "gtFine" / split / city).mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png")
                Image.fromarray(mask).save(root / "gtFine" / split / city / f"{name}_gtFine_labelIds.png")
            elif format == "voc":
                mask = cls.astype(np.uint8)
                mask[:, :2] = 255
                name = f"{split}_{i:04d}"
                ids.append(name)
                (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
                (root / "SegmentationClass").mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(root / "JPEGImages" / f"{name}.jpg", quality=95)
                m = Image.frombytes("P", (w, h), np.ascontiguousarray(mask).tobytes())
                m.putpalette(rng.integers(0, 256, 768).astype(np.uint8).tolist())
                m.save(root / "SegmentationClass" / f"{name}.png")
            elif format == "folder":
                mask = cls.astype(np.uint8)
                mask[:, :2] = 255
                (root / split / "images").mkdir(parents=True, exist_ok=True)
                (root / split / "masks").mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(root / split / "images" / f"img{i:04d}.png")
                Image.fromarray(mask).save(root / split / "masks" / f"img{i:04d}.png")
            else:
                raise ConfigError(f"unknown format {format!r}; expected one of {', '.join(FORMATS)}")
        if format == "voc":
            (root / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
            (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root
