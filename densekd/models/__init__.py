"""Model builders with their canonical distillation points (detection; segmentation: :mod:`densekd.models.segmentation`)."""
