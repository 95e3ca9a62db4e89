"""densekd's segmentation layouts (:mod:`densekd.data.segmentation`: folder, ADE20K, Cityscapes, VOC) as datasets
the ``transformers`` Trainer reads: items ``{"pixel_values": [3, H, W], "labels": [H, W]}``, batches collated by
:func:`collate` (padded to the largest image: pixels 0, labels the ignore index)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from torch import Tensor
from torch.utils.data import Dataset

from ...data.segmentation import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SegmentationDataset,
    SegTransform,
    build_segmentation_dataset,
    collate_segmentation,
)


class SegmentationItems(Dataset):
    """A :class:`~densekd.data.segmentation.SegmentationDataset` whose items are the Trainer's dicts."""

    def __init__(self, base: SegmentationDataset) -> None:
        self.base = base
        self.num_classes = base.num_classes
        self.class_names = base.class_names
        self.ignore_index = base.ignore_index

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        image, mask = self.base[i]
        return {"pixel_values": image, "labels": mask}


def build(format: str, root: str, split: str, train: bool, num_labels: int | None = None,
          crop_size: Sequence[int] = (512, 512), scale_range: Sequence[float] = (0.5, 2.0), flip: bool = True,
          mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, ignore_index: int = 255,
          class_names: Sequence[str] | None = None, max_images: int | None = None) -> SegmentationItems:
    """One split: training (random scale, crop, flip) or evaluation (full resolution) transforms, normalised."""
    transform = SegTransform(train=train, crop_size=(int(crop_size[0]), int(crop_size[-1])),
                             scale_range=(float(scale_range[0]), float(scale_range[1])), flip=flip, mean=mean, std=std,
                             ignore_index=ignore_index)
    return SegmentationItems(build_segmentation_dataset(format, root, split, transform, num_labels, ignore_index,
                                                        class_names, max_images))


class Collate:
    """Stack a list of items into a batch dict (a class, so the Trainer's dataloader workers can pickle it)."""

    def __init__(self, ignore_index: int = 255) -> None:
        self.ignore_index = ignore_index

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Tensor]:
        images, masks = collate_segmentation([(b["pixel_values"], b["labels"]) for b in items], self.ignore_index)
        return {"pixel_values": images, "labels": masks}


def collate(items: Sequence[Mapping[str, Any]]) -> dict[str, Tensor]:
    """:class:`Collate` with the ignore index 255."""
    return Collate()(items)
