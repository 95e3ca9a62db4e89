"""``densekd demo``: show on a laptop, with no download, that ACAM-KD makes a small segmenter better.

What it does (all on the built-in digits set, :mod:`densekd.data.digits`):

1. builds the dataset (train / dev / val splits with disjoint source digits; cached);
2. trains a teacher (cached under ``cache_dir`` keyed by a hash of its config, reused by later runs);
3. for each seed, trains a plain student and an ACAM-KD student with the same schedule, seed and data order;
4. evaluates all of them on the chosen split (``val`` by default; settings were chosen on ``dev``) and prints
   one table — teacher, student, student + ACAM-KD, the gain, parameters, wall time — with mean ± std over
   seeds, plus the PNG figures it wrote (curves, ACAM-KD masks, mask statistics over training).

``quick=True`` is a smoke run (tiny sizes, few iterations) used by CI; its numbers are labelled as such.

The models are small DeepLab-like nets (stride-4 dilated conv trunk, 1×1 classifier, bilinear upsampling);
teacher (width 32) and student (width 16) differ in width only. By default ACAM-KD distils the last trunk
feature (pair weight 0.1, M = 11 masks, as methods.md "ASCM" prescribes for segmentation); the logits level is
available (``kd_levels``) but MSE on the logits hurt the student on the dev split at every weight tried.
These settings were chosen on the ``dev`` split; the demo reports on ``val``.

Measured finding (see the figure ``acam_mask_stats.png``): with the mask units trained by the distillation
loss itself (methods.md, "Optimisation of the mask modules"), the masks collapse to ~0 within ~100
iterations — the MasKD-normalised loss is proportional to the masks' scale, so shrinking them minimises it —
after which the KD term is ~0. The demo shows this rather than hiding it.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data.digits import NUM_SEG_CLASSES, load_split_arrays, make_digits_dataset
from .distiller import Distiller, Pair
from .models.segmentation import TinySegNet
from .errors import ConfigError


# --------------------------------------------------------------------------------------------- config
@dataclass
class DemoConfig:
    """Every setting of the demo; the defaults are the documented run (see ``describe()``)."""

    task: str = "segmentation"
    seeds: int = 3
    quick: bool = False
    eval_split: str = "val"  # "dev" while choosing settings, "val" to report
    cache_dir: str = "~/.cache/densekd"
    out_dir: str = "densekd-demo"
    threads: int = 0  # 0: leave torch's default
    # data
    canvas: int = 64
    n_train: int = 400
    n_dev: int = 200
    n_val: int = 400
    data_seed: int = 0
    # models
    teacher_width: int = 32
    student_width: int = 16
    # schedule
    batch_size: int = 16
    teacher_iters: int = 1500
    student_iters: int = 600
    lr: float = 3e-3
    weight_decay: float = 1e-4
    eval_points: int = 6
    # distillation
    kd_levels: tuple[str, ...] = ("feature",)
    logits_weight: float = 0.005  # pair weight on the logits level's ACAM-KD terms (if distilled)
    feature_weight: float = 0.1  # pair weight on the trunk feature level's terms
    num_masks: int = NUM_SEG_CLASSES
    mask_lr_scale: float = 1.0  # learning rate of the STCA-FF/ASCM (mask) modules relative to ``lr``
    acam_kwargs: dict[str, Any] = field(default_factory=dict)  # further acam_kd switches (methods.md)
    extra: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def quick_config(**kw: Any) -> "DemoConfig":
        base = DemoConfig(quick=True, seeds=1, canvas=32, n_train=48, n_dev=16, n_val=32, teacher_width=8,
                          student_width=4, batch_size=8, teacher_iters=30, student_iters=20, eval_points=2,
                          kd_levels=("logits", "feature"))  # both levels, so the smoke run exercises both
        return replace(base, **kw)

    def validate(self) -> None:
        if self.task not in ("segmentation", "detection"):
            raise ConfigError(f"demo: --task must be 'segmentation' or 'detection', got {self.task!r}")
        if self.task == "detection":
            raise ConfigError(
                "demo: --task detection is not available yet (a torchvision FCOS/RetinaNet on CPU does not fit the "
                "demo's time budget, see benchmarks/demo_digits.md); use --task segmentation"
            )
        if self.seeds < 1:
            raise ConfigError(f"demo: --seeds must be ≥ 1, got {self.seeds}")
        if self.eval_split not in ("val", "dev"):
            raise ConfigError(f"demo: --eval-split must be 'val' or 'dev', got {self.eval_split!r}")
        bad = sorted(set(self.kd_levels) - {"logits", "feature"})
        if bad or not self.kd_levels:
            raise ConfigError(f"demo: kd_levels must be a non-empty subset of ['feature', 'logits'], got {list(self.kd_levels)}")
        for k in ("teacher_iters", "student_iters", "batch_size", "teacher_width", "student_width", "eval_points"):
            if getattr(self, k) < 1:
                raise ConfigError(f"demo: {k} must be ≥ 1, got {getattr(self, k)}")


# --------------------------------------------------------------------------------------------- models
def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------- data
_MEAN = torch.tensor([0.2, 0.2, 0.2]).view(1, 3, 1, 1)
_STD = torch.tensor([0.3, 0.3, 0.3]).view(1, 3, 1, 1)


def _tensors(split) -> tuple[Tensor, Tensor]:
    imgs, masks = load_split_arrays(split)
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div_(255)
    return (x - _MEAN) / _STD, torch.from_numpy(masks.astype(np.int64))


def _batches(n: int, batch: int, iters: int, seed: int):
    """Reproducible index batches: a fresh permutation per epoch, drawn from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    perm, pos = torch.randperm(n, generator=g), 0
    for _ in range(iters):
        if pos + batch > n:
            perm, pos = torch.randperm(n, generator=g), 0
        yield perm[pos : pos + batch]
        pos += batch


# --------------------------------------------------------------------------------------------- metrics
@torch.no_grad()
def evaluate_miou(model: nn.Module, x: Tensor, y: Tensor, num_classes: int = NUM_SEG_CLASSES, batch: int = 64) -> float:
    """Mean IoU (%) over the classes present in ``y`` or predicted, from one confusion matrix over the split."""
    was = model.training
    model.eval()
    conf = torch.zeros(num_classes * num_classes, dtype=torch.long)
    for i in range(0, len(x), batch):
        pred = model(x[i : i + batch]).argmax(1)
        conf += torch.bincount((y[i : i + batch] * num_classes + pred).flatten(), minlength=num_classes**2)
    model.train(was)
    conf = conf.view(num_classes, num_classes).double()
    inter = conf.diag()
    union = conf.sum(0) + conf.sum(1) - inter
    valid = union > 0
    return float((inter[valid] / union[valid]).mean() * 100)


# --------------------------------------------------------------------------------------------- training
def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def _pairs(cfg: DemoConfig) -> list[Pair]:
    pairs = []
    if "logits" in cfg.kd_levels:
        pairs.append(Pair("classifier", loss="acam_kd", weight=cfg.logits_weight,
                          kwargs={"num_masks": cfg.num_masks, **cfg.acam_kwargs}))
    if "feature" in cfg.kd_levels:
        pairs.append(Pair("trunk", loss="acam_kd", weight=cfg.feature_weight,
                          kwargs={"num_masks": cfg.num_masks, **cfg.acam_kwargs}))
    return pairs


def _ce(out: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(out, y)


@dataclass
class RunResult:
    name: str
    seed: int
    metric: float
    params: int
    seconds: float
    curve: list[tuple[int, float, float]]  # (iteration, task loss (mean since last point), eval mIoU)
    mask_stats: list[tuple[int, dict[str, float]]] = field(default_factory=list)


def make_optimizer(cfg: DemoConfig, model: nn.Module, distiller: Distiller | None = None) -> torch.optim.Optimizer:
    """AdamW: the student and the aligners at ``lr``; STCA-FF/ASCM (mask modules) at ``lr × mask_lr_scale``."""
    if distiller is None:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": cfg.lr}]
    else:
        mask_params = [p for n, p in distiller.kd_losses.named_parameters() if n.split(".")[1] != "align"]
        ids = {id(p) for p in mask_params}
        rest = [p for p in distiller.trainable_parameters() if id(p) not in ids]
        groups = [{"params": rest, "lr": cfg.lr}, {"params": mask_params, "lr": cfg.lr * cfg.mask_lr_scale}]
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def train_model(
    model: nn.Module,
    data: tuple[Tensor, Tensor],
    eval_data: tuple[Tensor, Tensor],
    iters: int,
    cfg: DemoConfig,
    seed: int,
    teacher: nn.Module | None = None,
    name: str = "model",
) -> tuple[RunResult, Distiller | None]:
    """AdamW + cosine schedule; with ``teacher`` the student is trained through an ACAM-KD Distiller."""
    x, y = data
    t0 = time.perf_counter()
    distiller = None
    if teacher is not None:
        distiller = Distiller(model, teacher, _pairs(cfg), task_loss=_ce, example_inputs=(x[:2],))
        distiller.max_iterations = iters
    opt = make_optimizer(cfg, model, distiller)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, iters) / iters)))
    eval_at = set(np.linspace(0, iters, cfg.eval_points + 1).round().astype(int)[1:].tolist())
    curve: list[tuple[int, float, float]] = []
    stats: list[tuple[int, dict[str, float]]] = []
    running, count = 0.0, 0
    model.train()
    for it, idx in enumerate(_batches(len(x), cfg.batch_size, iters, seed), start=1):
        xb, yb = x[idx], y[idx]
        if distiller is not None:
            distiller.iteration = it - 1
            losses = distiller(xb, targets=yb)
            loss, task = losses["loss"], losses["loss_task"]
        else:
            loss = task = _ce(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running += float(task.detach())
        count += 1
        if it in eval_at:
            curve.append((it, running / count, evaluate_miou(model, *eval_data)))
            running, count = 0.0, 0
        if distiller is not None and (it == 1 or it in eval_at):  # from the first step, so a collapse shows
            stats.append((it, _distiller_mask_stats(distiller)))
    seconds = time.perf_counter() - t0
    return RunResult(name, seed, curve[-1][2], n_params(model), seconds, curve, stats), distiller


def _acam_modules(distiller: Distiller) -> dict[str, nn.Module]:
    names = {}
    for key, mod in distiller.kd_losses.items():
        i = int(key.split("|")[0])
        names[distiller.pairs[i].student] = mod
    return names


def _distiller_mask_stats(distiller: Distiller) -> dict[str, float]:
    out = {}
    for level, mod in _acam_modules(distiller).items():
        for k, v in mod.mask_statistics().items():  # methods.md, Optimisation of the mask modules
            out[f"{level}/{k}"] = v
    return out


# --------------------------------------------------------------------------------------------- teacher cache
def _hash(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _teacher_key(cfg: DemoConfig, data_params: dict[str, Any]) -> dict[str, Any]:
    return {"model": "TinySegNet", "width": cfg.teacher_width, "iters": cfg.teacher_iters, "lr": cfg.lr,
            "wd": cfg.weight_decay, "batch": cfg.batch_size, "data": data_params, "seed": 0, "version": 1}


def get_teacher(cfg: DemoConfig, data, dev_data, eval_data, data_params, cache: Path, log: Callable[[str], None]):
    """Load the cached teacher for this config, or train and cache it. Returns (model, RunResult, cached)."""
    key = _teacher_key(cfg, data_params)
    path = cache / f"teacher-{_hash(key)}.pt"
    model = TinySegNet(cfg.teacher_width)
    if path.is_file():
        blob = torch.load(path, map_location="cpu", weights_only=False)
        if blob.get("key") == key:
            model.load_state_dict(blob["state_dict"])
            r = RunResult(**blob["result"])
            r.curve = [tuple(c) for c in r.curve]
            r.metric = evaluate_miou(model, *eval_data)  # on this run's evaluation split
            log(f"teacher: loaded from cache {path} ({r.metric:.2f} mIoU, trained in {r.seconds:.0f} s)")
            return model, r, True
    log(f"teacher: training width {cfg.teacher_width} for {cfg.teacher_iters} iterations (cached afterwards)")
    _seed_all(0)
    model = TinySegNet(cfg.teacher_width)
    # the teacher's curve is evaluated on dev, whatever split this run reports on, so the cache is split-free
    r, _ = train_model(model, data, dev_data, cfg.teacher_iters, cfg, seed=0, name="teacher")
    r.metric = evaluate_miou(model, *eval_data)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"key": key, "state_dict": model.state_dict(), "result": asdict(r)}, tmp)
    os.replace(tmp, path)
    return model, r, False


# --------------------------------------------------------------------------------------------- figures
def _plot_curves(results: dict[str, list[RunResult]], path: Path, split: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    colours = {"teacher": "k", "student": "tab:blue", "student + ACAM-KD": "tab:red"}
    for name, runs in results.items():
        for j, r in enumerate(runs):
            it = [c[0] for c in r.curve]
            lab = name if j == 0 else None
            a1.plot(it, [c[1] for c in r.curve], color=colours.get(name), alpha=0.8, label=lab)
            if name == "teacher":  # trained for longer (and cached): its final mIoU on this split
                a2.axhline(r.metric, color=colours[name], ls="--", label=f"teacher (final, {r.curve[-1][0]} it)")
            else:
                a2.plot(it, [c[2] for c in r.curve], color=colours.get(name), alpha=0.8, marker="o", ms=3, label=lab)
    a1.set(xlabel="iteration", ylabel="task loss (cross-entropy)", title="training loss")
    a2.set(xlabel="iteration", ylabel=f"mIoU (%) on {split}", title=f"{split} mIoU")
    a1.legend()
    a2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_masks(distiller: Distiller, image: Tensor, mask: Tensor, path_spatial: Path, path_channel: Path,
                split: str = "val") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    distiller.eval()
    with torch.no_grad():
        distiller(image[None], targets=mask[None])
    distiller.train()
    mods = _acam_modules(distiller)
    level = "classifier" if "classifier" in mods else next(iter(mods))
    masks = mods[level].last_masks
    sp = masks["spatial"][0]  # [M, h, w]
    m = sp.shape[0]
    cols = min(6, m + 2)
    rows = math.ceil((m + 2) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.0 * cols, 2.0 * rows))
    axes = np.atleast_1d(axes).ravel()
    rgb = (image * _STD[0] + _MEAN[0]).clamp(0, 1).permute(1, 2, 0).numpy()
    axes[0].imshow(rgb)
    axes[0].set_title(f"{split} image", fontsize=8)
    axes[1].imshow(mask.numpy(), cmap="tab20", vmin=0, vmax=19, interpolation="nearest")
    axes[1].set_title("ground truth", fontsize=8)
    for i in range(m):
        m_i = sp[i].numpy()  # each panel scaled to its own range (printed), so small contrasts stay visible
        axes[i + 2].imshow(m_i, cmap="viridis", interpolation="nearest")
        axes[i + 2].set_title(f"mask {i} [{m_i.min():.2g}, {m_i.max():.2g}]", fontsize=8)
    for a in axes:
        a.axis("off")
    fig.suptitle(f"ACAM-KD spatial masks at '{level}' (student after training)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path_spatial, dpi=100)
    plt.close(fig)

    ch = masks["channel"][0].numpy()  # [M, C]
    fig, ax = plt.subplots(figsize=(max(4, 0.3 * ch.shape[1] + 2), max(3, 0.3 * ch.shape[0] + 1.5)))
    im = ax.imshow(ch, cmap="viridis", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    ax.set(xlabel="channel", ylabel="mask", title=f"ACAM-KD channel masks at '{level}' (M×C)")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path_channel, dpi=100)
    plt.close(fig)


def _plot_mask_stats(runs: Sequence[RunResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for r in runs for _, s in r.mask_stats for k in s})
    kinds = ["mean", "dice", "entropy"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    series = sorted({k.rsplit("/", 1)[0] for k in keys})  # "<level>/<family>", one colour each
    colour = {name: f"C{i}" for i, name in enumerate(series)}
    for ax, kind in zip(axes, kinds):
        for k in [k for k in keys if k.endswith("/" + kind)]:
            name = k.rsplit("/", 1)[0]
            for j, r in enumerate(runs):  # one line per seed
                it = [i for i, _ in r.mask_stats]
                ax.plot(it, [s.get(k, float("nan")) for _, s in r.mask_stats], marker="o", ms=3,
                        color=colour[name], label=name if j == 0 else None, alpha=0.8)
        ax.set(xlabel="iteration", title={"mean": "mean mask value", "dice": "pairwise Dice between masks",
                                          "entropy": "mask entropy / log N (1 = uniform)"}[kind])
        ax.set_ylim(0, 1.05)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------------------------- main
def _fmt(values: Sequence[float], digits: int = 2) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def run_demo(cfg: DemoConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the demo; returns the table text, the per-run results and the figure paths."""
    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t_start = time.perf_counter()
    cache = Path(os.path.expanduser(cfg.cache_dir))
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from . import losses  # noqa: F401  (registers acam_kd)

    dparams = dict(seed=cfg.data_seed, n_train=cfg.n_train, n_val=cfg.n_val, n_dev=cfg.n_dev, canvas=cfg.canvas,
                   scale=(cfg.canvas // 4, cfg.canvas // 2))
    ds = make_digits_dataset(cache / f"digits-{_hash(dparams)}", **dparams)
    log(f"data: {ds.root} ({'built' if ds.built else 'cached'}; train {cfg.n_train}, dev {cfg.n_dev}, "
        f"val {cfg.n_val} canvases of {cfg.canvas}×{cfg.canvas}; disjoint source digits)")
    train, evald = _tensors(ds["train"]), _tensors(ds[cfg.eval_split])

    devd = evald if cfg.eval_split == "dev" else _tensors(ds["dev"])
    teacher, t_res, cached = get_teacher(cfg, train, devd, evald, dparams, cache, log)
    results: dict[str, list[RunResult]] = {"teacher": [t_res], "student": [], "student + ACAM-KD": []}
    last_distiller = None
    for s in range(cfg.seeds):
        seed = 1000 + s
        _seed_all(seed)
        r, _ = train_model(TinySegNet(cfg.student_width), train, evald, cfg.student_iters, cfg, seed, name="student")
        results["student"].append(r)
        _seed_all(seed)  # same init, same data order
        r_kd, last_distiller = train_model(TinySegNet(cfg.student_width), train, evald, cfg.student_iters, cfg, seed,
                                           teacher=teacher, name="student + ACAM-KD")
        results["student + ACAM-KD"].append(r_kd)
        log(f"seed {seed}: student {r.metric:.2f}  student + ACAM-KD {r_kd.metric:.2f}  mIoU on {cfg.eval_split} "
            f"({r.seconds:.0f} s / {r_kd.seconds:.0f} s)")

    figs = {
        "curves": out / "curves.png",
        "spatial_masks": out / "acam_spatial_masks.png",
        "channel_masks": out / "acam_channel_masks.png",
        "mask_stats": out / "acam_mask_stats.png",
    }
    _plot_curves(results, figs["curves"], cfg.eval_split)
    _plot_masks(last_distiller, evald[0][0], evald[1][0], figs["spatial_masks"], figs["channel_masks"],
                cfg.eval_split)
    _plot_mask_stats(results["student + ACAM-KD"], figs["mask_stats"])

    plain = [r.metric for r in results["student"]]
    kd = [r.metric for r in results["student + ACAM-KD"]]
    gains = [b - a for a, b in zip(plain, kd)]
    n = cfg.seeds
    header = f"mIoU (%) on '{cfg.eval_split}' ({cfg.n_val if cfg.eval_split == 'val' else cfg.n_dev} canvases)"
    rows = [
        ("teacher" + (" (cached)" if cached else ""), _fmt([t_res.metric]), f"{t_res.params:,}",
         f"{t_res.seconds:.0f} s", "1 run"),
        ("student", _fmt(plain), f"{results['student'][0].params:,}",
         f"{np.mean([r.seconds for r in results['student']]):.0f} s", f"{n} seed(s)"),
        ("student + ACAM-KD", _fmt(kd), f"{results['student + ACAM-KD'][0].params:,}",
         f"{np.mean([r.seconds for r in results['student + ACAM-KD']]):.0f} s", f"{n} seed(s)"),
        ("gain (ACAM-KD − plain)", _fmt(gains), "", "", "paired by seed"),
    ]
    widths = [max(len(r[i]) for r in rows + [("model", header, "params", "train time", "runs")]) for i in range(5)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    table = [line(("model", header, "params", "train time", "runs")), line(tuple("-" * w for w in widths))]
    table += [line(r) for r in rows]
    verdict = ""
    if n >= 2:
        sd = max(float(np.std(plain, ddof=1)), float(np.std(kd, ddof=1)))
        diff = float(np.mean(kd) - np.mean(plain))
        verdict = (f"ACAM-KD − plain = {diff:+.2f} mIoU; larger std over seeds = {sd:.2f} "
                   f"→ {'more' if diff > 2 * sd else 'NOT more'} than 2 std (n = {n})")
    title = "densekd demo — SMOKE RUN (--quick: tiny sizes, numbers mean nothing)" if cfg.quick else \
        "densekd demo — segmentation on the built-in digits set"
    wall = time.perf_counter() - t_start
    text = "\n".join([title, *table] + ([verdict] if verdict else []) + [
        f"student params are the plain student's (ACAM-KD modules are dropped after training); "
        f"teacher width {cfg.teacher_width}, student width {cfg.student_width}; "
        f"{cfg.student_iters} iterations × batch {cfg.batch_size} for each student",
        f"total wall time {wall:.0f} s (threads: {torch.get_num_threads()})",
        "figures:", *[f"  {k}: {v}" for k, v in figs.items()],
    ])
    log(text)
    summary = {"config": asdict(cfg), "table": text, "wall_seconds": wall,
               "results": {k: [asdict(r) for r in v] for k, v in results.items()},
               "figures": {k: str(v) for k, v in figs.items()}}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def add_demo_arguments(p) -> None:
    """Arguments of ``densekd demo`` (the CLI calls this and then :func:`main_from_args`)."""
    p.add_argument("--task", default="segmentation", choices=["segmentation", "detection"])
    p.add_argument("--seeds", type=int, default=None, help="students per model (mean ± std); default 3, --quick 1")
    p.add_argument("--quick", action="store_true", help="smoke run for CI (≤ 60 s); shows no gain")
    p.add_argument("--cache-dir", default="~/.cache/densekd", help="dataset and cached teacher")
    p.add_argument("--out", default="densekd-demo", help="folder for the figures and summary.json")
    p.add_argument("--eval-split", default="val", choices=["val", "dev"],
                   help="report on val (default); dev is the split settings were chosen on")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")


def main_from_args(args) -> int:
    kw = dict(task=args.task, cache_dir=args.cache_dir, out_dir=args.out, eval_split=args.eval_split,
              threads=args.threads)
    if args.seeds is not None:
        kw["seeds"] = args.seeds
    cfg = DemoConfig.quick_config(**kw) if args.quick else DemoConfig(**kw)
    run_demo(cfg)
    return 0


__all__ = ["DemoConfig", "RunResult", "TinySegNet", "add_demo_arguments", "evaluate_miou", "main_from_args",
           "run_demo", "train_model"]
