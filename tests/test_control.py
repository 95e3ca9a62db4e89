"""train.control (densekd/engine/control.py): the verdict on known numbers, the warning fires on a KD term that
hurts and stays silent on a healthy run, the twin never changes the distilled student, a killed run resumes the
twin, and `densekd doctor --control N` runs the same probe. Tiny segmenters at 32 px on colour-coded data."""
from __future__ import annotations

import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

import densekd
from densekd.cli import main
from densekd.engine import Trainer
from densekd.engine import control as ctl
from densekd.errors import ConfigError
from densekd.losses import DistillLoss, register_loss
from densekd.losses.registry import _LOSSES


class _Harm(DistillLoss):
    """Test only: ignores the teacher and pushes the student's logits towards class 0 (background) everywhere,
    a KD term that makes the student worse than training without it."""

    def forward(self, s, t, context=None):
        return {"loss_harm": -F.log_softmax(s.float(), dim=1)[:, 0].mean()}


class _Mse(DistillLoss):
    def forward(self, s, t, context=None):
        return {"loss_mse": F.mse_loss(self.align(s), t)}


for _name, _cls in (("control_harm", _Harm), ("control_mse", _Mse)):
    if _name not in _LOSSES:
        register_loss(_name)(_cls)


# --------------------------------------------------------------------------- the verdict (pure)
def test_noise_is_the_standard_error_of_the_paired_batch_differences():
    r = ctl.ControlResult(40, "mIoU", 0.41, 0.63, 256, [(0.40, 0.60), (0.42, 0.66), (0.38, 0.62), (0.44, 0.64)])
    assert r.differences == pytest.approx([-0.20, -0.24, -0.24, -0.20])
    assert r.mean_difference == pytest.approx(-0.22)
    assert r.noise == pytest.approx(math.sqrt(4 * 0.02 ** 2 / 3) / 2)  # std (ddof 1) / sqrt(k)
    assert r.worse
    msg = r.message()
    assert msg.startswith("control after 40 iterations: the distilled student scores 41.00 mIoU on 256 validation "
                          "images, its plain twin (same initial weights and batches, no KD) 63.00; per batch "
                          "-22.00 ± 1.15 (mean ± standard error of the 4 paired batch differences): worse by more")
    # within 2 standard errors: silent
    noisy = ctl.ControlResult(40, "mIoU", 0.60, 0.63, 256, [(0.50, 0.60), (0.70, 0.62), (0.55, 0.66), (0.65, 0.64)])
    assert not noisy.worse and noisy.message().endswith("not worse beyond the measured noise")
    # consistent but tiny: below the 1-point floor, silent
    tiny = ctl.ControlResult(40, "mIoU", 0.625, 0.63, 256, [(0.625, 0.63), (0.624, 0.63), (0.626, 0.63), (0.625, 0.63)])
    assert tiny.mean_difference < -2 * tiny.noise and not tiny.worse
    one = ctl.ControlResult(40, "AP", 0.1, 0.5, 8, [(0.1, 0.5)])
    assert math.isnan(one.noise) and not one.worse and "no verdict" in one.message()
    assert ctl.ControlResult.from_dict(r.as_dict()) == r
    assert ctl.default_control_iters(400) == 40 and ctl.default_control_iters(5) == 1


# --------------------------------------------------------------------------- data, teacher, configs
@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from densekd.data.segmentation import make_toy_segmentation

    root = tmp_path_factory.mktemp("toy")
    make_toy_segmentation(root, "folder", num_images=8, size=(32, 32), num_classes=3)
    return str(root)


def seg_config(root, out, method="control_mse", weight=1.0, teacher=None, **train):
    t = {"arch": "tiny", "width": 8, "num_classes": 3}
    t.update({"checkpoint": teacher} if teacher else {"random_init": True})
    pair = {"student": "classifier"} if method == "control_harm" else {"student": "trunk"}
    return {
        "task": "segmentation", "output_dir": str(out), "seed": 0,
        "model": {"student": {"arch": "tiny", "width": 4, "num_classes": 3}, "teacher": t},
        "data": {"format": "folder", "root": root, "num_classes": 3, "val_split": "val", "crop_size": [32, 32],
                 "scale_range": [1.0, 1.0]},
        "distill": {"method": method, "weight": weight, "pairs": [pair]},
        "train": {"max_iters": 30, "batch_size": 4, "num_workers": 0, "log_every": 10, "checkpoint_every": 0,
                  "eval_every": -1, "control": True, "control_iters": 30,
                  "optimizer": {"type": "adamw", "lr": 0.01}, **train},
        "eval": {"batch_size": 2},
    }


@pytest.fixture(scope="module")
def trained_teacher(toy, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    cfg = seg_config(toy, out, max_iters=40, control=False)
    cfg["model"]["student"] = {"arch": "tiny", "width": 8, "num_classes": 3}
    del cfg["model"]["teacher"], cfg["distill"]
    assert densekd.train(cfg, ["train.eval_every=0"])["mIoU"] > 0.4
    return str(out / "student_final.pth")


def _health(out):
    return json.load(open(os.path.join(out, "health.json")))


# --------------------------------------------------------------------------- fires, stays silent
def test_the_control_warns_when_kd_makes_the_student_worse(toy, tmp_path, capsys):
    out = tmp_path / "harm"
    densekd.train(seg_config(toy, out, method="control_harm", weight=3.0))
    printed = capsys.readouterr().out
    saved = json.load(open(out / "control.json"))
    assert saved["worse"] and saved["iteration"] == 30 and len(saved["per_batch"]) == 4 and saved["images"] == 8
    assert saved["plain"] - saved["distilled"] >= 0.01
    (w,) = [w for w in _health(out)["warnings"] if w["kind"] == "control"]
    assert w["iteration"] == 30 and "KD is making this student worse so far" in w["message"]
    assert f"{100 * saved['distilled']:.2f} mIoU" in w["message"] and f"{100 * saved['plain']:.2f}" in w["message"]
    assert any(line.startswith("WARN control: control after 30 iterations") for line in _health(out)["checks"])
    assert f"health warning: {w['message']}" in printed  # when it is found ...
    assert printed.index("warning(s) during this run") < printed.rindex(w["message"])  # ... and again at the end
    rows = open(out / "log.csv").read().splitlines()
    assert "control/loss_task" in rows[0].split(",")


def test_the_control_is_silent_on_a_healthy_run(toy, trained_teacher, tmp_path, capsys):
    out = tmp_path / "ok"
    densekd.train(seg_config(toy, out, weight=0.05, teacher=trained_teacher))
    saved = json.load(open(out / "control.json"))
    assert not saved["worse"] and any(d != p for d, p in saved["per_batch"])  # two different students
    assert [w for w in _health(out)["warnings"] if w["kind"] == "control"] == []
    assert any(line.startswith("INFO control: control after 30 iterations") and
               line.endswith("not worse beyond the measured noise") for line in _health(out)["checks"])
    assert "health: no warnings" in capsys.readouterr().out


# --------------------------------------------------------------------------- the twin changes nothing
def _final(out):
    return torch.load(os.path.join(out, "student_final.pth"), weights_only=True)


def test_the_twin_never_changes_the_distilled_students_numbers(toy, trained_teacher, tmp_path):
    on, off = tmp_path / "on", tmp_path / "off"
    kw = dict(weight=0.05, teacher=trained_teacher, max_iters=8, eval_every=0)
    densekd.train(seg_config(toy, on, control_iters=4, **kw))
    densekd.train(seg_config(toy, off, control=False, **kw))
    a, b = _final(on), _final(off)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.load(open(on / "metrics.json"))["mIoU"] == json.load(open(off / "metrics.json"))["mIoU"]
    la = [r.split(",") for r in open(on / "log.csv").read().splitlines()]
    lb = [r.split(",") for r in open(off / "log.csv").read().splitlines()]
    col = la[0].index("loss")
    assert [r[col] for r in la[1:]] == [r[lb[0].index("loss")] for r in lb[1:]]
    assert not os.path.exists(off / "control.json")


def test_a_killed_run_resumes_the_twin(toy, trained_teacher, tmp_path, monkeypatch):
    full, cut = tmp_path / "full", tmp_path / "cut"
    kw = dict(weight=0.05, teacher=trained_teacher, max_iters=8, control_iters=6, checkpoint_every=2)
    densekd.train(seg_config(toy, full, **kw))
    real, calls = ctl.ControlTwin.step, []

    def dies_at_the_fourth(self, trainer, *a):
        calls.append(trainer.iteration)
        if len(calls) == 4:
            raise KeyboardInterrupt  # killed after the checkpoint at iteration 2
        return real(self, trainer, *a)

    monkeypatch.setattr(ctl.ControlTwin, "step", dies_at_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        densekd.train(seg_config(toy, cut, **kw))
    monkeypatch.setattr(ctl.ControlTwin, "step", real)
    densekd.train(seg_config(toy, cut, **kw))
    assert json.load(open(full / "control.json")) == json.load(open(cut / "control.json"))
    a, b = _final(full), _final(cut)
    assert all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- switches and refusals
def test_control_switches_and_errors(toy, tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"^train.control_iters: expected an int in \[1, train.max_iters=30\] or "
                                          r"null \(a tenth of the run\), got 31$"):
        Trainer(seg_config(toy, tmp_path / "a", control_iters=31))
    tr = Trainer(seg_config(toy, tmp_path / "b", control_iters=None))
    assert tr.control.iters == 3  # a tenth of 30
    assert any("a plain twin of the student" in line for line in tr.start_checks())
    tr.close()
    cfg = seg_config(toy, tmp_path / "c")
    del cfg["distill"]
    tr = Trainer(cfg)
    assert tr.control is None and any("control: off" in m for m in tr.messages)
    tr.close()
    cfg = seg_config(toy, tmp_path / "d")
    cfg["data"]["val_split"] = "nope"
    with pytest.raises(ConfigError):
        Trainer(cfg)


def test_doctor_control_probe(toy, trained_teacher, tmp_path, capsys):
    import yaml

    path = tmp_path / "harm.yaml"  # a teacher above chance, so that the control is the only thing to warn about
    path.write_text(yaml.safe_dump(seg_config(toy, tmp_path / "o", method="control_harm", weight=3.0, control=False,
                                              teacher=trained_teacher)))
    assert main(["doctor", str(path), "--control", "30"]) == 0  # a warning, not a failure
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("WARN control:"))
    assert "control after 30 iterations" in line and "KD is making this student worse so far" in line
    assert not os.path.exists(tmp_path / "o")  # the probe writes nothing
    # the probe and a run with train.control give the same numbers
    densekd.train(seg_config(toy, tmp_path / "run", method="control_harm", weight=3.0, teacher=trained_teacher))
    saved = json.load(open(tmp_path / "run" / "control.json"))
    assert f"{100 * saved['distilled']:.2f} mIoU" in line and f"{100 * saved['plain']:.2f}" in line
    capsys.readouterr()
    assert main(["doctor", str(path), "--control", "31"]) == 2
    assert capsys.readouterr().err.strip() == ("densekd doctor: error: doctor --control: expected N between 1 and "
                                               "train.max_iters=30, got 31")
    assert main(["doctor", str(path), "--control", "-1"]) == 2
    assert "doctor --control: expected a positive number of iterations, got -1" in capsys.readouterr().err


def test_the_control_on_detection(make_config, teacher_ckpt, tmp_path):
    """A torchvision detector computes its own losses: the twin trains through them and is scored by AP per batch."""
    cfg = make_config(tmp_path / "det", teacher=teacher_ckpt, method="test_mse", max_iters=2, control=True,
                      control_iters=1)
    cfg["eval"] = {"batch_size": 1}
    densekd.train(cfg)
    saved = json.load(open(tmp_path / "det" / "control.json"))
    assert saved["metric"] == "AP" and saved["iteration"] == 1 and len(saved["per_batch"]) == 4
    assert saved["images"] == 4 and all(0 <= x <= 1 for pair in saved["per_batch"] for x in pair)
