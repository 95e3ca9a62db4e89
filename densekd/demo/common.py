"""What every ``densekd demo`` shares: the skeleton both demos run (:func:`run_demo`, with the hooks a task supplies:
:class:`DemoTask`), the shipped teacher (verified, or retrained by our own command: :func:`retrain_teacher`), the
students trained through the engine by :mod:`densekd.tools.compare` (one training loop in the project), the
paired-gain table and its verdict, and small plotting helpers. A task's demo (``segmentation.py``,
``detection.py``) supplies its data, its configs, its figures and its report lines.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence

from .. import assets
from ..errors import ConfigError
from ..health import run_warnings
from ..run_folder import EVAL_LOG_FILE, LOG_FILE, STUDENT_FILE
from ..tools.compare import (PLAIN_STUDENT, MethodStats, PairedGain, baseline_of, check_methods, compare_runs, fmt,
                             is_plain, markdown_table, paired_gains, primary_metric, run_dir)
from ..tools.compare.report import pyplot


# --------------------------------------------------------------------------------------------- teacher
@dataclass
class TeacherChoice:
    """The teacher a demo run distils from: its weights file, its record and where it came from."""

    path: Path
    record: dict[str, Any]
    origin: str  # "shipped" or "retrained"
    note: str = ""
    name: str = ""  # the shipped artefact's name (densekd/assets/<name>.*)

    @property
    def checkpoint(self) -> str | Path:
        """What a config's checkpoint key says: ``asset:<name>`` for the shipped one (verified when loaded), else
        the retrained file."""
        return f"asset:{self.name}" if self.origin == "shipped" else self.path


def resolve_teacher(name: str, retrain: bool, retrain_fn: Callable[[], tuple[dict, dict]], out_dir: Path,
                    retrain_hint: str, log: Callable[[str], None], role: str = "teacher") -> TeacherChoice:
    """The shipped artefact ``name`` (checksum verified; a corrupt or missing file is one error line that offers
    ``retrain_hint``), or with ``retrain`` a new one from ``retrain_fn() -> (state_dict, record)`` written to
    ``out_dir`` (never into the package) and compared with the shipped one bit for bit. ``role`` names it in the
    lines (the demos' teachers; the detection demo's pretrained backbone)."""
    if not retrain:
        path, record = assets.shipped_teacher(name, retrain_hint=retrain_hint)
        log(f"{role}: shipped with densekd ({path.name}, sha256 {record['sha256'][:12]}… verified; "
            f"{_metric_text(record)}; made by `{record.get('command', '?')}`)")
        return TeacherChoice(path, record, "shipped", name=name)
    t0 = time.perf_counter()
    sd, record = retrain_fn()
    path, record = assets.write_artifact(name, sd, {**record, "train_seconds": round(time.perf_counter() - t0, 1)},
                                         out_dir)
    try:
        shipped = assets.read_record(name)
    except assets.AssetError:
        shipped = None
    if shipped is None:
        note = "no shipped record to compare with"
    elif shipped.get("weights_sha256") == record["weights_sha256"]:
        note = f"identical to the shipped {role}, bit for bit (weights_sha256 matches)"
    else:
        note = (f"differs from the shipped {role} (weights_sha256 {record['weights_sha256'][:12]}… vs "
                f"{str(shipped.get('weights_sha256'))[:12]}…; {_metric_text(record)} vs shipped {_metric_text(shipped)}): "
                "another torch build, CPU or setting changes floating-point rounding; the shipped files are untouched")
    log(f"{role}: retrained in {record['train_seconds']:.0f} s → {path} ({note})")
    return TeacherChoice(path, record, "retrained", note, name)


def _metric_text(record: Mapping[str, Any]) -> str:
    m = record.get("metric") or {}
    return ", ".join(f"{k} {v:.2f}" if isinstance(v, (int, float)) else f"{k} {v}" for k, v in m.items()) or "no metric"


# --------------------------------------------------------------------------------------------- students
@dataclass
class StudentResults:
    rows: list[MethodStats]
    runs: dict[str, list[dict[str, Any]]]
    gains: list[PairedGain]
    metric: str
    baseline: str
    out: Path
    health: dict[str, list[str]] = field(default_factory=dict)  # method → the runs' warnings (health.json)
    names: dict[str, str] = field(default_factory=dict)  # method → its runs' folder under ``out`` (default: its name)


def train_students(config: Mapping[str, Any], methods: Sequence[str], seeds: Sequence[int], out: Path,
                   method_set: Mapping[str, Sequence[str]] | None, log: Callable[[str], None],
                   method_kwargs: Mapping[str, Mapping[str, Any]] | None = None, jobs: int = 1,
                   run_names: Mapping[str, str] | None = None) -> StudentResults:
    """Every method × seed through the engine (:func:`densekd.tools.compare.compare_runs`; finished runs in ``out``
    are reused, an interrupted one resumes; ``jobs`` runs at once; ``run_names``: a method's runs folder when it is
    not the method's name), then the paired gains over the plain student in the primary metric, and the runs' KD
    health warnings."""
    rows, runs = compare_runs(dict(config), list(methods), list(seeds), str(out), log=log, method_set=method_set,
                              method_kwargs=method_kwargs, jobs=jobs, run_names=run_names)
    names = {m: (run_names or {}).get(m, m) for m in methods}
    metric = primary_metric(rows)
    baseline = baseline_of(methods)
    gains = paired_gains(runs, baseline, metric, methods)
    health: dict[str, list[str]] = {}
    for m in methods:
        for s in seeds:
            for text in run_warnings(run_dir(str(out), names[m], s)):
                if text not in health.setdefault(m, []):
                    health[m].append(text)
    return StudentResults(rows, runs, gains, metric, baseline, Path(out), health, names)


#: settings that do not change what a student run computes: left out of its folder's key (:func:`student_runs_dir`)
RUN_BOOKKEEPING = ("seeds", "out_dir", "cache_dir", "threads", "jobs", "quick", "retrain_teacher", "retrain_backbone",
                   "methods", "task")


def settings_hash(obj: Any) -> str:
    """A short, stable key of JSON-able settings (their order does not matter)."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def student_runs_dir(cfg: Any, prefix: str, *weights_sha256: str | None, exclude: Sequence[str] = ()) -> Path:
    """The folder of a setting's student runs, ``<out>/<prefix>-<hash>``: keyed by every setting but the run
    bookkeeping (and ``exclude``: settings that name each method's own runs folder instead) and by the weights the
    students start from (the teacher's, a pretrained backbone's), so a finished run is reused only when it is the
    same run."""
    settings = {k: v for k, v in asdict(cfg).items() if k not in RUN_BOOKKEEPING and k not in exclude}
    return Path(cfg.out_dir) / f"{prefix}-{settings_hash([settings, *weights_sha256])}"


def build_data(cfg: Any, cache: Path):
    """The demo's digits dataset (built once into ``cache``, keyed by its parameters: ``cfg.data_params()``)."""
    from ..data.digits import make_digits_dataset

    dparams = cfg.data_params()
    return make_digits_dataset(Path(cache) / f"digits-{settings_hash(dparams)}", **dparams)


def results_table(res: StudentResults, labels: Mapping[str, str], scale: float = 100.0, params: str = "",
                  teacher_row: Sequence[str] | None = None) -> str:
    """Teacher (optional), then every method: metric mean ± std over seeds, paired gain over the baseline ± its
    std, whether it exceeds 2 std, training seconds per run."""
    gains = {g.method: g for g in res.gains}
    head = ["model", f"{res.metric} (×{scale:g})" if scale != 1 else res.metric, "gain vs plain (paired)", "> 2 std",
            "train s/run", "seeds"]
    rows = []
    if teacher_row is not None:
        rows.append(list(teacher_row))
    for r in res.rows:
        m, s, n = r.stats[res.metric]
        secs = r.stats.get("train_seconds", (float("nan"),))[0]
        g = gains.get(r.method)
        rows.append([labels.get(r.method, r.method), fmt(m, s, scale=scale),
                     "—" if g is None else fmt(g.mean, g.std, scale=scale, sign=True),
                     "—" if g is None else g.verdict(), "—" if math.isnan(secs) else f"{secs:.0f}", str(n)])
    return markdown_table(head, rows, align=True)


def verdict_line(res: StudentResults, method: str, label: str, scale: float = 100.0) -> str:
    """``method`` − the plain student, paired by seed, with the std of the per-seed gains and the 2-std verdict;
    "" when it has no gain."""
    g = next((g for g in res.gains if g.method == method), None)
    return "" if g is None else _paired_line(g, label, "plain", res.metric, scale, "gains")


def head_to_head_line(res: StudentResults, method: str, control: str, label: str, control_label: str,
                      scale: float = 100.0) -> str:
    """``method − control`` paired by seed (the same seeds: same initialisation and data order) with the std of the
    per-seed differences and the 2-std verdict; "" when either did not run."""
    if method not in res.runs or control not in res.runs:
        return ""
    g = next(iter(paired_gains(res.runs, control, res.metric, [method])), None)
    if g is None or g.n == 0:
        return ""
    return _paired_line(g, label, control_label, res.metric, scale, "differences")


def _paired_line(g: PairedGain, label: str, control_label: str, metric: str, scale: float, what: str) -> str:
    per_seed = ", ".join(fmt(v, scale=scale, sign=True) for v in g.per_seed.values())
    if g.n < 2:
        return (f"{label} − {control_label} = {fmt(g.mean, scale=scale, sign=True)} {metric} (1 seed: no spread, no "
                "verdict)")
    return (f"{label} − {control_label} = {fmt(g.mean, g.std, scale=scale, sign=True)} {metric}, paired over {g.n} "
            f"seeds ({per_seed}) → {'MORE' if g.beyond_2std else 'NOT more'} than 2 × the std of the paired {what}")


# --------------------------------------------------------------------------------------------- run logs
def read_csv_rows(path: Path) -> list[dict[str, float]]:
    """log.csv as a list of {column: float} (empty cells left out)."""
    if not path.is_file():
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        for row in csv.DictReader(f):
            out.append({k: float(v) for k, v in row.items() if v not in ("", None)})
    return out


def read_eval_curve(run: Path, metric: str) -> list[tuple[int, float]]:
    """(iteration, metric) from a run's eval.csv (one JSON line per evaluation)."""
    path = run / EVAL_LOG_FILE
    if not path.is_file():
        return []
    pts = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            d = json.loads(line)
        except json.JSONDecodeError:
            continue
        if metric in d:
            pts.append((int(d["iter"]), float(d[metric])))
    return pts


def plot_gains(res: StudentResults, labels: Mapping[str, str], path: Path, scale: float = 100.0) -> Path:
    """Each method's gain over the plain student, seed by seed (dots), its mean (bar) and ± 2 × the std of the
    paired gains (error bar): a method helps beyond noise when its whole error bar is above zero."""
    plt = pyplot()
    gains = [g for g in res.gains if g.n > 0]
    fig, ax = plt.subplots(figsize=(max(5.2, 1.3 * len(gains) + 1.5), 3.8))
    for i, g in enumerate(gains):
        two = 0.0 if math.isnan(g.std) else 2 * g.std * scale
        colour = "tab:green" if g.beyond_2std else "tab:grey"
        ax.bar(i, g.mean * scale, color=colour, alpha=0.5, yerr=two, capsize=5)
        ax.scatter([i] * len(g.per_seed), [v * scale for v in g.per_seed.values()], color="k", s=12, zorder=3)
        ax.text(i, g.mean * scale + two, f"{g.mean * scale:+.2f}", ha="center", va="bottom", fontsize=8)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(gains)))
    ax.set_xticklabels([labels.get(g.method, g.method).replace("student + ", "") for g in gains], rotation=20,
                       ha="right", fontsize=8)
    n = max((g.n for g in gains), default=0)
    ax.set(ylabel=f"{res.metric} gain over plain (×{scale:g})",
           title=f"paired gains over {n} seeds\ndots = seeds, bar = mean, error bar = ± 2 std (green: beyond)")
    ax.title.set_fontsize(9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def set_threads(threads: int) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)


def run_dirs(res: StudentResults, method: str) -> list[Path]:
    """The run folders of ``method``'s students, in seed order."""
    return [Path(run_dir(str(res.out), res.names.get(method, method), r["seed"])) for r in res.runs.get(method, [])]


def plot_curves(res: StudentResults, teacher_metric: float | None, path: Path, split: str, *, metric: str,
                metric_label: str, loss_label: str, labels: Mapping[str, str]) -> Path:
    """Task loss and the eval metric over training, one line per seed and method (both demos)."""
    plt = pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for i, m in enumerate(res.runs):
        colour = f"C{i}"
        for j, d in enumerate(run_dirs(res, m)):
            rows = read_csv_rows(d / LOG_FILE)
            lab = labels.get(m, m) if j == 0 else None
            if rows:
                a1.plot([r["iter"] for r in rows], [r.get("loss_task", math.nan) for r in rows], color=colour,
                        alpha=0.6, label=lab)
            pts = read_eval_curve(d, metric)
            if pts:
                a2.plot([p[0] for p in pts], [100 * p[1] for p in pts], color=colour, alpha=0.6, marker="o", ms=3,
                        label=lab)
    if teacher_metric is not None:
        a2.axhline(teacher_metric, color="k", ls="--", label="teacher")
    a1.set(xlabel="iteration", ylabel=f"task loss ({loss_label})", title="training loss (one line per seed)")
    a2.set(xlabel="iteration", ylabel=f"{metric_label} (%) on {split}", title=f"{split} {metric_label} during training")
    a1.legend(fontsize=7)
    a2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def threads() -> int:
    """The torch threads this process uses."""
    import torch

    return torch.get_num_threads()


# --------------------------------------------------------------------------------------------- settings
@dataclass
class DemoSettings:
    """The settings every demo has; a task's ``DemoConfig`` adds its own and sets its defaults (these are the
    segmentation demo's). ``POSITIVE``: the settings that must be ≥ 1."""

    TASK: ClassVar[str] = ""
    POSITIVE: ClassVar[tuple[str, ...]] = ("teacher_iters", "student_iters", "batch_size", "eval_points", "n_pool",
                                           "n_student", "n_dev", "n_val", "canvas")

    task: str = ""
    seeds: int = 3
    quick: bool = False
    eval_split: str = "val"  # "dev" while choosing settings, "val" to report
    cache_dir: str = "~/.cache/densekd"
    out_dir: str = "densekd-demo"
    threads: int = 0  # 0: leave torch's default
    jobs: int = 1  # students trained at once (worker processes; the threads split between them)
    retrain_teacher: bool = False
    methods: tuple[str, ...] = (PLAIN_STUDENT,)
    # data: the teacher's labelled pool is the train split; the student sees its first n_student canvases
    canvas: int = 64
    n_pool: int = 1600
    n_student: int = 200
    n_dev: int = 400
    n_val: int = 400
    data_seed: int = 0
    # schedule (AdamW, cosine; the teacher trains longer on more data)
    batch_size: int = 16
    teacher_iters: int = 2000
    student_iters: int = 400
    lr: float = 3e-3
    weight_decay: float = 1e-4
    eval_points: int = 4

    def validate(self) -> None:
        """The checks every demo's settings pass (one :class:`~densekd.errors.ConfigError` line each): the task,
        seeds, jobs, evaluation split, the ``POSITIVE`` settings, the student's set inside the teacher's pool, and
        methods that include the plain student and are registered."""
        if self.task != self.TASK:
            raise ConfigError(f"demo: --task must be 'segmentation' or 'detection', got {self.task!r}")
        if self.seeds < 1:
            raise ConfigError(f"demo: --seeds must be ≥ 1, got {self.seeds}")
        if self.jobs < 1:
            raise ConfigError(f"demo: --jobs must be ≥ 1, got {self.jobs}")
        if self.eval_split not in ("val", "dev"):
            raise ConfigError(f"demo: --eval-split must be 'val' or 'dev', got {self.eval_split!r}")
        for k in self.POSITIVE:
            if getattr(self, k) < 1:
                raise ConfigError(f"demo: {k} must be ≥ 1, got {getattr(self, k)}")
        if self.n_student > self.n_pool:
            raise ConfigError(f"demo: n_student ({self.n_student}) must be ≤ n_pool ({self.n_pool}): the student's "
                              "labelled set is part of the teacher's pool")
        methods = list(self.methods)
        if not any(is_plain(m) for m in methods):
            raise ConfigError(f"demo: --methods must include the plain student ('{PLAIN_STUDENT}'), got {methods}")
        check_methods(methods)

    def teacher_spec(self) -> dict[str, Any]:
        """What the teacher is (the shipped record must say the same, or ``--retrain-teacher`` is needed)."""
        raise NotImplementedError

    def data_params(self) -> dict[str, Any]:
        """The digits dataset's parameters (:func:`densekd.data.digits.make_digits_dataset`)."""
        return dict(seed=self.data_seed, n_train=self.n_pool, n_val=self.n_val, n_dev=self.n_dev, canvas=self.canvas,
                    scale=[self.canvas // 4, self.canvas // 2])


# --------------------------------------------------------------------------------------------- the skeleton
class DemoTask:
    """One task's part of ``densekd demo``: its names and the hooks :func:`run_demo` calls (``segmentation.py`` and
    ``detection.py`` each subclass it). ``cfg`` is the task's ``DemoConfig`` (:class:`DemoSettings`)."""

    name: str  # the --task value
    command: str  # the command that runs this demo
    title: str  # the report's title
    teacher_asset: str  # the shipped teacher's artefact name (densekd/assets/<name>.pt / .json)
    teacher_command: str  # the command that made it (recorded beside it)
    teacher_noun: str = "teacher"  # how errors name the shipped teacher
    runs_prefix: str  # the student runs' folder: OUT/<runs_prefix>-<hash>
    figure_prefix: str = ""  # OUT/<figure_prefix>gains.png, ...
    summary_file: str  # OUT/<summary_file>
    metrics: tuple[str, ...]  # the teacher's metrics; the first is the primary one
    metric_label: str  # the primary metric in figure labels
    loss_label: str  # the task loss in figure labels

    def __init__(self, cfg: DemoSettings) -> None:
        self.cfg = cfg

    # -- names
    def labels(self) -> Mapping[str, str]:
        """Row label per method (``"student (plain)"``, ``"student + ACAM-KD (trunk)"``, ...)."""
        raise NotImplementedError

    def teacher_model(self) -> str:
        """The teacher in words (log lines), e.g. ``TinySegNet width 32``."""
        raise NotImplementedError

    def teacher_short(self) -> str:
        """The teacher in the table's first row, e.g. ``width 32``."""
        raise NotImplementedError

    # -- data and configs
    data_note: str = ""  # what the data is, in the data line

    def data_line(self, ds: Any) -> str:
        """The data line: where the dataset is, whether it was built, its splits."""
        cfg = self.cfg
        return (f"data: {ds.root} ({'built' if ds.built else 'cached'}; {self.data_note}teacher's pool {cfg.n_pool} "
                f"canvases, the student sees the first {cfg.n_student}; dev {cfg.n_dev}, val {cfg.n_val}; "
                f"{cfg.canvas}×{cfg.canvas}; the splits share no source digit)")

    def teacher_config(self, root: Path, out: Path) -> dict[str, Any]:
        """The engine config that trains the teacher (and evaluates it)."""
        raise NotImplementedError

    def split_overrides(self, root: Path, split: str) -> list[str]:
        """Engine overrides that evaluate a config on ``split`` (``dev`` or ``val``)."""
        raise NotImplementedError

    def students(self, root: Path, teacher: TeacherChoice, out: Path, log: Callable[[str], None]
                 ) -> tuple[dict[str, Any], Path]:
        """The engine config of every student run and the folder of the runs."""
        raise NotImplementedError

    def method_settings(self) -> dict[str, list[str]]:
        """Per-method engine overrides (``compare --set``)."""
        return {}

    def method_kwargs(self) -> dict[str, dict[str, Any]]:
        """Per-method loss kwargs (``compare --kwargs``)."""
        return {}

    def run_names(self) -> dict[str, str]:
        """A method's runs folder when it is not the method's name (``compare_runs(run_names=…)``)."""
        return {}

    def students_note(self) -> str:
        """Appended to the students' log line."""
        return ""

    # -- the teacher as shipped
    def stored_teacher(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        """The teacher's weights as they are shipped (e.g. in half precision)."""
        return state_dict

    def record_extra(self) -> dict[str, Any]:
        """Record entries after ``model`` (e.g. its dtype)."""
        return {}

    # -- the report
    def describe(self, teacher: TeacherChoice, split_n: int) -> str:
        """The line under the title: what was measured, on what, with which students and teacher."""
        raise NotImplementedError

    def figures(self, res: StudentResults, out: Path) -> dict[str, Path]:
        """The task's own figures (after the gains and the curves), those that were made."""
        return {}

    def extra_tables(self, res: StudentResults, teacher_metrics: Mapping[str, float]) -> list[str]:
        """Tables printed after the results table."""
        return []

    def extra_verdicts(self, res: StudentResults) -> list[str]:
        """Lines printed after each method's verdict against the plain student (e.g. a head-to-head)."""
        return []


def retrain_teacher(task: DemoTask, root: Path, out: Path, log: Callable[[str], None]
                    ) -> Callable[[], tuple[dict, dict]]:
    """What ``--retrain-teacher`` runs (:func:`resolve_teacher` calls it): the task's teacher config trained through
    the engine into ``out`` with one thread (reproducible), its weights as shipped, their metrics on dev and val, and
    the record that says how they were made."""
    cfg = task.cfg

    def run() -> tuple[dict, dict]:
        import torch

        from ..assets import load_state_dict
        from ..engine import evaluate, train

        n = threads()
        conf = task.teacher_config(root, out)
        log(f"teacher: training {task.teacher_model()} on the {cfg.n_pool}-canvas pool for "
            f"{conf['train']['max_iters']} iterations through the engine ({out}), 1 thread for reproducibility")
        torch.set_num_threads(1)
        try:
            train(conf, ["train.resume=false"])
            sd = task.stored_teacher(load_state_dict(out / STUDENT_FILE))
            metrics: dict[str, float] = {}
            with tempfile.TemporaryDirectory() as tmp:  # the metric is the stored weights'
                stored = Path(tmp) / "teacher.pt"
                torch.save(sd, stored)
                for split in ("dev", "val"):
                    m = evaluate(conf, str(stored), [*task.split_overrides(root, split),
                                                     f"output_dir={out / ('eval_' + split)}"])
                    metrics.update({f"{split} {k}": round(100 * m[k], 2) for k in task.metrics})
        finally:
            torch.set_num_threads(n)
        record = {"kind": f"densekd demo teacher ({task.name})", "command": task.teacher_command,
                  "model": cfg.teacher_spec(), **task.record_extra(),
                  "data": {"generator": "densekd.data.digits.make_digits_dataset", **cfg.data_params(),
                           "split": "train (the whole pool)"},
                  "train": conf["train"], "seed": 0, "threads": 1, "metric": metrics,
                  "torch": torch.__version__, "created": time.strftime("%Y-%m-%d")}
        return sd, record

    return run


def run_demo(task: DemoTask, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The demo every task runs: the data, the teacher (shipped and verified, or retrained), every method × seed
    through the engine, the teacher's own metric on the evaluation split, the figures, then one report (the table,
    the task's extra tables, the verdicts, the KD health warnings) printed and kept in ``OUT/<summary_file>``.
    Returns the summary."""
    cfg = task.cfg
    cfg.validate()
    set_threads(cfg.threads)
    t_start = time.perf_counter()
    cache = Path(os.path.expanduser(cfg.cache_dir))
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from .. import losses  # noqa: F401  (registers every method)

    ds = build_data(cfg, cache)
    log(task.data_line(ds))
    hint = f"run `{task.command} --retrain-teacher` to rebuild it with our own command"
    teacher = resolve_teacher(task.teacher_asset, cfg.retrain_teacher,
                              retrain_teacher(task, ds.root, out / "teacher", log), out / "teacher", hint, log)
    spec = teacher.record.get("model")
    if spec != cfg.teacher_spec():
        raise ConfigError(f"demo: the shipped {task.teacher_noun} is {spec}, this demo asks for {cfg.teacher_spec()}; "
                          f"run `{task.command} --retrain-teacher` to train the teacher this config describes")

    conf, runs_dir = task.students(ds.root, teacher, out, log)
    seeds = list(range(cfg.seeds))
    log(f"students: {', '.join(cfg.methods)} × {cfg.seeds} seed(s), {cfg.student_iters} iterations each, through "
        f"the engine (runs in {runs_dir}; finished runs are reused)" + task.students_note())
    res = train_students(conf, cfg.methods, seeds, runs_dir, task.method_settings(), log, task.method_kwargs(),
                         cfg.jobs, task.run_names())

    # the teacher's own metrics on the evaluation split, by the engine's evaluation
    from ..engine import evaluate

    t_conf = task.teacher_config(ds.root, out / "teacher_eval")
    t_metrics = evaluate(t_conf, str(teacher.path), task.split_overrides(ds.root, cfg.eval_split))
    t_main = 100 * t_metrics[task.metrics[0]]

    labels = task.labels()
    figs = {"gains": out / f"{task.figure_prefix}gains.png", "curves": out / f"{task.figure_prefix}curves.png"}
    plot_curves(res, t_main, figs["curves"], cfg.eval_split, metric=res.metric, metric_label=task.metric_label,
                loss_label=task.loss_label, labels=labels)
    plot_gains(res, labels, figs["gains"])
    figs.update(task.figures(res, out))

    split_n = cfg.n_val if cfg.eval_split == "val" else cfg.n_dev
    teacher_row = [f"teacher ({teacher.origin}, {task.teacher_short()})", fmt(t_main), "", "", "—", "1"]
    table = results_table(res, labels, teacher_row=teacher_row)
    verdicts = [verdict_line(res, m, labels.get(m, m).replace("student + ", ""))
                for m in cfg.methods if not is_plain(m)] + task.extra_verdicts(res)
    title = (f"{task.command} — SMOKE RUN (--quick: tiny sizes, numbers mean nothing)" if cfg.quick else
             f"{task.command} — {task.title}")
    health = [f"  {m}: {w}" for m, ws in res.health.items() for w in ws]
    wall = time.perf_counter() - t_start
    text = "\n".join([
        title,
        task.describe(teacher, split_n),
        table, *task.extra_tables(res, t_metrics), *[v for v in verdicts if v],
        *(["KD health warnings from the runs:", *health] if health else []),
        f"total wall time {wall:.0f} s (threads: {threads()})",
        "figures:", *[f"  {k}: {v}" for k, v in figs.items()],
    ])
    log(text)
    gains = {g.method: {"mean": g.mean, "std": g.std, "n": g.n, "per_seed": g.per_seed, "beyond_2std": g.beyond_2std}
             for g in res.gains}
    summary = {"config": asdict(cfg), "table": text, "wall_seconds": wall, "teacher": {
        "origin": teacher.origin, "path": str(teacher.path), "record": teacher.record, "note": teacher.note,
        "metric": t_main, "metrics": t_metrics}, "runs": res.runs, "gains": gains, "health": res.health,
        "figures": {k: str(v) for k, v in figs.items()}}
    (out / task.summary_file).write_text(json.dumps(summary, indent=1, default=str))
    return summary


__all__ = ["DemoSettings", "DemoTask", "RUN_BOOKKEEPING", "StudentResults", "TeacherChoice", "build_data",
           "head_to_head_line", "plot_curves", "plot_gains", "read_csv_rows", "read_eval_curve", "resolve_teacher",
           "results_table", "retrain_teacher", "run_demo", "run_dirs", "set_threads", "settings_hash",
           "student_runs_dir", "threads", "train_students", "verdict_line"]
