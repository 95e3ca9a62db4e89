"""Built-in dataset: real handwritten digits (scikit-learn's ``load_digits``) scattered on small canvases.

Each canvas holds a few of the 1,797 8×8 scikit-learn digits, each rescaled (bilinear) to a random size and
drawn in a random bright colour over a dark, lightly noisy background. One build gives, per split:

    <root>/<split>/images/<stem>.png          RGB canvas
    <root>/<split>/masks/<stem>.png           single-channel class ids: 0 background, digit d → d + 1
    <root>/<split>/annotations.json           COCO detection/instance file (category id d + 1, name "d")
    <root>/manifest.json                      the build parameters (a rebuild with the same ones is skipped)

A pixel belongs to a digit when the digit's scaled intensity exceeds ``threshold``; the digit's box is the
tight box of those pixels (COCO ``bbox`` = [x, y, w, h] with exclusive right/bottom edges), so boxes, instance
RLEs and the class masks agree exactly. Digits never overlap (rejection sampling of their rectangles).

The splits draw from disjoint source digits: the 1,797 sources are shuffled once (by ``seed``) and cut into
consecutive blocks in proportion to ``source_fractions``, so no handwritten sample appears in two splits.
Everything is deterministic from ``seed``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import ConfigError

#: category names; category id (and mask class id) of digit d is d + 1.
DIGIT_CLASSES: tuple[str, ...] = tuple(str(d) for d in range(10))
NUM_SEG_CLASSES = 11  # background + 10 digits
_MANIFEST = "manifest.json"
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class DigitsSplit:
    """Paths of one split. ``image_dir`` is shared by the COCO file and the image/mask folder layout."""

    name: str
    image_dir: Path
    mask_dir: Path
    annotations: Path
    num_images: int


@dataclass(frozen=True)
class DigitsDataset:
    """What :func:`make_digits_dataset` returns: the root, its splits and the parameters that built it."""

    root: Path
    splits: dict[str, DigitsSplit]
    params: dict[str, Any] = field(default_factory=dict)
    built: bool = True  # False when an existing identical build was reused

    def __getitem__(self, split: str) -> DigitsSplit:
        if split not in self.splits:
            raise ConfigError(f"digits dataset has splits {sorted(self.splits)}, not {split!r}")
        return self.splits[split]

    @property
    def num_classes(self) -> int:
        return NUM_SEG_CLASSES


def _check(params: dict[str, Any]) -> None:
    def fail(key: str, expected: str) -> None:
        raise ConfigError(f"make_digits_dataset: {key} must be {expected}, got {params[key]!r}")

    splits = params["splits"]
    if not isinstance(splits, dict) or not splits:
        raise ConfigError(f"make_digits_dataset: splits must be a non-empty {{name: num_images}} dict, got {splits!r}")
    for name, n in splits.items():
        if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
            raise ConfigError(f"make_digits_dataset: split names must be plain folder names, got {name!r}")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ConfigError(f"make_digits_dataset: split {name!r} needs a positive int of images, got {n!r}")
    fr = params["source_fractions"]
    if set(fr) != set(splits):
        raise ConfigError(
            f"make_digits_dataset: source_fractions must name the same splits as splits "
            f"({sorted(splits)}), got {sorted(fr)}"
        )
    if any(not isinstance(v, (int, float)) or v <= 0 for v in fr.values()):
        fail("source_fractions", "positive numbers")
    c = params["canvas"]
    if not isinstance(c, int) or isinstance(c, bool) or c < 16:
        fail("canvas", "an int ≥ 16 (pixels)")
    lo, hi = params["scale"]
    if not (isinstance(lo, int) and isinstance(hi, int) and 8 <= lo <= hi <= c):
        fail("scale", f"(min, max) ints with 8 ≤ min ≤ max ≤ canvas ({c})")
    dmin, dmax = params["digits_per_image"]
    if not (isinstance(dmin, int) and isinstance(dmax, int) and 1 <= dmin <= dmax):
        fail("digits_per_image", "(min, max) ints with 1 ≤ min ≤ max")
    if not 0.0 < float(params["threshold"]) < 1.0:
        fail("threshold", "in (0, 1)")
    if not 0.0 <= float(params["noise"]) <= 0.5:
        fail("noise", "in [0, 0.5]")
    if not isinstance(params["seed"], int) or isinstance(params["seed"], bool):
        fail("seed", "an int")


def _source_split(n_sources: int, fractions: Mapping[str, float], seed: int) -> dict[str, np.ndarray]:
    """Disjoint blocks of a seeded permutation of the source indices, sized by ``fractions``."""
    perm = np.random.default_rng(seed).permutation(n_sources)
    names = list(fractions)
    total = float(sum(fractions.values()))
    cuts = np.round(np.cumsum([fractions[k] / total for k in names]) * n_sources).astype(int)
    cuts[-1] = n_sources
    out, start = {}, 0
    for name, end in zip(names, cuts):
        if end - start < 10:
            raise ConfigError(
                f"make_digits_dataset: source_fractions give split {name!r} only {end - start} source digits "
                f"(need ≥ 10 of the {n_sources})"
            )
        out[name] = perm[start:end]
        start = end
    return out


def _resize_bilinear(img: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a square float image (half-pixel centres, like ``align_corners=False``)."""
    n = img.shape[0]
    coords = (np.arange(size) + 0.5) * (n / size) - 0.5
    coords = np.clip(coords, 0, n - 1)
    i0 = np.floor(coords).astype(int)
    i1 = np.minimum(i0 + 1, n - 1)
    w = coords - i0
    rows = img[i0] * (1 - w)[:, None] + img[i1] * w[:, None]
    return rows[:, i0] * (1 - w)[None, :] + rows[:, i1] * w[None, :]


def _render(
    rng: np.random.Generator,
    sources: np.ndarray,
    images: np.ndarray,
    labels: np.ndarray,
    p: Mapping[str, Any],
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """One canvas: (RGB uint8 [H,W,3], class mask uint8 [H,W], instances with box/label/binary mask)."""
    c = p["canvas"]
    lo, hi = p["scale"]
    canvas = np.clip(0.08 + p["noise"] * rng.standard_normal((c, c, 3)), 0.0, 1.0)
    cls = np.zeros((c, c), np.uint8)
    taken = np.zeros((c, c), bool)
    instances: list[dict[str, Any]] = []
    n_digits = int(rng.integers(p["digits_per_image"][0], p["digits_per_image"][1] + 1))
    for _ in range(n_digits):
        src = int(rng.choice(sources))
        size = int(rng.integers(lo, hi + 1))
        colour = rng.uniform(0.55, 1.0, size=3)
        for _try in range(20):  # rejection sampling: digit rectangles never overlap
            y, x = (int(v) for v in rng.integers(0, c - size + 1, size=2))
            if not taken[y : y + size, x : x + size].any():
                break
        else:
            continue
        digit = _resize_bilinear(images[src] / 16.0, size)  # sklearn digits are 0..16
        fg = digit > p["threshold"]
        if not fg.any():
            continue
        taken[y : y + size, x : x + size] = True
        region = canvas[y : y + size, x : x + size]
        region[:] = region * (1 - digit[..., None]) + colour * digit[..., None]
        d = int(labels[src])
        cls[y : y + size, x : x + size][fg] = d + 1
        full = np.zeros((c, c), bool)
        full[y : y + size, x : x + size] = fg
        ys, xs = np.nonzero(fg)
        box = [x + int(xs.min()), y + int(ys.min()), x + int(xs.max()) + 1, y + int(ys.max()) + 1]
        instances.append({"label": d, "box": box, "mask": full, "source": src})
    return (canvas * 255 + 0.5).astype(np.uint8), cls, instances


def _params_hash(params: Mapping[str, Any]) -> str:
    return hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]


def _paths(root: Path, splits: Mapping[str, int]) -> dict[str, DigitsSplit]:
    return {
        name: DigitsSplit(name, root / name / "images", root / name / "masks", root / name / "annotations.json", n)
        for name, n in splits.items()
    }


def make_digits_dataset(
    root: str | os.PathLike[str],
    seed: int = 0,
    n_train: int = 512,
    n_val: int = 256,
    n_dev: int = 0,
    canvas: int = 64,
    scale: tuple[int, int] = (16, 32),
    digits_per_image: tuple[int, int] = (2, 4),
    threshold: float = 0.35,
    noise: float = 0.04,
    source_fractions: Mapping[str, float] | None = None,
) -> DigitsDataset:
    """Build (or reuse) the digits dataset under ``root``; returns its paths.

    Splits: ``train`` (n_train canvases), ``val`` (n_val) and, when ``n_dev > 0``, ``dev`` — a held-out split
    for choosing settings so that ``val`` is only reported on. Source digits are split first (default
    fractions train 0.6 / val 0.2 / dev 0.2, or train 0.7 / val 0.3 without dev), so the splits share no
    handwritten sample. Idempotent: if ``root/manifest.json`` records the same parameters and every file is
    present the build is skipped (``.built`` is then False); different parameters rebuild from scratch.
    """
    splits = {"train": n_train, "val": n_val}
    if n_dev:
        splits["dev"] = n_dev
    if source_fractions is None:
        source_fractions = {"train": 0.6, "val": 0.2, "dev": 0.2} if n_dev else {"train": 0.7, "val": 0.3}
    params: dict[str, Any] = {
        "format": _FORMAT_VERSION,
        "seed": seed,
        "splits": splits,
        "canvas": canvas,
        "scale": list(scale) if isinstance(scale, (tuple, list)) and len(scale) == 2 else scale,
        "digits_per_image": list(digits_per_image)
        if isinstance(digits_per_image, (tuple, list)) and len(digits_per_image) == 2
        else digits_per_image,
        "threshold": threshold,
        "noise": noise,
        "source_fractions": dict(source_fractions),
    }
    for key in ("scale", "digits_per_image"):
        if not isinstance(params[key], list):
            raise ConfigError(f"make_digits_dataset: {key} must be a (min, max) pair, got {params[key]!r}")
    _check(params)
    root = Path(root)
    paths = _paths(root, splits)
    manifest = root / _MANIFEST
    if manifest.is_file():
        try:
            old = json.loads(manifest.read_text())
        except json.JSONDecodeError:
            old = {}
        if old.get("params") == params and _complete(paths):
            return DigitsDataset(root, paths, params, built=False)

    from sklearn.datasets import load_digits  # shipped with scikit-learn: no download

    digits = load_digits()
    images, labels = digits.images.astype(np.float64), digits.target.astype(int)
    sources = _source_split(len(images), params["source_fractions"], seed)
    if manifest.exists():
        manifest.unlink()  # an interrupted rebuild must not look complete
    for i, (name, sp) in enumerate(paths.items()):
        shutil.rmtree(root / name, ignore_errors=True)
        sp.image_dir.mkdir(parents=True)
        sp.mask_dir.mkdir(parents=True)
        # one independent stream per split, derived from (seed, split index)
        rng = np.random.default_rng([seed, i])
        _write_split(sp, rng, sources[name], images, labels, params)
    record = {"params": params, "hash": _params_hash(params),
              "sources": {k: sorted(int(v) for v in s) for k, s in sources.items()}}
    manifest.write_text(json.dumps(record))
    return DigitsDataset(root, paths, params, built=True)


def _complete(paths: Mapping[str, DigitsSplit]) -> bool:
    for sp in paths.values():
        if not sp.annotations.is_file():
            return False
        for d in (sp.image_dir, sp.mask_dir):
            if not d.is_dir() or sum(1 for _ in d.glob("*.png")) != sp.num_images:
                return False
    return True


def _write_split(
    sp: DigitsSplit,
    rng: np.random.Generator,
    sources: np.ndarray,
    images: np.ndarray,
    labels: np.ndarray,
    p: Mapping[str, Any],
) -> None:
    from PIL import Image
    from pycocotools import mask as mask_utils

    coco_images, coco_anns = [], []
    ann_id = 1
    for k in range(sp.num_images):
        rgb, cls, instances = _render(rng, sources, images, labels, p)
        stem = f"{k:06d}"
        Image.fromarray(rgb, "RGB").save(sp.image_dir / f"{stem}.png")
        Image.fromarray(cls, "L").save(sp.mask_dir / f"{stem}.png")
        h, w = cls.shape
        coco_images.append({"id": k + 1, "file_name": f"{stem}.png", "height": h, "width": w})
        for inst in instances:
            x1, y1, x2, y2 = inst["box"]
            rle = mask_utils.encode(np.asfortranarray(inst["mask"].astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            coco_anns.append({
                "id": ann_id, "image_id": k + 1, "category_id": inst["label"] + 1,
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": int(inst["mask"].sum()),
                "iscrowd": 0, "segmentation": rle, "source_index": inst["source"],
            })
            ann_id += 1
    coco = {
        "info": {"description": "densekd built-in digits (scikit-learn load_digits)", "version": _FORMAT_VERSION},
        "images": coco_images,
        "annotations": coco_anns,
        "categories": [{"id": d + 1, "name": name, "supercategory": "digit"} for d, name in enumerate(DIGIT_CLASSES)],
    }
    sp.annotations.write_text(json.dumps(coco))


def load_split_arrays(split: DigitsSplit) -> tuple[np.ndarray, np.ndarray]:
    """All images [N,H,W,3] uint8 and class masks [N,H,W] uint8 of a split, in stem order (for small demos)."""
    from PIL import Image

    stems = sorted(p.stem for p in split.image_dir.glob("*.png"))
    imgs = np.stack([np.asarray(Image.open(split.image_dir / f"{s}.png").convert("RGB")) for s in stems])
    masks = np.stack([np.asarray(Image.open(split.mask_dir / f"{s}.png")) for s in stems])
    return imgs, masks


__all__ = ["DIGIT_CLASSES", "NUM_SEG_CLASSES", "DigitsDataset", "DigitsSplit", "load_split_arrays",
           "make_digits_dataset"]
