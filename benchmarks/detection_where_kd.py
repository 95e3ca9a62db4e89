"""Where does feature distillation's error sit on the detection demo, and where do ACAM-KD's masks look?

For trained runs of the detection demo (a FitNet and an ACAM-KD student, rebuilt by the engine from their
checkpoints), over the images of the run's evaluation split (dev while choosing settings): at each distilled level,
the share of the student–teacher squared error Σ (F_T − align(F_S))² that falls inside the ground-truth boxes
against the share of the map's area the boxes cover (a level's cell counts as inside when its centre lies in a box),
and for ACAM-KD the share of each spatial mask's mass inside the boxes and how alike the masks are (mean pairwise
Dice), and how many spatial patterns STCA-FF's fused map carries (the share of its per-channel standardised
variance in its first singular component: near 1, every spatial mask σ(S_s Z) is a function of one pattern and the
masks cannot differ, whatever keeps the units apart), and whether the M spatial units themselves point one way (their
mean pairwise |cosine|: near 1, the masks are one mask whatever the fused map carries).

    python benchmarks/detection_where_kd.py RUN_DIR [RUN_DIR ...] [--images 100]

Prints one Markdown table (a row per run and level).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch


def box_mask(boxes: torch.Tensor, h: int, w: int, stride: float) -> torch.Tensor:
    """[h, w] bool: cells whose centre ((x + 0.5)·stride, (y + 0.5)·stride) lies inside any box (x1, y1, x2, y2)."""
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) * stride
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) * stride
    inside = torch.zeros(h, w, dtype=torch.bool)
    for x1, y1, x2, y2 in boxes.tolist():
        inside |= (ys[:, None] >= y1) & (ys[:, None] < y2) & (xs[None, :] >= x1) & (xs[None, :] < x2)
    return inside


def measure(run_dir: Path, n_images: int) -> list[dict]:
    from densekd.engine.trainer import Trainer
    from densekd.losses.acam import dice_diversity
    from densekd.run_folder import CONFIG_FILE

    trainer = Trainer(str(run_dir / CONFIG_FILE), ["train.resume=true"])
    try:
        distiller = trainer.model
        student, teacher = distiller.student.eval(), distiller.teacher.eval()
        mods = {k.split("backbone:")[-1]: m.eval() for k, m in distiller.kd_losses.items() if "backbone:" in k}
        acc: dict[str, dict[str, float]] = {lv: {"err_in": 0.0, "err": 0.0, "area_in": 0.0, "area": 0.0,
                                                  "mask_in": 0.0, "mask": 0.0, "dice": 0.0, "n": 0} for lv in mods}
        for i in range(min(n_images, len(trainer.val_set))):
            image, target = trainer.val_set[i]
            with torch.no_grad():
                batch = student.transform([image])[0].tensors
                fs = student.backbone(batch)
                ft = teacher.backbone(teacher.transform([image])[0].tensors)
                for lv, mod in mods.items():
                    s, t = fs[lv], ft[lv]
                    h, w = t.shape[-2:]
                    inside = box_mask(target["boxes"], h, w, batch.shape[-2] / h).float()
                    err = (t - mod.align(s)).pow(2).sum(1)[0]  # [h, w]
                    a = acc[lv]
                    a["err_in"] += float((err * inside).sum())
                    a["err"] += float(err.sum())
                    a["area_in"] += float(inside.sum())
                    a["area"] += h * w
                    a["n"] += 1
                    if hasattr(mod, "mask_statistics"):
                        mod(s, t)
                        sp = mod.last_masks.get("spatial") if hasattr(mod.last_masks, "get") else None
                        if sp is not None:
                            m = sp[0].float()  # [M, h, w]
                            a["mask_in"] += float((m * inside).sum())
                            a["mask"] += float(m.sum())
                            a["dice"] += float(dice_diversity(m.flatten(1)[None]))
                            # how many spatial patterns the fused map carries: the share of its (per-channel
                            # standardised, as the spatial units see it) variance in its first singular component
                            z = mod.last_masks["fused"][0].float().flatten(1)  # [C, hw]
                            if z.shape[1] > 1:
                                z = (z - z.mean(1, keepdim=True)) / (z.std(1, keepdim=True) + 1e-5)
                                sv = torch.linalg.svdvals(z)
                                a["rank1"] = a.get("rank1", 0.0) + float(sv[0] ** 2 / (sv ** 2).sum().clamp_min(1e-12))
        rows = []
        for lv, a in acc.items():
            row = {"run": str(run_dir), "level": lv, "err_in_boxes": a["err_in"] / max(a["err"], 1e-12),
                   "area_in_boxes": a["area_in"] / max(a["area"], 1e-12)}
            units = getattr(getattr(mods[lv], "ascm", None), "spatial_units", None)
            if units is not None and units.shape[0] > 1:  # are the M units themselves one direction?
                u = torch.nn.functional.normalize(units.detach().float(), dim=1)
                off = (u @ u.t())[~torch.eye(u.shape[0], dtype=torch.bool)]
                row["units_cos"] = float(off.abs().mean())
            if a["mask"]:
                row["mask_in_boxes"] = a["mask_in"] / a["mask"]
                row["mask_dice"] = a["dice"] / a["n"]
                if "rank1" in a:
                    row["fused_rank1"] = a["rank1"] / a["n"]
            rows.append(row)
        return rows
    finally:
        trainer.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--images", type=int, default=100)
    a = p.parse_args()
    print("| run | level | share of the squared error inside the boxes | share of the area inside the boxes | "
          "share of ACAM-KD's spatial mask mass inside the boxes | pairwise Dice of the masks | share of the fused "
          "map's spatial variance in one pattern | mean pairwise |cos| of the spatial units |")
    print("|---|---|---|---|---|---|---|---|")
    for run in a.runs:
        for r in measure(run, a.images):
            mi = f"{r['mask_in_boxes']:.2f}" if "mask_in_boxes" in r else ""
            md = f"{r['mask_dice']:.2f}" if "mask_dice" in r else ""
            r1 = f"{r['fused_rank1']:.2f}" if "fused_rank1" in r else ""
            uc = f"{r['units_cos']:.2f}" if "units_cos" in r else ""
            print(f"| {r['run']} | {r['level']} | {r['err_in_boxes']:.2f} | {r['area_in_boxes']:.2f} | {mi} | {md} | {r1} "
                  f"| {uc} |")


if __name__ == "__main__":
    main()
