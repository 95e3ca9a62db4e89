"""``train.malloc_keep`` when the input's size changes every step (multi-scale detection training): the step time,
the memory faulted in and the peak resident memory, malloc's defaults against kept freed memory, each in its own
process on the same sequence of sizes (docs/methods.md, "The CPU allocator").

    python benchmarks/malloc_keep.py --out benchmarks/results/malloc_keep.md
    python benchmarks/malloc_keep.py --out - --steps 4 --short 128 --long 160   # a quick look

The model is torchvision's ResNet-50 (random weights) trained with SGD on random images, batch 2, whose shorter
side is drawn every step from ``--short``..``--long`` (multiples of 32; the longer side 1333/800 of it), as
multi-scale training draws them; the first 3 steps are not counted (the heap settles).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, random, resource, statistics, sys, time
import torch, torchvision
from densekd.engine import malloc

spec = json.loads(sys.argv[1])
torch.set_num_threads(spec["threads"])
kept = malloc.keep_freed_memory() if spec["keep"] else False
torch.manual_seed(0)
model = torchvision.models.resnet50()
opt = torch.optim.SGD(model.parameters(), lr=1e-3)
rng = random.Random(0)
sizes = [rng.randrange(spec["short"], spec["long"] + 1, 32) for _ in range(spec["steps"] + 3)]
times, faults, resident = [], [], []
for i, h in enumerate(sizes):
    w = round(h * 1333 / 800 / 32) * 32
    x = torch.randn(2, 3, h, w)
    f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
    opt.zero_grad(set_to_none=True)
    model(x).square().mean().backward()
    opt.step()
    t, f = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
    if i >= 3:
        times.append(t)
        faults.append(f * 4096 / 1e9)
        resident.append(malloc.resident_bytes() / 1e9)
print("ROW " + json.dumps({"keep": spec["keep"], "kept": kept, "times": times, "faulted_gb": faults,
                           "resident_gb": resident,
                           "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,
                           "sizes": sizes[3:]}))
"""


def run(keep: bool, args) -> dict:
    spec = {"keep": keep, "threads": args.threads, "steps": args.steps, "short": args.short, "long": args.long}
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], capture_output=True, text=True,
                         check=True)
    return json.loads(next(ln for ln in out.stdout.splitlines() if ln.startswith("ROW "))[4:])


def table(rows: list[dict], args) -> str:
    import statistics

    lines = [f"ResNet-50, batch 2, shorter side drawn from {args.short}–{args.long} every step, {args.steps} steps "
             f"after 3, {args.threads} thread(s) (`python benchmarks/malloc_keep.py --out {args.out} --steps "
             f"{args.steps} --short {args.short} --long {args.long} --threads {args.threads}`)", "",
             "| malloc | s/step median (min–max) | GB faulted in a step, median (max) | resident GB after the first "
             "counted step → the middle one → the last | peak resident GB |",
             "|---|---|---|---|---|"]
    for r in rows:
        t, f = r["times"], r["faulted_gb"]
        name = "kept (train.malloc_keep)" if r["keep"] else "defaults"
        lines.append(f"| {name} | {statistics.median(t):.2f} ({min(t):.2f}–{max(t):.2f}) | "
                     f"{statistics.median(f):.2f} ({max(f):.2f}) | "
                     + " → ".join(f"{r['resident_gb'][k]:.2f}" for k in (0, len(f) // 2, -1))
                     + f" | {r['peak_rss_gb']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="a Markdown file, or - to print only")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--short", type=int, default=480)
    ap.add_argument("--long", type=int, default=800)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    if args.short % 32 or args.long < args.short:
        ap.error("--short must be a multiple of 32 and --long at least --short")
    rows = [run(False, args), run(True, args)]
    text = table(rows, args)
    print(text)
    if args.out != "-":
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
