"""densekd.integrations.ultralytics: distillation inside Ultralytics' trainer, offline, on generated digits.

Everything runs at 64 px on a handful of images for 1–2 epochs (a few seconds each on CPU). The module-scoped
distillation run is made with every network connection refused; its checks are separate tests.
"""
from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path

import pytest
import torch

pytest.importorskip("ultralytics")  # in the dev extra, so CI always runs these

from ultralytics import YOLO  # noqa: E402
from ultralytics.nn.tasks import ClassificationModel, DetectionModel, SegmentationModel  # noqa: E402
from ultralytics.utils import SETTINGS, USER_CONFIG_DIR  # noqa: E402

from densekd.cli import main  # noqa: E402
from densekd.data.yolo import make_yolo_digits  # noqa: E402
from densekd.errors import ConfigError, UnknownNameError  # noqa: E402
from densekd.levels import Pair  # noqa: E402
from densekd.integrations import _ultralytics_offline as offline_mod  # noqa: E402
from densekd.integrations.ultralytics import (  # noqa: E402
    YOLOKDModel,
    default_pairs,
    distill_yolo,
    kd_task_ratio_check,
    train_yolo,
    training_loss_items,
)

FAST = dict(imgsz=64, batch=8, nbs=8, workers=0, plots=False, val=False, exist_ok=True, warmup_epochs=0,
            close_mosaic=0, verbose=False)


class _NoNetwork:
    """Refuses (and records) every socket connection, DNS look-up and urllib request."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.attempts: list[str] = []

        def refuse(what):
            def f(*args, **kwargs):
                self.attempts.append(f"{what} {args[1:2] or args[:1]}")
                raise OSError(f"network disabled in this test ({what})")
            return f

        monkeypatch.setattr(socket.socket, "connect", refuse("connect"))
        monkeypatch.setattr(socket.socket, "connect_ex", refuse("connect_ex"))
        monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
        monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
        monkeypatch.setattr(urllib.request, "urlopen", refuse("urlopen"))


def _files(*dirs: Path) -> set[Path]:
    return {p for d in dirs if d.exists() for p in d.rglob("*") if p.is_file() and p.name != "settings.json"}


@pytest.fixture(scope="module")
def yolo_data(tmp_path_factory) -> Path:
    return make_yolo_digits(tmp_path_factory.mktemp("yolo_digits"), n_train=16, n_val=8, n_dev=8)


@pytest.fixture(scope="module")
def teacher_pt(yolo_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("yolo_teacher")
    tr = train_yolo("yolov8n.yaml", yolo_data, epochs=1, project=str(out), name="t", seed=0, **FAST)
    return Path(tr.best)


@pytest.fixture(scope="module")
def kd_run(yolo_data, teacher_pt, tmp_path_factory):
    """(trainer, network attempts, asset files before, after, working-dir files) of a 2-epoch ACAM-KD run."""
    out = tmp_path_factory.mktemp("yolo_kd")
    mp = pytest.MonkeyPatch()
    try:
        mp.chdir(out)
        net = _NoNetwork(mp)
        asset_dirs = (Path(USER_CONFIG_DIR), Path(SETTINGS["weights_dir"]))
        before = _files(*asset_dirs)
        initial = {}

        def snapshot(trainer):
            initial.update({k: v.detach().cpu().clone() for k, v in trainer.model.kd.state_dict().items()})

        tr = distill_yolo("yolov8n.yaml", teacher_pt, yolo_data, method="acam_kd", method_kwargs={"num_masks": 2},
                          epochs=2, project=str(out), name="kd", seed=0, amp=True,
                          callbacks={"on_pretrain_routine_end": [snapshot]}, **FAST)
        tr.initial_kd_state = initial
        after = _files(*asset_dirs)
        cwd_files = {p.relative_to(out) for p in out.rglob("*") if p.is_file() and "kd" not in p.parts}
    finally:
        mp.undo()
    return tr, net.attempts, before, after, cwd_files


# --------------------------------------------------------------------------- runs, offline
def test_distill_runs_offline_without_downloads(kd_run):
    tr, attempts, before, after, cwd_files = kd_run
    assert attempts == []
    assert after == before, f"new files in Ultralytics' asset dirs: {sorted(after - before)}"
    assert cwd_files == set(), f"files written to the working directory: {sorted(cwd_files)}"
    assert tr.epoch == 1 and Path(tr.best).is_file() and Path(tr.last).is_file()


def test_kd_terms_in_progress_and_results_csv(kd_run):
    tr = kd_run[0]
    assert tr.loss_names[:3] == ("box_loss", "cls_loss", "dfl_loss")
    assert {"kd_channel", "kd_spatial", "kd_div"} <= set(tr.loss_names)
    header = (Path(tr.save_dir) / "results.csv").read_text().splitlines()[0].split(",")
    assert {"train/kd_channel", "train/kd_spatial", "train/kd_div"} <= set(header)
    rows = (Path(tr.save_dir) / "results.csv").read_text().splitlines()[1:]
    col = header.index("train/kd_channel")
    assert len(rows) == 2 and all(float(r.split(",")[col]) > 0 for r in rows)


def test_kd_modules_are_optimized_with_the_student(kd_run):
    tr = kd_run[0]
    model = tr.model
    opt_params = {id(p) for g in tr.optimizer.param_groups for p in g["params"]}
    kd_params = list(model.kd.parameters())
    assert kd_params and all(id(p) in opt_params for p in kd_params)
    assert not any(id(p) in opt_params for p in model.teacher_model.parameters())
    assert all(not p.requires_grad for p in model.teacher_model.parameters())
    now = model.kd.state_dict()
    assert set(now) == set(tr.initial_kd_state)
    moved = [k for k, v in tr.initial_kd_state.items() if v.is_floating_point() and not torch.equal(now[k].cpu(), v)]
    assert len(moved) > len(now) // 2, "KD modules did not train"


def test_saved_checkpoints_hold_the_plain_student(kd_run):
    tr = kd_run[0]
    trained = tr.ema.ema.student_model.state_dict()
    plain_keys = set(DetectionModel("yolov8n.yaml", nc=10, verbose=False).state_dict())
    for f in (tr.last, tr.best):
        y = YOLO(str(f))
        assert type(y.model) is DetectionModel and y.task == "detect"
        sd = y.model.state_dict()
        assert set(sd) == plain_keys  # no KD module, no teacher, no wrapper prefix
        for k, v in trained.items():  # Ultralytics saves the EMA in fp16
            assert torch.equal(sd[k].float(), v.detach().cpu().half().float()), k
    img = sorted((Path(tr.data["val"])).glob("*.png"))[0]
    res = YOLO(str(tr.best)).predict(str(img), imgsz=64, verbose=False)
    assert res[0].boxes is not None


def test_densekd_entry_loads_weights_only(kd_run):
    import io

    tr = kd_run[0]
    buf = io.BytesIO()
    torch.save(torch.load(tr.last, map_location="cpu", weights_only=False)["densekd"], buf)
    buf.seek(0)
    entry = torch.load(buf, weights_only=True)  # plain tensors, numbers and strings only
    assert entry["method"] == "acam_kd" and entry["teacher"].endswith("best.pt")
    assert [p["student"] for p in entry["pairs"]] == ["model.15", "model.18", "model.21"]
    assert set(entry["kd"]) == set(tr.model.kd.state_dict())


def test_pretrain_checks_ran(kd_run):
    tr = kd_run[0]
    assert set(tr.kd_check) >= {"teacher_map50_95", "teacher_map50", "task_loss", "kd_loss", "kd_task_ratio"}
    assert 0 < tr.kd_check["kd_task_ratio"] < float("inf")


def test_resume_restores_kd_modules_and_optimizer(yolo_data, teacher_pt, tmp_path):
    class Stop(Exception):
        pass

    def stop_after_first_save(trainer):
        raise Stop()

    with pytest.raises(Stop):
        distill_yolo("yolov8n.yaml", teacher_pt, yolo_data, method="fitnet", epochs=2, project=str(tmp_path),
                     name="r", seed=0, check=False, callbacks={"on_model_save": [stop_after_first_save]}, **FAST)
    last = tmp_path / "r" / "weights" / "last.pt"
    saved = torch.load(last, map_location="cpu", weights_only=False)
    assert saved["epoch"] == 0 and saved["optimizer"] is not None
    seen = {}

    def record(trainer):
        seen["start_epoch"] = trainer.start_epoch
        seen["kd"] = {k: v.detach().cpu().clone() for k, v in trainer.model.kd.state_dict().items()}
        seen["opt_state"] = len(trainer.optimizer.state_dict()["state"])

    tr = distill_yolo(resume=last, callbacks={"on_pretrain_routine_end": [record]})
    assert seen["start_epoch"] == 1 and tr.epoch == 1
    for k, v in saved["densekd"]["kd"].items():
        assert torch.equal(seen["kd"][k], v), k
    assert seen["opt_state"] == len(saved["optimizer"]["state"]) > 0
    assert {p.loss for p in tr.model.pairs} == {"fitnet"}
    assert YOLO(str(tr.last)).model.state_dict().keys() == saved["ema"].state_dict().keys()


def _nan_once_in_second_epoch(log: dict):
    """Callbacks that make epoch 2's loss NaN once and record, at every epoch start, the epoch and (on the redo)
    the model's state next to what last.pt held."""
    def start(trainer):
        log.setdefault("epochs", []).append(trainer.epoch)
        if log.get("injected") and "redo" not in log:
            ckpt = torch.load(trainer.last, map_location="cpu", weights_only=False)
            m = trainer.model
            log["redo"] = {"student": {k: v.detach().clone() for k, v in m.student_model.state_dict().items()},
                           "kd": {k: v.detach().clone() for k, v in m.kd.state_dict().items()},
                           "ckpt_student": ckpt["ema"].float().state_dict(), "ckpt_kd": ckpt["densekd"]["kd_ema"]}

    def end(trainer):
        if trainer.epoch == 1 and not log.get("injected"):
            log["injected"] = True
            trainer.loss = torch.tensor(float("nan"))

    return {"on_train_epoch_start": [start], "on_train_epoch_end": [end]}


@pytest.fixture(scope="module")
def nan_run(yolo_data, teacher_pt, tmp_path_factory):
    log: dict = {}
    tr = distill_yolo("yolov8n.yaml", teacher_pt, yolo_data, method="fitnet", epochs=2, seed=0, check=False,
                      project=str(tmp_path_factory.mktemp("yolo_nan")), name="n",
                      callbacks=_nan_once_in_second_epoch(log), **FAST)
    return tr, log


def test_nan_after_first_epoch_recovers_from_last_pt(nan_run):
    tr, log = nan_run
    assert log["epochs"] == [0, 1, 1]  # epoch 2 went NaN, was rolled back to last.pt and run again
    redo = log["redo"]
    for k, v in redo["ckpt_student"].items():  # the model restarts from the checkpoint's EMA student ...
        assert torch.equal(redo["student"][k].cpu(), v), k
    assert redo["kd"].keys() == redo["ckpt_kd"].keys()
    for k, v in redo["ckpt_kd"].items():  # ... and the KD modules from its densekd entry
        assert torch.equal(redo["kd"][k].cpu(), v), k
    assert tr.epoch == 1 and torch.isfinite(tr.loss) and Path(tr.best).is_file()


def test_nan_recovery_without_densekd_entry_is_one_line(nan_run, tmp_path):
    tr = nan_run[0]
    plain = tmp_path / "plain.pt"
    torch.save({"ema": DetectionModel("yolov8n.yaml", nc=10, verbose=False), "epoch": 0}, plain)
    last, loss = tr.last, tr.loss
    try:
        tr.last, tr.loss = plain, torch.tensor(float("nan"))
        with pytest.raises(RuntimeError) as e:
            tr._handle_nan_recovery(1)
        assert _one_line(e.value) == f"Loss NaN/Inf detected in epoch 2; cannot recover: {plain} holds no densekd entry"
        torch.save({"ema": None, "epoch": 0, "densekd": {"kd": {}}}, plain)  # a stripped (final) checkpoint
        with pytest.raises(RuntimeError, match=r"cannot recover: .*plain.pt holds no EMA model$"):
            tr._handle_nan_recovery(1)
        tr.loss = torch.tensor(1.0)
        assert tr._handle_nan_recovery(1) is False  # a finite loss: nothing to recover
    finally:
        tr.last, tr.loss = last, loss


# --------------------------------------------------------------------------- model-level behaviour
def test_default_pairs_any_width_and_family():
    s = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    t = DetectionModel("yolo11s.yaml", nc=3, verbose=False)
    pairs = default_pairs(s, t, "cwd")
    assert [(p.student, p.teacher) for p in pairs] == [("model.15", "model.16"), ("model.18", "model.19"),
                                                       ("model.21", "model.22")]
    m = YOLOKDModel(s, t, pairs)
    chans = [(k.student_channels, k.teacher_channels) for k in m.kd.values()]
    assert chans == [(64, 128), (128, 256), (256, 512)]  # widths differ: the losses' 1×1 aligners bridge them


def _batch(n: int = 2, size: int = 64) -> dict:
    torch.manual_seed(0)
    return {"img": torch.rand(n, 3, size, size), "batch_idx": torch.tensor([0.0, 1.0]),
            "cls": torch.tensor([[1.0], [2.0]]), "bboxes": torch.tensor([[0.5, 0.5, 0.3, 0.3], [0.3, 0.4, 0.2, 0.2]])}


def test_kd_terms_are_fp32_under_autocast():
    from ultralytics.cfg import get_cfg

    s = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    s.args = get_cfg()
    t = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    m = YOLOKDModel(s, t, default_pairs(s, t, "fitnet"))
    m.train()
    dtypes = []
    for k in m.kd.values():
        k.register_forward_pre_hook(lambda mod, args: dtypes.append((args[0].dtype, args[1].dtype)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        vec, items = m(_batch())
    assert dtypes and all(d == (torch.float32, torch.float32) for d in dtypes)
    assert items["kd_feat"].dtype == torch.float32 and vec.shape == (4,)
    vec.sum().backward()
    assert all(p.grad is not None for p in m.kd.parameters())
    assert s.model[0].conv.weight.grad is not None


def _state(m):
    import random

    import numpy as np

    return ({k: v.clone() for k, v in m.named_buffers()}, [x.training for x in m.modules()], random.getstate(),
            np.random.get_state()[1].copy(), torch.random.get_rng_state())


def _same_state(a, b) -> bool:
    return (a[0].keys() == b[0].keys() and all(torch.equal(a[0][k], b[0][k]) for k in a[0]) and a[1] == b[1]
            and a[2] == b[2] and (a[3] == b[3]).all() and torch.equal(a[4], b[4]))


def test_measure_is_the_training_step_and_changes_nothing():
    """measure() (the pre-training KD/task check) gives the losses the first training step computes, in train
    mode, with MGD's random masks drawn as that step draws them; buffers, modes and random streams are kept."""
    from ultralytics.cfg import get_cfg

    s = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    s.args = get_cfg()
    t = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    m = YOLOKDModel(s, t, default_pairs(s, t, "mgd"))
    batch = _batch()
    torch.manual_seed(3)
    m.eval()  # a mode other than the one measured in: it must come back
    before = _state(m)
    task, kd = m.measure(batch)
    assert _same_state(before, _state(m))
    m.train()
    with torch.no_grad():
        _, items = m(dict(batch))  # the training step's forward, from the same random state
    assert task == pytest.approx(float(items["box_loss"] + items["cls_loss"] + items["dfl_loss"]), rel=1e-6)
    assert kd == pytest.approx(float(items["kd_mgd"]), rel=1e-6) and kd > 0
    m.eval()
    with torch.no_grad():
        _, eval_items = m(dict(batch))  # what the old eval-mode check measured differs (BatchNorm statistics)
    assert float(sum(eval_items.values())) != pytest.approx(task, rel=1e-3)


def test_training_loss_items_of_ultralytics_distillation_model():
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.distill_model import DistillationModel

    s = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    s.args = get_cfg(overrides={"imgsz": 64})
    d = DistillationModel(DetectionModel("yolov8n.yaml", nc=3, verbose=False), s)
    batch = _batch()
    before = _state(d)
    items = training_loss_items(d, batch)
    assert _same_state(before, _state(d))
    assert set(items) == {"box_loss", "cls_loss", "dfl_loss", "dis_loss"} and items["dis_loss"] > 0


def test_ratio_check_consumes_no_batch_and_no_randomness(kd_run):
    tr = kd_run[0]
    before = _state(tr.model)
    kd_task_ratio_check(tr)
    assert _same_state(before, _state(tr.model))


def test_fgd_gets_boxes_from_the_batch():
    s = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    m = YOLOKDModel(s, DetectionModel("yolov8n.yaml", nc=3, verbose=False), default_pairs(s, s, "fitnet"))
    ctx = m.context(_batch())
    assert ctx.image_size == (64, 64)
    assert torch.allclose(ctx.boxes[0, 0], torch.tensor([22.4, 22.4, 41.6, 41.6]))
    assert ctx.labels[1, 0] == 2 and ctx.box_valid.sum() == 2


def test_offline_context_restores_ultralytics():
    import ultralytics.data.utils as du
    import ultralytics.engine.trainer as et

    font, amp = du.check_font, et.check_amp
    with offline_mod.offline():
        assert du.check_font is offline_mod.local_font and et.check_amp is offline_mod.amp_without_download
    assert du.check_font is font and et.check_amp is amp
    with pytest.raises(FileNotFoundError, match="does not download"):
        offline_mod.local_asset("yolo26n.pt")


def test_plot_fonts_resolve_offline(monkeypatch):
    """Ultralytics' own check_font reaches for the network when Arial is missing (the control: this test can
    fail); inside offline() plots draw with a local font or PIL's default and nothing is fetched."""
    import numpy as np
    import ultralytics.utils.plotting as plotting
    from ultralytics.utils.checks import check_font

    net = _NoNetwork(monkeypatch)
    before = _files(Path(USER_CONFIG_DIR))
    if offline_mod.local_font("Arial.ttf") is None:
        check_font("Arial.ttf")
        assert net.attempts, "expected Ultralytics' check_font to try the network"
        net.attempts.clear()
    with offline_mod.offline():
        ann = plotting.Annotator(np.zeros((64, 64, 3), dtype=np.uint8), pil=True)
        ann.box_label([4, 4, 40, 40], "digit 7")
        assert ann.result().shape == (64, 64, 3)
    assert net.attempts == [] and _files(Path(USER_CONFIG_DIR)) == before


# --------------------------------------------------------------------------- warnings
def test_ratio_warning_fires_and_names_the_weight(kd_run):
    tr = kd_run[0]
    pairs = tr.model.pairs
    old = [p.weight for p in pairs]
    try:
        for p in pairs:
            p.weight = 1e4
        with pytest.warns(UserWarning, match=r"KD/task loss ratio .* KD would dominate .* weight=\S+ \(now 10000\)"):
            out = kd_task_ratio_check(tr)
        assert out["kd_task_ratio"] > 10
        for p in pairs:
            p.weight = 1e-7
        with pytest.warns(UserWarning, match="KD would barely move the student"):
            kd_task_ratio_check(tr)
    finally:
        for p, w in zip(pairs, old):
            p.weight = w


def test_ratio_warning_silent_when_balanced(kd_run, recwarn):
    tr = kd_run[0]
    out = kd_task_ratio_check(tr)
    pairs = tr.model.pairs
    old = [p.weight for p in pairs]
    try:
        for p in pairs:
            p.weight = p.weight / out["kd_task_ratio"]  # the suggestion: ratio 1
        again = kd_task_ratio_check(tr)
    finally:
        for p, w in zip(pairs, old):
            p.weight = w
    assert abs(again["kd_task_ratio"] - 1) < 1e-3
    assert not [w for w in recwarn if "KD/task" in str(w.message)]


# --------------------------------------------------------------------------- one level-loss mechanism
def test_distiller_and_yolo_model_give_identical_named_terms():
    """The same captured maps through the Distiller and through YOLOKDModel: the same kd/<level>/<term> terms."""
    from densekd import Distiller, Pair
    from densekd.losses.base import DistillContext

    torch.manual_seed(0)
    student = DetectionModel("yolov8n.yaml", nc=10, verbose=False).eval()
    teacher = DetectionModel("yolov8s.yaml", nc=10, verbose=False).eval()
    pairs = default_pairs(student, teacher, "acam_kd", 0.5, {"num_masks": 2})
    img = torch.rand(2, 3, 64, 64)
    d = Distiller(student, teacher, pairs, task_loss=lambda out, t: torch.zeros(()), example_inputs=(img,),
                  teacher_channels_last=False).eval()  # the teacher as YOLOKDModel runs it: the same maps, bit for bit
    m = YOLOKDModel(student, teacher, pairs)
    m.kd.load_state_dict({f"p{lv.pair}.{k}": v for lv in d.levels for k, v in d.kd_losses[lv.key].state_dict().items()})
    ctx = DistillContext(image_size=(64, 64))
    ours = {k: v for k, v in d(img, context=ctx).items() if k.startswith("kd/")}

    maps: dict[str, dict[str, torch.Tensor]] = {"s": {}, "t": {}}
    hooks = [net.get_submodule(name).register_forward_hook(lambda _m, _i, o, w=w, name=name: maps[w].update({name: o}))
             for w, net, names in (("s", student, [p.student for p in pairs]), ("t", teacher, [p.teacher for p in pairs]))
             for name in names]
    with torch.no_grad():
        student(img), teacher(img)
    for h in hooks:
        h.remove()
    theirs = {t.key: t.value for t in m.named_terms(maps["s"], maps["t"], ctx)}
    assert list(ours) == list(theirs) == [f"kd/model.{i}/loss_{n}" for i in (15, 18, 21) for n in ("channel", "spatial", "div")]
    for k in ours:
        assert torch.equal(ours[k].detach(), theirs[k].detach()), k
    total, items = m.kd_terms(maps["s"], maps["t"], ctx)
    assert torch.allclose(total, sum(theirs.values()))
    assert torch.allclose(items["kd_spatial"], sum(v for k, v in theirs.items() if k.endswith("/loss_spatial")))


def test_yolo_model_checks_levels_as_the_distiller_does():
    student = DetectionModel("yolov8n.yaml", nc=10, verbose=False)
    teacher = DetectionModel("yolov8s.yaml", nc=10, verbose=False)
    with pytest.raises(ValueError) as e:  # stride 8 vs 16, at build time
        YOLOKDModel(student, teacher, [Pair("model.15", "model.18", "cwd")])
    assert _one_line(e.value) == ("spatial sizes differ: student model.15 (1, 64, 8, 8) vs teacher model.18 "
                                  "(1, 256, 4, 4); set resize=True on this pair to interpolate the student map")
    YOLOKDModel(student, teacher, [Pair("model.15", "model.18", "cwd", resize=True)])  # resized: builds
    with pytest.raises(ConfigError) as e:
        YOLOKDModel(student, teacher, [Pair("model.15", "model.15", "samkd", aux={"logits": ("model.15", "model.15")})])
    assert _one_line(e.value) == ("pair 0 (model.15): aux maps are not captured by the YOLO integration; expected a "
                                  "pair without aux, found aux=['logits']")


def test_ratio_bounds_are_the_health_checks():
    from densekd import health
    from densekd.integrations import ultralytics as yi

    assert (yi.RATIO_LOW, yi.RATIO_HIGH) == (health.RATIO_LOW, health.RATIO_HIGH)


# --------------------------------------------------------------------------- bad input: one line each
def _one_line(e: BaseException) -> str:
    msg = str(e)
    assert "\n" not in msg, msg
    return msg


def test_teacher_of_another_task(yolo_data):
    seg = SegmentationModel("yolov8n-seg.yaml", nc=10, verbose=False)
    with pytest.raises(ConfigError) as e:
        distill_yolo("yolov8n.yaml", seg, yolo_data, epochs=1, **FAST)
    assert _one_line(e.value) == ("teacher SegmentationModel is a segment model (head Segment); distill_yolo distils "
                                  "detection models: expected a head of type Detect")
    cls = ClassificationModel("yolov8n-cls.yaml", nc=10, verbose=False)
    with pytest.raises(ConfigError, match=r"^teacher ClassificationModel is a classify model \(head Classify\)"):
        distill_yolo("yolov8n.yaml", cls, yolo_data, epochs=1, **FAST)
    with pytest.raises(ConfigError, match=r"^student 'yolov8n-seg.yaml' builds a Segment head"):
        distill_yolo("yolov8n-seg.yaml", DetectionModel("yolov8n.yaml", nc=10, verbose=False), yolo_data, **FAST)


def test_missing_data_yaml(teacher_pt, tmp_path):
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError) as e:
        distill_yolo("yolov8n.yaml", teacher_pt, missing, epochs=1, **FAST)
    assert _one_line(e.value) == (f"data '{missing}' does not exist (expected an Ultralytics data YAML with "
                                  f"train/val image folders)")
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps({"path": str(tmp_path), "train": "images/train", "val": "images/val", "names": ["a"],
                               "download": "https://example.com/x.zip"}))
    with pytest.raises(ConfigError, match=r"^data '.*bad.yaml': train images '.*images/train' not found \(densekd "
                                          r"does not download datasets\)$"):
        distill_yolo("yolov8n.yaml", teacher_pt, bad, epochs=1, **FAST)


def test_pair_the_model_lacks(yolo_data, teacher_pt, tmp_path):
    with pytest.raises(UnknownNameError) as e:
        distill_yolo("yolov8n.yaml", teacher_pt, yolo_data, pairs=[15, 99], epochs=1, project=str(tmp_path),
                     check=False, **FAST)
    msg = _one_line(e.value)
    assert msg.startswith("pair 1: the student has no layer 'model.99' (no module named 'model.99' in DetectionModel")
    with pytest.raises(ConfigError, match=r"^pair 0: the student's layer 'model.22' returns tuple, not a"):
        distill_yolo("yolov8n.yaml", teacher_pt, yolo_data, pairs=[(22, 21)], epochs=1, project=str(tmp_path),
                     check=False, **FAST)


def test_other_bad_inputs(yolo_data, teacher_pt, tmp_path):
    with pytest.raises(ConfigError, match=r"^student 'nope.pt' does not exist; densekd does not download weights"):
        distill_yolo("nope.pt", teacher_pt, yolo_data, **FAST)
    with pytest.raises(ConfigError, match=r"^teacher 'yolov8s.pt' does not exist; densekd does not download"):
        distill_yolo("yolov8n.yaml", "yolov8s.pt", yolo_data, **FAST)
    with pytest.raises(ConfigError, match=r"^unknown Ultralytics train argument 'epoch' \(did you mean 'epochs'\?\)$"):
        distill_yolo("yolov8n.yaml", teacher_pt, yolo_data, epoch=3)
    with pytest.raises(UnknownNameError, match=r"^unknown method 'acam'; available: "):
        distill_yolo("yolov8n.yaml", teacher_pt, yolo_data, method="acam", **FAST)
    with pytest.raises(ConfigError, match=r"^distill_yolo trains on one device; got device='0,1'"):
        distill_yolo("yolov8n.yaml", teacher_pt, yolo_data, device="0,1")
    with pytest.raises(ConfigError, match=r"has no 'densekd' entry: it was not written by densekd's YOLO trainer"):
        distill_yolo(resume=teacher_pt)


# --------------------------------------------------------------------------- CLI and data
def test_cli_data_and_bad_input(tmp_path, capsys):
    assert main(["yolo", "data", str(tmp_path / "d"), "--n-train", "4", "--n-val", "2"]) == 0
    yaml_path = Path(capsys.readouterr().out.strip())
    assert yaml_path == (tmp_path / "d" / "data.yaml") and yaml_path.is_file()
    rc = main(["yolo", "distill", "--student", "yolov8n.yaml", "--teacher", "t.pt", "--data", str(yaml_path),
               "epochs=1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == ("densekd yolo: error: teacher 't.pt' does not exist; densekd does not download "
                               "weights: pass a local .pt file")


def test_yolo_digits_labels_match_coco(yolo_data):
    root = yolo_data.parent
    coco = json.loads((root / "coco" / "val" / "annotations.json").read_text())
    first = coco["images"][0]
    anns = [a for a in coco["annotations"] if a["image_id"] == first["id"]]
    lines = (root / "labels" / "val" / f"{Path(first['file_name']).stem}.txt").read_text().splitlines()
    assert len(lines) == len(anns)
    c, xc, yc, w, h = map(float, lines[0].split())
    x, y, bw, bh = anns[0]["bbox"]
    assert int(c) == anns[0]["category_id"] - 1
    assert (xc, yc, w, h) == pytest.approx(((x + bw / 2) / 64, (y + bh / 2) / 64, bw / 64, bh / 64), abs=1e-6)
    assert (root / "images" / "dev").is_dir() and len(list((root / "labels" / "dev").glob("*.txt"))) == 8
