"""Evaluation metrics (segmentation: :mod:`densekd.metrics.segmentation`)."""
