"""``densekd demo --task detection``: does ACAM-KD make a small detector better, on a laptop, with no download?

The same realistic case as the segmentation demo — a teacher that knows more than the student can learn from its
own labels — on detection, where the paper's claims live:

1. Data: the built-in digits canvases with boxes (:mod:`densekd.data.digits`, real handwritten digits on 64×64
   canvases, COCO-format ``annotations.json`` per split, category id = digit + 1), read by the real COCO loader
   (:class:`densekd.data.coco.CocoDetection`). Built once into the cache: the teacher's pool (``train``), ``dev``
   (where every setting here was chosen) and ``val`` (reported on; its source digits are used by no other split).
2. Teacher: FCOS with a MobileNetV3-Small backbone and the ``cpu`` preset (64-channel FPN and heads, BatchNorm,
   trained from scratch, images at their own size), shipped inside the package in half precision
   (``densekd/assets/demo_detection_teacher.*``: the state dict and its record — command, data seed, metric on
   dev and val, checksums). Verified by checksum, never trained by a cold demo; ``--retrain-teacher`` rebuilds it
   with the engine (written to the output folder, never over the shipped files) and says whether it is bit for bit
   the shipped one.
3. Students: FCOS with a MobileNetV3-Small backbone half as wide, started from the shipped digit-classification
   pretraining, trained on the first ``n_student`` canvases of the pool with a short schedule — plain, FitNet
   (the "no mask" control of the paper's Table 10) and ACAM-KD, distilled on the FPN levels chosen on dev
   (P3–P5, docs/methods.md, "Distillation points"), each at the ``distill.weight`` chosen on dev — every run
   through the engine (:func:`densekd.tools.compare.compare_runs`, the project's one training loop; finished
   runs are reused).
4. COCO AP / AP50 / AP75 on ``val`` by pycocotools (mean ± std over seeds, each method's gain over the plain
   student paired by seed with the std of the paired gains and whether it exceeds 2 std), the verdict lines, the
   KD health warnings, and figures: the gains, the AP curves, and the ACAM-KD spatial masks at P3 over a val image
   with its boxes drawn (each panel titled with its spatial std).

``quick=True`` is the CI smoke run (tiny sizes; its numbers mean nothing and it says so).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

from ..data.digits import DIGIT_CLASSES
from ..errors import ConfigError
from ..run_folder import CHECKPOINT_FILE, CONFIG_FILE
from ..tools.compare import fmt, is_plain, markdown_table
from . import common
from .backbone import pretrain_backbone

#: the shipped teacher's artefact name (densekd/assets/<name>.pt / .json)
TEACHER_ASSET = "demo_detection_teacher"
#: the command that made the shipped teacher (recorded beside it)
TEACHER_COMMAND = "densekd demo --task detection --retrain-teacher --threads 1"
#: the student's pretrained backbone (densekd/assets/<name>.pt / .json) and the command that made it
BACKBONE_ASSET = "demo_detection_backbone"
BACKBONE_COMMAND = "densekd demo --task detection --retrain-backbone --threads 1"
#: the demo's labels; "{levels}" is the distilled FPN levels (e.g. "P3–P5"), filled in by :func:`method_labels`
_LABELS = {"baseline": "student (plain)", "fitnet": "student + FitNet ({levels}, no mask)",
           "acam_kd": "student + ACAM-KD ({levels})", "acam_kd_paper": "student + ACAM-KD literal ({levels})",
           "maskd": "student + MasKD ({levels}, fixed teacher mask)", "fgd": "student + FGD ({levels})",
           "mgd": "student + MGD ({levels})", "pkd": "student + PKD ({levels})", "cwd": "student + CWD ({levels})",
           "dmkd": "student + DMKD ({levels})", "freekd": "student + FreeKD ({levels})",
           "samkd": "student + SAMKD ({levels})",
           "acam_kd_teacher_fusion": "student + ACAM-KD teacher-only masks ({levels})",
           "acam_kd_spatial": "student + ACAM-KD spatial only ({levels})",
           "acam_kd_channel": "student + ACAM-KD channel only ({levels})",
           "acam_kd_student_query": "student + ACAM-KD student query ({levels})"}
#: FPN output key → the paper's level name (RetinaNet/FCOS: P3–P5 from C3–C5, P6/P7 from P5)
LEVEL_NAMES = {"0": "P3", "1": "P4", "2": "P5", "p6": "P6", "p7": "P7"}


def level_span(levels: tuple[str, ...] | list[str]) -> str:
    """("0", "1", "2") → "P3–P5"; a non-contiguous set is listed ("P3, P5")."""
    names = [LEVEL_NAMES.get(k, k) for k in levels]
    order = list(LEVEL_NAMES)
    idx = [order.index(k) for k in levels if k in order]
    if len(names) > 1 and len(idx) == len(names) and idx == list(range(idx[0], idx[0] + len(idx))):
        return f"{names[0]}–{names[-1]}"
    return ", ".join(names)


def method_labels(levels: tuple[str, ...] | list[str]) -> dict[str, str]:
    span = level_span(levels)
    return {m: text.format(levels=span) for m, text in _LABELS.items()}


METHOD_LABELS = method_labels(("0", "1", "2"))
METRICS = ("AP", "AP50", "AP75")


@dataclass
class DemoConfig(common.DemoSettings):
    """Every setting of the detection demo (:class:`~densekd.demo.common.DemoSettings` and these); the defaults are
    the documented run (chosen on ``dev``)."""

    TASK: ClassVar[str] = "detection"
    POSITIVE: ClassVar[tuple[str, ...]] = (*common.DemoSettings.POSITIVE, "fpn_channels", "student_fpn_channels",
                                           "num_masks")

    task: str = "detection"
    jobs: int = 2  # students trained at once (worker processes; the threads split between them)
    retrain_backbone: bool = False
    methods: tuple[str, ...] = ("baseline", "fitnet", "acam_kd")
    # data: the teacher's labelled pool is the train split; the student sees its first n_student canvases
    n_pool: int = 2000
    n_student: int = 400
    n_dev: int = 300
    n_val: int = 300
    # models: FCOS, cpu preset (densekd.models.detection.PRESETS)
    arch: str = "fcos"
    teacher_backbone: str = "mobilenet_v3_small"
    student_backbone: str = "mobilenet_v3_small"
    fpn_channels: int = 64
    student_fpn_channels: int = 64
    # the student is smaller than its teacher where the features are made: a MobileNetV3-Small backbone half as
    # wide, started from the shipped digit-classification pretraining (densekd.demo.backbone; None: from scratch)
    student_width_mult: float = 0.5
    student_pretrained: bool = True
    inherit: bool = False  # the paper's inheriting: student FPN/head tensors of matching shape from the teacher
    # schedule (AdamW, cosine, batch 16; the teacher trains longer on more data)
    teacher_iters: int = 3000
    student_iters: int = 1000
    lr: float = 2e-3
    warmup_iters: int = 100  # 20 let one seed's FCOS regression head die (a ReLU output negative everywhere)
    teacher_warmup_iters: int = 100
    eval_points: int = 2
    # distill.weight per method, chosen on dev (benchmarks/results/detection_demo.md, "Weights"): every method by its
    # best mean dev AP over the same budget — three weights spanning 10× around its doctor-rule weight, 2 seeds each,
    # and one value more past the grid's edge where the best sat at it (`python benchmarks/detection_setting.py
    # grids` lists every point); the paper's ablation variants (Tables 8–10) at ACAM-KD's weight, so that each
    # differs from it in its own switch only
    weights: dict[str, float] = field(default_factory=lambda: {
        "acam_kd": 0.3, "fitnet": 0.1, "maskd": 0.1, "samkd": 1.0, "acam_kd_teacher_fusion": 0.3,
        "acam_kd_spatial": 0.3, "acam_kd_channel": 0.3, "acam_kd_student_query": 0.3, "acam_kd_paper": 0.3,
        "fgd": 0.3, "pkd": 0.1, "mgd": 100.0, "dmkd": 3.0, "freekd": 0.03})
    # the FPN levels distilled (backbone output keys: "0"–"2" = P3–P5, "p6", "p7") and a weight per level that
    # multiplies distill.weight (docs/methods.md, "Distillation points": P3–P5, not every level the head uses; the
    # 1×1 P6/P7 maps of a 64-pixel canvas carry no spatial structure and their KD terms dominate the others — chosen
    # on dev)
    levels: tuple[str, ...] = ("0", "1", "2")
    level_weights: dict[str, float] = field(default_factory=dict)
    # per-method constructor kwargs (distill.kwargs): MasKD's token-fitting and FreeKD's prompt-fitting stages as long
    # as the students' training; FreeKD with one Haar level (its default three need maps ≥ 5 px: P4 is 4×4, P5 2×2)
    kwargs: dict[str, dict[str, Any]] = field(default_factory=lambda: {
        "maskd": {"fit_steps": 1000}, "freekd": {"levels": 1, "fit_steps": 1000}})
    num_masks: int = 6  # docs/methods.md, "ASCM": M = 6 for detection
    teacher_dtype: str = "float16"  # how the shipped teacher is stored (a few MB); it runs in float32

    @staticmethod
    def quick_config(**kw: Any) -> "DemoConfig":
        base = DemoConfig(quick=True, seeds=1, jobs=1, n_pool=24, n_student=16, n_dev=8, n_val=8, student_fpn_channels=16,
                          batch_size=4, teacher_iters=6, student_iters=3, eval_points=1, warmup_iters=0,
                          teacher_warmup_iters=0)
        return replace(base, **kw)

    def validate(self) -> None:
        super().validate()
        if not self.levels or any(k not in LEVEL_NAMES for k in self.levels):
            raise ConfigError(f"demo: levels must be FPN keys among {', '.join(LEVEL_NAMES)} (P3–P7), got "
                              f"{list(self.levels)}")
        stray = sorted(set(self.level_weights) - set(self.levels))
        if stray:
            raise ConfigError(f"demo: level_weights names level(s) {stray} that are not distilled (levels "
                              f"{list(self.levels)})")
        if self.teacher_dtype not in ("float16", "float32"):
            raise ConfigError(f"demo: teacher_dtype must be 'float16' or 'float32', got {self.teacher_dtype!r}")
        methods = list(self.methods)
        if "hinton_kd" in methods:
            raise ConfigError("demo: hinton_kd distils softmax class scores per pixel; the detection heads score "
                              "anchors with sigmoids — it runs on segmentation only")
        unweighted = [m for m in methods if not is_plain(m) and m not in self.weights]
        if unweighted:
            raise ConfigError(f"demo: no distill.weight chosen on dev for {unweighted} (the detection demo has "
                              f"weights for {sorted(self.weights)}; benchmarks/detection_dev_weights.py chooses one)")

    def backbone_spec(self):
        """The student's pretrained backbone (densekd.demo.backbone): what is shipped, or what --retrain-backbone makes."""
        from .backbone import BackboneSpec

        return BackboneSpec(backbone=self.student_backbone, width_mult=self.student_width_mult,
                            **({"iters": 20, "batch_size": 8, "eval_images": 20} if self.quick else {}))

    # -- what the teacher is (the shipped record must say the same, or --retrain-teacher is needed)
    def teacher_spec(self) -> dict[str, Any]:
        return {"arch": self.arch, "backbone": self.teacher_backbone, "fpn_channels": self.fpn_channels,
                "preset": "cpu", "num_classes": len(DIGIT_CLASSES)}


# --------------------------------------------------------------------------------------------- configs
def _detector(backbone: str, fpn_channels: int, width_mult: float = 1.0,
              backbone_checkpoint: str | None = None) -> dict[str, Any]:
    from ..models.detection import MOBILENETS

    out = {"backbone": backbone, "fpn_channels": fpn_channels, "trainable_layers": 6 if backbone in MOBILENETS else 5}
    if width_mult != 1.0:
        out["width_mult"] = width_mult
    if backbone_checkpoint:
        out["backbone_checkpoint"] = str(backbone_checkpoint)
    return out


def distill_pairs(cfg: DemoConfig, method: str = "acam_kd") -> list[dict[str, Any]]:
    """One pair per distilled FPN level with its level weight; SAMKD's logit term reads the head's classification
    logits of the same levels (the shared classifier's call i is level i)."""
    from ..models.detection import distill_levels

    order = list(distill_levels(cfg.arch, cfg.student_backbone))
    pairs = []
    for key in cfg.levels:
        pair: dict[str, Any] = {"student": f"backbone:{key}"}
        w = cfg.level_weights.get(key, 1.0)
        if w != 1.0:
            pair["weight"] = w
        if method == "samkd":
            call = f"head.classification_head.cls_logits[{order.index(key)}]"
            pair["aux"] = {"logits": [call, call]}
        pairs.append(pair)
    return pairs


def _data_section(root: Path, split: str, max_images: int | None) -> dict[str, Any]:
    return {"train_ann": str(root / "train" / "annotations.json"), "train_images": str(root / "train" / "images"),
            "val_ann": str(root / split / "annotations.json"), "val_images": str(root / split / "images"),
            "flip_prob": 0.0,  # a mirrored digit is another glyph
            "train_max_images": max_images}


def _train_section(cfg: DemoConfig, iters: int, warmup: int | None = None) -> dict[str, Any]:
    every = max(1, iters // cfg.eval_points)
    warmup = cfg.warmup_iters if warmup is None else warmup
    return {"max_iters": iters, "batch_size": cfg.batch_size, "num_workers": 0,
            "optimizer": {"type": "adamw", "lr": cfg.lr, "weight_decay": cfg.weight_decay},
            "schedule": {"type": "cosine", "warmup_iters": min(warmup, iters - 1), "warmup_factor": 0.01},
            "checkpoint_every": max(iters // 2, 1), "log_every": max(1, min(50, iters // 10)),
            "eval_every": every if every < iters else 0}


def _model_section(cfg: DemoConfig) -> dict[str, Any]:
    return {"preset": "cpu", "num_classes": len(DIGIT_CLASSES), "inherit": False}


def teacher_config(cfg: DemoConfig, root: Path, out: Path) -> dict[str, Any]:
    """The engine config that trains the teacher on the whole pool (its curve evaluated on dev)."""
    return {"task": "detection", "output_dir": str(out), "seed": 0,
            "model": {**_model_section(cfg),
                      "student": {"arch": cfg.arch, **_detector(cfg.teacher_backbone, cfg.fpn_channels)}},
            "data": _data_section(root, "dev", None),
            "train": {**_train_section(cfg, cfg.teacher_iters, cfg.teacher_warmup_iters),
                      "checkpoint_every": max(cfg.teacher_iters // 6, 1), "log_every": 50,
                      "eval_every": max(cfg.teacher_iters // 6, 1)},
            "eval": {"batch_size": 50}}


def student_config(cfg: DemoConfig, root: Path, teacher_checkpoint: str | Path, out: Path,
                   backbone_checkpoint: str | Path | None = None) -> dict[str, Any]:
    """The engine config of every student run (compare sets the method, seed and output folder per run);
    ``teacher_checkpoint``: a file, or ``asset:<name>`` for the shipped teacher (verified when loaded);
    ``backbone_checkpoint``: the student's pretrained backbone (a file or ``asset:<name>``), None: from scratch."""
    return {"task": "detection", "output_dir": str(out), "seed": 0,
            "model": {**_model_section(cfg), "inherit": cfg.inherit,
                      "student": {"arch": cfg.arch, **_detector(cfg.student_backbone, cfg.student_fpn_channels,
                                                                cfg.student_width_mult, backbone_checkpoint)},
                      "teacher": {"arch": cfg.arch, **_detector(cfg.teacher_backbone, cfg.fpn_channels),
                                  "checkpoint": str(teacher_checkpoint)}},
            "data": _data_section(root, cfg.eval_split, cfg.n_student),
            # one pair per distilled level (cfg.levels) with its level weight; ACAM-KD: M = 6 (docs/methods.md, "ASCM")
            "distill": {"method": "acam_kd", "kwargs": {"num_masks": cfg.num_masks}, "weight": 1.0,
                        "pairs": distill_pairs(cfg)},
            "train": _train_section(cfg, cfg.student_iters), "eval": {"batch_size": 50}}


#: settings that only the distilled students see: they name each method's run folder, not the setting's folder
DISTILL_SETTINGS = ("weights", "kwargs", "levels", "level_weights", "num_masks")


def student_runs_dir(cfg: DemoConfig, teacher_record: Mapping[str, Any],
                     backbone_record: Mapping[str, Any] | None) -> Path:
    """The folder of this setting's student runs (``<out>/runs-det-<hash>``,
    :func:`densekd.demo.common.student_runs_dir`): keyed by every setting that every student sees (data, models,
    schedule) and by the teacher's and the backbone's weights; each method's runs are in a sub-folder named by
    :func:`run_names`, so a finished run is reused only when it is the same run — also by a later call with other
    methods (the plain student's runs are shared)."""
    bb_sha = backbone_record["weights_sha256"] if backbone_record is not None else None
    return common.student_runs_dir(cfg, "runs-det", teacher_record["weights_sha256"], bb_sha, exclude=DISTILL_SETTINGS)


def run_names(cfg: DemoConfig) -> dict[str, str]:
    """Each method's run folder: ``baseline``, or ``<method>-<hash of its weight, kwargs, levels, level weights and
    M>``."""
    out = {}
    for m in cfg.methods:
        if is_plain(m):
            out[m] = m
            continue
        own = {"weight": cfg.weights.get(m), "kwargs": cfg.kwargs.get(m, {}), "levels": list(cfg.levels),
               "level_weights": dict(cfg.level_weights), "num_masks": cfg.num_masks}
        out[m] = f"{m}-{common.settings_hash(own)[:8]}"
    return out


def method_settings(cfg: DemoConfig) -> dict[str, list[str]]:
    """Per-method engine overrides: each method's ``distill.weight`` (chosen on dev) and, where a method reads
    more than the FPN maps (SAMKD's logits), its own pairs."""
    out: dict[str, list[str]] = {}
    for m in cfg.methods:
        sets = [f"distill.weight={cfg.weights[m]}"] if m in cfg.weights else []
        if m == "samkd":
            sets.append("distill.pairs=" + json.dumps(distill_pairs(cfg, m)))
        if sets:
            out[m] = sets
    return out


def build_data(cfg: DemoConfig, cache: Path):
    """The demo's digits dataset with boxes (built once into ``cache``, keyed by its parameters)."""
    return common.build_data(cfg, cache)


# --------------------------------------------------------------------------------------------- figures
def acam_masks(run_dir: Path, image_index: int = 0, level: str = "0") -> dict[str, Any] | None:
    """The trained ACAM-KD modules of ``run_dir`` (rebuilt by the engine from its checkpoint) on one image of its
    evaluation split: the student and the teacher in eval mode, their FPN level ``level`` (P3 = ``"0"``) through the
    level's ACAM-KD module. Returns the image, its boxes and labels, the spatial masks [M, h, w] and the student's
    detections, or None when the run has no checkpoint or no ACAM-KD module at that level."""
    import torch

    from ..engine.trainer import Trainer

    if not (run_dir / CHECKPOINT_FILE).is_file():
        return None
    trainer = Trainer(str(run_dir / CONFIG_FILE), ["train.resume=true"])  # loads student + KD modules
    try:
        image, target = trainer.val_set[image_index]
        distiller = trainer.model
        mod = next((m for k, m in distiller.kd_losses.items() if k.endswith(f"backbone:{level}")), None)
        if mod is None or not hasattr(mod, "mask_statistics"):
            return None
        student, teacher = distiller.student.eval(), distiller.teacher.eval()
        mod.eval()
        with torch.no_grad():
            batch = student.transform([image])[0].tensors
            s_feat = student.backbone(batch)[level]
            t_feat = teacher.backbone(teacher.transform([image])[0].tensors)[level]
            mod(s_feat, t_feat)
            dets = student([image])[0]
        if "spatial" not in mod.last_masks:
            return None
        return {"image": image, "boxes": target["boxes"], "labels": target["labels"],
                "spatial": mod.last_masks["spatial"][0].float(), "padded": tuple(batch.shape[-2:]), "detections": dets,
                "label_to_cat": trainer.val_set.label_to_cat}
    finally:
        trainer.close()


def plot_masks(run_dir: Path, image_index: int, path: Path, split: str, score: float = 0.5) -> Path | None:
    """Every ACAM-KD spatial mask at P3 over one ``split`` image with its ground-truth boxes drawn (each panel: its
    own colour range, titled with its spatial std), beside the image with the student's detections."""
    import torch.nn.functional as F

    got = acam_masks(run_dir, image_index)
    if got is None:
        return None
    plt = common.pyplot()
    from matplotlib.patches import Rectangle

    image, sp = got["image"], got["spatial"]
    h, w = image.shape[-2:]
    ph, pw = got["padded"]
    # the masks cover the padded batch (a multiple of 32): upsample to it and crop to the image
    up = F.interpolate(sp[None], size=(ph, pw), mode="nearest")[0, :, :h, :w]
    m = sp.shape[0]
    cols = min(4, m + 1)
    rows = math.ceil((m + 1) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.5 * rows))
    axes = [a for a in (axes.ravel() if hasattr(axes, "ravel") else [axes])]
    rgb = image.permute(1, 2, 0).numpy()

    def boxes(ax, bxs, labels, colour, scores=None):
        for k, (b, lab) in enumerate(zip(bxs.tolist(), labels.tolist())):
            ax.add_patch(Rectangle((b[0] - 0.5, b[1] - 0.5), b[2] - b[0], b[3] - b[1], fill=False, ec=colour, lw=1.2))
            digit = got["label_to_cat"].get(int(lab), int(lab)) - 1
            txt = f"{digit}" if scores is None else f"{digit} {scores[k]:.2f}"
            ax.text(b[0], b[1] - 1, txt, color=colour, fontsize=6, va="bottom")

    axes[0].imshow(rgb)
    d = got["detections"]
    keep = d["scores"] >= score
    boxes(axes[0], got["boxes"], got["labels"], "white")
    boxes(axes[0], d["boxes"][keep], d["labels"][keep], "yellow", d["scores"][keep].tolist())
    axes[0].set_title(f"{split} image: boxes (white),\nACAM-KD student ≥ {score} (yellow)", fontsize=7)
    for i in range(m):
        mi = up[i].numpy()
        ax = axes[i + 1]
        ax.imshow(rgb, alpha=0.35)
        ax.imshow(mi, cmap="viridis", alpha=0.75, interpolation="nearest")
        boxes(ax, got["boxes"], got["labels"], "white")
        ax.set_title(f"mask {i}: spatial std {float(sp[i].std(unbiased=False)):.2g}\n"
                     f"[{float(sp[i].min()):.2g}, {float(sp[i].max()):.2g}]", fontsize=7)
    for a in axes:
        a.axis("off")
    fig.suptitle(f"ACAM-KD spatial masks at P3 ({sp.shape[-2]}×{sp.shape[-1]}) after training, over a {split} "
                 "image with its boxes (each panel: its own colour range)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------- the demo
class _Detection(common.DemoTask):
    """The detection demo's hooks of the skeleton (:func:`densekd.demo.common.run_demo`)."""

    name = "detection"
    command = "densekd demo --task detection"
    title = "FCOS on the built-in digits canvases with boxes"
    teacher_asset = TEACHER_ASSET
    teacher_command = TEACHER_COMMAND
    teacher_noun = "detection teacher"
    runs_prefix = "runs-det"
    figure_prefix = "det_"
    summary_file = "summary_detection.json"
    data_note = "digits canvases with COCO boxes; "
    metrics = METRICS
    metric_label = "COCO AP"
    loss_label = "FCOS: focal + GIoU + centerness"

    def labels(self) -> Mapping[str, str]:
        return method_labels(self.cfg.levels)

    def teacher_model(self) -> str:
        return f"FCOS {self.cfg.teacher_backbone} (cpu preset)"

    def teacher_short(self) -> str:
        return f"FCOS {self.cfg.teacher_backbone}"

    def teacher_config(self, root: Path, out: Path) -> dict[str, Any]:
        return teacher_config(self.cfg, root, out)

    def split_overrides(self, root: Path, split: str) -> list[str]:
        return [f"data.val_ann={root / split / 'annotations.json'}", f"data.val_images={root / split / 'images'}"]

    def students(self, root: Path, teacher: common.TeacherChoice, out: Path, log: Callable[[str], None]
                 ) -> tuple[dict[str, Any], Path]:
        cfg = self.cfg
        backbone = None
        if cfg.student_pretrained:  # the student's pretrained backbone: shipped, or made by our own command
            spec = cfg.backbone_spec()
            backbone = common.resolve_teacher(
                BACKBONE_ASSET, cfg.retrain_backbone,
                lambda: pretrain_backbone(spec, cfg.data_params(), BACKBONE_COMMAND, log), out / "backbone",
                "run `densekd demo --task detection --retrain-backbone` to rebuild it with our own command", log,
                role="pretrained backbone")
            if backbone.record.get("model") != spec.model_spec():
                raise ConfigError(f"demo: the shipped pretrained backbone is {backbone.record.get('model')}, this demo "
                                  f"asks for {spec.model_spec()}; run `densekd demo --task detection "
                                  "--retrain-backbone` to make the one this config describes")
        runs_dir = student_runs_dir(cfg, teacher.record, backbone.record if backbone is not None else None)
        return (student_config(cfg, root, teacher.checkpoint, runs_dir,
                               None if backbone is None else backbone.checkpoint), runs_dir)

    def method_settings(self) -> dict[str, list[str]]:
        return method_settings(self.cfg)

    def method_kwargs(self) -> dict[str, dict[str, Any]]:
        return {m: k for m, k in self.cfg.kwargs.items() if m in self.cfg.methods}

    def run_names(self) -> dict[str, str]:
        return run_names(self.cfg)

    def students_note(self) -> str:
        weights = ", ".join(f"{m} {w:g}" for m, w in self.cfg.weights.items() if m in self.cfg.methods)
        return f"; distill.weight {weights}"

    def stored_teacher(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        if self.cfg.teacher_dtype == "float16":  # shipped small; the metrics are the stored weights'
            return {k: (v.half() if v.is_floating_point() else v) for k, v in state_dict.items()}
        return state_dict

    def record_extra(self) -> dict[str, Any]:
        return {"dtype": self.cfg.teacher_dtype}

    def describe(self, teacher: common.TeacherChoice, split_n: int) -> str:
        cfg = self.cfg
        return (f"COCO box AP (%) by pycocotools on '{cfg.eval_split}' ({split_n} canvases); students: FCOS "
                f"{cfg.student_backbone} ×{cfg.student_width_mult:g} "
                f"{'from the shipped digit-classification pretraining' if cfg.student_pretrained else 'from scratch'} "
                f"({_params(cfg, 'student'):,} parameters, KD modules dropped after training), {cfg.n_student} "
                f"labelled canvases, {cfg.student_iters} iterations × batch {cfg.batch_size}; "
                f"teacher: FCOS {cfg.teacher_backbone} ({_params(cfg, 'teacher'):,} parameters), trained on "
                f"{teacher.record.get('data', {}).get('n_train', '?')} canvases for "
                f"{teacher.record.get('train', {}).get('max_iters', '?')} iterations")

    def figures(self, res: common.StudentResults, out: Path) -> dict[str, Path]:
        cfg = self.cfg
        path = out / "det_acam_spatial_masks.png"
        acam = "acam_kd" if "acam_kd" in cfg.methods else next(
            (m for m in cfg.methods if m.startswith("acam_kd")), None)
        if acam is not None and plot_masks(common.run_dirs(res, acam)[-1], 0, path, cfg.eval_split):
            return {"spatial_masks": path}
        return {}

    def extra_tables(self, res: common.StudentResults, teacher_metrics: Mapping[str, float]) -> list[str]:
        return [_ap_table(res, {k: 100 * teacher_metrics[k] for k in METRICS}, self.labels())]

    def extra_verdicts(self, res: common.StudentResults) -> list[str]:
        # the paper's claim is ACAM-KD over its no-mask control (Table 10): the same seeds, the same levels and weights
        claim = common.head_to_head_line(res, "acam_kd", "fitnet", "ACAM-KD", "FitNet")
        return [f"{claim} [the paper's claim: the masks beat plain feature mimicking, its Table 10]"] if claim else []


def run_demo(cfg: DemoConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the detection demo; returns the table text, the per-run results, the verdicts and the figure paths."""
    return common.run_demo(_Detection(cfg), log)


def _ap_table(res: common.StudentResults, teacher: Mapping[str, float], labels: Mapping[str, str]) -> str:
    """AP, AP50 and AP75 (mean ± std over seeds) of the teacher and every method."""
    rows = [["teacher", *[fmt(teacher[k]) for k in METRICS]]]
    for r in res.rows:
        rows.append([labels.get(r.method, r.method),
                     *[fmt(r.stats[k][0], r.stats[k][1], scale=100) if k in r.stats else "—" for k in METRICS]])
    return markdown_table(["model", *METRICS], rows, align=True)


def _params(cfg: DemoConfig, role: str) -> int:
    from ..models.detection import build_detector

    backbone = cfg.teacher_backbone if role == "teacher" else cfg.student_backbone
    width = cfg.fpn_channels if role == "teacher" else cfg.student_fpn_channels
    mult = 1.0 if role == "teacher" else cfg.student_width_mult
    m = build_detector(cfg.arch, backbone, num_classes=len(DIGIT_CLASSES), min_size=None, max_size=None, norm="bn",
                       trainable_layers=0, fpn_channels=width, width_mult=mult)
    return sum(p.numel() for p in m.parameters())


__all__ = ["BACKBONE_ASSET", "DemoConfig", "LEVEL_NAMES", "METHOD_LABELS", "TEACHER_ASSET", "acam_masks", "distill_pairs",
           "level_span", "method_labels", "run_names", "student_runs_dir", "build_data", "method_settings", "plot_masks",
           "run_demo", "student_config", "teacher_config"]
