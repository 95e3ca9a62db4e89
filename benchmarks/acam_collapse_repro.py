"""Collapse repro: only the ACAM-KD modules trained (Adam 3e-3) on fixed random features; mask stats per mode.

Run: OMP_NUM_THREADS=1 python benchmarks/acam_collapse_repro.py   (a few seconds; see acam_mask_collapse.md)
"""
import sys; sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
import torch
from densekd.losses.acam import ACAMKD
torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
fs = torch.randn(4, 16, 16, 16, generator=g); ft = torch.randn(4, 32, 16, 16, generator=g)
for obj in ("descent", "adversarial", "detached"):
    for norm in ("sum", "square"):
        torch.manual_seed(0)
        mod = ACAMKD(16, 32, num_masks=6, mask_objective=obj, mask_norm=norm)
        opt = torch.optim.Adam(mod.parameters(), lr=3e-3)
        row = []
        for step in range(301):
            out = mod(fs, ft)
            loss = sum(out.values())
            if step in (0, 50, 100, 300):
                st = mod.mask_statistics()
                row.append(f"{step}: sp {st['spatial/mean']:.3f}/H{st['spatial/entropy']:.2f}/D{st['spatial/dice']:.2f} ch {st['channel/mean']:.3f}/D{st['channel/dice']:.2f} Ls {float(out['loss_spatial']):.3f}")
            opt.zero_grad(); loss.backward(); opt.step()
        print(f"{obj:11s} {norm:6s} | " + " | ".join(row))
