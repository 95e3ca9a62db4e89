"""densekd compare: the pure aggregation on hand-made numbers, run bookkeeping, and tiny end-to-end runs
(detection through the Python API, segmentation through the CLI)."""
from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings

import pytest
import torch

from densekd.tools import compare as cmp
from densekd.tools.compare import runs as cmp_runs
from densekd.cli import main
from densekd.errors import ConfigError


# --------------------------------------------------------------------------- pure functions
RESULTS = {
    "acam_kd": [{"iteration": 10, "AP": 0.30, "AP50": 0.5}, {"iteration": 10, "AP": 0.32, "AP50": 0.6},
                {"iteration": 10, "AP": 0.34, "AP50": 0.7}],
    "baseline": [{"iteration": 10, "AP": 0.25, "AP50": float("nan"), "IoU/x": 1.0}],
    "fitnet": [{"iteration": 10, "AP": 0.1}, {"iteration": 10, "AP": 0.2, "AP50": 0.4}],
}


def test_aggregate_mean_and_sample_std_on_known_numbers():
    rows = cmp.aggregate(RESULTS, ["baseline", "fitnet", "acam_kd"])
    assert [r.method for r in rows] == ["baseline", "fitnet", "acam_kd"]  # --methods order
    by = {r.method: r for r in rows}
    assert list(by["acam_kd"].stats) == ["AP", "AP50"]  # no iteration, no per-class IoU/x
    mean, std, n = by["acam_kd"].stats["AP"]
    assert (n, round(mean, 12), round(std, 12)) == (3, 0.32, 0.02)  # sample std: sqrt(0.0008 / 2)
    mean, std, n = by["acam_kd"].stats["AP50"]
    assert n == 3 and math.isclose(mean, 0.6) and math.isclose(std, 0.1)
    mean, std, n = by["fitnet"].stats["AP"]
    assert n == 2 and math.isclose(mean, 0.15) and math.isclose(std, math.sqrt(0.005))
    assert by["fitnet"].stats["AP50"] == (0.4, by["fitnet"].stats["AP50"][1], 1)  # missing in one run
    assert math.isnan(by["fitnet"].stats["AP50"][1])
    assert by["baseline"].n == 1 and math.isnan(by["baseline"].stats["AP"][1])
    assert by["baseline"].stats["AP50"][2] == 0 and math.isnan(by["baseline"].stats["AP50"][0])  # NaN dropped


def test_aggregate_explicit_metrics_and_missing_method():
    rows = cmp.aggregate(RESULTS, metrics=["AP50"])
    assert [r.method for r in rows] == list(RESULTS) and all(list(r.stats) == ["AP50"] for r in rows)
    with pytest.raises(ValueError, match=r"no results for method\(s\) \['mgd'\]"):
        cmp.aggregate(RESULTS, ["acam_kd", "mgd"])


def test_markdown_and_csv_tables():
    rows = cmp.aggregate(RESULTS, ["acam_kd", "baseline"])
    md = cmp.format_markdown(rows)
    lines = md.splitlines()
    assert lines[0] == "| method | n | AP | AP50 |"
    assert lines[2] == "| acam_kd | 3 | 32.00 ± 2.00 | 60.00 ± 10.00 |"
    assert lines[3] == "| baseline | 1 | 25.00 | — |"
    assert "ddof = 1" in md
    table = list(csv.DictReader(io.StringIO(cmp.format_csv(rows))))
    assert [r["method"] for r in table] == ["acam_kd", "baseline"]
    assert math.isclose(float(table[0]["AP_mean"]), 0.32) and math.isclose(float(table[0]["AP_std"]), 0.02)
    assert table[0]["AP_n"] == "3" and table[1]["AP_std"] == "nan"
    assert cmp.primary_metric(rows) == "AP"


def test_bar_chart_writes_png(tmp_path):
    rows = cmp.aggregate(RESULTS)
    path = cmp.bar_chart(rows, "AP", str(tmp_path / "c.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_one_number_format_and_one_table_writer():
    assert cmp.fmt(0.6512, 0.0123, scale=100) == "65.12 ± 1.23"
    assert cmp.fmt(0.0512, 0.01, scale=100, sign=True) == "+5.12 ± 1.00"
    assert cmp.fmt(-1.5, sign=True) == "-1.50" and cmp.fmt(44.4, 3.6, digits=0) == "44 ± 4"
    assert cmp.fmt(float("nan"), 1.0) == "—" and cmp.fmt(2.0, float("nan")) == "2.00"
    assert cmp.markdown_table(["a", "bb"], [["1", "22"]]) == "| a | bb |\n|---|---|\n| 1 | 22 |"
    assert cmp.markdown_table(["a", "bb"], [["1", "222"]], align=True) == "| a | bb  |\n| - | --- |\n| 1 | 222 |"
    assert cmp.mean_std([1.0, None, 3.0, float("nan")]) == (2.0, math.sqrt(2.0), 2)
    assert cmp.mean_std([4.0])[:2] == (4.0, pytest.approx(float("nan"), nan_ok=True)) and cmp.mean_std([])[2] == 0


@pytest.mark.parametrize("name", ["baseline", "student", "plain"])
def test_every_name_of_the_plain_student_trains_it_and_is_the_baseline(name):
    assert cmp.PLAIN_STUDENT == "baseline" and cmp.is_plain(name)
    cmp.check_methods([name, "fitnet"])  # accepted where users type methods
    assert cmp.method_overrides({"distill": {"method": "acam_kd"}}, name) == ["distill=null"]
    assert cmp.baseline_of(["fitnet", name]) == name  # its runs keep the name typed
    with pytest.raises(ConfigError, match=rf"--kwargs '{name}.x=1': '{name}' is not one of the distillation"):
        cmp.parse_method_kwargs([f"{name}.x=1"], [name, "fitnet"])


def test_run_overrides():
    raw = {"distill": {"method": "acam_kd", "kwargs": {"num_masks": 6}}}
    ov = cmp.run_overrides(raw, "acam_kd", 1, "o", ["train.max_iters=5"])
    assert ov == ["train.max_iters=5", "seed=1", f"output_dir={os.path.join('o', 'acam_kd', 'seed1')}",
                  "distill.method=acam_kd"]  # own kwargs kept
    assert cmp.run_overrides(raw, "fitnet", 0, "o")[-2:] == ["distill.method=fitnet", "distill.kwargs={}"]
    assert cmp.run_overrides(raw, "baseline", 0, "o")[-1] == "distill=null"
    assert cmp.split_methods(["a", "train.max_iters=2", "b"], ["x=1"]) == (["a", "b"], ["x=1", "train.max_iters=2"])


def test_method_kwargs():
    kw = cmp.parse_method_kwargs(["maskd.fit_steps=200", "maskd.masks=spatial", "samkd.scales=[1, 2]"],
                                 ["baseline", "maskd", "samkd"])
    assert kw == {"maskd": {"fit_steps": 200, "masks": "spatial"}, "samkd": {"scales": [1, 2]}}
    ov = cmp.method_overrides({"distill": {"method": "acam_kd"}}, "maskd", kw["maskd"])
    assert ov == ["distill.method=maskd", "distill.kwargs={}", "distill.kwargs.fit_steps=200",
                  'distill.kwargs.masks="spatial"']
    from densekd.config import apply_overrides

    assert apply_overrides({}, ov[2:])["distill"]["kwargs"] == {"fit_steps": 200, "masks": "spatial"}
    with pytest.raises(ConfigError, match=r"--kwargs 'maskd=3': expected METHOD.KEY=VALUE"):
        cmp.parse_method_kwargs(["maskd=3"], ["maskd"])
    with pytest.raises(ConfigError, match=r"--kwargs 'fgd.x=1': 'fgd' is not one of the distillation --methods \(maskd\)"):
        cmp.parse_method_kwargs(["fgd.x=1"], ["baseline", "maskd"])


def test_paired_gains_on_known_numbers():
    results = {
        "baseline": [{"seed": 0, "mIoU": 0.70}, {"seed": 1, "mIoU": 0.60}, {"seed": 2, "mIoU": 0.65}],
        "acam_kd": [{"seed": 2, "mIoU": 0.68}, {"seed": 0, "mIoU": 0.73}, {"seed": 1, "mIoU": 0.62}],  # any order
        "fitnet": [{"seed": 0, "mIoU": 0.71}, {"seed": 1, "mIoU": 0.59}, {"seed": 2, "mIoU": 0.66}],
        "mgd": [{"seed": 0, "mIoU": 0.72}],  # one seed: no spread, no verdict
    }
    gains = {g.method: g for g in cmp.paired_gains(results, "baseline", "mIoU")}
    assert set(gains) == {"acam_kd", "fitnet", "mgd"}
    g = gains["acam_kd"]  # per seed +0.03, +0.02, +0.03: mean 0.02667, sample std 0.005774
    assert g.per_seed == pytest.approx({0: 0.03, 1: 0.02, 2: 0.03}) and g.n == 3
    assert g.mean == pytest.approx(0.08 / 3) and g.std == pytest.approx(math.sqrt(1 / 3) * 0.01)
    assert g.beyond_2std and g.verdict() == "yes"
    f = gains["fitnet"]  # +0.01, -0.01, +0.01: mean 0.00333 < 2 × 0.01155
    assert not f.beyond_2std and f.verdict() == "no"
    assert gains["mgd"].n == 1 and gains["mgd"].verdict() == "— (1 seed)" and not gains["mgd"].beyond_2std
    with pytest.raises(ValueError, match="no results for the baseline 'student'"):
        cmp.paired_gains(results, "student", "mIoU")
    rows = cmp.aggregate(results, ["baseline", "acam_kd", "fitnet"], metrics=["mIoU"])
    md = cmp.format_markdown(rows, gains=cmp.gains_for(rows, results)).splitlines()
    assert md[0] == "| method | n | mIoU | mIoU gain (paired) | > 2 std |"
    assert md[2] == "| baseline | 3 | 65.00 ± 5.00 | — | — |"
    assert md[3] == "| acam_kd | 3 | 67.67 ± 5.51 | +2.67 ± 0.58 | yes |"
    assert md[4] == "| fitnet | 3 | 65.33 ± 6.03 | +0.33 ± 1.15 | no |"
    assert cmp.gains_for(rows[1:], results) is None  # no baseline among the methods


def test_run_metadata_is_not_aggregated_and_train_seconds_is_not_scaled():
    results = {"a": [{"iteration": 5, "seed": 0, "train_iterations": 5, "mIoU": 0.5, "train_seconds": 12.0},
                     {"iteration": 5, "seed": 1, "train_iterations": 5, "mIoU": 0.7, "train_seconds": 14.0}]}
    rows = cmp.aggregate(results)
    assert list(rows[0].stats) == ["mIoU", "train_seconds"]
    assert cmp.format_markdown(rows).splitlines()[2] == "| a | 2 | 60.00 ± 14.14 | 13 ± 1 |"


def test_method_set_overrides():
    ms = cmp.parse_method_set(["hinton_kd:distill.pairs=[{student: classifier}]", "hinton_kd:distill.weight=2"],
                              ["baseline", "hinton_kd"])
    assert ms == {"hinton_kd": ["distill.pairs=[{student: classifier}]", "distill.weight=2"]}
    ov = cmp.run_overrides({}, "hinton_kd", 0, "o", ["train.max_iters=5"], method_set=ms["hinton_kd"])
    assert ov[:3] == ["train.max_iters=5", "distill.pairs=[{student: classifier}]", "distill.weight=2"]
    with pytest.raises(ConfigError, match=r"--set 'fitnet=1': expected METHOD:KEY=VALUE"):
        cmp.parse_method_set(["fitnet=1"], ["fitnet"])
    with pytest.raises(ConfigError, match=r"--set 'mgd:distill.weight=1': 'mgd' is not one of the --methods"):
        cmp.parse_method_set(["mgd:distill.weight=1"], ["baseline", "fitnet"])


def test_bad_methods_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"--methods: unknown loss 'acam_kdd'; did you mean acam_kd.* \(or one of "
                                          r"baseline, student, plain\)$"):
        cmp.check_methods(["baseline", "acam_kdd"])
    with pytest.raises(ConfigError, match=r"--methods: 'fitnet' is given twice"):
        cmp.check_methods(["fitnet", "fitnet"])
    with pytest.raises(ConfigError, match="--methods: expected at least one method"):
        cmp.check_methods([])


# --------------------------------------------------------------------------- end to end
def test_detection_compare_end_to_end_and_resume(make_config, teacher_ckpt, tmp_path, monkeypatch):
    cfg = make_config(tmp_path / "unused", teacher=teacher_ckpt, max_iters=1, eval_every=0)
    out = str(tmp_path / "cmp")
    logs: list[str] = []
    rows = cmp.compare(cfg, ["baseline", "test_mse"], seeds=[3], out=out, log=logs.append)
    assert [r.method for r in rows] == ["baseline", "test_mse"] and all(r.n == 1 for r in rows)
    assert "AP" in rows[0].stats and cmp.primary_metric(rows) == "AP"
    for m in ("baseline", "test_mse"):
        d = cmp.run_dir(out, m, 3)
        saved = json.load(open(os.path.join(d, "metrics.json")))
        assert saved["iteration"] == 1
        assert json.load(open(os.path.join(out, "runs.json")))[m] == [{"seed": 3, **saved}]
    import yaml

    assert yaml.safe_load(open(os.path.join(cmp.run_dir(out, "baseline", 3), "config.yaml")))["distill"] is None
    run_cfg = yaml.safe_load(open(os.path.join(cmp.run_dir(out, "test_mse", 3), "config.yaml")))
    assert run_cfg["distill"]["method"] == "test_mse" and run_cfg["seed"] == 3
    md = open(os.path.join(out, "compare.md")).read()
    assert "| baseline | 1 |" in md and "| test_mse | 1 |" in md
    assert md.index("| baseline") < md.index("| test_mse")
    assert os.path.isfile(os.path.join(out, "compare.csv")) and os.path.isfile(os.path.join(out, "compare.png"))

    # rerun: finished runs are read back, an "interrupted" one (no metrics.json, a checkpoint) resumes
    os.remove(os.path.join(cmp.run_dir(out, "test_mse", 3), "metrics.json"))
    calls = []
    import densekd.engine as eng

    real = eng.train
    monkeypatch.setattr(eng, "train", lambda c, o: calls.append(o) or real(c, o))
    logs.clear()
    cmp.compare(cfg, ["baseline", "test_mse"], seeds=[3], out=out, log=logs.append)
    assert len(calls) == 1 and f"output_dir={cmp.run_dir(out, 'test_mse', 3)}" in calls[0]
    assert sum("finished earlier" in ln for ln in logs) == 1 and any("resuming" in ln for ln in logs)


@pytest.fixture(scope="module")
def toy_seg(tmp_path_factory):
    from densekd.data.segmentation import make_toy_segmentation

    root = tmp_path_factory.mktemp("cs")
    make_toy_segmentation(root, "cityscapes", num_images=3, size=(48, 48), num_classes=3)
    return root


def seg_config(root, out):
    tiny = {"layers": [1, 1, 1, 1], "num_classes": 19}
    return {
        "task": "segmentation", "output_dir": str(out), "seed": 0,
        "model": {"student": {"arch": "pspnet", "backbone": "resnet18", "decoder_channels": 16, **tiny},
                  "teacher": {"arch": "deeplabv3", "backbone": "resnet18", "decoder_channels": 24, **tiny,
                              "random_init": True}},
        "data": {"format": "cityscapes", "root": str(root), "crop_size": [32, 32]},
        "distill": {"method": "acam_kd", "kwargs": {"num_masks": 4}},
        "train": {"max_iters": 1, "batch_size": 2, "num_workers": 0, "log_every": 1, "checkpoint_every": 0,
                  "eval_every": 0},
    }


def test_segmentation_compare_via_cli(toy_seg, tmp_path, capsys):
    import yaml

    path = tmp_path / "seg.yaml"
    path.write_text(yaml.safe_dump(seg_config(toy_seg, tmp_path / "o")))
    out = tmp_path / "cmp"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random teacher
        rc = main(["compare", str(path), "--seeds", "1", "--out", str(out), "--kwargs", "samkd.scales=[1, 2]",
                   "--methods", "hinton_kd", "samkd", "--set", "hinton_kd:distill.weight=0.5", "train.max_iters=1"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| hinton_kd | 1 |" in printed and "mIoU" in printed
    table = list(csv.DictReader(open(out / "compare.csv")))
    assert [r["method"] for r in table] == ["hinton_kd", "samkd"] and "mIoU_mean" in table[0]
    assert (out / "compare.png").is_file()
    cfg = yaml.safe_load(open(out / "hinton_kd" / "seed0" / "config.yaml"))
    assert cfg["distill"]["kwargs"] == {}  # acam_kd's kwargs are not handed to another method
    assert cfg["distill"]["weight"] == 0.5 and cfg["train"]["max_iters"] == 1  # --set, then the plain override
    assert yaml.safe_load(open(out / "samkd" / "seed0" / "config.yaml"))["distill"]["weight"] == 1.0
    cfg = yaml.safe_load(open(out / "samkd" / "seed0" / "config.yaml"))
    assert cfg["distill"]["kwargs"] == {"scales": [1, 2]}  # --kwargs reach their method only


def test_compare_plan_in_the_config(toy_seg, tmp_path, capsys):
    """A config's compare: section is the whole plan; the command line replaces methods/seeds and adds --set."""
    import yaml

    conf = seg_config(toy_seg, tmp_path / "o")
    conf["compare"] = {"methods": ["baseline", "hinton_kd"], "seeds": 1,
                       "set": {"hinton_kd": ["distill.weight=0.25", "train.max_iters=2"]}}
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(conf))
    out = tmp_path / "cmp"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random teacher
        assert main(["compare", str(path), "train.max_iters=1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| baseline | 1 |" in printed and "| hinton_kd | 1 |" in printed and "mIoU gain (paired)" in printed
    hk = yaml.safe_load(open(out / "hinton_kd" / "seed0" / "config.yaml"))
    assert hk["distill"]["weight"] == 0.25 and hk["train"]["max_iters"] == 2  # a method's own setting wins
    assert yaml.safe_load(open(out / "baseline" / "seed0" / "config.yaml"))["train"]["max_iters"] == 1
    conf["compare"] = {"methods": ["baseline"], "set": {"mgd": ["distill.weight=1"]}}
    path.write_text(yaml.safe_dump(conf))
    assert main(["compare", str(path), "--out", str(out)]) == 2
    assert "compare.set: ['mgd'] are not among compare.methods ['baseline']" in capsys.readouterr().err
    del conf["compare"]
    path.write_text(yaml.safe_dump(conf))
    assert main(["compare", str(path), "--out", str(out)]) == 2
    assert "--methods: expected at least one method name (or a compare.methods list" in capsys.readouterr().err


def test_cli_unknown_method_exits_2(tmp_path, capsys):
    rc = main(["compare", "nonexistent.yaml", "--methods", "nope"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("densekd compare: error: --methods: unknown loss 'nope'") and "\n" not in err


# --------------------------------------------------------------------------- every method, both tasks
def test_every_registered_method_runs_on_both_tasks_or_fails_clearly():
    """One Distiller step per method with the task's default pairs; the documented exceptions fail with one
    ConfigError line (fgd: detection only; hinton_kd, cirkd: segmentation only)."""
    import warnings as w

    from densekd import Distiller, available_losses
    from densekd.config import from_dict
    from densekd.models.detection import build_detector
    from densekd.tasks import get_task

    det, seg = get_task("detection"), get_task("segmentation")
    dm = from_dict(det.model_config_cls, {"num_classes": 2, "min_size": 32, "max_size": 32,
                                          "student": {"arch": "retinanet", "backbone": "resnet18"},
                                          "teacher": {"arch": "retinanet", "backbone": "resnet18"}}, "model")
    tiny = {"layers": [1, 1, 1, 1], "num_classes": 3}
    sm = from_dict(seg.model_config_cls, {"student": {"arch": "pspnet", "decoder_channels": 16, **tiny},
                                          "teacher": {"arch": "deeplabv3", "decoder_channels": 24, **tiny,
                                                      "random_init": True}}, "model")
    torch.manual_seed(0)
    ds, dt = (build_detector("retinanet", "resnet18", num_classes=2, min_size=32, max_size=32) for _ in range(2))
    with w.catch_warnings():
        w.simplefilter("ignore")
        ss, st = seg.build_model(sm, "student"), seg.build_model(sm, "teacher")
    imgs = [torch.rand(3, 32, 32) for _ in range(2)]
    boxes = [{"boxes": torch.tensor([[4.0, 4.0, 20.0, 20.0]]), "labels": torch.tensor([1])} for _ in range(2)]
    x, y = torch.rand(2, 3, 16, 16), torch.randint(0, 3, (2, 16, 16))
    expected_fail = {("fgd", "segmentation"): "needs ground-truth boxes",
                     ("hinton_kd", "detection"): "runs on segmentation only",
                     ("cirkd", "detection"): "runs on segmentation only"}
    methods = [m for m in available_losses() if not m.startswith(("test_", "_"))]  # other tests register these
    assert {"acam_kd", "samkd", "maskd", "fgd", "hinton_kd", "cirkd"} <= set(methods)
    for m in methods:
        for task, mc, s, t, inp, tgt in [(det, dm, ds, dt, (imgs,), boxes), (seg, sm, ss, st, (x,), y)]:
            if (m, task.name) in expected_fail:
                with pytest.raises(ConfigError, match=f"distill.method: {m} .*{expected_fail[(m, task.name)]}"):
                    task.default_pairs(mc, m, {})
                continue
            pairs = task.default_pairs(mc, m, {})
            if m == "freekd":  # 3 wavelet levels need maps >= 5 px; these are 1–4 px: one clear line at the
                with pytest.raises(ValueError, match="too small for levels=3"):  # first step (larger maps:
                    with w.catch_warnings():  # test_losses_freekd.py)
                        w.simplefilter("ignore")
                        Distiller(s, t, pairs, task_loss=task.task_loss(), example_inputs=inp)(*inp, targets=tgt)
                continue
            with w.catch_warnings():
                w.simplefilter("ignore")  # maskd's "never fitted" warning (fitting is the engine's job)
                d = Distiller(s, t, pairs, task_loss=task.task_loss(), example_inputs=inp)
                out = d(*inp, targets=tgt)
            kd = [k for k in out if k.startswith("kd/")]
            assert kd and all(torch.isfinite(out[k]) for k in kd), (m, task.name)
            if m == "samkd":
                assert any(k.endswith("loss_logit") for k in kd), task.name
            if task.name == "segmentation" and m in ("acam_kd", "maskd", "acam_kd_spatial"):
                assert next(iter(d.kd_losses.values())).num_masks == 3  # M = number of classes


def test_method_that_cannot_run_on_the_task_fails_before_any_run(toy_seg, tmp_path):
    out = tmp_path / "cmp"
    with pytest.raises(ConfigError, match="distill.method: fgd needs ground-truth boxes"):
        cmp.compare(seg_config(toy_seg, tmp_path / "o"), ["baseline", "fgd"], seeds=1, out=str(out))
    assert not (out / "baseline").exists()  # nothing was trained


def test_samkd_detection_pairs_need_dense_logits():
    from densekd.config import from_dict
    from densekd.tasks import get_task

    det = get_task("detection")
    frcnn = from_dict(det.model_config_cls, {"student": {"arch": "faster_rcnn"}, "teacher": {"arch": "faster_rcnn"}},
                      "model")
    with pytest.raises(ConfigError, match="samkd's logit term needs per-level dense classification logits, which "
                                          "faster_rcnn has not .*use_logits=false"):
        det.default_pairs(frcnn, "samkd", {})
    (pair,) = det.default_pairs(frcnn, "samkd", {"use_logits": False})
    assert pair.aux == {} and pair.kwargs == {"use_logits": False}
    fcos = from_dict(det.model_config_cls, {"student": {"arch": "fcos"}}, "model")
    (pair,) = det.default_pairs(fcos, "samkd", {})
    assert pair.aux == {"logits": ("head.classification_head.cls_logits",) * 2}


def test_parallel_jobs_give_the_same_runs_as_one_at_a_time(toy_seg, tmp_path, capsys):
    """``--jobs 2``: runs train in two spawned workers (1 torch thread each here), each run's console output in its
    own console.log; the metrics are those of the same runs trained one after the other with 1 thread."""
    conf = seg_config(toy_seg, tmp_path / "o")
    conf["train"]["max_iters"] = 2
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # random teacher
            _, one = cmp.compare_runs(conf, ["baseline", "fitnet"], 2, str(tmp_path / "one"), log=lambda *_: None)
            lines: list[str] = []
            _, two = cmp.compare_runs(conf, ["baseline", "fitnet"], 2, str(tmp_path / "two"), log=lines.append, jobs=2)
    finally:
        torch.set_num_threads(threads)
    def metrics(runs):
        return {m: [{k: v for k, v in r.items() if k != "train_seconds"} for r in rs] for m, rs in runs.items()}

    assert metrics(one) == metrics(two)  # everything but the wall time
    assert any("4 run(s) in 2 parallel worker(s), 1 torch thread(s) each" in x for x in lines)
    done = [x for x in lines if ": finished (" in x]  # each finished run says how many are done and what is left
    assert len(done) == 4 and "1/4 run(s) done in " in done[0] and "left at this pace" in done[0]
    assert "4/4 run(s) done in " in done[-1] and "left" not in done[-1]

    assert (tmp_path / "two" / "fitnet" / "seed1" / "console.log").is_file()
    with pytest.raises(ConfigError, match=r"^--jobs: expected a positive number of parallel runs, got 0$"):
        cmp.compare_runs(conf, ["baseline"], 1, str(tmp_path / "x"), jobs=0)


def test_progress_text():
    assert cmp_runs.progress_text(1, 4, 90) == "1/4 run(s) done in 1:30, about 4:30 left at this pace"
    assert cmp_runs.progress_text(4, 4, 3725) == "4/4 run(s) done in 1:02:05"
