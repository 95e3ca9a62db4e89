"""What each method costs at the papers' sizes: ``densekd bench`` on the papers' detectors and segmenter, and
the teacher forward's precision and memory layout (issue 20).

    python benchmarks/real_size.py tables  --out benchmarks/results/real_size          # every setting and method
    python benchmarks/real_size.py tables  --out runs/real_size_dry --scale 0.4 --iters 2 --warmup 1 \
        --methods fitnet acam_kd                                                        # a quick dry run
    python benchmarks/real_size.py tables  --out benchmarks/results/real_size --resume # go on where a call stopped
    python benchmarks/real_size.py brief   --out benchmarks/results/real_size --readme README.md  # one line per method
    python benchmarks/real_size.py alone   --out - --settings retinanet --methods cwd fgd --flush both --threads 1
    python benchmarks/real_size.py teacher --out benchmarks/results/teacher_forward    # fp32/bf16 × NCHW/NHWC
    python benchmarks/real_size.py cost    --out benchmarks/results/real_size --methods fitnet acam_kd  # FLOPs only
    python benchmarks/real_size.py rest    --out - --settings deeplabv3 --methods fitnet       # the step vs its parts

Settings (the shipped recipes, unchanged except for what a machine without the datasets needs):

* ``retinanet`` / ``fcos`` / ``faster_rcnn``: ``configs/detection/*_r101_r50_acamkd_2x.yaml``, R101-FPN → R50-FPN
  at 800×1333 (``--scale`` multiplies both sides), batch 2; distilled on every FPN level the head uses (P3–P7,
  Faster R-CNN P2–P6). Data: two generated 800×1333 images with 8 boxes each (COCO format, 80 categories);
* ``deeplabv3``: ``configs/segmentation/deeplabv3_r101_r18_acamkd.yaml``, DeepLabV3 R101 → R18 at 512×1024 crops,
  batch 2; distilled on the logits (19 classes). Data: two generated 512×1024 images with random label blocks.

``demo_segmentation`` (``teacher`` only, not a paper's size): the README demo's TinySegNet with its shipped trained
teacher on generated digits canvases at 64×64, for how the teacher's precision plays on a tiny model:

    python benchmarks/real_size.py teacher --out benchmarks/results/teacher_forward_demo --settings demo_segmentation \
        --batch 16 --iters 20

The teacher is randomly initialised (``model.teacher.random_init=true``: timing does not depend on the weights),
the student has no ImageNet file. ``tables``: for each setting, ``baseline`` (the plain student) and every
registered method that applies (``hinton_kd`` and ``cirkd`` are segmentation-only, ``fgd`` needs boxes; SAMKD on
Faster R-CNN runs without its logit term, ``use_logits=false``, which that head cannot give) is measured by
:func:`densekd.tools.bench.measure` in its own subprocess: median seconds per step over ``--iters`` (with
min–max), the teacher forward, the KD modules (full − student − teacher, paired per iteration), FLOPs counted by
``torch.utils.flop_counter``, the KD modules alone and their floor (see ``densekd/tools/bench.py``). Writes
``<out>/<setting>.md`` / ``.json`` after every method (``--resume`` keeps rows already there for the same scale
and ``--iters``; ``--set`` adds engine overrides) and ``<out>/summary.md``. ``brief``: one line per method of
every setting in ``<out>`` (``<out>/brief.md``), the README's tables, and a picture of each step in units of the
plain student step timed beside it (``<out>/brief.png``: student step, teacher forward, KD modules alone, the
rest).

``alone``: the KD modules alone — the KD loss forward, its backward to the student maps and the KD parameters'
update on one batch's captured maps, without either network (``Distiller.kd_snapshot``) — one Trainer per
method, ``--iters`` runs after one warm-up, printed; ``--flush both`` alternates runs with subnormal floats
flushed and kept (``train.flush_denormal``); ``--out`` is ignored.

``cost``: for each setting and method, what the doctor's cost line counts (:func:`densekd.health.cost_split`) —
the matrix-product FLOPs of one forward of the student, the teacher and the KD modules, their ratio and the level
doing most — one forward without gradients per method (no timing: counts depend on the shapes only), written to
``<out>/cost.md``.

``rest``: where a distilled step's time goes beyond its parts measured apart — the distilled step, the plain
student step, the teacher forward, both networks in one step without the KD loss and the KD modules alone,
interleaved in one process (the order rotating), with the memory each faults in (minor page faults × 4 KiB);
printed and written to ``<out>/rest.md`` (with ``--set``, e.g. ``rest_train.malloc_keep-false.md``; ``--out -``:
printed only).

``teacher``: for each setting and batch, the teacher forward as the Distiller runs it (inference mode, stopped
once the captured levels have run) in four variants — fp32 or bf16 autocast, NCHW or channels_last weights —
interleaved iteration by iteration in one process (the order rotates), ``--iters`` each after one warm-up; and how
far the bf16 / channels_last maps are from the fp32 NCHW ones (relative Frobenius error per level, worst level).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time

#: the clone this script runs from (its shipped recipes); densekd itself is the installed package
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SETTINGS = {
    "retinanet": ("detection", "configs/detection/retinanet_r101_r50_acamkd_2x.yaml", (800, 1333)),
    "fcos": ("detection", "configs/detection/fcos_r101_r50_acamkd_2x.yaml", (800, 1333)),
    "faster_rcnn": ("detection", "configs/detection/faster_rcnn_r101_r50_acamkd_2x.yaml", (800, 1333)),
    "deeplabv3": ("segmentation", "configs/segmentation/deeplabv3_r101_r18_acamkd.yaml", (512, 1024)),
    # not a paper's size: the README's demo (TinySegNet, shipped trained teacher, digits canvases), for comparison
    "demo_segmentation": ("segmentation", "configs/compare/demo_methods.yaml", (64, 64)),
}
REAL = ["retinanet", "fcos", "faster_rcnn", "deeplabv3"]


def write_detection_data(root: str, h: int, w: int, n: int = 2) -> tuple[str, str]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    img_dir = os.path.join(root, "images")
    os.makedirs(img_dir, exist_ok=True)
    images, anns = [], []
    for i in range(n):
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(os.path.join(img_dir, f"{i}.png"))
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": w, "height": h})
        for _ in range(8):  # a few boxes of COCO-like sizes (relative to the image)
            bw, bh = (int(v) for v in rng.integers(max(4, w // 50), max(8, w // 3), 2))
            bh = min(bh, h - 2)
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(rng.integers(1, 81)),
                         "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": 0})
    ann = os.path.join(root, "annotations.json")
    with open(ann, "w", encoding="utf-8") as f:
        json.dump({"images": images, "annotations": anns,
                   "categories": [{"id": c, "name": str(c)} for c in range(1, 81)]}, f)
    return ann, img_dir


def write_segmentation_data(root: str, h: int, w: int, n: int = 2, classes: int = 19) -> str:
    """``folder`` layout: <root>/<split>/images/<i>.png and masks/<i>.png, splits train and val (the engine
    builds both; val is never evaluated here), labels in blocks of 32×32."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for sub in ("images", "masks"):
            os.makedirs(os.path.join(root, split, sub), exist_ok=True)
        for i in range(n):
            Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(
                os.path.join(root, split, "images", f"{i}.png"))
            blocks = rng.integers(0, classes, ((h + 31) // 32, (w + 31) // 32)).astype(np.uint8)
            mask = np.kron(blocks, np.ones((32, 32), np.uint8))[:h, :w]
            Image.fromarray(mask).save(os.path.join(root, split, "masks", f"{i}.png"))
    return root


def setting_overrides(name: str, tmp: str, scale: float) -> list[str]:
    """The engine overrides that make setting ``name`` run here at ``scale`` × the paper's size."""
    task, _, (h0, w0) = SETTINGS[name]
    h, w = round(h0 * scale), round(w0 * scale)
    if name == "demo_segmentation":  # its own data and shipped teacher, at its own size and batch
        from densekd.data.digits import make_digits_dataset

        make_digits_dataset(os.path.join(tmp, name), n_train=32, n_val=8)
        return [f"data.root={os.path.join(tmp, name)}", "data.max_images=null", "train.num_workers=0"]
    common = ["model.student.backbone_checkpoint=null", "model.teacher.checkpoint=null",
              "model.teacher.random_init=true", "train.num_workers=0", "train.batch_size=2"]
    if task == "detection":
        ann, img = write_detection_data(os.path.join(tmp, name), h, w)
        return common + [f"data.train_ann={ann}", f"data.train_images={img}", "data.val_ann=null",
                         "data.val_images=null", f"model.min_size={h}", f"model.max_size={w}",
                         "data.flip_prob=0.0"]
    root = write_segmentation_data(os.path.join(tmp, name), h, w)
    return common + [f"data.root={root}", "data.format=folder", "data.num_classes=19", f"data.crop_size=[{h}, {w}]",
                     "data.scale_range=[1.0, 1.0]", "data.flip=false", "model.student.sync_bn=false"]


def applicable(name: str, method: str) -> tuple[bool, list[str], str]:
    """(runs, extra overrides, why not) for ``method`` on setting ``name``."""
    from densekd.tasks.detection import SEGMENTATION_ONLY
    from densekd.tasks.segmentation import NEEDS_BOXES

    task, recipe, _ = SETTINGS[name]
    if task == "detection" and method in SEGMENTATION_ONLY:
        return False, [], "segmentation only"
    if task == "segmentation" and method in NEEDS_BOXES:
        return False, [], "needs boxes"
    if name == "faster_rcnn" and method == "samkd":  # no dense class logits: SFD's feature term only
        return True, ["distill.method=samkd", "distill.kwargs={use_logits: false}"], ""
    return True, [], ""


def _spread(times: list[float]) -> str:
    return f"{min(times):.3f}–{max(times):.3f}" if times else "—"


# --------------------------------------------------------------------------- tables
#: the order of ``tables``' rows: the plain student, the methods papers compare, ACAM-KD, then its ablations
ORDER = ["fitnet", "hinton_kd", "cwd", "pkd", "mgd", "dmkd", "fgd", "maskd", "freekd", "cirkd", "samkd", "acam_kd",
         "acam_kd_paper"]


def method_order(methods: list[str]) -> list[str]:
    return sorted(methods, key=lambda m: (ORDER.index(m) if m in ORDER else len(ORDER), m))


def run_tables(args) -> int:
    from densekd.tools.bench import bench_table, measure, measure_in_subprocess
    from densekd.tools.compare.plan import PLAIN_STUDENT
    from densekd.losses.registry import available_losses

    methods = method_order(args.methods or available_losses())
    os.makedirs(args.out, exist_ok=True)
    t_start = time.perf_counter()
    for name in args.settings:
        task, recipe, size = SETTINGS[name]
        h, w = (round(s * args.scale) for s in size)
        rows_path = os.path.join(args.out, f"{name}.json")
        done = {}
        if args.resume and os.path.exists(rows_path):  # rows measured by an earlier call with the same settings
            done = {r["method"]: r for r in json.load(open(rows_path, encoding="utf-8"))
                    if r.get("scale") == args.scale and r.get("iters") == args.iters}
        rows, skipped = [], []

        def write() -> str:  # after every method: a long run stopped midway keeps what it measured
            seen = {r["method"] for r in rows}  # and the kept rows this call has not reached yet
            rows_out = rows + [r for m, r in done.items() if m not in seen]
            text = "\n".join([f"## {name}: {os.path.basename(recipe)} at {h}×{w}, batch 2", "",
                              bench_table(rows_out).rstrip(), "", spread_table(rows_out), "",
                              "not run: " + (", ".join(skipped) if skipped else "none")])
            with open(os.path.join(args.out, f"{name}.md"), "w", encoding="utf-8") as f:
                f.write(text + "\n")
            with open(rows_path, "w", encoding="utf-8") as f:
                json.dump(rows_out, f, indent=1)
            return text

        with tempfile.TemporaryDirectory() as tmp:
            base = setting_overrides(name, tmp, args.scale) + [f"distill.teacher_amp={args.teacher_amp}",
                                                               *args.set]
            for m in [PLAIN_STUDENT, *methods]:
                ok, extra, why = applicable(name, m) if m != PLAIN_STUDENT else (True, [], "")
                if not ok:
                    skipped.append(f"{m} ({why})")
                    continue
                if m in done:
                    rows.append(done[m])
                    print(f"[{name}] {m}: kept from {rows_path}", flush=True)
                    continue
                if args.stop_at is not None and time.time() >= args.stop_at:
                    skipped.append(f"{m} (not started: --stop-at reached)")
                    print(f"[{name}] {m}: not started, --stop-at reached", flush=True)
                    continue
                t0 = time.perf_counter()
                print(f"[{name}] {m} ...", flush=True)
                try:
                    row = (measure if args.in_process else measure_in_subprocess)(
                        os.path.join(ROOT, recipe), m, args.iters, args.warmup, base + extra)
                except Exception as e:  # noqa: BLE001 - one failing method must not lose the others' rows
                    skipped.append(f"{m} (failed: {str(e).splitlines()[0][:200]})")
                    print(f"[{name}] {m} failed: {e}", flush=True)
                    write()
                    continue
                finally:
                    if args.in_process:  # the next method starts from an empty allocator
                        _release_memory()
                row.update(wall_sec=time.perf_counter() - t0, scale=args.scale, setting=name,
                           finished=time.strftime("%Y-%m-%d %H:%M"))
                rows.append(row)
                write()
                print(f"[{name}] {m}: {row['sec_per_iter']:.3f} s/step ({row['wall_sec']:.0f} s in all)", flush=True)
            print(write(), flush=True)
    write_summary(args)
    print(f"wall time of this call: {time.perf_counter() - t_start:.0f} s")
    return 0


def _release_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def write_summary(args) -> None:
    """``<out>/summary.md``: every setting's table found in ``out`` (also those of earlier, resumed calls)."""
    summary = [f"# densekd bench at {args.scale:g} × the papers' sizes", "",
               f"`python benchmarks/real_size.py tables --scale {args.scale:g} --iters {args.iters} "
               f"--warmup {args.warmup}" + (f" --set {' '.join(args.set)}" if args.set else "")
               + f"`; {args.threads} threads; teacher_amp {args.teacher_amp}", ""]
    for name in SETTINGS:
        path = os.path.join(args.out, f"{name}.md")
        if os.path.exists(path):
            summary += [open(path, encoding="utf-8").read().rstrip(), ""]
    with open(os.path.join(args.out, "summary.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(summary) + "\n")


def spread_table(rows: list[dict]) -> str:
    """Per method: the spread of the measured steps and the KD modules against the issue's targets (modules alone
    over the student step ≤ 10 % for methods without attention; over their floor time ≤ 1.5×)."""
    from densekd.tools.bench import floor_seconds

    lines = ["| method | step s median (min–max) | modules alone / student step | modules alone / floor time "
             "| wall s |", "|---|---|---|---|---|"]
    for r in rows:
        st = r.get("student_step_sec")
        mod = r.get("modules_alone_sec", r.get("modules_sec"))
        share = "—" if mod is None or not st else f"{100 * mod / st:+.1f} %"
        fsec = floor_seconds(r)
        ratio = f"{mod / fsec:.1f}×" if mod and mod > 0 and fsec else "—"
        lines.append(f"| {r['method']} | {r['sec_per_iter']:.3f} ({_spread(r.get('step_times', []))}) | {share} "
                     f"| {ratio} | {r.get('wall_sec', 0):.0f} |")
    return "\n".join(lines)


def brief_table(rows: list[dict]) -> str:
    """One line per method for a README: the step with its spread and its ratio to the plain student (its own row,
    and the plain student step timed beside it in the method's process: :func:`densekd.tools.bench.paired_step_ratio`),
    the teacher forward, the KD modules alone with their spread, their share of the student step, FLOPs and floor."""
    from densekd.tools.bench import floor_seconds, paired_text

    plain = next((r for r in rows if r.get("teacher_fwd_sec") is None), None)
    lines = ["| method | s/step (min–max) | × plain | × plain, same process (min–max) | teacher fwd s "
             "| KD modules alone s (min–max) | alone / student step | KD GFLOP | floor GFLOP | alone / floor time |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        times, alone = r.get("step_times") or [r["sec_per_iter"]], r.get("modules_alone_sec")
        at, st, fsec = r.get("modules_alone_times") or [], r.get("student_step_sec"), floor_seconds(r)
        gf = (lambda v: "—" if v is None else (f"{v / 1e9:.1f}" if abs(v) >= 1e9 else f"{v / 1e9:.2g}"))
        lines.append("| " + " | ".join([
            ("plain student" if r is plain else r["method"]) + (" †" if before_malloc_keep(r) else ""),
            f"{r['sec_per_iter']:.2f} ({min(times):.2f}–{max(times):.2f})",
            f"{r['sec_per_iter'] / plain['sec_per_iter']:.2f}×" if plain else "—",
            paired_text(r) if r is not plain else "—",
            "—" if r.get("teacher_fwd_sec") is None else f"{r['teacher_fwd_sec']:.2f}",
            "—" if alone is None else f"{alone:.3f} ({min(at):.3f}–{max(at):.3f})" if at else f"{alone:.3f}",
            "—" if alone is None or not st else f"{100 * alone / st:.1f} %",
            gf(r.get("modules_flops")), gf(r.get("modules_floor_flops")),
            f"{alone / fsec:.1f}×" if alone and fsec else "—"]) + " |")
    if any(before_malloc_keep(r) for r in rows):
        lines += ["", "† measured on a CPU with malloc's defaults (before `train.malloc_keep`: every step faults its "
                  "large blocks in again; docs/methods.md, \"The CPU allocator\")"]
    return "\n".join(lines)


def before_malloc_keep(row: dict) -> bool:
    """A CPU row measured without ``train.malloc_keep`` (rows from before it have no ``malloc_keep``)."""
    return str(row.get("device", "cpu")).startswith("cpu") and not row.get("malloc_keep", False)


#: the parts of :func:`step_parts`, in order, with their colours in :func:`plot_parts`
PARTS = {"plain student step": "#9e9e9e", "teacher forward": "#4c78a8", "KD modules alone": "#f58518",
         "the rest of the distilled step": "#f2cf5b"}


def step_parts(row: dict) -> tuple[float, float, float, float, float, float] | None:
    """A method's training step in units of the plain student step timed beside it in its own process: (student
    step = 1, teacher forward, KD modules alone, the rest, min and max of the whole). The teacher is the median
    of its per-iteration ratios to the student step; the modules alone their median time (measured after the
    steps, without either network) over the median student step; the whole
    :func:`densekd.tools.bench.paired_step_ratio`; the rest the whole minus the other three (not below 0) — what
    the distilled step costs beyond its parts measured apart (hooks, the KD loss's share of the backward through
    the student, caches the teacher's activations evict). None for the plain student's row and rows without the
    per-iteration times."""
    from densekd.tools.bench import paired_step_ratio

    whole, teachers = paired_step_ratio(row), row.get("teacher_times")
    if whole is None or not teachers or len(teachers) != len(row["student_times"]):
        return None
    teacher = statistics.median(t / s for t, s in zip(teachers, row["student_times"]))
    alone = (row.get("modules_alone_sec") or 0.0) / statistics.median(row["student_times"])
    return 1.0, teacher, alone, max(whole[0] - 1.0 - teacher - alone, 0.0), whole[1], whole[2]


def panel_bars(settings: dict[str, list[dict]]) -> dict[str, list[tuple[str, tuple, float]]]:
    """Per setting with any: (label, :func:`step_parts`, × plain in the same process) per method row that has the
    parts; the label is the method, with " †" where :func:`before_malloc_keep`."""
    from densekd.tools.bench import paired_step_ratio

    panels = {n: [(r["method"] + (" †" if before_malloc_keep(r) else ""), p, paired_step_ratio(r)[0])
                  for r in rows if (p := step_parts(r)) is not None]
              for n, rows in settings.items()}
    return {n: bars for n, bars in panels.items() if bars}


def plot_parts(settings: dict[str, list[dict]], path: str) -> str | None:
    """``path`` (PNG): one panel per setting, one bar per method, :func:`step_parts` stacked (:data:`PARTS`) with
    the whole's min–max; None (nothing written) where no row has the parts."""
    from densekd.tools.compare.report import pyplot

    panels = panel_bars(settings)
    dagger = any(label.endswith(" †") for bars in panels.values() for label, _, _ in bars)
    if not panels:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(len(panels), 1, squeeze=False,  # own scales: one 20× bar must not flatten the rest
                             figsize=(8, 0.8 + sum(0.32 * len(b) + 0.6 for b in panels.values())),
                             gridspec_kw={"height_ratios": [len(b) for b in panels.values()]})
    for ax, (name, bars) in zip(axes[:, 0], panels.items()):
        y = range(len(bars))
        left = [0.0] * len(bars)
        for k, (label, colour) in enumerate(PARTS.items()):
            widths = [p[k] for _, p, _ in bars]
            ax.barh(y, widths, left=left, color=colour, label=label, height=0.7)
            left = [a + b for a, b in zip(left, widths)]
        whole = [sum(p[:4]) for _, p, _ in bars]
        ax.errorbar(whole, y, xerr=[[max(w - p[4], 0.0) for w, (_, p, _) in zip(whole, bars)],
                                    [max(p[5] - w, 0.0) for w, (_, p, _) in zip(whole, bars)]],
                    fmt="none", ecolor="black", capsize=2, linewidth=0.8)
        for yi, (w, (_, p, m)) in enumerate(zip(whole, bars)):  # the label: the measured whole
            ax.text(max(p[5], w) + 0.04, yi, f"{m:.2f}×", va="center", fontsize=8)
        ax.set_yticks(list(y), [m for m, _, _ in bars], fontsize=8)
        ax.invert_yaxis()
        ax.axvline(1.0, color="black", linewidth=0.5)
        ax.set_title(f"{name} ({os.path.basename(SETTINGS[name][1])})", fontsize=9, loc="left")
    fig.legend(*axes[0, 0].get_legend_handles_labels(), fontsize=7, loc="upper center", ncol=4)  # over no bar
    for ax in axes[:, 0]:
        ax.set_xlim(0, max(ax.get_xlim()[1], 2.0))
    axes[-1, 0].set_xlabel("training step ÷ the plain student step timed beside it in the same process "
                           "(median of the paired steps; bar: their min–max)"
                           + ("\n† measured on a CPU with malloc's defaults (before train.malloc_keep)" if dagger else ""),
                           fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_brief(args) -> int:
    """``<out>/brief.md``: :func:`brief_table` of every setting ``tables`` has measured into ``out``;
    ``<out>/brief.png``: :func:`plot_parts` of the same rows."""
    parts, measured = [], {}
    for name in SETTINGS:
        path = os.path.join(args.out, f"{name}.json")
        if not os.path.exists(path):
            continue
        rows = measured[name] = json.load(open(path, encoding="utf-8"))
        _, recipe, size = SETTINGS[name]
        scale = rows[0].get("scale", 1.0) if rows else 1.0
        h, w = (round(v * scale) for v in size)
        r0 = rows[0] if rows else {}
        rate = next((r["matmul_gflops"] for r in rows if r.get("matmul_gflops")), None)
        bw = next((r["copy_gbps"] for r in rows if r.get("copy_gbps")), None)
        rates = ", ".join(([f"matmul {rate:.0f} GFLOP/s"] if rate else []) + ([f"copy {bw:.1f} GB/s"] if bw else []))
        parts += [f"**{name}** ({os.path.basename(recipe)}, {h}×{w}, batch 2; {r0.get('iters')} steps after "
                  f"{r0.get('warmup')} warm-up; {r0.get('device', '?')}" + (f"; {rates}" if rates else "") + ")", "",
                  brief_table(rows), ""]
    text = "\n".join(parts)
    with open(os.path.join(args.out, "brief.md"), "w", encoding="utf-8") as f:
        f.write(text)
    print(text)
    if args.readme:
        with open(args.readme, encoding="utf-8") as f:
            doc = f.read()
        with open(args.readme, "w", encoding="utf-8") as f:
            f.write(replace_block(doc, text, args.readme))
        print(f"wrote the tables into {args.readme}")
    png = plot_parts(measured, os.path.join(args.out, "brief.png"))
    if png:
        print(f"wrote {png}")
    return 0


#: the lines around the tables ``brief --readme`` writes into a README (Markdown comments: not shown)
BRIEF_BEGIN = "<!-- real_size.py brief: the tables below are written by this command; do not edit them by hand -->"
BRIEF_END = "<!-- real_size.py brief: end -->"


def replace_block(doc: str, text: str, name: str = "the README") -> str:
    """``doc`` with what stands between :data:`BRIEF_BEGIN` and :data:`BRIEF_END` replaced by ``text``."""
    if doc.count(BRIEF_BEGIN) != 1 or doc.count(BRIEF_END) != 1 or doc.index(BRIEF_BEGIN) > doc.index(BRIEF_END):
        raise SystemExit(f"{name} must hold the line {BRIEF_BEGIN!r} once, and after it the line {BRIEF_END!r} "
                         f"once: the tables go between them")
    head, rest = doc.split(BRIEF_BEGIN, 1)
    return f"{head}{BRIEF_BEGIN}\n\n{text.strip()}\n\n{BRIEF_END}{rest.split(BRIEF_END, 1)[1]}"


def readme_block(doc: str) -> str | None:
    """What stands between the markers of :func:`replace_block` (stripped), or None without them."""
    if BRIEF_BEGIN not in doc or BRIEF_END not in doc:
        return None
    return doc.split(BRIEF_BEGIN, 1)[1].split(BRIEF_END, 1)[0].strip()


# --------------------------------------------------------------------------- alone
@contextlib.contextmanager
def setting_trainer(name: str, method: str, scale: float, extra: list[str] = ()):
    """The Trainer ``tables`` measures for ``method`` on setting ``name`` (``extra``: further overrides) and one
    batch of its data on the device: yields (trainer, inputs, targets); closed afterwards."""
    from densekd.tools.bench import bench_trainer

    with tempfile.TemporaryDirectory() as tmp:
        _, recipe, _ = SETTINGS[name]
        ov = setting_overrides(name, tmp, scale) + applicable(name, method)[1] + list(extra)
        tr = bench_trainer(os.path.join(ROOT, recipe), method, ov, os.path.join(tmp, "o"))
        try:
            inputs, targets = tr.task.model_inputs(tr.task.to_device(next(iter(tr.loader)), tr.device))
            yield tr, inputs, targets
        finally:
            tr.close()


def alone_times(name: str, method: str, scale: float, iters: int, flush: list[bool]) -> dict[bool, list[float]]:
    """Seconds of the KD modules alone (:func:`densekd.tools.bench.modules_alone_step`, the Trainer built as
    ``tables`` builds it), ``iters`` runs after one warm-up round, for each subnormal mode in ``flush``
    (alternating run by run; the Trainer's own ``train.flush_denormal`` is off so that the script decides)."""
    import torch

    from densekd.tools.bench import modules_alone_step

    with setting_trainer(name, method, scale, ["train.flush_denormal=false"]) as (tr, inputs, targets):
        run, _ = modules_alone_step(tr, inputs, targets)
        times: dict[bool, list[float]] = {f: [] for f in flush}
        for i in range(iters + 1):
            for f in (flush if i % 2 == 0 else flush[::-1]):
                torch.set_flush_denormal(f)
                t0 = time.perf_counter()
                run()
                if i:  # the first round is the warm-up
                    times[f].append(time.perf_counter() - t0)
        torch.set_flush_denormal(False)
        return times


def run_alone(args) -> int:
    """The KD modules alone (``alone_times``) for every setting and method: a Markdown table of seconds."""
    import torch

    flush = {"on": [True], "off": [False], "both": [True, False]}[args.flush]
    print(f"KD modules alone at {args.scale:g} × the papers' sizes, {args.iters} runs after one warm-up, "
          f"{torch.get_num_threads()} thread(s), torch {torch.__version__}\n")
    print("| setting | method | subnormals | s median (min–max) |\n|---|---|---|---|")
    for name in args.settings:
        for method in method_order(args.methods or ["fitnet"]):
            if not applicable(name, method)[0]:
                continue
            for f, t in alone_times(name, method, args.scale, args.iters, flush).items():
                print(f"| {name} | {method} | {'flushed' if f else 'kept'} | {statistics.median(t):.3f} "
                      f"({min(t):.3f}–{max(t):.3f}) |", flush=True)
    return 0


# --------------------------------------------------------------------------- rest
#: what ``rest`` times, interleaved: the distilled step; the plain student step; the teacher forward; the two
#: networks in one step without the KD loss (student forward, teacher forward with its maps held, the task loss's
#: backward and update); the KD modules alone
REST_KINDS = ("step", "student", "teacher", "student+teacher", "alone")


def rest_times(name: str, method: str, scale: float, iters: int, extra: list[str] = ()
               ) -> dict[str, list[tuple[float, int]]]:
    """(seconds, minor page faults of this process) of each of :data:`REST_KINDS`, ``iters`` rounds after one
    warm-up round, the kinds interleaved and their order rotating round by round, on the Trainer ``tables``
    measures."""
    import resource

    from densekd.distiller import task_losses
    from densekd.tools.bench import engine_update, modules_alone_step, step_fns

    with setting_trainer(name, method, scale, list(extra)) as (tr, inputs, targets):
        model = tr.model
        spec = model.pairs[0].teacher_spec
        alone, _ = modules_alone_step(tr, inputs, targets)
        step, student, teacher = step_fns(tr, inputs, targets)

        def both() -> None:
            with tr.autocast():
                loss = sum(task_losses(model.student, "student", model.task_loss, inputs, targets).values())
                maps = model.teacher_levels(inputs, spec)  # held, as the distilled step holds them
            engine_update(tr, loss)
            del maps

        fns = dict(zip(REST_KINDS, (step, student, teacher, both, alone)))
        out: dict[str, list[tuple[float, int]]] = {k: [] for k in REST_KINDS}
        for i in range(iters + 1):
            for k in REST_KINDS[i % len(REST_KINDS):] + REST_KINDS[:i % len(REST_KINDS)]:
                f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
                fns[k](i) if k == "step" else fns[k]()
                t, f = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
                if i:  # the first round is the warm-up
                    out[k].append((t, f))
        return out


def rest_lines(name: str, method: str, times: dict[str, list[tuple[float, int]]]) -> list[str]:
    """Table rows of :func:`rest_times` and what they say: the two networks in one step beyond each alone
    ((student+teacher) − student − teacher) and the KD loss inside the step (step − (student+teacher)) beside the
    modules alone, medians of the per-round differences."""
    med = statistics.median
    rows = [f"| {name} | {method} | {k} | {med(t for t, _ in v):.3f} ({min(t for t, _ in v):.3f}–"
            f"{max(t for t, _ in v):.3f}) | {med(f for _, f in v) * 4096 / 1e9:.2f} |" for k, v in times.items()]
    sec = {k: [t for t, _ in v] for k, v in times.items()}
    both = med(b - s - t for b, s, t in zip(sec["student+teacher"], sec["student"], sec["teacher"]))
    kd = med(a - b for a, b in zip(sec["step"], sec["student+teacher"]))
    st = med(sec["student"])
    notes = [f"{name} / {method}: both networks in one step cost {both:+.3f} s ({100 * both / st:+.1f} % of the "
             f"student step) beyond each alone; the KD loss inside the step {kd:+.3f} s, alone "
             f"{med(sec['alone']):.3f} s"]
    return rows + notes


def run_rest(args) -> int:
    """Where a distilled step's time goes beyond its parts measured apart (:func:`rest_times`), per setting and
    method: seconds and the memory newly faulted in (minor page faults × 4 KiB) per kind; ``--set`` adds engine
    overrides (e.g. ``train.malloc_keep=false``). Printed, and written to ``<out>/<rest_file(args.set)>`` unless
    ``--out -``."""
    import torch

    lines = [f"The distilled step and its parts at {args.scale:g} × the papers' sizes, {args.iters} rounds after one "
             f"warm-up, {torch.get_num_threads()} thread(s), torch {torch.__version__}"
             + (f", {' '.join(args.set)}" if args.set else "") + f" (`{rest_command(args)}`)", "",
             "| setting | method | kind | s median (min–max) | GB faulted in (median) |", "|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    notes = []
    for name in args.settings:
        for method in method_order(args.methods or ["fitnet"]):
            if not applicable(name, method)[0]:
                continue
            got = rest_lines(name, method, rest_times(name, method, args.scale, args.iters, args.set))
            print("\n".join(got[:-1]), flush=True)
            lines += got[:-1]
            notes.append(got[-1])
    print("\n" + "\n".join(notes))
    if args.out != "-":
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, rest_file(args.set)), "w", encoding="utf-8") as f:
            f.write("\n".join(lines + [""] + [f"- {n}" for n in notes]) + "\n")
    return 0


def rest_file(overrides: list[str]) -> str:
    """``rest.md``, or with overrides e.g. ``rest_train.malloc_keep-false.md``."""
    return "rest" + "".join("_" + o.replace("=", "-").replace("/", "-") for o in overrides) + ".md"


def rest_command(args) -> str:
    return (f"python benchmarks/real_size.py rest --out {args.out} --settings {' '.join(args.settings)} --methods "
            f"{' '.join(args.methods or ['fitnet'])}" + (f" --scale {args.scale:g}" if args.scale != 1 else "")
            + (f" --iters {args.iters}" if args.iters != 5 else "") + (f" --set {' '.join(args.set)}" if args.set else ""))


# --------------------------------------------------------------------------- cost
def forward_cost(name: str, method: str, scale: float) -> tuple[int, int, dict[str, int], list]:
    """The doctor's cost count (:func:`densekd.health.cost_split`) at setting ``name``: one forward of the
    Distiller, built as ``tables`` builds it, on one batch without gradients, its matrix-product FLOPs per module.
    Returns (student, teacher, KD modules per level key, the Distiller's levels). Counts do not depend on the
    weights, the precision or the machine."""
    import torch

    from densekd.health import cost_split, module_flops
    from densekd.ops.flops import flop_counter

    with setting_trainer(name, method, scale) as (tr, inputs, targets):
        model = tr.model
        model.train()
        with torch.no_grad(), flop_counter() as fc:
            model(*inputs, targets=targets)
        return (*cost_split(module_flops(fc), type(model).__name__, model.levels), list(model.levels))


def run_cost(args) -> int:
    """``cost``: per setting and method, what the doctor's cost line counts — the forward's matrix-product FLOPs
    of the student, the teacher and the KD modules (their ratio to the student's, the level doing most):
    a Markdown table to ``--out`` (``-``: print only)."""
    lines = [f"Matrix-product FLOPs of one forward at {args.scale:g} × the papers' sizes, batch 2 "
             "(`python benchmarks/real_size.py cost`; torch.utils.flop_counter, as `densekd doctor` counts them)", "",
             "| setting | method | student fwd GFLOP | teacher fwd GFLOP | KD modules fwd GFLOP | KD / student | "
             "level doing most (share) |", "|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for name in args.settings:
        for method in method_order(args.methods or ["fitnet"]):
            if not applicable(name, method)[0]:
                continue
            student, teacher, per, levels = forward_cost(name, method, args.scale)
            kd = sum(per.values())
            top = max(per, key=per.get) if per else None
            shape = next((f"{lv.student} {list(lv.student_shape)}" for lv in levels if lv.key == top), top)
            share = f"{shape} ({100 * per[top] / kd:.0f} %)" if kd else "—"
            row = (f"| {name} | {method} | {student / 1e9:.1f} | {teacher / 1e9:.1f} | {kd / 1e9:.3g} | "
                   f"{kd / student:.3g}× | {share} |")
            lines.append(row)
            print(row, flush=True)
    if args.out != "-":
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "cost.md"), "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    return 0


# --------------------------------------------------------------------------- teacher
def run_teacher(args) -> int:
    import torch

    from densekd.engine.trainer import Trainer

    os.makedirs(args.out, exist_ok=True)
    variants = [("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)]
    results, lines = [], [
        "| setting | batch | fp32 s | fp32 NHWC s | bf16 s | bf16 NHWC s | bf16 NHWC / fp32 | rel. error bf16 "
        "| rel. change by 8-bit input noise | rel. error NHWC (fp32) | KD loss rel. diff bf16 |",
        "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in args.settings:
        task, recipe, _ = SETTINGS[name]
        for batch in args.batch:
            with tempfile.TemporaryDirectory() as tmp:
                ov = setting_overrides(name, tmp, args.scale) + [f"train.batch_size={batch}", f"output_dir={tmp}/o",
                                                                 "train.resume=false", "distill.teacher_amp=none"]
                cfg = os.path.join(ROOT, recipe)  # the recipe's own method (ACAM-KD) for the KD-loss agreement
                tr = Trainer(cfg, ov)
                try:
                    d = tr.model
                    batch_data = tr.task.to_device(next(iter(tr.loader)), tr.device)
                    inputs, _targets = tr.task.model_inputs(batch_data)
                    spec = d.pairs[0].teacher_spec

                    def forward(amp: str, nhwc: bool) -> dict:
                        fmt = torch.channels_last if nhwc else torch.contiguous_format
                        d.teacher.to(memory_format=fmt)
                        d.teacher_amp = "bf16" if amp == "bf16" else "none"
                        t0 = time.perf_counter()
                        out = d.teacher_levels(inputs, spec)
                        return {"sec": time.perf_counter() - t0, "maps": out}

                    ref = forward("fp32", False)["maps"]
                    err = {}
                    for v in variants:
                        maps = forward(*v)["maps"]  # also the warm-up of each variant
                        err[v] = max(float((maps[k] - ref[k]).norm() / ref[k].norm().clamp_min(1e-30)) for k in ref)
                    # yardstick: how much the images' own 8-bit quantisation (±0.5/255 per pixel) moves the maps
                    std = torch.tensor(tr.cfg.data.std if task == "segmentation" else [1.0, 1.0, 1.0]).view(3, 1, 1)
                    gen = torch.Generator().manual_seed(0)

                    def jitter(x):
                        if isinstance(x, torch.Tensor):
                            return x + (torch.rand(x.shape, generator=gen) - 0.5) / 255 / std.to(x.device, x.dtype)
                        return [jitter(t) for t in x]

                    d.teacher.to(memory_format=torch.contiguous_format)
                    d.teacher_amp = "none"
                    noisy = d.teacher_levels(tuple(jitter(x) for x in inputs), spec)
                    quant = max(float((noisy[k] - ref[k]).norm() / ref[k].norm().clamp_min(1e-30)) for k in ref)
                    kd = {}
                    if task == "segmentation":  # batch norm on running statistics (a batch of 1 has none);
                        d.student.eval()  # detectors return their losses only in training mode (frozen BN there)
                    for amp in ("none", "bf16"):  # the recipe's KD loss on the same student maps
                        d.teacher_amp = amp
                        with torch.no_grad():
                            kd[amp] = float(d(*inputs, targets=_targets)["loss_kd"])
                    d.student.train()
                    kd_rel = abs(kd["bf16"] - kd["none"]) / max(abs(kd["none"]), 1e-30)
                    times = {v: [] for v in variants}
                    for i in range(args.iters):
                        for j in range(len(variants)):
                            v = variants[(i + j) % len(variants)]
                            times[v].append(forward(*v)["sec"])
                finally:
                    tr.close()
            med = {v: statistics.median(t) for v, t in times.items()}
            res = {"setting": name, "batch": batch, "scale": args.scale, "iters": args.iters,
                   "times": {f"{a}{'_nhwc' if c else ''}": t for (a, c), t in times.items()},
                   "rel_error": {f"{a}{'_nhwc' if c else ''}": e for (a, c), e in err.items()},
                   "rel_error_8bit_input": quant, "kd_loss": kd, "kd_loss_rel_diff": kd_rel,
                   "method": tr.cfg.distill.method}
            results.append(res)
            cells = [f"{med[v]:.3f} ({_spread(times[v])})" for v in variants]
            lines.append(f"| {name} | {batch} | " + " | ".join(cells) +
                         f" | {med[('bf16', True)] / med[('fp32', False)]:.2f}× | {err[('bf16', False)]:.1e} "
                         f"| {quant:.1e} | {err[('fp32', True)]:.1e} | {kd_rel:.1e} |")
            print(lines[-1], flush=True)
    head = (f"Teacher forward (as the Distiller runs it), median (min–max) of {args.iters} interleaved iterations "
            f"per variant after one warm-up, one process; {args.threads} threads, torch {torch.__version__}; "
            f"scale {args.scale:g}; rel. error: ‖F − F_fp32‖ / ‖F_fp32‖ of the worst captured level (fp32 NCHW maps "
            f"as reference); 8-bit input noise: the same for fp32 maps of the images plus uniform ±0.5/255 per pixel "
            f"(the data's own quantisation); KD loss: the recipe's method (ACAM-KD) on the same student maps, "
            f"teacher in bf16 vs fp32 (random-initialised teachers)")
    text = "\n".join([head, "", *lines])
    print("\n" + text)
    with open(os.path.join(args.out, "teacher_forward.md"), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    with open(os.path.join(args.out, "teacher_forward.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["tables", "brief", "alone", "teacher", "cost", "rest"])
    ap.add_argument("--out", required=True)
    ap.add_argument("--settings", nargs="+", default=REAL, choices=list(SETTINGS))
    ap.add_argument("--methods", nargs="+", default=None, help="tables: default every registered method")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--scale", type=float, default=1.0, help="× the papers' image / crop size (1 = 800×1333, 512×1024)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    ap.add_argument("--teacher-amp", default="auto", choices=["auto", "bf16", "none"], help="tables: distill.teacher_amp")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 2], help="teacher: batch sizes")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                    help="tables, rest: further engine overrides for every run (e.g. train.malloc_keep=false)")
    ap.add_argument("--flush", choices=["on", "off", "both"], default="on",
                    help="alone: subnormals flushed (on), kept (off) or both, alternating run by run")
    ap.add_argument("--readme", default=None, metavar="PATH",
                    help="brief: also write the tables into this Markdown file, between its two "
                         "'<!-- real_size.py brief' lines")
    ap.add_argument("--resume", action="store_true",
                    help="tables: keep the rows <out>/<setting>.json already holds for this scale and --iters")
    ap.add_argument("--in-process", action="store_true",
                    help="tables: measure every method in this process (on a GPU, where starting a process and "
                         "its CUDA context costs more than the steps), not one subprocess each")
    ap.add_argument("--stop-at", type=float, default=None, metavar="EPOCH_SECONDS",
                    help="tables: start no method after this time (seconds since the epoch, as `date +%%s`); "
                         "those left are listed as not run: for a leased machine's time limit")
    args = ap.parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the bench subprocesses inherit it
    import torch

    torch.set_num_threads(args.threads)
    return {"tables": run_tables, "brief": run_brief, "alone": run_alone, "teacher": run_teacher,
            "cost": run_cost, "rest": run_rest}[args.what](args)


if __name__ == "__main__":
    sys.exit(main())
