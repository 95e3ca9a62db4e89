"""What a logit loss can add on the segmentation demo: how close the shipped teacher's class scores are to the
labels on the student's own training canvases (which the teacher trained on) and on val, at the logits' own
resolution (stride 4, where Hinton KD and CWD compare them).

    python benchmarks/teacher_targets.py [--config configs/compare/demo_methods.yaml] [--temperature 1]

Prints per split and temperature: the teacher's pixel accuracy against the labels (resized nearest to the
logits), the mean probability it gives the labelled class, its mean top-1 probability and its mean entropy (nats):
how much a KD target carries beyond the label the student already has. Needs the config's data (its header says
how to build it); 1 thread, seconds.
"""
from __future__ import annotations

import argparse
import tempfile

import torch
import torch.nn.functional as F

from densekd.data.segmentation import collate_segmentation
from densekd.engine.trainer import Trainer


@torch.no_grad()
def targets(teacher: torch.nn.Module, dataset, temperature: float, ignore_index: int = 255,
            batch: int = 64) -> dict[str, float]:
    seen: dict[str, torch.Tensor] = {}
    handle = teacher.classifier.register_forward_hook(lambda m, i, o: seen.__setitem__("logits", o))
    n = agree = p_label = top1 = ent = 0.0
    try:
        for start in range(0, len(dataset), batch):
            x, y = collate_segmentation([dataset[i] for i in range(start, min(start + batch, len(dataset)))])
            teacher(x)
            z = seen["logits"].float()
            yy = F.interpolate(y[:, None].float(), size=z.shape[2:], mode="nearest")[:, 0].long()
            valid = yy != ignore_index
            p = F.softmax(z / temperature, dim=1)
            lab = yy.clamp(0, z.shape[1] - 1)
            n += valid.sum().item()
            agree += ((p.argmax(1) == lab) & valid).sum().item()
            p_label += (p.gather(1, lab[:, None])[:, 0] * valid).sum().item()
            top1 += (p.max(1).values * valid).sum().item()
            ent += (-(p * p.clamp_min(1e-12).log()).sum(1) * valid).sum().item()
    finally:
        handle.remove()
    return {"pixels": n, "accuracy": agree / n, "p_label": p_label / n, "top1": top1 / n, "entropy": ent / n}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/compare/demo_methods.yaml")
    p.add_argument("--temperature", type=float, nargs="+", default=[1.0, 4.0])
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as out:
        tr = Trainer(args.config, [f"output_dir={out}", "distill.method=hinton_kd", "distill.kwargs={}",
                                   "distill.pairs=[{student: classifier}]", "train.guards=false"])
        teacher = tr.model.teacher.eval()
        print("| split | T | pixels (stride 4) | teacher accuracy | mean p(label) | mean top-1 p | mean entropy (nats) |")
        print("|---|---|---|---|---|---|---|")
        for name, ds in (("train (the student's canvases)", tr.train_set), ("val", tr.val_set)):
            for t in args.temperature:
                r = targets(teacher, ds, t)
                print(f"| {name} | {t:g} | {r['pixels']:.0f} | {100 * r['accuracy']:.2f} % | {r['p_label']:.4f} | "
                      f"{r['top1']:.4f} | {r['entropy']:.4f} |")


if __name__ == "__main__":
    main()
