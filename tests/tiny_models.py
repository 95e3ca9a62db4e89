"""Tiny models for the core tests: an FPN-like dict output and a head shared across levels."""
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


class TinyDetector(nn.Module):
    """body → dict of 2 levels ('p3', 'p4') → a head shared across levels (called twice) → scalar losses."""

    def __init__(self, width: int = 8, num_classes: int = 3):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU())
        self.down = nn.Conv2d(width, width, 3, stride=2, padding=1)
        self.neck = Neck()
        self.head = nn.Conv2d(width, num_classes, 1)
        self.post = nn.Identity()  # runs after everything a teacher would need
        self.post_calls = 0

    def forward(self, x, targets=None):
        c3 = self.body(x)
        c4 = self.down(c3)
        feats = self.neck(OrderedDict([("p3", c3), ("p4", c4)]))
        logits = [self.head(f) for f in feats.values()]
        self.post_calls += 1
        out = self.post(torch.stack([lg.mean() for lg in logits]))
        if targets is None:
            return logits
        return {"loss_cls": (out - targets).pow(2).mean(), "loss_aux": 0.1 * out.abs().mean()}


class Neck(nn.Module):
    def forward(self, feats):
        return OrderedDict((k, F.relu(v)) for k, v in feats.items())


class TinySegmenter(nn.Module):
    def __init__(self, width: int = 8, num_classes: int = 3):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU())
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, x):
        return F.interpolate(self.classifier(self.encoder(x)), size=x.shape[-2:], mode="bilinear", align_corners=False)
