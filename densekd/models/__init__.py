"""Model builders (segmentation: :mod:`densekd.models.segmentation`)."""
