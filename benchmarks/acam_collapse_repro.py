"""ACAM-KD mask-collapse repro on fixed random features (docs/methods.md, "Optimisation of the mask modules").

Only the ACAM-KD modules (aligner, STCA-FF, ASCM) are trained, Adam 3e-3, on one fixed random pair
(student 4×16×16×16, teacher 4×32×16×16, M = 6). Prints, per setting, the spatial/channel mask means, the
spatial masks' entropy, Dice and per-mask spatial std, and the KD term L_c + L_s relative to its start.

    OMP_NUM_THREADS=1 python benchmarks/acam_collapse_repro.py   (about 30 s; write-up: results/acam_mask_collapse.md)

``acam_kd`` (default: adversarial masks, Σ M² norm) keeps its masks and its KD term; ``acam_kd_paper`` (the
literal reading: descent, Σ M norm) drives every mask to ≈ 0 and the KD term with it. The training is
:func:`densekd.losses.probe.probe_loss`; tests/test_acam_presets.py runs it and holds both outcomes.
"""
from __future__ import annotations

import torch

from densekd.losses.probe import probe_loss

SETTINGS: dict[str, tuple[str, dict]] = {
    "acam_kd (default: adversarial, square, z_norm=spatial)": ("acam_kd", {}),
    "acam_kd_paper (descent, sum)": ("acam_kd_paper", {}),
    # the mask-objective rows of benchmarks/results/acam_mask_collapse.md were measured with the literal ASCM
    # (z_norm=none)
    "adversarial, sum": ("acam_kd", {"mask_norm": "sum", "z_norm": "none"}),
    "descent, square": ("acam_kd", {"mask_objective": "descent", "z_norm": "none"}),
    "detached, square": ("acam_kd", {"mask_objective": "detached", "z_norm": "none"}),
    "acam_kd, z_norm=none": ("acam_kd", {"z_norm": "none"}),
}


def main() -> None:
    torch.set_num_threads(1)
    print("setting | " + " | ".join(f"step {s}: spatial mean / std, channel mean, KD/KD₀" for s in (0, 100, 300)))
    for label, (name, kw) in SETTINGS.items():
        rows = [r for r in probe_loss(name, **kw) if r["step"] in (0, 100, 300)]
        cells = [f"{r['spatial/mean']:.3f} / {r['spatial/std']:.3f}, {r['channel/mean']:.3f}, {r['kd']:.3f}"
                 for r in rows]
        print(f"{label} | " + " | ".join(cells))


if __name__ == "__main__":
    main()
