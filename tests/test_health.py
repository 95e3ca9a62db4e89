"""KD health (densekd/health/) and the doctor (densekd/tools/doctor.py): the doctor's checks and exit status, the
training guards (each warning fires on a case built to trigger it and stays silent on a healthy run), the
random-teacher refusal and the removal of stale temporary checkpoints. Tiny models: the ``tiny`` segmenter at
32 px on generated colour-coded data."""
from __future__ import annotations

import csv
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F
import yaml

import densekd
from densekd import health
from densekd.cli import main
from densekd.distiller import Distiller, Pair
from densekd.engine import Trainer
from densekd.errors import ConfigError
from densekd.losses import DistillLoss, register_loss
from densekd.losses.registry import _LOSSES
from tiny_models import TinyDetector, TinySegmenter


# --------------------------------------------------------------------------- test losses
class _Vanishing(DistillLoss):
    """MSE whose value is multiplied by 1e-3 per iteration: the KD term collapses while the features do not
    move (the collapse warning's trigger)."""

    def forward(self, s, t, context=None):
        it = context.iteration if context is not None else 0
        return {"loss_mse": F.mse_loss(self.align(s), t) * (1e-3 ** it)}


class _Detached(DistillLoss):
    """MSE on a detached student map: the KD term puts no gradient on the student (the doctor's failure)."""

    def forward(self, s, t, context=None):
        return {"loss_mse": F.mse_loss(self.align(s.detach()), t)}


class _NanLater(DistillLoss):
    """MSE, then NaN from the second iteration on (a run that dies after a warning)."""

    def forward(self, s, t, context=None):
        v = F.mse_loss(self.align(s), t)
        return {"loss_mse": v * float("nan") if context is not None and context.iteration >= 1 else v}


class _Mse(DistillLoss):
    def __init__(self, student_channels, teacher_channels, **_ignored):
        super().__init__(student_channels, teacher_channels)

    def forward(self, s, t, context=None):
        return {"loss_mse": F.mse_loss(self.align(s), t)}


for _name, _cls in (("health_vanishing", _Vanishing), ("health_detached", _Detached), ("health_mse", _Mse),
                    ("health_nan", _NanLater)):
    if _name not in _LOSSES:
        register_loss(_name)(_cls)


# --------------------------------------------------------------------------- data, teacher, configs
@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """Colour-coded rectangles (3 classes, 32 px; train 8 and val 8 images) in the folder layout."""
    from densekd.data.segmentation import make_toy_segmentation

    root = tmp_path_factory.mktemp("toy")
    make_toy_segmentation(root, "folder", num_images=8, size=(32, 32), num_classes=3)
    return str(root)


def seg_config(root, out, teacher=None, method="health_mse", **train):
    t = {"arch": "tiny", "width": 8, "num_classes": 3}
    t.update({"checkpoint": teacher} if teacher else {"random_init": True})
    return {
        "task": "segmentation", "output_dir": str(out), "seed": 0,
        "model": {"student": {"arch": "tiny", "width": 4, "num_classes": 3}, "teacher": t},
        "data": {"format": "folder", "root": root, "num_classes": 3, "val_split": "val", "crop_size": [32, 32],
                 "scale_range": [1.0, 1.0]},
        "distill": {"method": method, "weight": 0.05},  # KD/task ≈ 1 with the trained teacher below
        "train": {"max_iters": 3, "batch_size": 4, "num_workers": 0, "log_every": 2, "checkpoint_every": 0,
                  "eval_every": -1, "grad_ratio_every": 2, "optimizer": {"type": "adamw", "lr": 0.003}, **train},
        "eval": {"batch_size": 4},
    }


@pytest.fixture(scope="module")
def trained_teacher(toy, tmp_path_factory):
    """A width-8 tiny segmenter trained (plainly, through the engine) far above chance on the toy data."""
    out = tmp_path_factory.mktemp("teacher")
    cfg = seg_config(toy, out, max_iters=40, optimizer={"type": "adamw", "lr": 0.01})
    cfg["model"]["student"] = dict(cfg["model"]["teacher"], random_init=False)
    del cfg["model"]["teacher"], cfg["distill"]
    metrics = densekd.train(cfg, ["train.eval_every=0"])
    assert metrics["mIoU"] > 0.4, metrics  # chance (most frequent class everywhere) is about 0.28
    return str(out / "student_final.pth")


def _rows(out):
    return list(csv.DictReader(open(os.path.join(out, "log.csv"))))


def _health(out):
    return json.load(open(os.path.join(out, "health.json")))


# --------------------------------------------------------------------------- refusals, temporaries
def test_teacher_without_weights_is_refused_unless_random_init(toy, tmp_path):
    cfg = seg_config(toy, tmp_path / "o")
    del cfg["model"]["teacher"]["random_init"]
    with pytest.raises(ConfigError, match=r"^model.teacher.checkpoint: not set, so the teacher would be randomly "
                                          r"initialised .*model.teacher.random_init: true, tests only\)$"):
        Trainer(cfg)
    cfg["model"]["teacher"].update(random_init=True, checkpoint="t.pth")
    with pytest.raises(ConfigError, match=r"^model.teacher.random_init: true contradicts model.teacher.checkpoint 't.pth'"):
        Trainer(cfg)
    assert not os.path.exists(tmp_path / "o")  # refused before anything was written


def test_detection_teacher_random_init():
    from densekd.config import from_dict
    from densekd.tasks import get_task

    det = get_task("detection")
    spec = {"num_classes": 2, "min_size": 32, "max_size": 32, "student": {"arch": "fcos", "backbone": "resnet18"}}
    with pytest.raises(ConfigError, match=r"^model.teacher: a teacher needs trained weights: .*\(or "
                                          r"model.teacher.random_init: true, tests only\)$"):
        det.build_model(from_dict(det.model_config_cls, {**spec, "teacher": {"arch": "fcos"}}, "model"), "teacher")
    bad = from_dict(det.model_config_cls, {**spec, "teacher": {"arch": "fcos", "random_init": True, "checkpoint": "t.pth"}})
    with pytest.raises(ConfigError, match=r"^model.teacher.random_init: true contradicts model.teacher.checkpoint"):
        det.build_model(bad, "teacher")
    ok = from_dict(det.model_config_cls, {**spec, "teacher": {"arch": "fcos", "backbone": "resnet18", "random_init": True}})
    assert det.build_model(ok, "teacher") is not None


def test_stale_temporary_checkpoints_are_removed_at_start(toy, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".tmp_abc123.pth").write_bytes(b"x" * 2048)
    (out / ".tmp_keep.txt").write_text("not ours")
    densekd.train(seg_config(toy, out, max_iters=1))
    assert not (out / ".tmp_abc123.pth").exists() and (out / ".tmp_keep.txt").exists()
    assert "removed 1 stale temporary checkpoint file(s) left by an interrupted write (.tmp_abc123.pth, 2.0 KB)" \
        in capsys.readouterr().out


# --------------------------------------------------------------------------- guards: unit cases
@pytest.fixture
def guards():
    torch.manual_seed(0)
    d = Distiller(TinySegmenter(4), TinySegmenter(8), [Pair("encoder", loss="health_mse")],
                  task_loss=lambda out, y: out.mean() * 0, example_inputs=(torch.randn(2, 3, 16, 16),))
    g = health.TrainingGuards(d, distill_weight=0.5)
    yield g
    g.close()


def _row(kd=1.0, task=1.0, dist=0.9, **extra):
    return {"loss_task": task, "kd/encoder/loss_mse": kd, "kd/encoder/distance": dist, **extra}


def test_collapse_fires_only_when_the_distance_did_not_fall(guards):
    assert guards.check(1, _row()) == []
    assert guards.check(10, _row(kd=0.02)) == []  # 2 % of the first value: not yet
    assert guards.check(20, _row(kd=0.005, dist=0.4)) == []  # fell, but so did the distance: the student learned
    new = guards.check(30, _row(kd=0.005, dist=0.85))
    assert new == ["iteration 30: the KD term loss_mse at encoder fell to 0.5 % of its first value (0.005 vs 1) "
                   "while the student–teacher feature distance has not fallen to half of its own (0.85 vs 0.9): it "
                   "has stopped distilling"]
    assert guards.check(40, _row(kd=0.001, dist=0.85)) == []  # printed once
    assert [w["kind"] for w in guards.warnings] == ["collapse"]


def test_collapse_per_term_and_regularizer_terms_do_not_count(guards):
    guards.modules["encoder"].regularizer_terms = ("loss_div",)
    row = lambda mse, spatial, div: _row(kd=mse, dist=0.9, **{"kd/encoder/loss_spatial": spatial,  # noqa: E731
                                                             "kd/encoder/loss_div": div})
    assert guards.check(1, row(1.0, 1.0, 1.0)) == []
    assert guards.check(2, row(0.5, 1.0, 1e-6)) == []  # the (Dice-like) regulariser may vanish: masks diverse
    new = guards.check(3, row(0.5, 1e-4, 1e-6))  # one branch died while the other still distils
    assert len(new) == 1 and new[0].startswith("iteration 3: the KD term loss_spatial at encoder fell to 0.01 %")


@pytest.mark.parametrize("norm,fragment", [("sum", "under mask_norm=sum loss_spatial scales with these masks, so "
                                                    "it is switched off "
                                                    "(docs/methods.md, \"Optimisation of the mask modules\")"),
                                           ("square", "their sigmoids saturate at 0: under mask_norm=square the KD "
                                                      "term is a mask-weighted mean and stays on")])
def test_mask_warnings_fire_with_the_norms_wording(guards, norm, fragment):
    guards.modules["encoder"].mask_norm = norm
    healthy = {"kd/encoder/masks/spatial/mean": 0.5, "kd/encoder/masks/spatial/std_min": 0.3,
               "kd/encoder/masks/channel/mean": 0.45}
    # freshly initialised masks are ≈ 0.5 everywhere: constant, but not yet a warning
    assert guards.check(1, _row(**{**healthy, "kd/encoder/masks/spatial/std_min": 2e-4})) == []
    # fresh masks under z_norm="spatial" wobble around a spatial std of 1e-3: not yet a selection that can fall
    assert guards.check(2, _row(**{**healthy, "kd/encoder/masks/spatial/std_min": 3e-3})) == []
    assert guards.check(3, _row(**{**healthy, "kd/encoder/masks/spatial/std_min": 8e-4})) == []
    assert guards.check(10, _row(**healthy)) == []
    low = guards.check(50, _row(**{**healthy, "kd/encoder/masks/spatial/mean": 0.004}))
    assert len(low) == 1 and "ACAM-KD spatial masks at encoder collapsed: mean 0.004 < 0.01" in low[0] and fragment in low[0]
    # constant because collapsed: the mean warning (above) says it better than the spatial-std one
    assert guards.check(55, _row(**{**healthy, "kd/encoder/masks/spatial/mean": 0.004,
                                    "kd/encoder/masks/spatial/std_min": 2e-6})) == []
    high = guards.check(60, _row(**{**healthy, "kd/encoder/masks/channel/mean": 0.995}))
    assert len(high) == 1 and "channel masks at encoder saturated at 1: mean 0.995 > 0.99" in high[0]
    flat = guards.check(70, _row(**{**healthy, "kd/encoder/masks/spatial/std_min": 2e-6}))
    assert flat == ["iteration 70: ACAM-KD spatial masks at encoder are constant over the image (per-mask spatial "
                    "std 2e-06 < 0.001): ASCM's spatial selection is off; is distill.kwargs.z_norm \"none\"? "
                    "\"spatial\" (the default) standardises the fused map over space "
                    "(docs/methods.md, \"Spatial masks must be spatial\")"]


def test_one_mask_warning_fires_late_in_the_run_and_only_then(guards):
    """ACAM-KD's M spatial masks that stay one mask (Dice ≥ 0.99) a quarter into the run, each varying over the image:
    the detection demo's P3 (Dice 1.00 to the end); fresh masks, parted masks, or a run of unknown length: silent."""
    from types import SimpleNamespace

    guards.modules["encoder"].ascm = SimpleNamespace(spatial_units=torch.zeros(6, 8))
    guards.max_iters = 400
    same = {"kd/encoder/masks/spatial/mean": 0.5, "kd/encoder/masks/spatial/std_min": 0.38,
            "kd/encoder/masks/spatial/dice": 0.998}
    assert guards.check(1, _row(**{**same, "kd/encoder/masks/spatial/std_min": 0.016})) == []  # fresh masks
    assert guards.check(50, _row(**same)) == []  # alike early on: the segmentation demo's masks part later
    assert guards.check(150, _row(**{**same, "kd/encoder/masks/spatial/dice": 0.57})) == []  # parted
    new = guards.check(200, _row(**same))
    assert new == ["iteration 200: ACAM-KD's 6 spatial masks at encoder are one and the same mask (mean pairwise Dice "
                   "0.998 ≥ 0.99, 50 % into the run, each varying over the image: smallest per-mask spatial std "
                   "0.38): ASCM selects as a single mask would and the diversity term does not part them "
                   "(docs/methods.md, \"When the masks are one mask\")"]
    assert guards.check(300, _row(**same)) == []  # once
    assert [w["kind"] for w in guards.warnings] == ["mask_same"]


def test_one_mask_warning_stays_silent_without_the_runs_length_or_with_one_mask(guards):
    from types import SimpleNamespace

    same = {"kd/encoder/masks/spatial/mean": 0.5, "kd/encoder/masks/spatial/std_min": 0.38,
            "kd/encoder/masks/spatial/dice": 1.0}
    guards.modules["encoder"].ascm = SimpleNamespace(spatial_units=torch.zeros(6, 8))
    assert guards.max_iters is None and guards.check(300, _row(**same)) == []  # length unknown: no "late"
    guards.max_iters = 400
    guards.modules["encoder"].ascm = SimpleNamespace(spatial_units=torch.zeros(1, 8))  # M = 1: nothing to part
    assert guards.check(300, _row(**same)) == []
    guards.modules["encoder"].ascm = SimpleNamespace(spatial_units=None)  # masks="channel": no spatial family
    assert guards.check(300, _row(**same)) == []


def test_constant_gates_fire_without_an_earlier_spatial_phase(guards):
    """On some features the masks go straight from their initial ≈ 0.5 to gates ≈ 0 or 1 everywhere."""
    fresh = {"kd/encoder/masks/spatial/mean": 0.5, "kd/encoder/masks/spatial/std_min": 4e-5,
             "kd/encoder/masks/spatial/shift_max": 0.002}
    assert guards.check(1, _row(**fresh)) == []
    new = guards.check(50, _row(**{**fresh, "kd/encoder/masks/spatial/mean": 0.636,
                                   "kd/encoder/masks/spatial/std_min": 0.0,
                                   "kd/encoder/masks/spatial/shift_max": 0.5}))
    assert new == ["iteration 50: ACAM-KD spatial masks at encoder are constant over the image (per-mask spatial std "
                   "0 < 0.001; some masks are gates ≈ 0 or ≈ 1 everywhere): ASCM's spatial selection is off; is "
                   "distill.kwargs.z_norm \"none\"? \"spatial\" (the default) standardises the fused map over space "
                   "(docs/methods.md, \"Spatial masks must be spatial\")"]


def test_mask_warnings_name_maskd_and_give_it_its_own_hint(guards):
    """MasKD reuses ACAM-KD's masks with frozen tokens and no z_norm: its warnings say MasKD, and the constant-mask
    one says what that means for fitted tokens instead of pointing at a z_norm it does not have."""
    from densekd import build_loss

    guards.modules["encoder"] = build_loss("maskd", student_channels=4, teacher_channels=8, num_masks=3)
    gates = {"kd/encoder/masks/spatial/mean": 0.636, "kd/encoder/masks/spatial/std_min": 0.0,
             "kd/encoder/masks/spatial/shift_max": 0.5}
    new = guards.check(1, _row(**gates))
    assert new == ["iteration 1: MasKD spatial masks at encoder are constant over the image (per-mask spatial std 0 "
                   "< 0.001; some masks are gates ≈ 0 or ≈ 1 everywhere): the receptive tokens, fitted on the "
                   "teacher's task loss and then frozen (distill.kwargs.fit_steps), select no region at this level, "
                   "so its spatial term weighs every position alike there (docs/methods.md, \"MasKD\")"]
    low = guards.check(50, _row(**{"kd/encoder/masks/channel/mean": 0.004}))
    assert len(low) == 1 and low[0].startswith("iteration 50: MasKD channel masks at encoder collapsed: mean 0.004")
    assert not [w for w in guards.warnings if "z_norm" in w["message"] or "ACAM-KD" in w["message"]]


def test_run_warnings_are_the_messages_of_health_json(tmp_path):
    assert health.run_warnings(tmp_path) == [] and health.read_health(tmp_path) is None
    warning = {"iteration": 2, "kind": "collapse", "level": "trunk", "message": "iteration 2: it collapsed"}
    health.write_health(str(tmp_path), 3, ["INFO guards: on"], [warning], finished=True)
    assert health.run_warnings(tmp_path) == ["iteration 2: it collapsed"]
    assert health.read_health(tmp_path)["checks"] == ["INFO guards: on"]


def test_mask_shifts_from_the_mask_record():
    from densekd.health.guards import _mask_shifts

    spatial = torch.full((2, 3, 4, 4), 0.5)
    spatial[:, 1] = 0.999
    out = _mask_shifts("trunk", {"spatial": spatial, "channel": torch.full((2, 3, 8), 0.45)})
    assert out == pytest.approx({"kd/trunk/masks/spatial/shift_max": 0.499, "kd/trunk/masks/channel/shift_max": 0.05})
    assert _mask_shifts("trunk", None) == {}


def test_divergence_fires_above_100_with_the_weight_that_brings_it_to_1(guards):
    assert guards.check(1, _row(**{"kd/encoder/grad_ratio": 50.0})) == []
    new = guards.check(100, _row(**{"kd/encoder/grad_ratio": 250.0, "kd/encoder/grad_norm": 25.0,
                                    "task/grad_norm": 0.1}))
    assert new == ["iteration 100: at encoder the KD term's gradient on the student is 250× the task's (norm 25 vs "
                   "0.1) > 100: divergence ahead; distill.weight=0.002 would bring it to 1"]


def test_guard_state_survives_a_checkpoint(guards):
    guards.check(1, _row())
    guards.check(5, _row(**{"kd/encoder/grad_ratio": 500.0}))
    state = guards.state_dict()
    g2 = health.TrainingGuards(guards.distiller)
    g2.load_state_dict(state)
    assert g2.first == guards.first and g2.warnings == guards.warnings
    assert g2.check(9, _row(**{"kd/encoder/grad_ratio": 500.0})) == []  # already printed before the resume
    g2.close()


def test_gradient_norms_split_the_total_exactly(guards):
    """The KD level's norm (autograd.grad) and the task's (total − KD) match separate backward passes."""
    d = guards.distiller
    x, y = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)
    d.task_loss = lambda out, tgt: F.mse_loss(out, tgt)
    params = [p for p in d.student.parameters() if p.requires_grad]
    guards.begin(0, log_now=True)
    assert guards.grad_now and guards.recording
    losses = d(x, targets=y)
    guards.kd_gradients(losses, params)
    losses["loss"].backward()
    guards.task_gradient(params)
    extras = guards.row_extras()
    kd_ref = health.total_norm(torch.autograd.grad(d(x, targets=y)["kd/encoder/loss_mse"], params, allow_unused=True))
    task_ref = health.total_norm(torch.autograd.grad(d(x, targets=y)["loss_task"], params, allow_unused=True))
    assert extras["kd/encoder/grad_norm"] == pytest.approx(kd_ref, rel=1e-5)
    assert extras["task/grad_norm"] == pytest.approx(task_ref, rel=1e-4)
    assert extras["kd/encoder/grad_ratio"] == pytest.approx(kd_ref / task_ref, rel=1e-4)
    assert 0 <= extras["kd/encoder/distance"] <= 2
    guards.begin(1, log_now=False)  # iteration 2 of grad_every=100: nothing measured or recorded
    assert not guards.grad_now and not guards.recording


def test_feature_distance():
    m = _Mse(3, 3)
    m.align = torch.nn.Identity()
    t = torch.randn(2, 3, 4, 4)
    assert health.feature_distance(m, 2 * t + 1, t) == pytest.approx(0.0, abs=1e-6)  # affine per channel
    assert health.feature_distance(m, -t, t) == pytest.approx(2.0, abs=1e-6)
    assert health.feature_distance(m, torch.randn(2, 3, 2, 2), t) is None


# --------------------------------------------------------------------------- guards: end to end
def test_healthy_run_is_silent_and_logs_the_health_columns(toy, trained_teacher, tmp_path, capsys):
    out = tmp_path / "ok"
    densekd.train(seg_config(toy, out, teacher=trained_teacher, method="acam_kd", max_iters=4))
    printed = capsys.readouterr().out
    rows = _rows(out)
    assert [r["iter"] for r in rows] == ["1", "2", "4"]  # iteration 1, every log_every, the last
    stats = [f"kd/classifier/masks/{fam}/{k}" for fam in ("spatial", "channel")
             for k in ("mean", "dice", "entropy", "std", "std_min", "shift_max")]
    for col in ("kd/classifier/kd_task_ratio", "kd/classifier/distance", "kd/classifier/grad_norm",
                "task/grad_norm", "kd/classifier/grad_ratio", *stats):
        assert all(math.isfinite(float(r[col])) for r in rows), col
    kd = sum(float(rows[0][f"kd/classifier/{t}"]) for t in ("loss_channel", "loss_spatial", "loss_div"))
    assert float(rows[0]["kd/classifier/kd_task_ratio"]) == pytest.approx(kd / float(rows[0]["loss_task"]), rel=1e-4)
    h = _health(out)
    assert h == health.read_health(str(out)) and health.read_health(str(tmp_path)) is None
    assert h["finished"] and h["warnings"] == [] and h["iteration"] == 4
    assert h["checks"][0].startswith("INFO teacher: weights from model.teacher.checkpoint")
    assert any(c.startswith("INFO pair 0: classifier [4, 3, 8, 8] (3 ch, stride 4) ← teacher classifier") for c in h["checks"])
    assert any(c.startswith("OK   iteration 1: classifier: KD") for c in h["checks"])
    assert any(c.startswith("INFO iteration 1: cost: matrix products in one forward (torch.utils.flop_counter): "
                            "student ") for c in h["checks"])  # below the student's: a line, no warning
    assert "health: no warnings" in printed and "health warning" not in printed


def test_cost_warning_at_iteration_1_names_the_level(toy, tmp_path, capsys):
    """ACAM-KD's attention over the 16×16 positions of the stem outweighs the whole tiny student: the first
    iteration says so once, kept in health.json and the end-of-run summary; a resumed run does not count again."""
    out = tmp_path / "cost"
    densekd.train(seg_config(toy, out, method="acam_kd", max_iters=2), ["distill.pairs=[{student: stem}]"])
    printed = capsys.readouterr().out
    h = _health(out)
    cost = [w for w in h["warnings"] if w["message"].startswith("iteration 1: cost: ")]
    assert len(cost) == 1 and cost[0]["kind"] == "start"
    assert "× the matrix work of the student's forward" in cost[0]["message"]
    assert cost[0]["message"].endswith("; it all comes from stem [4, 4, 16, 16] — a level with fewer positions costs less")
    assert printed.count(cost[0]["message"]) == 2  # the iteration-1 WARN line and the end-of-run summary
    assert sum(c.startswith("WARN iteration 1: cost: ") for c in h["checks"]) == 1
    densekd.train(seg_config(toy, out, method="acam_kd", max_iters=3), ["distill.pairs=[{student: stem}]"])
    assert sum(c.startswith("WARN iteration 1: cost: ") for c in _health(out)["checks"]) == 1  # resumed: not again


def test_divergence_warning_at_iteration_1(toy, tmp_path, capsys):
    out = tmp_path / "div"
    densekd.train(seg_config(toy, out, max_iters=3), ["distill.weight=1e5"])
    printed = capsys.readouterr().out
    h = _health(out)
    kinds = [w["kind"] for w in h["warnings"]]
    assert "divergence" in kinds and "start" in kinds  # the iteration-1 KD/task loss ratio > 10 too
    div = next(w for w in h["warnings"] if w["kind"] == "divergence")
    assert div["iteration"] == 1 and "divergence ahead; distill.weight=" in div["message"]
    assert printed.count(div["message"]) == 2  # once when it fired, once in the end-of-run summary
    assert any(c.startswith("WARN iteration 1: classifier:") and "the KD term dominates the task" in c for c in h["checks"])


def test_a_run_that_dies_names_the_warnings_before_it(toy, tmp_path):
    out = tmp_path / "nan"
    with pytest.raises(FloatingPointError, match=r"^non-finite loss at iteration 1: .*kd/classifier/loss_mse=nan.* "
                                                 r"\(after 2 health warning\(s\); the last: iteration 1: at classifier "
                                                 r"the KD term's gradient on the student is .* divergence ahead"):
        densekd.train(seg_config(toy, out, method="health_nan"), ["distill.weight=1e4"])
    h = _health(out)  # written although the run died
    assert not h["finished"] and h["iteration"] == 1 and [w["kind"] for w in h["warnings"]] == ["start", "divergence"]


def test_collapse_warning_end_to_end(toy, tmp_path, capsys):
    out = tmp_path / "col"
    densekd.train(seg_config(toy, out, method="health_vanishing", max_iters=4,
                             optimizer={"type": "sgd", "lr": 1e-6}), ["distill.weight=1"])
    h = _health(out)
    assert [w["kind"] for w in h["warnings"]] == ["collapse"] and h["warnings"][0]["iteration"] == 2
    assert "it has stopped distilling" in capsys.readouterr().out


def test_acam_kd_paper_masks_collapse_warning(toy, trained_teacher, tmp_path, capsys):
    """The literal reading of ACAM-KD (descent, Σ M norm) drives the masks to 0
    (docs/methods.md, "Optimisation of the mask modules"): the guard says so, in the words that hold for that norm."""
    out = tmp_path / "paper"
    densekd.train(seg_config(toy, out, teacher=trained_teacher, method="acam_kd_paper", max_iters=40, log_every=10,
                             optimizer={"type": "adamw", "lr": 0.01}))
    h = _health(out)
    # (before they collapse, the masks can be one mask: that warning may come first)
    first = next(w for w in h["warnings"] if w["kind"] != "mask_same")
    assert first["kind"] == "mask_collapse" and first["message"].startswith(
        f"iteration {first['iteration']}: ACAM-KD spatial masks at classifier collapsed: mean ")
    assert "under mask_norm=sum loss_spatial scales with these masks, so it is switched off" in first["message"]
    assert float(_rows(out)[-1]["kd/classifier/masks/spatial/mean"]) < 0.01
    assert capsys.readouterr().out.count(first["message"]) == 2  # when it fired and in the summary


def test_guards_off(toy, tmp_path):
    out = tmp_path / "off"
    densekd.train(seg_config(toy, out, max_iters=2, guards=False), ["distill.weight=1e5"])
    assert not any("grad" in k or "distance" in k or "ratio" in k for k in _rows(out)[0])
    assert _health(out)["warnings"] == [] and "INFO guards: off (train.guards: false)" in _health(out)["checks"]


# --------------------------------------------------------------------------- doctor
def _doctor(cfg, tmp_path, capsys, *args):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    rc = main(["doctor", str(path), *args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_doctor_healthy_config_exits_0(toy, trained_teacher, tmp_path, capsys):
    rc, out, _ = _doctor(seg_config(toy, tmp_path / "o", teacher=trained_teacher), tmp_path, capsys, "--batches", "1")
    assert rc == 0, out
    lines = out.splitlines()
    assert lines[0].startswith("densekd doctor: ") and lines[-1] == "doctor: 0 failure(s), 0 warning(s)"
    assert lines[1].startswith("INFO teacher: weights from model.teacher.checkpoint ") and "sha256 " in lines[1]
    assert any(ln.startswith("OK   teacher: mIoU ") and "on 4 validation image(s) (1 batch(es)); chance there is "
               in ln and "predicting the most frequent class" in ln for ln in lines)
    assert any(ln.startswith("OK   student: starting point mIoU") for ln in lines)
    assert any(ln.startswith("INFO pair 0: classifier [4, 3, 8, 8] (3 ch, stride 4) ← teacher classifier [4, 3, 8, 8] "
                             "(3 ch, stride 4); health_mse × 0.05; aligner 1×1 conv 3→3; resize no") for ln in lines)
    assert any(ln.startswith("INFO one batch: classifier: KD ") and "gradient norm on the student" in ln for ln in lines)
    assert any(ln.startswith("OK   gradient: the KD terms reach the student") for ln in lines)
    assert any(ln.startswith("OK   gradient: nothing reaches the teacher") for ln in lines)
    assert not (tmp_path / "o").exists()  # the doctor trains and writes nothing


def test_doctor_fails_on_a_teacher_at_chance_and_warns_on_ratios(toy, tmp_path, capsys):
    rc, out, _ = _doctor(seg_config(toy, tmp_path / "o"), tmp_path, capsys, "distill.weight=1e4", "--batches", "1")
    assert rc == 1
    assert "WARN teacher: randomly initialised (model.teacher.random_init: true)" in out
    assert "is at chance level: predicting the most frequent class" in out and "is model.teacher.checkpoint the right one" in out
    assert "WARN one batch: classifier: KD/task loss ratio " in out and "> 10: the KD term dominates the task; distill.weight=" in out
    assert out.splitlines()[-1].startswith("doctor: 1 failure(s)")


def test_doctor_fails_when_kd_puts_no_gradient_on_the_student(toy, trained_teacher, tmp_path, capsys):
    rc, out, _ = _doctor(seg_config(toy, tmp_path / "o", teacher=trained_teacher, method="health_detached"),
                         tmp_path, capsys, "--batches", "1")
    assert rc == 1
    assert "FAIL gradient: the KD term at classifier puts no gradient on the student (norm 0.0)" in out
    assert "the KD terms reach the student" not in out


def test_doctor_fails_when_the_teacher_is_not_frozen(toy, trained_teacher, tmp_path):
    tr = Trainer(seg_config(toy, tmp_path / "o", teacher=trained_teacher))
    tr.model.teacher.classifier.weight.requires_grad_(True)
    tr.model.teacher.train()
    tr.model.train = lambda mode=True: tr.model  # keep the broken state through the check
    fails = [c for c in health.one_batch_checks(tr) if c.status == health.FAIL]
    assert len(fails) == 1 and fails[0].message.startswith(
        "the teacher is not frozen: 1 parameter(s) require grad, e.g. classifier.weight;")
    assert "it is in train mode" in fails[0].message
    tr.close()


def test_doctor_bad_input_exits_2(toy, tmp_path, capsys):
    cfg = seg_config(toy, tmp_path / "o")
    del cfg["distill"]
    rc, _, err = _doctor(cfg, tmp_path, capsys)
    assert rc == 2 and err.strip() == ("densekd doctor: error: distill: the config has no distill section, so there "
                                       "is no teacher or KD term to check (doctor checks distillation configs)")
    rc, _, err = _doctor(seg_config(toy, tmp_path / "o"), tmp_path, capsys, "--batches", "0")
    assert rc == 2 and err.strip() == "densekd doctor: error: doctor --batches: expected a positive int, got 0"
    rc, _, err = _doctor(seg_config(toy, tmp_path / "o"), tmp_path, capsys, "train.grad_ratio_every=-1")
    assert rc == 2 and "train.grad_ratio_every: expected an int >= 0, got -1" in err


def test_chance_level_segmentation():
    masks = torch.tensor([[[0, 0, 0, 1], [0, 2, 255, 255]]])  # 6 labelled: class 0 four times
    chance, what = health.chance_level("segmentation", [(None, masks)], 4, class_names=["bg", "a", "b", "c"])
    assert chance == pytest.approx((4 / 6) / 3) and "'bg', 66.7 % of the pixels" in what
    assert health.chance_level("detection", [], 2)[0] == 0.0


def test_doctor_on_detection_fpn_levels(make_config, teacher_ckpt, tmp_path, capsys):
    """Every FPN level gets its line with the stride in the detector's own resized input; a random teacher's
    AP is at chance (≈ 0) and fails."""
    cfg = make_config(tmp_path / "o", teacher=teacher_ckpt, method="test_mse")
    rc, out, _ = _doctor(cfg, tmp_path, capsys, "--batches", "2")
    assert rc == 1
    assert "FAIL teacher: AP 0.00 on 2 validation image(s) (2 batch(es)) is at chance level: a detector that has " \
           "learned nothing finds no box: AP ≈ 0 scores 0.00 there" in out
    levels = [ln for ln in out.splitlines() if ln.startswith("INFO pair 0: ")]
    assert [ln.split(" [", 1)[0] for ln in levels] == [f"INFO pair 0: backbone:{k}" for k in ("0", "1", "2", "p6", "p7")]
    assert "(256 ch, stride 8) ← teacher backbone:0 " in levels[0] and "[2, 256, 1, 1] (256 ch, stride 64)" in levels[-1]  # 64 px: P7 is 1×1
    assert sum(ln.startswith("INFO one batch: backbone:") for ln in out.splitlines()) == 5
    assert "OK   gradient: nothing reaches the teacher" in out


def test_cost_check_names_the_level_that_does_most_of_the_kd_work():
    flops = {"Global": 1000, "D": 1000, "D.student": 100, "D.student.body": 60, "D.kd_losses.0|p3": 300,
             "D.kd_losses.0|p3.fusion": 290, "D.kd_losses.0|p4": 100}
    info, warn = health.cost_checks(flops, "D")
    assert info.status == health.INFO and info.message == (
        "matrix products in one forward (torch.utils.flop_counter): student 100 FLOP, teacher 500 FLOP, KD modules "
        "400 FLOP = 4× the student's; by level: p3 75 %, p4 25 %")
    assert warn.status == health.WARN and warn.topic == "cost" and warn.message == (
        "the KD modules' forward does 4× the matrix work of the student's forward, so a training step costs several "
        "plain ones (`densekd bench CONFIG` measures it); p3 does 75 % of it — distilling without that level "
        "(distill.pairs) removes that share")
    # at or below the student's forward: the line only
    quiet = dict(flops, **{"D.kd_losses.0|p3": 0})
    assert [c.status for c in health.cost_checks(quiet, "D")] == [health.INFO]
    one = {"Global": 1000, "D.student": 100, "D.kd_losses.0|p3": 200}
    assert health.cost_checks(one, "D")[1].message.endswith(
        "; it all comes from p3 — a level with fewer positions costs less")
    assert health.flop_text(3.2e9) == "3.2 GFLOP" and health.flop_text(12) == "12 FLOP"


@pytest.mark.parametrize("method, warns", [("acam_kd", True), ("fitnet", False)])
def test_batch_checks_count_the_kd_modules_work_in_the_forward(method, warns):
    """Counted on the doctor's own forward: ACAM-KD's attention over the 16×16 positions of p3 outweighs the
    tiny student (a warning naming p3 and its shape); FitNet's 1×1 aligner does not (the line only)."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    d = Distiller(TinyDetector(width=8), TinyDetector(width=8), [Pair("neck", loss=method)], example_inputs=(x,))
    checks = [c for c in health.batch_checks(d, (x,), torch.zeros(2)) if c.topic == "cost"]
    assert checks[0].status == health.INFO and "KD modules " in checks[0].message
    assert "by level: neck:p3 [2, 8, 16, 16] " in checks[0].message
    assert [c.status for c in checks[1:]] == ([health.WARN] if warns else [])
    if warns:
        assert "neck:p3 [2, 8, 16, 16] does 9" in checks[1].message


def test_teacher_source_of_a_shipped_asset():
    from types import SimpleNamespace

    c = health.teacher_source(SimpleNamespace(teacher=SimpleNamespace(checkpoint="asset:demo_segmentation_teacher")))
    assert c.status == health.INFO and c.message.startswith(
        "weights from model.teacher.checkpoint asset:demo_segmentation_teacher: shipped with densekd, checksum verified (")
    bad = health.teacher_source(SimpleNamespace(teacher=SimpleNamespace(checkpoint="asset:nope")))
    assert bad.status == health.FAIL and bad.message.startswith("model.teacher.checkpoint: ")
    missing = health.teacher_source(SimpleNamespace(teacher=SimpleNamespace(checkpoint="/no/such.pth")))
    assert missing.status == health.FAIL and missing.message == "model.teacher.checkpoint '/no/such.pth' does not exist"


# --------------------------------------------------------------------------- guards: one level dominating
@pytest.fixture
def two_pair_guards():
    """Three levels, one pair each: encoder (pair weight 2), classifier and encoder.0 (the encoder's conv)."""
    torch.manual_seed(0)
    pairs = [Pair("encoder", loss="health_mse", weight=2.0), Pair("classifier", loss="health_mse"),
             Pair("encoder.0", loss="health_mse")]
    d = Distiller(TinySegmenter(4), TinySegmenter(8), pairs, task_loss=lambda out, y: out.mean() * 0,
                  example_inputs=(torch.randn(2, 3, 16, 16),))
    # the engine multiplies every pair's weight by distill.weight (here 0.5) before the Distiller sees it
    for p in d.pairs:
        p.weight *= 0.5
    g = health.TrainingGuards(d, distill_weight=0.5)
    yield g
    g.close()


def test_a_dominating_level_is_named_with_the_pair_weight_that_evens_it(two_pair_guards):
    g = two_pair_guards
    even = {"loss_task": 1.0, "kd/encoder/grad_ratio": 0.1, "kd/classifier/grad_ratio": 0.05,
            "kd/encoder.0/grad_ratio": 0.2}
    assert g.check(1, even) == []  # within 10× of each other: silent
    assert g.check(50, {"loss_task": 1.0}) == []  # rows without gradient ratios: nothing to compare
    new = g.check(100, {**even, "kd/encoder/grad_ratio": 4.2})
    assert new == ["iteration 100: at encoder the KD term's gradient on the student is 33.6× the other levels' "
                   "(KD/task gradient-norm ratio 4.2 vs their median 0.125): one level dominates the distillation; a "
                   "weight of 0.0595 on its pair (distill.pairs[0], now 2) evens it (× distill.weight 0.5)"]
    assert g.warnings[-1]["kind"] == "level_dominance" and g.warnings[-1]["level"] == "encoder"
    assert g.check(200, {**even, "kd/encoder/grad_ratio": 9.0}) == []  # once


def test_a_level_that_shares_its_pair_is_told_to_get_its_own(guards):
    guards.level_pair = {"a": 0, "b": 0, "c": 0}
    guards.modules = {"a": guards.modules["encoder"], "b": guards.modules["encoder"], "c": guards.modules["encoder"]}
    row = {"kd/a/grad_ratio": 5.0, "kd/b/grad_ratio": 0.1, "kd/c/grad_ratio": 0.3}
    new = guards._dominance_warnings(7, row)
    assert new == ["iteration 7: at a the KD term's gradient on the student is 25× the other levels' (KD/task "
                   "gradient-norm ratio 5 vs their median 0.2): one level dominates the distillation; give a its own "
                   "pair with weight 0.08 (× distill.weight 0.5)"]


def test_doctor_warns_when_a_distribution_loss_sees_the_class_scores_through_an_aligner(toy, trained_teacher,
                                                                                        tmp_path, capsys):
    """CWD on the logits through a learnable 1×1 conv cost 20.8 mIoU on the demo (docs/methods.md, "CWD"): the
    doctor says so before training; with align=identity (the official form) it is silent."""
    cfg = seg_config(toy, tmp_path / "o", teacher=trained_teacher, method="cwd")
    rc, out, _ = _doctor(cfg, tmp_path, capsys, "--batches", "1")
    assert ("WARN pair 0: classifier has 3 channels on both sides, the number of classes: if these are the class "
            "scores, cwd sees them through a learnable 1×1 conv 3→3") in out, out
    assert "distill.kwargs.align=identity" in out
    rc, out, _ = _doctor(cfg, tmp_path, capsys, "distill.kwargs={align: identity}", "--batches", "1")
    assert "WARN pair 0:" not in out and "aligner identity" in out
    # a feature loss on the same scores through its 1×1 conv (the library's default) is not warned about
    rc, out, _ = _doctor(seg_config(toy, tmp_path / "o", teacher=trained_teacher), tmp_path, capsys, "--batches", "1")
    assert "WARN pair 0:" not in out


def test_the_engine_gives_the_guards_the_runs_length(toy, tmp_path):
    """The "one mask" check waits for a quarter of the run: the engine hands the guards train.max_iters."""
    from densekd.engine.trainer import Trainer

    tr = Trainer(seg_config(toy, tmp_path / "run", max_iters=7))
    try:
        assert tr.guards is not None and tr.guards.max_iters == 7
    finally:
        tr.close()
