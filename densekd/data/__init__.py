"""Datasets: COCO-format detection, semantic segmentation (:mod:`densekd.data.segmentation`), generated toy data."""
