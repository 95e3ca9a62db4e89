"""ACAM-KD mask-collapse repro on fixed random features (methods.md, "Optimisation of the mask modules").

Only the ACAM-KD modules (aligner, STCA-FF, ASCM) are trained, Adam 3e-3, on one fixed random pair
(student 4×16×16×16, teacher 4×32×16×16, M = 6). Prints, per setting, the spatial/channel mask means, the
spatial masks' entropy, Dice and per-mask spatial std, and the KD term L_c + L_s relative to its start.

    OMP_NUM_THREADS=1 python benchmarks/acam_collapse_repro.py        (about 30 s; write-up: acam_mask_collapse.md)

``acam_kd`` (default: adversarial masks, Σ M² norm) keeps its masks and its KD term; ``acam_kd_paper`` (the
literal reading: descent, Σ M norm) drives every mask to ≈ 0 and the KD term with it. tests/test_acam_presets.py
runs :func:`run` and holds both outcomes.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from densekd import build_loss  # noqa: E402

STEPS = 300
SETTINGS: dict[str, tuple[str, dict]] = {
    "acam_kd (default: adversarial, square, z_norm=spatial)": ("acam_kd", {}),
    "acam_kd_paper (descent, sum)": ("acam_kd_paper", {}),
    # the mask-objective rows of benchmarks/acam_mask_collapse.md were measured with the literal ASCM (z_norm=none)
    "adversarial, sum": ("acam_kd", {"mask_norm": "sum", "z_norm": "none"}),
    "descent, square": ("acam_kd", {"mask_objective": "descent", "z_norm": "none"}),
    "detached, square": ("acam_kd", {"mask_objective": "detached", "z_norm": "none"}),
    "acam_kd, z_norm=none": ("acam_kd", {"z_norm": "none"}),
}


def run(name: str = "acam_kd", steps: int = STEPS, record_at=(0, 50, 100, 300), **kwargs) -> list[dict[str, float]]:
    """Train the loss modules of ``name`` for ``steps`` Adam steps on the fixed random pair; returns one row per
    step in ``record_at``: the step, the mask statistics and ``kd`` = (L_c + L_s) / its value at step 0."""
    g = torch.Generator().manual_seed(0)
    fs, ft = torch.randn(4, 16, 16, 16, generator=g), torch.randn(4, 32, 16, 16, generator=g)
    torch.manual_seed(0)
    mod = build_loss(name, student_channels=16, teacher_channels=32, num_masks=6, **kwargs)
    opt = torch.optim.Adam(mod.parameters(), lr=3e-3)
    rows, first = [], None
    for step in range(steps + 1):
        out = mod(fs, ft)
        kd = float(out["loss_channel"].detach() + out["loss_spatial"].detach())
        first = kd if first is None else first
        if step in record_at:
            rows.append({"step": step, "kd": kd / first, **mod.mask_statistics()})
        if step == steps:
            break
        opt.zero_grad()
        sum(out.values()).backward()
        opt.step()
    return rows


def main() -> None:
    torch.set_num_threads(1)
    print("setting | " + " | ".join(f"step {s}: spatial mean / std, channel mean, KD/KD₀" for s in (0, 100, 300)))
    for label, (name, kw) in SETTINGS.items():
        rows = [r for r in run(name, **kw) if r["step"] in (0, 100, 300)]
        cells = [f"{r['spatial/mean']:.3f} / {r['spatial/std']:.3f}, {r['channel/mean']:.3f}, {r['kd']:.3f}" for r in rows]
        print(f"{label} | " + " | ".join(cells))


if __name__ == "__main__":
    main()
