"""Datasets: COCO-format detection, generated toy data."""
