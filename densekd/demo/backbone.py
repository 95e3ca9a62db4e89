"""The detection demo's pretrained backbone: the ImageNet pretraining of this setting, made by our own command.

Every detection-KD paper starts its student's backbone from ImageNet weights. The demo cannot download any, so
densekd ships its own: a MobileNetV3-Small (``width_mult`` 0.5 by default) trained to *classify* single
handwritten digits drawn the way the detection canvases draw them (random size, position, colour and noise on a
64×64 canvas), from the source digits of the detection data's ``train`` split only — the splits share no source
digit (:mod:`densekd.data.digits`), so nothing of ``dev`` or ``val`` is seen. Its classifier is dropped; the
``features`` weights are what a detector's ``backbone_checkpoint`` loads.

    sd, record = pretrain_backbone(BackboneSpec(), data_params, log=print)

The record says how it was made (command, data, schedule, seed, threads, torch), its accuracy on 2,000 single
digits drawn from the ``dev`` split's sources, and (written by :func:`densekd.assets.write_artifact`) its
checksums. Reproducible: seeded, one thread, no data loader workers.

This is a small classification loop of its own (not the engine's): it makes an artefact, it distils nothing.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping

import numpy as np

from ..errors import ConfigError

#: torchvision's detector transform normalises with these (GeneralizedRCNNTransform defaults): so does pretraining
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    """What the backbone is and how it is pretrained (the defaults are the shipped one)."""

    backbone: str = "mobilenet_v3_small"
    width_mult: float = 0.5
    iters: int = 3000
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_iters: int = 100
    seed: int = 0
    eval_images: int = 2000

    def validate(self) -> None:
        from ..models.detection import MOBILENETS

        if self.backbone not in MOBILENETS:
            raise ConfigError(f"backbone pretraining: backbone must be one of {', '.join(MOBILENETS)}, "
                              f"got {self.backbone!r}")
        for k in ("iters", "batch_size", "eval_images"):
            if getattr(self, k) < 1:
                raise ConfigError(f"backbone pretraining: {k} must be ≥ 1, got {getattr(self, k)}")
        if not self.width_mult > 0:
            raise ConfigError(f"backbone pretraining: width_mult must be > 0, got {self.width_mult}")

    def model_spec(self) -> dict[str, Any]:
        """What a detector built on it must say (the demo checks its config against this)."""
        return {"backbone": self.backbone, "width_mult": self.width_mult, "norm": "bn"}


def _sources(data_params: Mapping[str, Any], split: str) -> np.ndarray:
    """The source-digit indices of ``split`` exactly as :func:`~densekd.data.digits.make_digits_dataset` cuts them."""
    from sklearn.datasets import load_digits

    from ..data.digits import _source_split

    n_dev = int(data_params.get("n_dev", 0))
    fractions = data_params.get("source_fractions") or (
        {"train": 0.6, "val": 0.2, "dev": 0.2} if n_dev else {"train": 0.7, "val": 0.3})
    n = len(load_digits().images)
    return _source_split(n, fractions, int(data_params.get("seed", 0)))[split]


class DigitStream:
    """Single digits from ``sources`` rendered on ``canvas``×``canvas`` canvases the way the detection data draws
    them (scale range, colours, noise, threshold), with their class; an endless seeded stream."""

    def __init__(self, data_params: Mapping[str, Any], split: str, seed: int) -> None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        self.images, self.labels = digits.images.astype(np.float64), digits.target.astype(int)
        self.sources = _sources(data_params, split)
        canvas = int(data_params.get("canvas", 64))
        scale = data_params.get("scale") or [16, 32]
        self.params = {"canvas": canvas, "scale": list(scale), "digits_per_image": [1, 1],
                       "threshold": float(data_params.get("threshold", 0.35)),
                       "noise": float(data_params.get("noise", 0.04))}
        self.rng = np.random.default_rng(seed)

    def batch(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        from ..data.digits import _render

        imgs, labels = [], []
        while len(imgs) < n:
            rgb, _, inst = _render(self.rng, self.sources, self.images, self.labels, self.params)
            if len(inst) != 1:  # a digit whose scaled strokes fall under the threshold: draw again
                continue
            imgs.append(rgb)
            labels.append(inst[0]["label"])
        return np.stack(imgs), np.asarray(labels, dtype=np.int64)


def _to_tensor(imgs: np.ndarray):
    import torch

    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def build_classifier(spec: BackboneSpec, num_classes: int = 10):
    """The torchvision MobileNetV3 the detector's backbone is built from (BatchNorm), with a ``num_classes`` head."""
    import torch.nn as nn
    from torchvision.models import mobilenet_v3_large, mobilenet_v3_small

    fn = {"mobilenet_v3_small": mobilenet_v3_small, "mobilenet_v3_large": mobilenet_v3_large}[spec.backbone]
    return fn(weights=None, num_classes=num_classes, width_mult=float(spec.width_mult), norm_layer=nn.BatchNorm2d)


def evaluate_classifier(model, stream: DigitStream, n: int, batch: int = 250) -> float:
    """Top-1 accuracy (%) on ``n`` digits of ``stream``."""
    import torch

    model.eval()
    correct = 0
    with torch.no_grad():
        done = 0
        while done < n:
            k = min(batch, n - done)
            imgs, labels = stream.batch(k)
            correct += int((model(_to_tensor(imgs)).argmax(1).numpy() == labels).sum())
            done += k
    return 100.0 * correct / n


def pretrain_backbone(spec: BackboneSpec, data_params: Mapping[str, Any], command: str,
                      log: Callable[[str], None] = print) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train the classifier on the ``train`` sources; returns (the backbone's state dict without its classifier —
    keys as a torchvision MobileNetV3 names them, e.g. ``features.0.0.weight`` — and its record)."""
    import torch

    spec.validate()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # reproducible bit for bit on a given build
    try:
        torch.manual_seed(spec.seed)
        model = build_classifier(spec)
        train = DigitStream(data_params, "train", seed=spec.seed)
        opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)

        def lr_at(it: int) -> float:
            if it < spec.warmup_iters:
                return spec.lr * (0.01 + 0.99 * it / spec.warmup_iters)
            t = (it - spec.warmup_iters) / max(1, spec.iters - spec.warmup_iters)
            return spec.lr * 0.5 * (1 + math.cos(math.pi * t))

        t0 = time.perf_counter()
        model.train()
        running = None
        for it in range(spec.iters):
            for g in opt.param_groups:
                g["lr"] = lr_at(it)
            imgs, labels = train.batch(spec.batch_size)
            loss = torch.nn.functional.cross_entropy(model(_to_tensor(imgs)), torch.from_numpy(labels))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            lv = float(loss.detach())
            running = lv if running is None else 0.98 * running + 0.02 * lv
            if (it + 1) % max(1, spec.iters // 10) == 0:
                log(f"backbone: iteration {it + 1}/{spec.iters}, loss {running:.3f} ({time.perf_counter() - t0:.0f} s)")
        acc = {split: round(evaluate_classifier(model, DigitStream(data_params, split, seed=10_000 + spec.seed),
                                                spec.eval_images), 2) for split in ("dev",)}
        log(f"backbone: top-1 accuracy on {spec.eval_images} single digits from the dev split's sources: {acc['dev']:.2f} %")
    finally:
        torch.set_num_threads(threads)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith("classifier.")}
    record = {"kind": "densekd demo backbone (digit classification pretraining)", "command": command,
              "model": spec.model_spec(), "pretraining": asdict(spec),
              "data": {"generator": "densekd.demo.backbone.DigitStream (single digits)", "sources": "train split",
                       **{k: v for k, v in data_params.items()}},
              "metric": {"dev top-1": acc["dev"]}, "threads": 1, "torch": torch.__version__,
              "train_seconds": round(time.perf_counter() - t0, 1), "created": time.strftime("%Y-%m-%d")}
    return sd, record


__all__ = ["BackboneSpec", "DigitStream", "build_classifier", "evaluate_classifier", "pretrain_backbone"]
