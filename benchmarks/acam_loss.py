"""ACAM-KD forward+backward: densekd's implementation vs a naive form, at COCO FPN sizes.

The naive form is written here, from the equations (docs/methods.md, "ACAM-KD"): the attention matrix
A = softmax(Q Kᵀ / √(C/2)) is materialised, and the channel/spatial losses and the Dice diversity are
computed with Python loops over masks and mask pairs. Both forms share the same parameters and inputs.

Each (form, level) is measured in a fresh subprocess, so its peak memory is its own:
- CPU: peak extra memory = peak RSS during the measured steps − RSS just before them (MiB);
- CUDA: torch.cuda.max_memory_allocated − memory allocated before the steps.

    python benchmarks/acam_loss.py                      # P3–P7 of an 800×1333 image, batch 2, C = 256
    python benchmarks/acam_loss.py --levels P5 P6 P7 --repeats 2 --markdown out.md
    python benchmarks/acam_loss.py --z-norm none        # the literal ASCM (acam_kd_paper): the projected path

``--z-norm`` is ACAM-KD's switch, applied to both forms: ``spatial`` (the default since 2026-12-05) needs all of
F_fuse (its per-channel spatial std), ``none`` lets densekd project V on the M spatial units before the attention.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

# FPN strides 8..128 on an 800×1333 image padded to 800×1344 (size_divisible=32, as torchvision and MMDetection).
LEVELS = {"P3": (100, 168), "P4": (50, 84), "P5": (25, 42), "P6": (13, 21), "P7": (7, 11)}


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def naive_acam(mod, fs, ft, z_norm="none"):
    """ACAM-KD as written: explicit softmax(QKᵀ)V and Python loops over masks (the baseline)."""
    import torch

    s_hat = mod.align(fs)
    b, c, h, w = ft.shape
    q = mod.fusion.q(ft).flatten(2).transpose(1, 2)
    k = mod.fusion.k(s_hat).flatten(2).transpose(1, 2)
    v = mod.fusion.v(s_hat).flatten(2).transpose(1, 2)
    attn = torch.softmax(torch.bmm(q, k.transpose(1, 2)) / math.sqrt(q.shape[-1]), dim=-1)  # [B, HW, HW]
    fused = torch.bmm(attn, v).transpose(1, 2).reshape(b, c, h, w)
    vvec = fused.mean(dim=(2, 3))
    z = fused.flatten(2)
    if z_norm == "spatial":  # each channel standardised over space (unbiased std, + 1e-5), as ASCM does
        z = (z - z.mean(dim=2, keepdim=True)) / (z.std(dim=2, keepdim=True) + 1e-5)
    d = ft - s_hat
    n_m = mod.num_masks
    mc = [torch.sigmoid(mod.ascm.channel_units[m] * vvec) for m in range(n_m)]  # each [B, C]
    ms = [torch.sigmoid(torch.einsum("c,bcn->bn", mod.ascm.spatial_units[m], z)) for m in range(n_m)]  # [B, HW]
    # the denominators' Σ M (MasKD's form) or Σ M² (mask_norm="square", ACAM-KD's default)
    norm = (lambda x: (x * x).sum(dim=1)) if mod.mask_norm == "square" else (lambda x: x.sum(dim=1))
    lc = ls = 0.0
    for m in range(n_m):
        wc = mc[m].view(b, c, 1, 1)
        lc = lc + (((wc * d) ** 2).sum(dim=(1, 2, 3)) / (h * w * norm(mc[m]))).mean()
        wsp = ms[m].view(b, 1, h, w)
        ls = ls + (((wsp * d) ** 2).sum(dim=(1, 2, 3)) / (c * norm(ms[m]))).mean()

    def dice(masks):
        vals = []
        for i in range(n_m):
            for j in range(n_m):
                if i != j:
                    xi, xj = masks[i], masks[j]
                    vals.append(2 * (xi * xj).sum(1) / ((xi * xi).sum(1) + (xj * xj).sum(1) + 1e-6))
        return torch.stack(vals).mean()

    return {"loss_channel": lc / n_m, "loss_spatial": ls / n_m, "loss_div": dice(mc) + dice(ms)}


def worker(form: str, level: str, batch: int, channels: int, masks: int, repeats: int, device: str,
           z_norm: str = "spatial") -> dict:
    import torch

    from densekd import build_loss

    torch.manual_seed(0)
    h, w = LEVELS[level]
    dev = torch.device(device)
    mod = build_loss("acam_kd", student_channels=channels, teacher_channels=channels, num_masks=masks,
                     keep_masks=False, z_norm=z_norm).to(dev)
    g = torch.Generator(device="cpu").manual_seed(1)
    fs = torch.randn(batch, channels, h, w, generator=g).to(dev).requires_grad_(True)
    ft = torch.randn(batch, channels, h, w, generator=g).to(dev)
    fn = (lambda: mod(fs, ft)) if form == "densekd" else (lambda: naive_acam(mod, fs, ft, z_norm))

    def step():
        out = fn()
        total = sum(out.values())
        total.backward()
        return {k: float(v.detach()) for k, v in out.items()}

    # ru_maxrss is the process's lifetime peak, so the baseline is taken before the warm-up step too.
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_mib()
    values = step()  # warm-up (also the values we compare)
    mod.zero_grad(set_to_none=True)
    fs.grad = None
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        mod.zero_grad(set_to_none=True)
        fs.grad = None
    if dev.type == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    return {"form": form, "level": level, "seconds": min(times), "peak_mib": max(peak, 0.0), "values": values}


def run_one(args, form: str, level: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", form, level, "--batch", str(args.batch), "--channels",
           str(args.channels), "--masks", str(args.masks), "--repeats", str(args.repeats), "--device", args.device,
           "--z-norm", args.z_norm]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        return {"form": form, "level": level, "error": out.stderr.strip().splitlines()[-1] if out.stderr else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--levels", nargs="+", default=list(LEVELS), choices=list(LEVELS))
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--channels", type=int, default=256)
    p.add_argument("--masks", type=int, default=6)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--z-norm", default="spatial", choices=["spatial", "none"],
                   help="ACAM-KD's z_norm for both forms (default: the library's, spatial)")
    p.add_argument("--markdown", help="also write the table to this file")
    p.add_argument("--worker", nargs=2, metavar=("FORM", "LEVEL"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.batch, args.channels, args.masks,
                                args.repeats, args.device, args.z_norm)))
        return 0

    import torch

    header = (f"ACAM-KD forward+backward, batch {args.batch}, C = {args.channels}, M = {args.masks}, "
              f"z_norm {args.z_norm}, device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
              f"best of {args.repeats}")
    rows = ["| level | H×W | densekd s | naive s | time ratio | densekd peak MiB | naive peak MiB | memory ratio "
            "| max rel. diff |", "|---|---|---|---|---|---|---|---|---|"]
    print(header)
    for level in args.levels:
        eff, naive = run_one(args, "densekd", level), run_one(args, "naive", level)
        h, w = LEVELS[level]
        if "error" in eff or "error" in naive:
            rows.append(f"| {level} | {h}×{w} | {eff.get('error', '')} | {naive.get('error', '')} | | | | | |")
            print(rows[-1], flush=True)
            continue
        rel = max(abs(eff["values"][k] - naive["values"][k]) / max(abs(naive["values"][k]), 1e-12)
                  for k in naive["values"])
        mem_ratio = eff["peak_mib"] / naive["peak_mib"] if naive["peak_mib"] > 0 else float("nan")
        rows.append(f"| {level} | {h}×{w} | {eff['seconds']:.3f} | {naive['seconds']:.3f} | "
                    f"{eff['seconds'] / naive['seconds']:.2f}× | {eff['peak_mib']:.0f} | {naive['peak_mib']:.0f} | "
                    f"{mem_ratio:.3f} | {rel:.1e} |")
        print(rows[-1], flush=True)
    table = "\n".join([header, "", *rows])
    print("\n" + table)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
