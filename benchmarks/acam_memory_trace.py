"""Where ACAM-KD's memory goes: peak memory per autograd node, block sizes, and the 1×1-map alternatives.

CPU only. Memory is RSS growth sampled every 0.3 ms in a background thread, with glibc told to return every
allocation above 64 KiB to the system at once (MALLOC_MMAP_THRESHOLD_, set by re-running this script), so RSS
follows live tensor memory. Figures are in "feature units": one [B, C, H, W] fp32 map of the level. That
allocator setting makes every step slower (fresh pages for every block), so take times from acam_loss.py;
here they only compare block sizes with one another.

    python benchmarks/acam_memory_trace.py nodes  --level P3                 # peak per autograd node, one step
    python benchmarks/acam_memory_trace.py nodes  --level P3 --conv-maps     # the same with nn.Conv2d 1×1 maps
    python benchmarks/acam_memory_trace.py blocks --level P3 --elements 20 21 22   # block size 2^k: time, peak
    python benchmarks/acam_memory_trace.py maps   --level P3                 # a 1×1 map: conv2d / matmul / densekd
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time

if os.environ.get("MALLOC_MMAP_THRESHOLD_") != "65536":  # before torch allocates anything
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    os.execv(sys.executable, [sys.executable, *sys.argv])

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from densekd import build_loss  # noqa: E402
from densekd.losses import acam  # noqa: E402
from densekd.ops import attention as attention_ops  # noqa: E402
from densekd.ops import linear as linear_ops  # noqa: E402

LEVELS = {"P3": (100, 168), "P4": (50, 84), "P5": (25, 42)}


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakSampler:
    """Peak RSS growth over a base, per label (the label is switched while the work runs)."""

    def __init__(self) -> None:
        self.label, self.peaks, self._run, self.base = "", {}, False, 0.0

    def __enter__(self) -> "PeakSampler":
        self.base, self._run = _rss_mib(), True
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while self._run:
            v = _rss_mib() - self.base
            if v > self.peaks.get(self.label, float("-inf")):
                self.peaks[self.label] = v
            time.sleep(0.0003)

    def __exit__(self, *exc) -> None:
        self._run = False
        self._thread.join()

    @property
    def peak(self) -> float:
        return max(self.peaks.values(), default=0.0)


def _inputs(level: str, batch: int, channels: int):
    h, w = LEVELS[level]
    g = torch.Generator().manual_seed(1)
    fs = torch.randn(batch, channels, h, w, generator=g).requires_grad_(True)
    ft = torch.randn(batch, channels, h, w, generator=g)
    return fs, ft, batch * channels * h * w * 4 / 2**20


def _step(mod, fs, ft, sampler: PeakSampler | None = None) -> None:
    total = sum(mod(fs, ft).values())
    if sampler is not None:  # label the sampler with the autograd node that is running
        seen, stack = set(), [total.grad_fn]
        while stack:
            node = stack.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            node.register_prehook(lambda g, name=node.name(): setattr(sampler, "label", name))
            stack.extend(f for f, _ in node.next_functions)
        sampler.after_forward = _rss_mib() - sampler.base  # what forward keeps for backward
    total.backward()


def nodes(args) -> None:
    if args.conv_maps:  # the 1×1 maps (align, W_q, W_k) as the modules' own conv2d on a [B, C, HW, 1] view
        acam.pointwise = lambda layer, x: x if isinstance(layer, torch.nn.Identity) else layer(x.unsqueeze(-1)).squeeze(-1)
    torch.manual_seed(0)
    fs, ft, unit = _inputs(args.level, args.batch, args.channels)
    mod = build_loss("acam_kd", student_channels=args.channels, teacher_channels=args.channels, keep_masks=False)
    _step(mod, fs, ft)  # warm-up
    fs.grad = None
    mod.zero_grad(set_to_none=True)
    with PeakSampler() as s:
        s.label = "forward (whole)"
        _step(mod, fs, ft, s)
    maps = "nn.Conv2d" if args.conv_maps else "densekd's pointwise"
    print(f"ACAM-KD step at {args.level}, batch {args.batch}, C = {args.channels}, 1×1 maps: {maps}; "
          f"1 unit = {unit:.1f} MiB")
    print(f"kept from forward for backward: {s.after_forward / unit:.2f} units")
    print(f"peak {s.peak:.0f} MiB = {s.peak / unit:.2f} units; top nodes by peak while they ran:")
    for label, v in sorted(s.peaks.items(), key=lambda kv: -kv[1])[:8]:
        print(f"  {label:36s} {v / unit:5.2f} units")


def blocks(args) -> None:
    fs, ft, unit = _inputs(args.level, args.batch, args.channels)
    print(f"ACAM-KD step at {args.level} per block budget (elements of one [B, rows, HW] block); best of "
          f"{args.repeats}; peak in units of {unit:.1f} MiB")
    print("| block elements | rows | seconds | peak units |\n|---|---|---|---|")
    for k in args.elements:
        attention_ops.ATTENTION_BLOCK_ELEMENTS = 2**k
        torch.manual_seed(0)
        mod = build_loss("acam_kd", student_channels=args.channels, teacher_channels=args.channels,
                         keep_masks=False)
        _step(mod, fs, ft)
        best = float("inf")
        for _ in range(args.repeats):  # timed without the sampler thread, which competes for the cores
            fs.grad = None
            mod.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            _step(mod, fs, ft)
            best = min(best, time.perf_counter() - t0)
        fs.grad = None
        mod.zero_grad(set_to_none=True)
        with PeakSampler() as s:
            _step(mod, fs, ft)
        peak = s.peak
        rows = attention_ops.block_rows(fs.shape[0], fs.shape[2] * fs.shape[3], fs.device)
        print(f"| 2^{k} | {rows} | {best:.2f} | {peak / unit:.2f} |", flush=True)


def maps(args) -> None:
    """A C → C 1×1 map of x followed by a sum, forward + backward (x needs grad): extra peak beyond x, x.grad."""
    fs, _, unit = _inputs(args.level, args.batch, args.channels)
    conv = torch.nn.Conv2d(args.channels, args.channels, 1)
    w = conv.weight.flatten(1)
    forms = {
        "conv2d": lambda x: conv(x),
        "matmul [C, C] @ [B, C, HW]": lambda x: torch.matmul(w, x.flatten(2)),
        "densekd pointwise (baddbmm)": lambda x: linear_ops.pointwise(conv, x.flatten(2)),
    }
    print(f"1×1 map C → C at {args.level}, forward + backward; extra peak beyond the input and its gradient "
          f"(units of {unit:.1f} MiB; the output and its gradient are 2 units)")
    print("| form | peak units |\n|---|---|")
    for name, fn in forms.items():
        peak = 0.0
        for _ in range(2):  # the second pass is measured
            x = fs.detach().clone().requires_grad_(True)
            x.grad = torch.zeros_like(x)  # allocated before the base: not counted
            with PeakSampler() as s:
                fn(x).square().sum().backward()
            peak = s.peak
            conv.zero_grad(set_to_none=True)
        print(f"| {name} | {peak / unit:.2f} |", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["nodes", "blocks", "maps"])
    p.add_argument("--level", default="P3", choices=list(LEVELS))
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--channels", type=int, default=256)
    p.add_argument("--elements", type=int, nargs="+", default=[20, 21, 22], help="block budgets 2^k")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--conv-maps", action="store_true", help="nodes: 1×1 maps by nn.Conv2d instead")
    args = p.parse_args(argv)
    {"nodes": nodes, "blocks": blocks, "maps": maps}[args.what](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
