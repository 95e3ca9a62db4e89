"""``densekd demo``: the --quick smoke run end to end through the engine, the shipped teacher (verified, never
overwritten, a mismatched one refused with one line; corrupt or missing: test_demo_common.py), --retrain-teacher,
and bad arguments."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from PIL import Image

from densekd import assets
from densekd.cli import main
from densekd.demo import DemoConfig, run_demo
from densekd.demo import common
from densekd.demo.segmentation import (DEV_WEIGHTS, DISTILL_SETTINGS, TEACHER_ASSET, method_kwargs, method_settings,
                                       run_names, student_config)
from densekd.errors import ConfigError

FIGURES = ("gains", "curves", "spatial_masks", "channel_masks", "mask_stats")


def _shipped_hashes():
    return {p.name: assets.file_sha256(p) for p in sorted(assets.ASSETS_DIR.glob(f"{TEACHER_ASSET}.*"))}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    argv = ["demo", "--quick", "--seeds", "2", "--cache-dir", str(root / "cache"), "--out", str(root / "out"),
            "--threads", "1"]
    return root, argv


def test_the_shipped_teacher_is_there_and_its_record_is_complete():
    path, record = assets.shipped_teacher(TEACHER_ASSET)
    assert path.stat().st_size < 4 * 2**20  # "a few MB at most"
    for key in ("command", "model", "data", "train", "seed", "threads", "metric", "torch", "sha256", "weights_sha256"):
        assert key in record, key
    assert record["command"].startswith("densekd demo --retrain-teacher")
    assert record["data"]["seed"] == DemoConfig().data_seed and record["data"]["n_train"] == DemoConfig().n_pool
    assert record["weights_sha256"] == assets.weights_sha256(assets.load_state_dict(path))
    assert record["metric"]["dev mIoU"] > 50  # a teacher worth distilling from, measured when it was made


def test_quick_demo_end_to_end(quick_run, capsys):
    root, argv = quick_run
    before = _shipped_hashes()
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "SMOKE RUN" in text and "teacher: shipped with densekd" in text and "verified" in text
    for row in ("| teacher (shipped", "| student (plain)", "| student + Hinton KD (logits)",
                "| student + FitNet (trunk)", "| student + ACAM-KD (trunk)"):
        assert row in text, row
    assert "ACAM-KD (trunk) − plain = " in text and "paired over 2 seeds" in text and "2 × the std" in text
    assert "ACAM-KD − FitNet = " in text and "the paper's claim" in text  # the head-to-head with its control
    assert "on 'val' (its first 16 of 16 canvases)" in text  # what is scored: data.max_images limits every split
    summary = json.loads((root / "out" / "summary.json").read_text())
    assert summary["teacher"]["origin"] == "shipped"
    assert set(summary["runs"]) == {"baseline", "hinton_kd", "fitnet", "acam_kd"}
    assert all(len(v) == 2 for v in summary["runs"].values())
    g = summary["gains"]["acam_kd"]
    per_seed = [r["mIoU"] for r in summary["runs"]["acam_kd"]], [r["mIoU"] for r in summary["runs"]["baseline"]]
    assert g["n"] == 2 and g["mean"] == pytest.approx(sum(a - b for a, b in zip(*per_seed)) / 2)
    for key in FIGURES:
        path = summary["figures"][key]
        assert path in text  # the output names every picture
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size[0] > 100
    # the students trained through the engine: each run folder is a normal engine run
    runs_dir = next((root / "out").glob("runs-*"))
    names = run_names(DemoConfig())
    for m in ("baseline", "acam_kd"):
        d = runs_dir / names[m] / "seed1"
        assert (d / "metrics.json").is_file() and (d / "log.csv").is_file() and (d / "config.yaml").is_file()
    assert _shipped_hashes() == before


def test_quick_demo_reuses_finished_runs(quick_run, capsys):
    root, argv = quick_run
    main(argv)  # runs (or reuses, if the first test ran) every student
    capsys.readouterr()
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert text.count("finished earlier") == 8 and "data: " in text and "(cached;" in text


def test_a_teacher_the_config_does_not_describe_is_refused(tmp_path):
    cfg = DemoConfig.quick_config(cache_dir=str(tmp_path / "c"), out_dir=str(tmp_path / "o"), teacher_width=8)
    with pytest.raises(ConfigError, match=r"the shipped teacher is .*'width': 32.*'width': 8.*--retrain-teacher"):
        run_demo(cfg)


def test_write_artifact_refuses_the_package_folder_and_checksums_weights(tmp_path):
    sd = {"w": torch.arange(6.0).view(2, 3), "n": torch.tensor(3)}
    with pytest.raises(assets.AssetError, match="refusing to write"):
        assets.write_artifact("x", sd, {}, assets.ASSETS_DIR)
    path, record = assets.write_artifact("x", sd, {"metric": {"a": 1}}, tmp_path)
    assert record["weights_sha256"] == assets.weights_sha256(assets.load_state_dict(path))
    assert assets.verified_artifact("x", tmp_path)[1]["metric"] == {"a": 1}
    other = {**sd, "w": sd["w"] + 1e-6}
    assert assets.weights_sha256(other) != record["weights_sha256"]


def test_a_config_names_a_shipped_teacher_as_an_asset(fake_assets):
    path = assets.resolve_checkpoint(f"asset:{TEACHER_ASSET}", "model.teacher.checkpoint")
    assert path == str(fake_assets / f"{TEACHER_ASSET}.pt")
    assert assets.resolve_checkpoint("some/file.pth") == "some/file.pth" and assets.resolve_checkpoint(None) is None
    with pytest.raises(assets.AssetError, match=r"^model.teacher.checkpoint: artefact 'nope': no record .*nope.json$"):
        assets.resolve_checkpoint("asset:nope", "model.teacher.checkpoint")


def test_each_method_gets_a_distillation_point_that_suits_it(tmp_path):
    cfg = DemoConfig()
    w = DEV_WEIGHTS
    assert method_settings(cfg) == {"hinton_kd": ["distill.pairs=[{student: classifier}]",
                                                  f"distill.weight={w['hinton_kd']}"],
                                    "fitnet": [f"distill.weight={w['fitnet']}"],
                                    "acam_kd": [f"distill.weight={w['acam_kd']}"]}
    conf = student_config(cfg, tmp_path, tmp_path / "t.pt", tmp_path / "runs")
    assert conf["distill"]["pairs"] == [{"student": "trunk"}] and conf["distill"]["kwargs"]["num_masks"] == 11
    assert conf["data"]["max_images"] == cfg.n_student and conf["data"]["val_split"] == "val"
    assert conf["distill"]["kwargs"]["z_norm"] == "spatial"  # docs/methods.md, "Spatial masks must be spatial"
    paper = replace(cfg, methods=("baseline", "acam_kd", "acam_kd_paper"))
    assert method_kwargs(paper) == {"acam_kd_paper": {"num_masks": 11, "z_norm": "spatial"}}
    # a variant without its own dev weight runs at acam_kd's (it differs from it in its own switch only)
    variant = replace(cfg, methods=("baseline", "acam_kd_spatial"), weights={"acam_kd": 0.3})
    assert method_settings(variant) == {"acam_kd_spatial": ["distill.weight=0.3"]}
    assert method_settings(replace(cfg, methods=("baseline", "cwd"), weights={"cwd": 0.1})) == {
        "cwd": ["distill.pairs=[{student: classifier}]", "distill.weight=0.1"]}


def test_each_method_runs_in_a_folder_named_by_its_own_weight(tmp_path):
    """A new dev weight for one method retrains that method only: the setting's folder ignores the weights, each
    method's folder is named by its own."""
    cfg = DemoConfig(out_dir=str(tmp_path))
    names = run_names(cfg)
    assert names["baseline"] == "baseline" and all(names[m].startswith(f"{m}-") for m in ("fitnet", "acam_kd"))
    moved = replace(cfg, weights={**cfg.weights, "fitnet": cfg.weights["fitnet"] * 3})
    assert run_names(moved)["fitnet"] != names["fitnet"] and run_names(moved)["acam_kd"] == names["acam_kd"]
    assert (common.student_runs_dir(moved, "runs", "abc", exclude=DISTILL_SETTINGS)
            == common.student_runs_dir(cfg, "runs", "abc", exclude=DISTILL_SETTINGS))


def test_a_method_without_a_dev_weight_is_refused_before_anything_trains():
    with pytest.raises(ConfigError, match=r"^demo: no distill.weight chosen on dev for \['cwd'\] \(the segmentation "
                                          r"demo has weights for .*densekd compare configs/compare/demo_methods.yaml "
                                          r"--tune` chooses one\)$"):
        replace(DemoConfig(), methods=("baseline", "cwd")).validate()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(task="classification"), "demo: --task must be 'segmentation' or 'detection', got 'classification'"),
        (dict(seeds=0), "demo: --seeds must be ≥ 1, got 0"),
        (dict(eval_split="test"), "demo: --eval-split must be 'val' or 'dev', got 'test'"),
        (dict(student_iters=0), "demo: student_iters must be ≥ 1, got 0"),
        (dict(n_student=64, n_pool=32), "demo: n_student (64) must be ≤ n_pool (32)"),
        (dict(methods=("acam_kd",)), "demo: --methods must include the plain student ('baseline')"),
        (dict(methods=("baseline", "acam")), "unknown loss 'acam'"),
    ],
)
def test_bad_config(tmp_path, kwargs, message):
    cfg = DemoConfig.quick_config(cache_dir=str(tmp_path), out_dir=str(tmp_path / "out"), **kwargs)
    with pytest.raises(ConfigError) as exc:
        run_demo(cfg)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_cli_rejects_unknown_task(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--task", "nope"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err
