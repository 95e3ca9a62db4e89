"""``densekd bench`` at the paper's sizes: RetinaNet R101 → R50 at 800×1333, batch 2 (issue 12, part 4).

    python benchmarks/detection_real_size.py --out benchmarks/results/retinanet_800 \\
        [--threads 2] [--iters 2] [--warmup 1] [--methods fitnet fgd ... acam_kd]

What it runs: the shipped recipe ``configs/detection/retinanet_r101_r50_acamkd_2x.yaml`` unchanged except for
what a machine without COCO needs — the data are two generated 800×1333 images with boxes (written to a temporary
folder, COCO format, 80 categories; the recipe's resize leaves them at 800×1333), the teacher is a
randomly initialised RetinaNet R101-FPN saved there (timing does not depend on the weights), and the student
has no ImageNet file (``backbone_checkpoint=null``). Then ``densekd.tools.bench.bench`` measures plain training and
every method, each in its own subprocess, one after another (so RAM holds one pair of models at a time):
seconds per step, the teacher's forward, and the KD modules on top of the student's step (paired, in the
method's process; see ``densekd/tools/bench.py``). Writes ``bench.md`` / ``bench.json`` to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile

#: the shipped recipe, in the clone this script runs from
RECIPE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "detection",
                      "retinanet_r101_r50_acamkd_2x.yaml")
METHODS = ["fitnet", "cwd", "pkd", "mgd", "dmkd", "samkd", "fgd", "maskd", "acam_kd"]


def write_data(root: str, n: int = 2, h: int = 800, w: int = 1333) -> tuple[str, str]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    img_dir = os.path.join(root, "images")
    os.makedirs(img_dir, exist_ok=True)
    images, anns = [], []
    for i in range(n):
        arr = (rng.random((h, w, 3)) * 255).astype(np.uint8)
        Image.fromarray(arr).save(os.path.join(img_dir, f"{i}.png"))
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": w, "height": h})
        for k in range(8):  # a few boxes of COCO-like sizes
            bw, bh = (int(v) for v in rng.integers(24, 400, 2))
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(rng.integers(1, 81)),
                         "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": 0})
    ann = os.path.join(root, "annotations.json")
    with open(ann, "w", encoding="utf-8") as f:
        json.dump({"images": images, "annotations": anns,
                   "categories": [{"id": c, "name": str(c)} for c in range(1, 81)]}, f)
    return ann, img_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--methods", nargs="+", default=METHODS)
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the bench subprocesses inherit it
    import torch

    from densekd.tools.bench import bench, bench_table
    from densekd.models.detection import build_detector

    with tempfile.TemporaryDirectory() as tmp:
        ann, img = write_data(tmp)
        torch.manual_seed(0)
        teacher = os.path.join(tmp, "teacher_r101.pth")
        torch.save(build_detector("retinanet", "resnet101", num_classes=80).state_dict(), teacher)
        overrides = [f"data.train_ann={ann}", f"data.train_images={img}", "data.val_ann=null",
                     "data.val_images=null", "model.student.backbone_checkpoint=null",
                     f"model.teacher.checkpoint={teacher}", "train.num_workers=0"]
        rows = bench(RECIPE, args.methods, args.iters, args.warmup, overrides, args.out)
    print(bench_table(rows))


if __name__ == "__main__":
    main()
