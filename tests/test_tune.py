"""densekd compare --tune: grids and the budget, the choice on the tune split (a stub metric), the split
guards (a tuning run is never scored on the table's data), resume and folder keys, and a real tiny run."""
from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings

import pytest
import yaml

import densekd.engine as eng
from densekd.tools.compare import tune as tn
from densekd.cli import main
from densekd.errors import ConfigError


# --------------------------------------------------------------------------- pure: grids, budget, choice
def test_settings_and_grid_expansion():
    grid = tn.expand_grid({"distill.weight": [0.1, 1], "distill.kwargs.tau": [1, "x"]})
    assert [s.as_dict() for s in grid] == [{"distill.weight": 0.1, "distill.kwargs.tau": 1},
                                           {"distill.weight": 0.1, "distill.kwargs.tau": "x"},
                                           {"distill.weight": 1, "distill.kwargs.tau": 1},
                                           {"distill.weight": 1, "distill.kwargs.tau": "x"}]
    s = grid[1]
    assert s.label == "distill.weight=0.1, distill.kwargs.tau=x"
    assert s.overrides() == ["distill.weight=0.1", 'distill.kwargs.tau="x"']
    assert s.folder == "distill.weight=0.1,distill.kwargs.tau=x"
    assert tn.Setting.of({"distill.pairs": [{"student": "classifier"}]}).folder == \
        "distill.pairs=_student_classifier_"
    assert tn.expand_grid({}) == [tn.Setting()] and tn.Setting().label == "—" and tn.Setting().folder == ""


def test_parse_tune_items_and_its_errors():
    common, own = tn.parse_tune_items(["distill.weight=[0.1, 1, 10]", "cwd:distill.weight=[0.01, 0.1, 1]"],
                                      ["baseline", "fitnet", "cwd"])
    assert common == {"distill.weight": [0.1, 1, 10]} and own == {"cwd": {"distill.weight": [0.01, 0.1, 1]}}
    bad = [("distill.weight=0.1", r"--tune 'distill.weight=0.1': expected a non-empty YAML list of values after '='"),
           ("distill.weight=[]", "expected a non-empty YAML list"),
           ("distill.weight", r"expected KEY=\[v1, v2, ...\] or METHOD:KEY=\[v1, v2, ...\]"),
           (":distill.weight=[1]", r"expected KEY=\[v1, v2, ...\]"),
           ("distill.weight=[1", "the value is not valid YAML"),
           ("mgd:distill.weight=[1]", r"'mgd' is not one of the distillation --methods \(fitnet, cwd\)"),
           ("baseline:train.max_iters=[1]", "'baseline' is not one of the distillation --methods")]
    for item, msg in bad:
        with pytest.raises(ConfigError, match=msg):
            tn.parse_tune_items([item], ["baseline", "fitnet", "cwd"])
    with pytest.raises(ConfigError, match="distill.weight is given twice for cwd"):
        tn.parse_tune_items(["cwd:distill.weight=[1]", "cwd:distill.weight=[2]"], ["cwd"])


def test_resolve_grids_and_the_equal_budget():
    grids = tn.resolve_grids(["baseline", "fitnet", "cwd"], {"distill.weight": [0.1, 1, 10]},
                             {"cwd": {"distill.weight": [0.01, 0.1, 1]}})
    assert [s.as_dict() for s in grids["cwd"]] == [{"distill.weight": v} for v in (0.01, 0.1, 1)]
    assert grids["baseline"] == [tn.Setting()]  # nothing of the grid applies to the plain student
    assert tn.budget_of(grids, 2) == 6
    # a key outside distill is tuned for the plain student too
    grids = tn.resolve_grids(["baseline", "fitnet"], {"distill.weight": [1, 2], "train.optimizer.lr": [0.1, 0.2]}, {})
    assert [s.as_dict() for s in grids["baseline"]] == [{"train.optimizer.lr": 0.1}, {"train.optimizer.lr": 0.2}]
    assert len(grids["fitnet"]) == 4
    with pytest.raises(ConfigError, match=r"^--tune: the budget \(settings × tune seeds\) must be equal for every "
                                          r"method, got fitnet 3 × 2 = 6, cwd 2 × 2 = 4; give every grid as many"):
        tn.budget_of(tn.resolve_grids(["fitnet", "cwd"], {"distill.weight": [0.1, 1, 10]},
                                      {"cwd": {"distill.weight": [0.1, 1]}}), 2)
    with pytest.raises(ConfigError, match=r"^--tune: fitnet has no grid; give --tune KEY=\[...\] for every method"):
        tn.resolve_grids(["fitnet", "cwd"], {}, {"cwd": {"distill.weight": [1]}})
    with pytest.raises(ConfigError, match=r"compare.tune.per_method.baseline: the plain student has no distillation"):
        tn.resolve_grids(["baseline", "fitnet"], {"distill.weight": [1]}, {"baseline": {"train.max_iters": [1]}})
    with pytest.raises(ConfigError, match=r"compare.tune.per_method: \['mgd'\] are not among the methods"):
        tn.resolve_grids(["fitnet"], {"distill.weight": [1]}, {"mgd": {"distill.weight": [1]}})
    with pytest.raises(ConfigError, match="no distillation method among the methods"):
        tn.budget_of(tn.resolve_grids(["baseline"], {"distill.weight": [1]}, {}), 2)
    with pytest.raises(ConfigError, match="two settings of fitnet share the run folder"):
        tn.resolve_grids(["fitnet"], {"distill.pairs": [[{"s": "a"}], [{"s?": "a"}]]}, {})


def _sc(mean_runs, failed=None):
    return tn.score("m", tn.Setting(), [{"seed": i, "mIoU": v} for i, v in enumerate(mean_runs)], failed or {}, "mIoU")


def test_choose_best_mean_ties_first_and_failures_cannot_win():
    scores = [_sc([0.5, 0.7]), _sc([0.7, 0.5]), _sc([0.9], {1: "non-finite loss"}), _sc([0.95]), _sc([0.55, 0.6])]
    assert scores[0].mean == pytest.approx(0.6) and scores[0].std == pytest.approx(math.sqrt(0.02))
    assert tn.choose(scores, 2) == 0  # 0 and 1 tie at 0.6: the first in grid order; 2 failed, 3 is incomplete
    assert tn.choose(scores + [_sc([0.61, 0.61])], 2) == 5
    assert tn.choose([_sc([0.9], {1: "x"})], 2) is None
    settings = tn.expand_grid({"distill.weight": [0.1, 1, 10]})
    assert tn.edge_note(settings, 2).startswith("the highest value of the grid")
    assert tn.edge_note(settings, 0).startswith("the lowest value") and tn.edge_note(settings, 1) == ""
    assert tn.edge_note(settings[:2], 1) == ""  # two values: every choice is an edge; nothing to say


# --------------------------------------------------------------------------- a stub engine: the choice
@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """Folder layout with train, val and dev splits (3 classes, 32 px, 4 images each)."""
    from densekd.data.segmentation import make_toy_segmentation

    root = tmp_path_factory.mktemp("toy")
    make_toy_segmentation(root, "folder", splits=("train", "val", "dev"), num_images=4, size=(32, 32), num_classes=3)
    return str(root)


def seg_config(root, out, **train):
    return {
        "task": "segmentation", "output_dir": str(out), "seed": 0,
        "model": {"student": {"arch": "tiny", "width": 4, "num_classes": 3},
                  "teacher": {"arch": "tiny", "width": 8, "num_classes": 3, "random_init": True}},
        "data": {"format": "folder", "root": root, "num_classes": 3, "val_split": "val", "crop_size": [32, 32],
                 "scale_range": [1.0, 1.0]},
        "distill": {"method": "test_mse", "weight": 1.0, "pairs": [{"student": "trunk"}]},
        "train": {"max_iters": 1, "batch_size": 2, "num_workers": 0, "log_every": 1, "checkpoint_every": 0,
                  "eval_every": 0, **train},
        "eval": {"batch_size": 2},
    }


# dev and val disagree on purpose: on dev weight 1 is best, on val weight 10 would be
DEV = {0.1: 0.50, 1.0: 0.70, 10.0: 0.60}
VAL = {0.1: 0.40, 1.0: 0.45, 10.0: 0.90}


class StubEngine:
    """Stands in for densekd.engine.train: writes config.yaml and a metrics.json whose mIoU depends on the
    split scored, the method's weight and the seed; records every call; can fail like a diverging run."""

    def __init__(self, fail_weight=None):
        self.calls, self.fail_weight = [], fail_weight

    def __call__(self, config, overrides):
        from densekd.config import load_config, to_dict

        cfg = load_config(config, overrides)
        os.makedirs(cfg.output_dir, exist_ok=True)
        with open(os.path.join(cfg.output_dir, "config.yaml"), "w") as f:
            yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
        w = None if cfg.distill is None else cfg.distill.weight
        split = cfg.data.val_split
        self.calls.append((cfg.distill.method if cfg.distill else "baseline", w, split, cfg.seed))
        if w is not None and w == self.fail_weight:
            raise FloatingPointError(f"non-finite loss at iteration 3: loss=nan (weight {w})")
        table = DEV if split == "dev" else VAL
        miou = 0.3 if w is None else table[w]
        miou += 0.01 * cfg.seed
        metrics = {"iteration": 1, "mIoU": miou, "pixel_acc": 0.9, "train_seconds": 1.0, "train_iterations": 1}
        with open(os.path.join(cfg.output_dir, "metrics.json"), "w") as f:
            json.dump(metrics, f)
        return metrics


def test_the_winner_is_the_tune_splits_best_mean_and_the_table_uses_it(toy, tmp_path, monkeypatch):
    stub = StubEngine()
    monkeypatch.setattr(eng, "train", stub)
    out = str(tmp_path / "t")
    res = tn.tune_compare(seg_config(toy, tmp_path / "o"), ["baseline", "test_mse"], {"distill.weight": [0.1, 1, 10]},
                          split="dev", tune_seeds=2, seeds=3, out=out, log=lambda s: None)
    assert res.chosen_setting("test_mse").as_dict() == {"distill.weight": 1}  # best on dev, not on val
    assert res.metric == "mIoU" and res.budget == 6
    sc = res.scores["test_mse"]
    assert [round(s.mean, 3) for s in sc] == [0.505, 0.705, 0.605] and all(s.n == 2 for s in sc)
    tune_calls = [c for c in stub.calls if c[2] == "dev"]
    report_calls = [c for c in stub.calls if c[2] == "val"]
    assert len(tune_calls) == 2 + 6  # plain student's 2 seeds + 3 settings × 2 seeds, all on dev
    assert sorted(report_calls) == sorted([("baseline", None, "val", s) for s in range(3)]
                                          + [("test_mse", 1.0, "val", s) for s in range(3)])
    # the table: val at the chosen weight, gains paired by seed against the shared plain runs
    g = {r.method: r for r in res.rows}
    assert g["test_mse"].stats["mIoU"][0] == pytest.approx(0.46)
    md = open(os.path.join(out, "compare.md")).read()
    assert "every distillation method (1) got 3 settings × 2 seeds = 6 runs on dev, the same for each" in md
    assert "| test_mse | distill.weight: 0.1, 1, 10 | distill.weight=1 | 70.50 ± 0.71 |  |" in md
    assert "| test_mse | distill.weight=1 | 2 | 70.50 ± 0.71 | +40.00 ± 0.00 | chosen |" in md
    assert "| test_mse | 3 | 46.00 ± 1.00 |" in md and "+15.00 ± 0.00 | yes |" in md
    rows = list(csv.DictReader(io.StringIO(open(os.path.join(out, "tune.csv")).read())))
    assert [(r["method"], r["distill.weight"], r["chosen"]) for r in rows] == [
        ("baseline", "", "1"), ("test_mse", "0.1", "0"), ("test_mse", "1", "1"), ("test_mse", "10", "0")]
    saved = json.load(open(os.path.join(out, "tune.json")))
    assert saved["methods"]["test_mse"]["chosen"] == {"distill.weight": 1} and saved["budget_per_method"] == 6
    assert os.path.isfile(os.path.join(out, "compare.csv")) and os.path.isfile(os.path.join(out, "runs.json"))
    from PIL import Image  # the tuning curves: one panel per distillation method

    with Image.open(os.path.join(out, "tune.png")) as im:
        assert im.format == "PNG" and im.size[0] > 200
    no_plain = tn.TuneResult(**{**res.__dict__, "scores": {"test_mse": res.scores["test_mse"]},
                                "chosen": {"test_mse": res.chosen["test_mse"]}})
    assert tn.tune_curves(no_plain, os.path.join(out, "none.png")) is None  # no plain student: no gains to draw
    assert not os.path.exists(os.path.join(out, "none.png"))
    # separate folders: tuning runs under tune/dev, report runs under report/, keyed by the setting
    assert os.path.isfile(os.path.join(out, "tune", "dev", "test_mse", "distill.weight=10", "seed1", "metrics.json"))
    assert os.path.isfile(os.path.join(out, "report", "test_mse", "distill.weight=1", "seed2", "metrics.json"))
    assert not os.path.exists(os.path.join(out, "report", "test_mse", "distill.weight=10"))

    # rerun: everything is read back, nothing trains
    stub.calls.clear()
    res2 = tn.tune_compare(seg_config(toy, tmp_path / "o"), ["baseline", "test_mse"], {"distill.weight": [0.1, 1, 10]},
                           split="dev", tune_seeds=2, seeds=3, out=out, log=lambda s: None)
    assert stub.calls == [] and res2.chosen == res.chosen
    # a grid extended by one value, with the config's compare plan saying so: the runs it had are reused (the plan
    # does not change what a run trains), only the new value trains
    monkeypatch.setitem(DEV, 3.0, 0.65)
    monkeypatch.setitem(VAL, 3.0, 0.5)
    planned = {**seg_config(toy, tmp_path / "o"), "compare": {"seeds": 3, "tune": {"grid": {
        "distill.weight": [0.1, 1, 3, 10]}}}}
    tn.tune_compare(planned, ["baseline", "test_mse"], {"distill.weight": [0.1, 1, 3, 10]}, split="dev",
                    tune_seeds=2, seeds=3, out=out, log=lambda s: None)
    assert sorted(stub.calls) == [("test_mse", 3.0, "dev", 0), ("test_mse", 3.0, "dev", 1)]
    # the same folders with other settings are refused, naming the key
    with pytest.raises(ConfigError, match=r"seed0: this folder holds a run with other settings \(train.max_iters: 1 "
                                          r"there, 2 now\); use another --out or remove the folder$"):
        tn.tune_compare(seg_config(toy, tmp_path / "o"), ["baseline", "test_mse"], {"distill.weight": [0.1, 1, 10]},
                        split="dev", tune_seeds=2, seeds=3, out=out, overrides=["train.max_iters=2"], log=lambda s: None)


def test_a_diverging_setting_is_recorded_cannot_win_and_is_not_retried(toy, tmp_path, monkeypatch):
    stub = StubEngine(fail_weight=1.0)
    monkeypatch.setattr(eng, "train", stub)
    out = str(tmp_path / "t")
    kw = dict(split="dev", tune_seeds=1, seeds=1, out=out, log=lambda s: None)
    res = tn.tune_compare(seg_config(toy, tmp_path / "o"), ["test_mse"], {"distill.weight": [0.1, 1, 10]}, **kw)
    assert res.chosen_setting("test_mse").as_dict() == {"distill.weight": 10}
    assert res.scores["test_mse"][1].failed == {0: "non-finite loss at iteration 3: loss=nan (weight 1.0)"}
    assert json.load(open(os.path.join(out, "tune", "dev", "test_mse", "distill.weight=1", "seed0", "failed.json")))
    assert "failed: seed 0: non-finite loss at iteration 3" in open(os.path.join(out, "compare.md")).read()
    n = len(stub.calls)
    tn.tune_compare(seg_config(toy, tmp_path / "o"), ["test_mse"], {"distill.weight": [0.1, 1, 10]}, **kw)
    assert len(stub.calls) == n  # the failed run is read back, not retried


# --------------------------------------------------------------------------- the split: never the table's data
def test_a_tuning_run_scored_on_the_tables_data_is_an_error(toy, tmp_path, monkeypatch):
    stub = StubEngine()
    monkeypatch.setattr(eng, "train", stub)
    cfg = seg_config(toy, tmp_path / "o")
    kw = dict(tune_seeds=1, seeds=1, out=str(tmp_path / "t"), log=lambda s: None)
    with pytest.raises(ConfigError, match=r"^--tune-split val: the tuning runs would be scored on the table's own "
                                          r"data \(folder .* split val\); choose settings on a split the table does "
                                          r"not report, e.g. dev$"):
        tn.tune_compare(cfg, ["test_mse"], {"distill.weight": [1, 10]}, split="val", **kw)
    with pytest.raises(ConfigError, match=r"^test_mse data.val_split=dev: its report run would be evaluated on "
                                          r"folder .* split dev, not on folder .* split val \(a grid or --set key "
                                          r"moves the evaluation data; tune other keys\)$"):
        tn.tune_compare(cfg, ["test_mse"], {"data.val_split": ["dev"]}, split="dev", **kw)
    import shutil

    other = shutil.copytree(toy, tmp_path / "copy")
    with pytest.raises(ConfigError, match=r"^test_mse data.root=.*copy: its tuning run would be evaluated on "
                                          r"folder .*copy split dev, not on folder .* split dev"):
        tn.tune_compare(cfg, ["test_mse"], {"data.root": [str(other)]}, split="dev", **kw)
    with pytest.raises(ConfigError, match=r"^--tune-split nope: data.val_split: the folder data in data.root=.* has "
                                          r"no split 'nope' \(image folder .*directory not found: .*nope.*; the table "
                                          r"reports data.val_split=val\)$"):
        tn.tune_compare(cfg, ["test_mse"], {"distill.weight": [1, 10]}, split="nope", **kw)
    assert stub.calls == [] and not os.path.exists(tmp_path / "t")  # refused before anything ran


def test_detection_tune_split_is_named_in_data_splits(make_config, teacher_ckpt, tiny_coco, tmp_path, monkeypatch):
    monkeypatch.setattr(eng, "train", StubEngine())
    ann, img = tiny_coco
    cfg = make_config(tmp_path / "o", teacher=teacher_ckpt, method="test_mse")
    kw = dict(tune_seeds=1, seeds=1, out=str(tmp_path / "t"), log=lambda s: None)
    with pytest.raises(ConfigError, match=r"^--tune-split dev: data.splits.dev: the detection data names no split "
                                          r"'dev' \(it names none\); add data.splits.dev: \{ann: FILE.json, images: "
                                          r"FOLDER\} \(data.val_ann is the split the table reports\)$"):
        tn.tune_compare(cfg, ["test_mse"], {"distill.weight": [1, 10]}, **kw)
    cfg["data"]["splits"] = {"dev": {"ann": ann, "images": img}}  # the same file as val_ann
    with pytest.raises(ConfigError, match=r"^--tune-split dev: the tuning runs would be scored on the table's own data"):
        tn.tune_compare(cfg, ["test_mse"], {"distill.weight": [1, 10]}, **kw)
    cfg["data"]["splits"] = {"dev": {"ann": str(tmp_path / "dev.json"), "images": img}}
    with pytest.raises(ConfigError, match=r"^--tune-split dev: data.splits.dev.ann: file '.*dev.json' does not exist$"):
        tn.tune_compare(cfg, ["test_mse"], {"distill.weight": [1, 10]}, **kw)
    from densekd.tasks import get_task
    from densekd.config import load_config

    with open(ann) as f, open(tmp_path / "dev.json", "w") as g:
        g.write(f.read())  # a copy: other data as far as the identity goes
    c = load_config(cfg)
    assert get_task("detection").eval_split_overrides(c.data, "dev") == [f"data.val_ann={tmp_path / 'dev.json'}",
                                                                          f"data.val_images={img}"]


# --------------------------------------------------------------------------- command line and plan
def test_cli_tune_flags_and_plan(toy, tmp_path, monkeypatch, capsys):
    stub = StubEngine()
    monkeypatch.setattr(eng, "train", stub)
    conf = seg_config(toy, tmp_path / "o")
    conf["compare"] = {"methods": ["baseline", "test_mse"], "seeds": 2,
                       "tune": {"split": "dev", "seeds": 1, "grid": {"distill.weight": [0.1, 1]},
                                "per_method": {"test_mse": {"distill.weight": [1, 10]}}}}
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(conf))
    assert main(["compare", str(path), "--out", str(tmp_path / "a")]) == 0
    printed = capsys.readouterr().out
    assert "## densekd compare --tune" in printed and "| test_mse | distill.weight: 1, 10 | distill.weight=1 |" in printed
    assert len([c for c in stub.calls if c[2] == "dev"]) == 1 + 2 and len([c for c in stub.calls if c[2] == "val"]) == 4
    # the command line's grid replaces the plan's for that method; --tune-seeds replaces its seeds
    stub.calls.clear()
    assert main(["compare", str(path), "--out", str(tmp_path / "b"), "--tune", "test_mse:distill.weight=[0.1, 10]",
                 "--tune-seeds", "2", "--seeds", "1"]) == 0
    assert sorted({c[1] for c in stub.calls if c[2] == "dev"} - {None}) == [0.1, 10.0]
    assert "| test_mse | distill.weight: 0.1, 10 | distill.weight=10 |" in capsys.readouterr().out
    # --no-tune: the plan's table at its fixed settings (plain densekd compare)
    stub.calls.clear()
    assert main(["compare", str(path), "--no-tune", "--seeds", "1", "--out", str(tmp_path / "c")]) == 0
    assert "## densekd compare --tune" not in capsys.readouterr().out and {c[2] for c in stub.calls} == {"val"}
    assert main(["compare", str(path), "--no-tune", "--tune", "distill.weight=[1]"]) == 2
    assert capsys.readouterr().err.strip() == "densekd compare: error: --no-tune: contradicts --tune; give one of them"
    conf["compare"]["tune"]["per_method"] = {"mgd": {"distill.weight": [1]}}
    path.write_text(yaml.safe_dump(conf))
    assert main(["compare", str(path)]) == 2
    assert "compare.tune.per_method: ['mgd'] are not among compare.methods" in capsys.readouterr().err
    conf["compare"]["tune"] = {"grid": {"distill.weight": []}}
    path.write_text(yaml.safe_dump(conf))
    assert main(["compare", str(path)]) == 2
    assert "compare.tune.grid.distill.weight: expected a non-empty list of values, got []" in capsys.readouterr().err


# --------------------------------------------------------------------------- the real engine, tiny
def test_tune_end_to_end_with_the_engine(toy, tmp_path, capsys):
    path = tmp_path / "seg.yaml"
    path.write_text(yaml.safe_dump(seg_config(toy, tmp_path / "o")))
    out = tmp_path / "t"
    args = ["compare", str(path), "--methods", "baseline", "test_mse", "--seeds", "1", "--out", str(out),
            "--tune", "distill.weight=[0.01, 1]", "--tune-seeds", "1"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random teacher
        assert main(args) == 0
    printed = capsys.readouterr().out
    assert "every distillation method (1) got 2 settings × 1 seed = 2 runs on dev" in printed
    run = yaml.safe_load(open(out / "tune" / "dev" / "test_mse" / "distill.weight=0.01" / "seed0" / "config.yaml"))
    assert run["data"]["val_split"] == "dev" and run["distill"]["weight"] == 0.01
    chosen = json.load(open(out / "tune.json"))["methods"]["test_mse"]["chosen"]["distill.weight"]
    rep = yaml.safe_load(open(out / "report" / "test_mse" / f"distill.weight={chosen:g}" / "seed0" / "config.yaml"))
    assert rep["data"]["val_split"] == "val" and rep["distill"]["weight"] == chosen
    assert yaml.safe_load(open(out / "report" / "baseline" / "seed0" / "config.yaml"))["distill"] is None
    # a killed tune resumes: a run without metrics.json is trained again, the others are read back
    os.remove(out / "report" / "baseline" / "seed0" / "metrics.json")
    calls = []
    real = eng.train
    try:
        eng.train = lambda c, o: calls.append(o) or real(c, o)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert main(args) == 0
    finally:
        eng.train = real
    assert len(calls) == 1 and any(o.endswith(os.path.join("report", "baseline", "seed0")) for o in calls[0])


def test_the_demo_plan_gives_every_method_the_same_log_grid_budget():
    from densekd.tools.compare import plan_from_config

    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "compare", "demo_methods.yaml")
    plan = plan_from_config(path)
    grids = tn.resolve_grids(plan.methods, plan.tune.grid, plan.tune.per_method)
    assert tn.budget_of(grids, plan.tune.seeds) == 12 and plan.tune.split == "dev" and plan.seeds == 5
    for m in plan.methods:
        if m == "baseline":
            assert grids[m] == [tn.Setting()]
            continue
        w = [s.as_dict()["distill.weight"] for s in grids[m]]
        assert len(w) == 6 and max(w) / min(w) == pytest.approx(300), m  # a log grid spanning 300×
        assert all(b / a == pytest.approx(w[1] / w[0], rel=0.12) for a, b in zip(w, w[1:])), m


def test_parallel_jobs_record_a_diverging_setting_and_go_on(toy, tmp_path):
    """``--jobs 2`` (spawned workers, the package's fitnet: a test loss is not registered there): a weight that
    overflows the loss is recorded as failed in its folder while the other runs finish, and cannot win."""
    import torch

    conf = seg_config(toy, tmp_path / "o")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    lines: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # random teacher
            res = tn.tune_compare(conf, ["baseline", "fitnet"], {"distill.weight": [0.5, 1e300]}, tune_seeds=1,
                                  seeds=1, out=str(tmp_path / "t"), log=lines.append, jobs=2)
    finally:
        torch.set_num_threads(threads)
    assert res.chosen_setting("fitnet").as_dict() == {"distill.weight": 0.5}
    bad = tmp_path / "t" / "tune" / "dev" / "fitnet" / "distill.weight=1e+300" / "seed0"
    assert "non-finite loss at iteration 0" in json.load(open(bad / "failed.json"))["error"]
    assert (bad / "console.log").is_file() and res.scores["fitnet"][1].failed
    assert any("3 run(s) in 2 parallel worker(s), 1 torch thread(s) each" in x for x in lines)
    assert len(res.results["fitnet"]) == 1 and len(res.results["baseline"]) == 1
    with pytest.raises(ConfigError, match=r"^--jobs: expected a positive number of parallel runs, got 0$"):
        tn.tune_compare(conf, ["fitnet"], {"distill.weight": [1]}, out=str(tmp_path / "x"), jobs=0)


def test_run_folder_keys_compare_the_keys_both_sides_have():
    assert tn._first_difference({"train": {"max_iters": 1, "lr": 2}}, {"train": {"max_iters": 1, "control": False}}) is None
    assert tn._first_difference({"train": {"max_iters": 1}}, {"train": {"max_iters": 2}}) == ("train.max_iters", 1, 2)
    assert tn._first_difference({"distill": None}, {"distill": {"method": "fitnet"}}) == \
        ("distill", None, {"method": "fitnet"})
