"""Datasets: COCO-format detection, semantic segmentation (:mod:`densekd.data.segmentation`), generated toy data,
the built-in handwritten-digits set (:mod:`densekd.data.digits`)."""
