"""Datasets and transforms (segmentation: :mod:`densekd.data.segmentation`)."""
