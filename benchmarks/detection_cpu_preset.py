"""Seconds per training step of the detection ``cpu`` preset against torchvision's default builders.

    python benchmarks/detection_cpu_preset.py [--threads 2] [--iters 5] [--batch 16]     (on an otherwise idle machine)

Both detectors are built through the detection task from config dicts (so the preset is exactly what a
config with ``model.preset: cpu`` builds): the default builders (256-channel FPN and heads, frozen BatchNorm,
``trainable_layers`` 3) with the images resized to 64 px (``min_size = max_size = 64``), and the preset
(64-channel FPN and heads, BatchNorm, every layer trainable, images at their own 64-pixel size), for FCOS and
RetinaNet with ResNet-18, 10 classes, one fixed batch of 64×64 images with 2 boxes each. The steps of the
models are interleaved (round robin, after one warm-up step each) so that a change of load hits all of them;
the table gives the median step time and its ratio to the default builder of the same architecture.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from densekd.config import load_config
from densekd.tasks import get_task


def build(arch: str, preset: bool):
    model = {"num_classes": 10, "student": {"arch": arch, "backbone": "resnet18"}}
    if preset:
        model["preset"] = "cpu"
    else:
        model.update(min_size=64, max_size=64)
    cfg = load_config({"task": "detection", "model": model, "data": {}})
    return get_task("detection").build_model(cfg.model, "student")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = [torch.rand(3, 64, 64) for _ in range(args.batch)]
    targets = [{"boxes": torch.tensor([[4.0, 6, 28, 30], [34, 30, 60, 58]]), "labels": torch.tensor([1, 7])}
               for _ in range(args.batch)]
    runs = {}
    for arch in ("fcos", "retinanet"):
        for preset in (False, True):
            m = build(arch, preset).train()
            opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1e-4)
            n = sum(p.numel() for p in m.parameters())
            runs[(arch, preset)] = (m, opt, n, [])

    def step(m, opt) -> float:
        t0 = time.perf_counter()
        loss = sum(m(images, targets).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    for m, opt, _, _ in runs.values():
        step(m, opt)  # warm-up
    for _ in range(args.iters):
        for m, opt, _, times in runs.values():
            times.append(step(m, opt))
    print(f"training step, batch {args.batch} of 64×64 images, ResNet-18, {args.threads} thread(s), "
          f"median of {args.iters} interleaved steps, torch {torch.__version__}\n")
    print("| detector | builder | params | s/step | × default |")
    print("|---|---|---|---|---|")
    for arch in ("fcos", "retinanet"):
        base = statistics.median(runs[(arch, False)][3])
        for preset in (False, True):
            _, _, n, times = runs[(arch, preset)]
            t = statistics.median(times)
            name = ("cpu preset (64-ch FPN/heads, BN, all layers trained, own size)" if preset
                    else "default (256-ch FPN/heads, frozen BN, resized to 64)")
            print(f"| {arch} R18 | {name} | {n / 1e6:.2f} M | {t:.3f} | {t / base:.2f}× |")


if __name__ == "__main__":
    main()
