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
   ACAM-KD on the trunk feature — each trained through the engine (:func:`densekd.compare.compare_runs`: the
   project's one training loop, checkpointed and resumable; finished runs are reused).
4. One table on ``val`` (mean ± std over seeds, each method's gain over the plain student paired by seed with the
   std of the paired gains, and whether it exceeds 2 std), the verdict line, the KD health warnings of the runs,
   and figures: validation curves, the ACAM-KD spatial masks over a val image (each panel titled with its
   spatial std), its channel masks, and the mask statistics over training.

``quick=True`` is the CI smoke run (tiny sizes; its numbers mean nothing and it says so).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..data.digits import NUM_SEG_CLASSES, make_digits_dataset
from ..errors import ConfigError
from ..run_folder import CHECKPOINT_FILE, CONFIG_FILE, LOG_FILE, STUDENT_FILE, mask_key
from . import common

#: the shipped teacher's artefact name (densekd/assets/<name>.pt / .json)
TEACHER_ASSET = "demo_segmentation_teacher"
#: the command that made the shipped teacher (recorded beside it)
TEACHER_COMMAND = "densekd demo --retrain-teacher --threads 1"
METHOD_LABELS = {"baseline": "student (plain)", "hinton_kd": "student + Hinton KD (logits)",
                 "fitnet": "student + FitNet (trunk)", "acam_kd": "student + ACAM-KD (trunk)",
                 "acam_kd_paper": "student + ACAM-KD literal (trunk)"}
DIGIT_NAMES = ["background", *[str(d) for d in range(10)]]


@dataclass
class DemoConfig:
    """Every setting of the segmentation demo; the defaults are the documented run (chosen on ``dev``)."""

    task: str = "segmentation"
    seeds: int = 3
    quick: bool = False
    eval_split: str = "val"  # "dev" while choosing settings, "val" to report
    cache_dir: str = "~/.cache/densekd"
    out_dir: str = "densekd-demo"
    threads: int = 0  # 0: leave torch's default
    jobs: int = 1  # students trained at once (worker processes; the threads split between them)
    retrain_teacher: bool = False
    methods: tuple[str, ...] = ("baseline", "hinton_kd", "fitnet", "acam_kd")
    # data: the teacher's labelled pool is the train split; the student sees its first n_student canvases
    canvas: int = 64
    n_pool: int = 1600
    n_student: int = 200
    n_dev: int = 400
    n_val: int = 400
    data_seed: int = 0
    # models (TinySegNet, densekd.models.segmentation)
    teacher_width: int = 32
    student_width: int = 16
    # schedule (AdamW, cosine, batch 16; the teacher trains longer on more data)
    batch_size: int = 16
    teacher_iters: int = 2000
    student_iters: int = 400
    lr: float = 3e-3
    weight_decay: float = 1e-4
    eval_points: int = 4
    # distillation: feature losses on a feature, logit losses on the logits (pair weight × the method's own)
    feature: str = "trunk"
    feature_weight: float = 1.0  # acam_kd, fitnet
    logits_weight: float = 1.0  # hinton_kd
    # methods.md, "spatial masks must be spatial": on this post-ReLU trunk feature the default z_norm="none"
    # leaves every spatial mask a constant 0/1 gate (per-mask spatial std 0 on dev images, measured:
    # benchmarks/demo_segmentation.md), so the demo standardises Z over space (also the best on dev)
    acam_kwargs: dict[str, Any] = field(default_factory=lambda: {"z_norm": "spatial"})

    @staticmethod
    def quick_config(**kw: Any) -> "DemoConfig":
        base = DemoConfig(quick=True, seeds=1, n_pool=32, n_student=32, n_dev=16, n_val=16, student_width=4,
                          batch_size=8, teacher_iters=20, student_iters=12, eval_points=2)
        return replace(base, **kw)

    def validate(self) -> None:
        from ..compare import BASELINE_NAMES, check_methods

        if self.task != "segmentation":
            raise ConfigError(f"demo: --task must be 'segmentation' or 'detection', got {self.task!r}")
        if self.seeds < 1:
            raise ConfigError(f"demo: --seeds must be ≥ 1, got {self.seeds}")
        if self.jobs < 1:
            raise ConfigError(f"demo: --jobs must be ≥ 1, got {self.jobs}")
        if self.eval_split not in ("val", "dev"):
            raise ConfigError(f"demo: --eval-split must be 'val' or 'dev', got {self.eval_split!r}")
        for k in ("teacher_iters", "student_iters", "batch_size", "teacher_width", "student_width", "eval_points",
                  "n_pool", "n_student", "n_dev", "n_val", "canvas"):
            if getattr(self, k) < 1:
                raise ConfigError(f"demo: {k} must be ≥ 1, got {getattr(self, k)}")
        if self.n_student > self.n_pool:
            raise ConfigError(f"demo: n_student ({self.n_student}) must be ≤ n_pool ({self.n_pool}): the student's "
                              "labelled set is part of the teacher's pool")
        methods = list(self.methods)
        if not any(m in BASELINE_NAMES for m in methods):
            raise ConfigError(f"demo: --methods must include the plain student ('baseline'), got {methods}")
        check_methods(methods)

    # -- what the teacher is (the shipped record must say the same, or --retrain-teacher is needed)
    def teacher_spec(self) -> dict[str, Any]:
        return {"arch": "tiny", "width": self.teacher_width, "num_classes": NUM_SEG_CLASSES}

    def data_params(self) -> dict[str, Any]:
        return dict(seed=self.data_seed, n_train=self.n_pool, n_val=self.n_val, n_dev=self.n_dev, canvas=self.canvas,
                    scale=[self.canvas // 4, self.canvas // 2])


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
    kwargs = {"num_masks": NUM_SEG_CLASSES, **cfg.acam_kwargs}  # methods.md ASCM: M = number of classes
    return {"task": "segmentation", "output_dir": str(out), "seed": 0,
            "model": {"student": {"arch": "tiny", "width": cfg.student_width, "num_classes": NUM_SEG_CLASSES},
                      "teacher": {**cfg.teacher_spec(), "checkpoint": str(teacher_checkpoint)}},
            "data": _data_section(cfg, root, cfg.eval_split, cfg.n_student),
            "distill": {"method": "acam_kd", "kwargs": kwargs, "weight": cfg.feature_weight,
                        "pairs": [{"student": cfg.feature}]},
            "train": _train_section(cfg, cfg.student_iters), "eval": {"batch_size": 64}}


def method_settings(cfg: DemoConfig) -> dict[str, list[str]]:
    """Per-method engine overrides: logit losses on the logits (``classifier``) at ``logits_weight``; feature
    losses keep the config's feature pair and ``feature_weight``."""
    return {m: ["distill.pairs=[{student: classifier}]", f"distill.weight={cfg.logits_weight}"]
            for m in cfg.methods if m in ("hinton_kd", "cwd")}


def method_kwargs(cfg: DemoConfig) -> dict[str, dict[str, Any]]:
    """Loss kwargs of the ACAM-KD variants (``acam_kd_paper``, the ablations): acam_kd's own (M = 11 and
    ``acam_kwargs``), so that each differs from it only in its own switch."""
    return {m: {"num_masks": NUM_SEG_CLASSES, **cfg.acam_kwargs} for m in cfg.methods
            if m.startswith("acam_kd_")}


def _hash(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def build_data(cfg: DemoConfig, cache: Path):
    """The demo's digits dataset (built once into ``cache``, keyed by its parameters)."""
    dparams = cfg.data_params()
    return make_digits_dataset(Path(cache) / f"digits-{_hash(dparams)}", **dparams)


# --------------------------------------------------------------------------------------------- teacher
def _check_record(cfg: DemoConfig, record: Mapping[str, Any]) -> None:
    spec = record.get("model")
    if spec != cfg.teacher_spec():
        raise ConfigError(f"demo: the shipped teacher is {spec}, this demo asks for {cfg.teacher_spec()}; run "
                          "`densekd demo --retrain-teacher` to train the teacher this config describes")


def _retrain(cfg: DemoConfig, root: Path, out: Path, log: Callable[[str], None]) -> Callable[[], tuple[dict, dict]]:
    def run() -> tuple[dict, dict]:
        import torch

        from ..assets import load_state_dict
        from ..engine import evaluate, train

        threads = torch.get_num_threads()
        log(f"teacher: training TinySegNet width {cfg.teacher_width} on the {cfg.n_pool}-canvas pool for "
            f"{cfg.teacher_iters} iterations through the engine ({out}), 1 thread for reproducibility")
        torch.set_num_threads(1)
        try:
            conf = teacher_config(cfg, root, out)
            train(conf, ["train.resume=false"])
            sd = load_state_dict(out / STUDENT_FILE)
            metrics = {}
            for split in ("dev", "val"):
                m = evaluate(conf, str(out / STUDENT_FILE), [f"data.val_split={split}",
                                                                    f"output_dir={out / ('eval_' + split)}"])
                metrics[f"{split} mIoU"] = round(100 * m["mIoU"], 2)
        finally:
            torch.set_num_threads(threads)
        record = {"kind": "densekd demo teacher (segmentation)", "command": TEACHER_COMMAND,
                  "model": cfg.teacher_spec(), "data": {"generator": "densekd.data.digits.make_digits_dataset",
                                                        **cfg.data_params(), "split": "train (the whole pool)"},
                  "train": conf["train"], "seed": 0, "threads": 1, "metric": metrics,
                  "torch": torch.__version__, "created": time.strftime("%Y-%m-%d")}
        return sd, record

    return run


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


# --------------------------------------------------------------------------------------------- main
def run_demo(cfg: DemoConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the demo; returns the table text, the per-run results, the verdict and the figure paths."""
    cfg.validate()
    common.set_threads(cfg.threads)
    t_start = time.perf_counter()
    cache = Path(os.path.expanduser(cfg.cache_dir))
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from .. import losses  # noqa: F401  (registers every method)

    ds = build_data(cfg, cache)
    log(f"data: {ds.root} ({'built' if ds.built else 'cached'}; teacher's pool {cfg.n_pool} canvases, the student "
        f"sees the first {cfg.n_student}; dev {cfg.n_dev}, val {cfg.n_val}; {cfg.canvas}×{cfg.canvas}; the splits "
        "share no source digit)")

    hint = "run `densekd demo --retrain-teacher` to rebuild it with our own command"
    teacher = common.resolve_teacher(TEACHER_ASSET, cfg.retrain_teacher, _retrain(cfg, ds.root, out / "teacher", log),
                                     out / "teacher", hint, log)
    _check_record(cfg, teacher.record)

    settings = {k: v for k, v in asdict(cfg).items() if k not in ("seeds", "out_dir", "cache_dir", "threads", "jobs", "quick",
                                                                  "retrain_teacher", "methods", "task")}
    runs_dir = out / f"runs-{_hash([settings, teacher.record['weights_sha256']])}"
    ckpt = f"asset:{TEACHER_ASSET}" if teacher.origin == "shipped" else teacher.path
    conf = student_config(cfg, ds.root, ckpt, runs_dir)
    seeds = list(range(cfg.seeds))
    log(f"students: {', '.join(cfg.methods)} × {cfg.seeds} seed(s), {cfg.student_iters} iterations each, through "
        f"the engine (runs in {runs_dir}; finished runs are reused)")
    res = common.train_students(conf, cfg.methods, seeds, runs_dir, method_settings(cfg), log, method_kwargs(cfg),
                                cfg.jobs)

    # the teacher's own metric on the evaluation split, by the engine's evaluation
    from ..engine import evaluate

    t_conf = teacher_config(cfg, ds.root, out / "teacher_eval")
    t_metrics = evaluate(t_conf, str(teacher.path), [f"data.val_split={cfg.eval_split}"])
    t_miou = 100 * t_metrics["mIoU"]

    figs = {"gains": out / "gains.png", "curves": out / "curves.png", "spatial_masks": out / "acam_spatial_masks.png",
            "channel_masks": out / "acam_channel_masks.png", "mask_stats": out / "acam_mask_stats.png"}
    common.plot_curves(res, t_miou, figs["curves"], cfg.eval_split, metric=res.metric, metric_label="mIoU",
                       loss_label="cross-entropy", labels=METHOD_LABELS)
    common.plot_gains(res, METHOD_LABELS, figs["gains"])
    acam = next((m for m in cfg.methods if m.startswith("acam_kd")), None)
    made = {"curves", "gains"}
    if acam is not None:
        last = common.run_dirs(res, acam)[-1]
        if plot_masks(last, 0, (figs["spatial_masks"], figs["channel_masks"]), cfg.eval_split):
            made |= {"spatial_masks", "channel_masks"}
        if plot_mask_stats(res, acam, figs["mask_stats"]):
            made.add("mask_stats")
    figs = {k: v for k, v in figs.items() if k in made}

    n_params = {"teacher": _params(cfg.teacher_width), "student": _params(cfg.student_width)}
    split_n = cfg.n_val if cfg.eval_split == "val" else cfg.n_dev
    teacher_row = [f"teacher ({teacher.origin}, width {cfg.teacher_width})", common.fmt(t_miou), "", "", "—", "1"]
    table = common.results_table(res, METHOD_LABELS, teacher_row=teacher_row)
    verdicts = [common.verdict_line(res, m, METHOD_LABELS.get(m, m).replace("student + ", ""))
                for m in cfg.methods if m not in ("baseline", "student")]
    title = ("densekd demo — SMOKE RUN (--quick: tiny sizes, numbers mean nothing)" if cfg.quick else
             "densekd demo — segmentation on the built-in digits set")
    health = [f"  {m}: {w}" for m, ws in res.health.items() for w in ws]
    wall = time.perf_counter() - t_start
    text = "\n".join([
        title,
        f"mIoU (%) on '{cfg.eval_split}' ({split_n} canvases); students: width {cfg.student_width} "
        f"({n_params['student']:,} parameters, KD modules dropped after training), {cfg.n_student} labelled canvases, "
        f"{cfg.student_iters} iterations × batch {cfg.batch_size}; teacher: width {cfg.teacher_width} "
        f"({n_params['teacher']:,} parameters), trained on {teacher.record.get('data', {}).get('n_train', '?')} canvases; "
        f"ACAM-KD switches: {cfg.acam_kwargs or 'the defaults'}"
        + (" (methods.md: without it the spatial masks are constant gates on this post-ReLU feature)"
           if cfg.acam_kwargs.get("z_norm") == "spatial" else ""),
        table, *[v for v in verdicts if v],
        *(["KD health warnings from the runs:", *health] if health else []),
        f"total wall time {wall:.0f} s (threads: {_threads()})",
        "figures:", *[f"  {k}: {v}" for k, v in figs.items()],
    ])
    log(text)
    gains = {g.method: {"mean": g.mean, "std": g.std, "n": g.n, "per_seed": g.per_seed, "beyond_2std": g.beyond_2std}
             for g in res.gains}
    summary = {"config": asdict(cfg), "table": text, "wall_seconds": wall, "teacher": {
        "origin": teacher.origin, "path": str(teacher.path), "record": teacher.record, "note": teacher.note,
        "metric": t_miou}, "runs": res.runs, "gains": gains, "health": res.health,
        "figures": {k: str(v) for k, v in figs.items()}}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def _params(width: int) -> int:
    from ..models.segmentation import TinySegNet

    return sum(p.numel() for p in TinySegNet(width, NUM_SEG_CLASSES).parameters())


def _threads() -> int:
    import torch

    return torch.get_num_threads()


__all__ = ["DemoConfig", "METHOD_LABELS", "TEACHER_ASSET", "build_data", "method_kwargs", "method_settings", "run_demo", "student_config",
           "teacher_config"]
