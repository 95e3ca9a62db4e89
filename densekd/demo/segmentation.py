"""``densekd demo`` (segmentation): does ACAM-KD make a small segmenter better, on a laptop, with no download?

The realistic case: a teacher that knows more than the student can learn from its own labels — trained on a
larger labelled pool for longer — and a student that sees only part of those labels in a short schedule.

1. Data: the built-in digits set (:mod:`densekd.data.digits`, real handwritten digits on 64×64 canvases), built
   once into the cache: the teacher's pool (``train``), ``dev`` (where every setting here was chosen) and ``val``
   (reported on; its source digits are used by no other split).
2. Teacher: TinySegNet width 32, shipped inside the package (``densekd/assets/demo_segmentation_teacher.*``,
   a state dict and its record: command, data seed, metric, checksums). It is verified by checksum and never
   trained by a cold demo; ``--retrain-teacher`` rebuilds it with the engine (written to the output folder,
   never over the shipped files) and says whether it is bit for bit the shipped one.
3. Students: TinySegNet width 16 on the first ``n_student`` canvases of the pool, all with the same schedule,
   seed and data order — plain, Hinton KD on the logits and FitNet on the trunk feature (controls), and
   ACAM-KD on the trunk feature — each trained through the engine (:func:`densekd.tools.compare.compare_runs`: the
   project's one training loop, checkpointed and resumable; finished runs are reused).
4. One table on ``val`` (mean ± std over seeds, each method's gain over the plain student paired by seed with the
   std of the paired gains, and whether it exceeds 2 std), the verdict line, the KD health warnings of the runs,
   and figures: validation curves, the ACAM-KD spatial masks over a val image (each panel titled with its
   spatial std), its channel masks, and the mask statistics over training.

``quick=True`` is the CI smoke run (tiny sizes; its numbers mean nothing and it says so).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

import numpy as np

from ..data.digits import NUM_SEG_CLASSES
from ..errors import ConfigError
from ..run_folder import CHECKPOINT_FILE, CONFIG_FILE, LOG_FILE, mask_key
from ..tools.compare import is_plain
from . import common

#: the shipped teacher's artefact name (densekd/assets/<name>.pt / .json)
TEACHER_ASSET = "demo_segmentation_teacher"
#: the command that made the shipped teacher (recorded beside it)
TEACHER_COMMAND = "densekd demo --retrain-teacher --threads 1"
METHOD_LABELS = {"baseline": "student (plain)", "hinton_kd": "student + Hinton KD (logits)",
                 "fitnet": "student + FitNet (trunk)", "acam_kd": "student + ACAM-KD (trunk)",
                 "acam_kd_paper": "student + ACAM-KD literal (trunk)"}
DIGIT_NAMES = ["background", *[str(d) for d in range(10)]]
#: losses on the class scores: distilled on the logits (``classifier``), not on the feature
LOGIT_METHODS = ("hinton_kd", "cwd")
#: every method's distill.weight as chosen on dev (DemoConfig.weights): `densekd compare
#: configs/compare/demo_methods.yaml --tune` (6 weights spanning 300×, 2 dev seeds each, the same for every method),
#: each method's best dev mean among the weights at which the start-of-training guards stay silent — the demo shows
#: a healthy run. Dev gains over plain (benchmarks/results/compare_tuned.md): Hinton KD 0.3 −0.25 ± 0.53 (every
#: weight ≤ 0: the best is the least harm); FitNet 10 +4.11 ± 0.39 (its best); ACAM-KD 3 +6.32 ± 0.38 (its best,
#: +6.47 ± 0.25 at 10, starts at a KD/task loss ratio of 14, where the guard warns); the literal ACAM-KD 1 −2.22 ±
#: 0.74 (every weight < 0; at 0.1, −0.62, the guard says the KD term is too small to matter)
DEV_WEIGHTS: dict[str, float] = {"hinton_kd": 0.3, "fitnet": 10.0, "acam_kd": 3.0, "acam_kd_paper": 1.0}


@dataclass
class DemoConfig(common.DemoSettings):
    """Every setting of the segmentation demo (:class:`~densekd.demo.common.DemoSettings` and these); the defaults
    are the documented run (chosen on ``dev``): data 1,600 / 200 / 400 / 400 canvases, batch 16, teacher 2,000 and
    students 400 iterations, lr 3e-3."""

    TASK: ClassVar[str] = "segmentation"
    POSITIVE: ClassVar[tuple[str, ...]] = (*common.DemoSettings.POSITIVE, "teacher_width", "student_width")

    task: str = "segmentation"
    methods: tuple[str, ...] = ("baseline", "hinton_kd", "fitnet", "acam_kd")
    # models (TinySegNet, densekd.models.segmentation)
    teacher_width: int = 32
    student_width: int = 16
    # distillation: feature losses on a feature, logit losses (LOGIT_METHODS) on the logits
    feature: str = "trunk"
    # distill.weight per method (× the method's own loss weight), chosen on dev with the same budget for every
    # method: `densekd compare configs/compare/demo_methods.yaml --tune` (6 weights spanning 300×, 2 dev seeds each;
    # benchmarks/results/compare_tuned.md); an ACAM-KD variant without its own weight runs at acam_kd's, so that
    # it differs from it in its own switch only
    weights: dict[str, float] = field(default_factory=lambda: dict(DEV_WEIGHTS))
    # docs/methods.md, "Spatial masks must be spatial": on this post-ReLU trunk feature z_norm="none" (the
    # default before 2026-12-05) leaves every spatial mask a constant 0/1 gate (per-mask spatial std 0 on dev
    # images, measured: benchmarks/results/demo_segmentation.md), so the demo standardises Z over space (also
    # the best on dev; the library default since)
    acam_kwargs: dict[str, Any] = field(default_factory=lambda: {"z_norm": "spatial"})

    @staticmethod
    def quick_config(**kw: Any) -> "DemoConfig":
        base = DemoConfig(quick=True, seeds=1, n_pool=32, n_student=32, n_dev=16, n_val=16, student_width=4,
                          batch_size=8, teacher_iters=20, student_iters=12, eval_points=2)
        return replace(base, **kw)

    def validate(self) -> None:
        super().validate()
        unweighted = [m for m in self.methods if not is_plain(m) and self.weight_of(m) is None]
        if unweighted:
            raise ConfigError(f"demo: no distill.weight chosen on dev for {unweighted} (the segmentation demo has "
                              f"weights for {sorted(self.weights)}; `densekd compare "
                              f"configs/compare/demo_methods.yaml --tune` chooses one)")

    def weight_of(self, method: str) -> float | None:
        """``method``'s distill.weight: its own, else (an ACAM-KD variant) acam_kd's, else None."""
        if method in self.weights:
            return self.weights[method]
        return self.weights.get("acam_kd") if method.startswith("acam_kd_") else None

    # -- what the teacher is (the shipped record must say the same, or --retrain-teacher is needed)
    def teacher_spec(self) -> dict[str, Any]:
        return {"arch": "tiny", "width": self.teacher_width, "num_classes": NUM_SEG_CLASSES}


# --------------------------------------------------------------------------------------------- configs
def _data_section(cfg: DemoConfig, root: Path, split: str, max_images: int | None) -> dict[str, Any]:
    return {
        "format": "folder", "root": str(root), "num_classes": NUM_SEG_CLASSES, "class_names": DIGIT_NAMES,
        "train_split": "train", "val_split": split, "max_images": max_images,
        # the canvases as they are (no rescaling, no flip: a mirrored digit is another shape)
        "crop_size": [cfg.canvas, cfg.canvas], "scale_range": [1.0, 1.0], "flip": False,
        "mean": [0.2, 0.2, 0.2], "std": [0.3, 0.3, 0.3],
    }


def _train_section(cfg: DemoConfig, iters: int) -> dict[str, Any]:
    every = max(1, iters // cfg.eval_points)
    return {"max_iters": iters, "batch_size": cfg.batch_size, "num_workers": 0,
            "optimizer": {"type": "adamw", "lr": cfg.lr, "weight_decay": cfg.weight_decay},
            "schedule": {"type": "cosine", "warmup_iters": 0},
            "checkpoint_every": max(iters // 2, 1), "log_every": max(1, min(50, iters // 8)),
            "eval_every": every if every < iters else 0}


def teacher_config(cfg: DemoConfig, root: Path, out: Path) -> dict[str, Any]:
    """The engine config that trains the teacher on the whole pool (its curve evaluated on dev)."""
    return {"task": "segmentation", "output_dir": str(out), "seed": 0,
            "model": {"student": cfg.teacher_spec()},
            "data": _data_section(cfg, root, "dev", None),
            "train": {**_train_section(cfg, cfg.teacher_iters), "checkpoint_every": max(cfg.teacher_iters // 4, 1)},
            "eval": {"batch_size": 64}}


def student_config(cfg: DemoConfig, root: Path, teacher_checkpoint: str | Path, out: Path) -> dict[str, Any]:
    """The engine config of every student run (compare sets the method, seed and output folder per run);
    ``teacher_checkpoint``: a file, or ``asset:<name>`` for the shipped teacher (verified when loaded)."""
    kwargs = {"num_masks": NUM_SEG_CLASSES, **cfg.acam_kwargs}  # docs/methods.md, "ASCM": M = number of classes
    return {"task": "segmentation", "output_dir": str(out), "seed": 0,
            "model": {"student": {"arch": "tiny", "width": cfg.student_width, "num_classes": NUM_SEG_CLASSES},
                      "teacher": {**cfg.teacher_spec(), "checkpoint": str(teacher_checkpoint)}},
            "data": _data_section(cfg, root, cfg.eval_split, cfg.n_student),
            "distill": {"method": "acam_kd", "kwargs": kwargs, "weight": cfg.weight_of("acam_kd") or 1.0,
                        "pairs": [{"student": cfg.feature}]},
            "train": _train_section(cfg, cfg.student_iters), "eval": {"batch_size": 64}}


def method_settings(cfg: DemoConfig) -> dict[str, list[str]]:
    """Per-method engine overrides: each method's ``distill.weight`` (chosen on dev); logit losses on the logits
    (``classifier``), feature losses on the config's feature pair."""
    out: dict[str, list[str]] = {}
    for m in cfg.methods:
        if is_plain(m):
            continue
        sets = ["distill.pairs=[{student: classifier}]"] if m in LOGIT_METHODS else []
        w = cfg.weight_of(m)
        out[m] = sets + ([f"distill.weight={w}"] if w is not None else [])
    return out


#: settings that only the distilled students see: they name each method's run folder, not the setting's folder
DISTILL_SETTINGS = ("weights",)


def run_names(cfg: DemoConfig) -> dict[str, str]:
    """Each method's run folder: ``baseline``, or ``<method>-<hash of its weight>``, so that a finished run is
    reused only when it is the same run (and a new weight for one method retrains that method only)."""
    return {m: m if is_plain(m) else f"{m}-{common.settings_hash({'weight': cfg.weight_of(m)})[:8]}"
            for m in cfg.methods}


def method_kwargs(cfg: DemoConfig) -> dict[str, dict[str, Any]]:
    """Loss kwargs of the ACAM-KD variants (``acam_kd_paper``, the ablations): acam_kd's own (M = 11 and
    ``acam_kwargs``), so that each differs from it only in its own switch."""
    return {m: {"num_masks": NUM_SEG_CLASSES, **cfg.acam_kwargs} for m in cfg.methods
            if m.startswith("acam_kd_")}


def build_data(cfg: DemoConfig, cache: Path):
    """The demo's digits dataset (built once into ``cache``, keyed by its parameters)."""
    return common.build_data(cfg, cache)


# --------------------------------------------------------------------------------------------- figures
def _acam_level(distiller: Any) -> Any:
    for mod in distiller.kd_losses.values():
        if hasattr(mod, "mask_statistics"):
            return mod
    return None


def plot_masks(run_dir: Path, image_index: int, paths: tuple[Path, Path], split: str) -> tuple[Path, Path] | None:
    """The trained ACAM-KD modules of ``run_dir`` (rebuilt by the engine from its checkpoint) on one image of the
    evaluation split: every spatial mask (its own colour range; the title gives its spatial std) and the
    channel masks."""
    import torch

    from ..engine.trainer import Trainer

    if not (run_dir / CHECKPOINT_FILE).is_file():
        return None
    trainer = Trainer(str(run_dir / CONFIG_FILE), ["train.resume=true"])  # loads student + KD modules
    image, mask = trainer.val_set[image_index]
    distiller = trainer.model
    distiller.eval()
    with torch.no_grad():
        distiller(image[None], targets=mask[None])
    mod = _acam_level(distiller)
    if mod is None or "spatial" not in mod.last_masks:
        return None
    sp = mod.last_masks["spatial"][0].float()  # [M, h, w]
    data = trainer.cfg.data
    rgb = (image * torch.tensor(data.std).view(3, 1, 1) + torch.tensor(data.mean).view(3, 1, 1)).clamp(0, 1)
    plt = common.pyplot()
    m = sp.shape[0]
    cols = min(7, m + 2)
    rows = math.ceil((m + 2) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.0 * rows))
    axes = np.atleast_1d(axes).ravel()
    axes[0].imshow(rgb.permute(1, 2, 0).numpy())
    axes[0].set_title(f"{split} image", fontsize=8)
    axes[1].imshow(mask.numpy(), cmap="tab20", vmin=0, vmax=19, interpolation="nearest")
    axes[1].set_title("ground truth", fontsize=8)
    for i in range(m):
        mi = sp[i].numpy()
        axes[i + 2].imshow(mi, cmap="viridis", interpolation="nearest")
        axes[i + 2].set_title(f"mask {i}: std {mi.std():.2g}\n[{mi.min():.2g}, {mi.max():.2g}]", fontsize=7)
    for a in axes:
        a.axis("off")
    fig.suptitle(f"ACAM-KD spatial masks at '{trainer.cfg.distill.pairs[0]['student']}' after training "
                 f"(each panel: its own colour range; std = spatial std)", fontsize=9)
    fig.tight_layout()
    fig.savefig(paths[0], dpi=100)
    plt.close(fig)
    ch = mod.last_masks["channel"][0].float().numpy() if "channel" in mod.last_masks else None
    if ch is not None:
        fig, ax = plt.subplots(figsize=(max(4, 0.08 * ch.shape[1] + 2), max(3, 0.3 * ch.shape[0] + 1.5)))
        im = ax.imshow(ch, cmap="viridis", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
        ax.set(xlabel="channel", ylabel="mask", title="ACAM-KD channel masks (M × C) on the same image")
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        fig.savefig(paths[1], dpi=100)
        plt.close(fig)
    return paths


MASK_STATS = ("mean", "dice", "entropy", "std")


def plot_mask_stats(res: common.StudentResults, method: str, path: Path) -> Path | None:
    """Each mask family's statistics over training, from the runs' log.csv (columns ``kd/<level>/masks/<family>/
    <stat>``, written by the engine), one line per seed."""
    series: dict[tuple[str, str], dict[str, list[tuple[list[float], list[float]]]]] = {}  # (level, family) → stat
    for d in common.run_dirs(res, method):
        rows = common.read_csv_rows(d / LOG_FILE)
        cols = sorted({k for r in rows for k in r if mask_key(k)})
        for c in cols:
            level, fam, stat = mask_key(c)
            pts = [(r["iter"], r[c]) for r in rows if c in r]
            series.setdefault((level, fam), {}).setdefault(stat, []).append(([p[0] for p in pts], [p[1] for p in pts]))
    if not series:
        return None
    plt = common.pyplot()
    fig, axes = plt.subplots(1, len(MASK_STATS), figsize=(4 * len(MASK_STATS), 3.6))
    fams = sorted(series)
    for ax, stat in zip(axes, MASK_STATS):
        for i, (level, fam) in enumerate(fams):
            for j, (x, y) in enumerate(series[level, fam].get(stat, [])):
                ax.plot(x, y, color=f"C{i}", alpha=0.7, marker="o", ms=2, label=f"{level}/{fam}" if j == 0 else None)
        ax.set(xlabel="iteration", title={"mean": "mean mask value", "dice": "pairwise Dice between masks",
                                          "entropy": "entropy / log N (1 = uniform)",
                                          "std": "per-mask std over positions"}[stat])
        if stat != "std":
            ax.set_ylim(0, 1.05)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------- the demo
class _Segmentation(common.DemoTask):
    """The segmentation demo's hooks of the skeleton (:func:`densekd.demo.common.run_demo`)."""

    name = "segmentation"
    command = "densekd demo"
    title = "segmentation on the built-in digits set"
    teacher_asset = TEACHER_ASSET
    teacher_command = TEACHER_COMMAND
    runs_prefix = "runs"
    summary_file = "summary.json"
    metrics = ("mIoU",)
    metric_label = "mIoU"
    loss_label = "cross-entropy"

    def labels(self) -> Mapping[str, str]:
        return METHOD_LABELS

    def teacher_model(self) -> str:
        return f"TinySegNet width {self.cfg.teacher_width}"

    def teacher_short(self) -> str:
        return f"width {self.cfg.teacher_width}"

    def teacher_config(self, root: Path, out: Path) -> dict[str, Any]:
        return teacher_config(self.cfg, root, out)

    def split_overrides(self, root: Path, split: str) -> list[str]:
        return [f"data.val_split={split}"]

    def students(self, root: Path, teacher: common.TeacherChoice, out: Path, log: Callable[[str], None]
                 ) -> tuple[dict[str, Any], Path]:
        runs_dir = common.student_runs_dir(self.cfg, self.runs_prefix, teacher.record["weights_sha256"],
                                           exclude=DISTILL_SETTINGS)
        return student_config(self.cfg, root, teacher.checkpoint, runs_dir), runs_dir

    def method_settings(self) -> dict[str, list[str]]:
        return method_settings(self.cfg)

    def run_names(self) -> dict[str, str]:
        return run_names(self.cfg)

    def method_kwargs(self) -> dict[str, dict[str, Any]]:
        return method_kwargs(self.cfg)

    def describe(self, teacher: common.TeacherChoice, split_n: int) -> str:
        cfg = self.cfg
        # data.max_images (the students' n_student canvases) limits every split the engine reads, evaluation included
        n_eval = min(split_n, cfg.n_student)
        return (f"mIoU (%) on '{cfg.eval_split}' (its first {n_eval} of {split_n} canvases); students: width "
                f"{cfg.student_width} "
                f"({_params(cfg.student_width):,} parameters, KD modules dropped after training), {cfg.n_student} "
                f"labelled canvases, {cfg.student_iters} iterations × batch {cfg.batch_size}; teacher: width "
                f"{cfg.teacher_width} ({_params(cfg.teacher_width):,} parameters), trained on "
                f"{teacher.record.get('data', {}).get('n_train', '?')} canvases; "
                f"ACAM-KD switches: {cfg.acam_kwargs or 'the defaults'}"
                + (' (docs/methods.md, "Spatial masks must be spatial": without it the spatial masks are constant '
                   'gates on this post-ReLU feature)' if cfg.acam_kwargs.get("z_norm") == "spatial" else ""))

    def extra_verdicts(self, res: common.StudentResults) -> list[str]:
        # the paper's claim is ACAM-KD over its no-mask control (its Table 10): the same seeds, feature and data
        claim = common.head_to_head_line(res, "acam_kd", "fitnet", "ACAM-KD", "FitNet")
        return [f"{claim} [the paper's claim: the masks beat plain feature mimicking, its Table 10]"] if claim else []

    def figures(self, res: common.StudentResults, out: Path) -> dict[str, Path]:
        cfg = self.cfg
        figs = {"spatial_masks": out / "acam_spatial_masks.png", "channel_masks": out / "acam_channel_masks.png",
                "mask_stats": out / "acam_mask_stats.png"}
        acam = next((m for m in cfg.methods if m.startswith("acam_kd")), None)
        made = set()
        if acam is not None:
            last = common.run_dirs(res, acam)[-1]
            if plot_masks(last, 0, (figs["spatial_masks"], figs["channel_masks"]), cfg.eval_split):
                made |= {"spatial_masks", "channel_masks"}
            if plot_mask_stats(res, acam, figs["mask_stats"]):
                made.add("mask_stats")
        return {k: v for k, v in figs.items() if k in made}


def run_demo(cfg: DemoConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the demo; returns the table text, the per-run results, the verdict and the figure paths."""
    return common.run_demo(_Segmentation(cfg), log)


def _params(width: int) -> int:
    from ..models.segmentation import TinySegNet

    return sum(p.numel() for p in TinySegNet(width, NUM_SEG_CLASSES).parameters())


__all__ = ["DEV_WEIGHTS", "DemoConfig", "LOGIT_METHODS", "METHOD_LABELS", "TEACHER_ASSET", "build_data", "method_kwargs",
           "method_settings", "run_demo", "run_names",
           "student_config", "teacher_config"]
