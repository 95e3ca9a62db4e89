"""``densekd demo --task detection``: the --quick smoke run end to end through the engine with the shipped
detection teacher (verified, never overwritten; a mismatched one refused with one line that offers --retrain-teacher;
corrupt or missing: test_demo_common.py), --retrain-teacher, the mask figure over a val image, and bad arguments."""
from __future__ import annotations

import json

import pytest
import yaml
from PIL import Image

from densekd import assets
from densekd.cli import main
from densekd.demo.detection import (BACKBONE_ASSET, TEACHER_ASSET, DemoConfig, acam_masks, distill_pairs, method_labels,
                                    method_settings, run_demo, student_config)
from densekd.errors import ConfigError, DenseKDError


def _shipped_hashes():
    return {p.name: assets.file_sha256(p) for p in sorted(assets.ASSETS_DIR.glob(f"{TEACHER_ASSET}.*"))}


def test_the_shipped_detection_teacher_and_its_record():
    path, record = assets.shipped_teacher(TEACHER_ASSET)
    assert path.stat().st_size < 4 * 2**20  # "a few MB at most"
    for key in ("command", "model", "data", "train", "seed", "threads", "metric", "torch", "sha256", "weights_sha256"):
        assert key in record, key
    assert record["command"].startswith("densekd demo --task detection --retrain-teacher")
    cfg = DemoConfig()
    assert record["model"] == cfg.teacher_spec()
    assert record["data"]["seed"] == cfg.data_seed and record["data"]["n_train"] == cfg.n_pool
    assert record["train"]["max_iters"] == cfg.teacher_iters
    assert record["weights_sha256"] == assets.weights_sha256(assets.load_state_dict(path))
    assert record["metric"]["dev AP"] > 50  # a teacher worth distilling from, measured when it was made


def test_quick_detection_demo_end_to_end(tmp_path, capsys):
    before = _shipped_hashes()
    argv = ["demo", "--task", "detection", "--quick", "--seeds", "2", "--cache-dir", str(tmp_path / "cache"),
            "--out", str(tmp_path / "out"), "--threads", "1"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "SMOKE RUN" in text and "teacher: shipped with densekd" in text and "verified" in text
    for row in ("| teacher (shipped", "| student (plain)", "| student + FitNet", "| student + ACAM-KD"):
        assert row in text, row
    assert "| model" in text and "AP50" in text and "AP75" in text
    assert "ACAM-KD (P3–P5) − plain = " in text and "paired over 2 seeds" in text
    assert "ACAM-KD − FitNet = " in text and "the paper's claim" in text
    assert "pretrained backbone: shipped with densekd" in text and "from the shipped digit-classification pretraining" in text
    summary = json.loads((tmp_path / "out" / "summary_detection.json").read_text())
    assert summary["teacher"]["origin"] == "shipped"
    assert set(summary["runs"]) == {"baseline", "fitnet", "acam_kd"} and all(len(v) == 2 for v in summary["runs"].values())
    assert all({"AP", "AP50", "AP75"} <= set(r) for v in summary["runs"].values() for r in v)
    for key in ("gains", "curves", "spatial_masks"):
        path = summary["figures"][key]
        assert path in text
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size[0] > 100
    runs_dir = next((tmp_path / "out").glob("runs-det-*"))
    acam_dir = next(runs_dir.glob("acam_kd-*"))  # each method's runs are named by its own settings
    assert (runs_dir / "baseline" / "seed0" / "metrics.json").is_file()
    cfg = yaml.safe_load((acam_dir / "seed0" / "config.yaml").read_text())
    assert cfg["distill"]["method"] == "acam_kd" and cfg["model"]["teacher"]["checkpoint"] == f"asset:{TEACHER_ASSET}"
    # the figure's masks are the run's own ACAM-KD modules on a val image: one per unit, over P3, in (0, 1)
    got = acam_masks(acam_dir / "seed1")
    assert got["spatial"].shape == (DemoConfig().num_masks, 8, 8)  # P3 of a 64-pixel canvas
    assert 0 < float(got["spatial"].min()) and float(got["spatial"].max()) < 1 and got["boxes"].shape[1] == 4
    assert _shipped_hashes() == before


def test_each_method_gets_its_weight_and_the_chosen_fpn_levels(tmp_path):
    cfg = DemoConfig()
    assert method_settings(cfg) == {m: [f"distill.weight={cfg.weights[m]}"] for m in ("fitnet", "acam_kd")}
    conf = student_config(cfg, tmp_path, "asset:x", tmp_path / "runs", "asset:bb")
    assert conf["distill"]["pairs"] == [{"student": f"backbone:{k}"} for k in cfg.levels]
    assert conf["distill"]["kwargs"] == {"num_masks": 6}  # M = 6 (docs/methods.md, "ASCM")
    assert conf["data"]["train_max_images"] == cfg.n_student and conf["data"]["val_ann"].endswith("val/annotations.json")
    assert conf["model"]["preset"] == "cpu"
    student = conf["model"]["student"]
    assert student["width_mult"] == cfg.student_width_mult < 1 and student["backbone_checkpoint"] == "asset:bb"
    assert "width_mult" not in conf["model"]["teacher"] and "backbone_checkpoint" not in conf["model"]["teacher"]


def test_level_weights_and_samkd_logits_follow_the_levels():
    cfg = DemoConfig(levels=("0", "1", "2", "p6", "p7"), level_weights={"p6": 0.1, "p7": 0.1},
                     methods=("baseline", "samkd"), weights={"samkd": 0.5})
    pairs = distill_pairs(cfg)
    assert [p["student"] for p in pairs] == ["backbone:0", "backbone:1", "backbone:2", "backbone:p6", "backbone:p7"]
    assert [p.get("weight", 1.0) for p in pairs] == [1.0, 1.0, 1.0, 0.1, 0.1]
    sam = method_settings(cfg)["samkd"]
    assert sam[0] == "distill.weight=0.5" and sam[1].startswith("distill.pairs=")
    got = json.loads(sam[1].split("=", 1)[1])
    assert got[4]["aux"] == {"logits": ["head.classification_head.cls_logits[4]"] * 2}  # P7 is the head's 5th call
    assert method_labels(("0", "1", "2"))["acam_kd"] == "student + ACAM-KD (P3–P5)"
    assert method_labels(("0", "2"))["fitnet"] == "student + FitNet (P3, P5, no mask)"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(seeds=0), "demo: --seeds must be ≥ 1, got 0"),
        (dict(jobs=0), "demo: --jobs must be ≥ 1, got 0"),
        (dict(n_student=64, n_pool=32), "demo: n_student (64) must be ≤ n_pool (32)"),
        (dict(methods=("fitnet",)), "demo: --methods must include the plain student ('baseline')"),
        (dict(methods=("baseline", "hinton_kd")), "hinton_kd distils softmax class scores per pixel"),
        (dict(teacher_backbone="resnet18"), "the shipped detection teacher is"),
        (dict(methods=("baseline", "cwd")), "demo: no distill.weight chosen on dev for ['cwd']"),
        (dict(levels=("0", "p8")), "demo: levels must be FPN keys among 0, 1, 2, p6, p7 (P3–P7), got ['0', 'p8']"),
        (dict(level_weights={"p7": 0.1}), "demo: level_weights names level(s) ['p7'] that are not distilled"),
        (dict(student_width_mult=0.75), "demo: the shipped pretrained backbone is {'backbone': 'mobilenet_v3_small', "
                                        "'width_mult': 0.5, 'norm': 'bn'}, this demo asks for {'backbone': "
                                        "'mobilenet_v3_small', 'width_mult': 0.75"),
    ],
)
def test_bad_config(tmp_path, kwargs, message):
    cfg = DemoConfig.quick_config(cache_dir=str(tmp_path), out_dir=str(tmp_path / "out"), **kwargs)
    with pytest.raises(ConfigError) as exc:
        run_demo(cfg, log=lambda *_: None)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_a_teacher_the_config_does_not_describe_is_refused(tmp_path):
    cfg = DemoConfig.quick_config(cache_dir=str(tmp_path / "c"), out_dir=str(tmp_path / "o"), fpn_channels=32)
    with pytest.raises(ConfigError, match=r"the shipped detection teacher is .*'fpn_channels': 64.*"
                                          r"'fpn_channels': 32.*--retrain-teacher"):
        run_demo(cfg, log=lambda *_: None)


def test_the_shipped_backbone_and_its_record():
    path, record = assets.verified_artifact(BACKBONE_ASSET)
    assert path.stat().st_size < 2 * 2**20
    for key in ("command", "model", "pretraining", "data", "metric", "threads", "torch", "sha256", "weights_sha256"):
        assert key in record, key
    assert record["command"] == "densekd demo --task detection --retrain-backbone --threads 1"
    cfg = DemoConfig()
    assert record["model"] == cfg.backbone_spec().model_spec()
    assert record["data"]["seed"] == cfg.data_seed and record["data"]["sources"] == "train split"
    sd = assets.load_state_dict(path)
    assert record["weights_sha256"] == assets.weights_sha256(sd)
    assert all(k.startswith("features.") for k in sd)  # the classifier is not shipped
    assert record["metric"]["dev top-1"] > 90  # it learnt the digits (held-out sources), measured when it was made


def test_a_corrupt_shipped_backbone_offers_the_command_that_rebuilds_it(fake_assets, tmp_path):
    pt = fake_assets / f"{BACKBONE_ASSET}.pt"
    data = bytearray(pt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pt.write_bytes(bytes(data))
    with pytest.raises(DenseKDError) as e:
        run_demo(DemoConfig.quick_config(cache_dir=str(tmp_path / "c"), out_dir=str(tmp_path / "o")), log=lambda *_: None)
    msg = str(e.value)
    assert "\n" not in msg and f"artefact '{BACKBONE_ASSET}'" in msg and "is corrupt or was replaced" in msg
    assert msg.endswith("run `densekd demo --task detection --retrain-backbone` to rebuild it with our own command")
    # the same file named in a config (asset:…) says which key and offers the recorded command
    from densekd.assets import resolve_checkpoint

    with pytest.raises(DenseKDError) as e:
        resolve_checkpoint(f"asset:{BACKBONE_ASSET}", "model.student.backbone_checkpoint")
    msg = str(e.value)
    assert msg.startswith("model.student.backbone_checkpoint: artefact") and "\n" not in msg
    assert msg.endswith("rebuild it with `densekd demo --task detection --retrain-backbone --threads 1`")


def test_retrain_backbone_writes_its_own_files_and_leaves_the_shipped_ones(tmp_path, capsys):
    before = {p.name: assets.file_sha256(p) for p in assets.ASSETS_DIR.glob(f"{BACKBONE_ASSET}.*")}
    argv = ["demo", "--task", "detection", "--quick", "--retrain-backbone", "--methods", "baseline", "--cache-dir",
            str(tmp_path / "cache"), "--out", str(tmp_path / "out"), "--threads", "1"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "pretrained backbone: retrained" in text and "differs from the shipped pretrained backbone" in text
    after = {p.name: assets.file_sha256(p) for p in assets.ASSETS_DIR.glob(f"{BACKBONE_ASSET}.*")}
    assert after == before
    record = json.loads((tmp_path / "out" / "backbone" / f"{BACKBONE_ASSET}.json").read_text())
    assert record["pretraining"]["iters"] == DemoConfig.quick_config().backbone_spec().iters
    assert record["sha256"] == assets.file_sha256(tmp_path / "out" / "backbone" / f"{BACKBONE_ASSET}.pt")
    assert main(["demo", "--retrain-backbone", "--quick"]) == 2  # segmentation has no pretrained backbone
    assert capsys.readouterr().err.strip() == ("densekd demo: error: demo: --retrain-backbone belongs to --task "
                                               "detection (the segmentation students start from scratch)")


def test_runs_are_shared_across_calls_with_other_methods_and_named_by_their_own_settings(tmp_path, capsys):
    """A later call with other methods reuses every finished run that is the same run (the plain student's; a method
    at the same weight), and a method at another weight is a new folder, never a reused one."""
    from dataclasses import replace

    from densekd.demo.detection import run_names

    cfg = DemoConfig.quick_config(cache_dir=str(tmp_path / "c"), out_dir=str(tmp_path / "o"), methods=("baseline", "fitnet"))
    run_demo(cfg, log=lambda *_: None)
    lines: list[str] = []
    run_demo(replace(cfg, methods=("baseline", "fitnet", "acam_kd")), log=lines.append)
    reused = [x for x in lines if "finished earlier" in x]
    assert len(reused) == 2 and any("baseline seed 0" in x for x in reused) and any("fitnet seed 0" in x for x in reused)
    other = replace(cfg, weights={**cfg.weights, "fitnet": 0.5})
    assert run_names(other)["fitnet"] != run_names(cfg)["fitnet"] and run_names(other)["baseline"] == "baseline"
    assert run_names(replace(cfg, levels=("0", "1")))["fitnet"] != run_names(cfg)["fitnet"]
