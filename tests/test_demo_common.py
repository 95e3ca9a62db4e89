"""What both demos share (densekd/demo/common.py): --retrain-teacher (written beside the runs, recorded, never over
the shipped files), the refusal of a shipped teacher that is corrupt or missing (one line that offers the task's own
--retrain-teacher), and the key of the student runs' folder."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

from densekd import assets
from densekd.cli import main
from densekd.demo import common, detection, segmentation
from densekd.errors import DenseKDError

#: task → (its module, the command that runs its demo)
TASKS = {"segmentation": (segmentation, "densekd demo"), "detection": (detection, "densekd demo --task detection")}


def _shipped_hashes(asset):
    return {p.name: assets.file_sha256(p) for p in sorted(assets.ASSETS_DIR.glob(f"{asset}.*"))}


@pytest.mark.parametrize("task, methods, metrics, summary", [
    ("segmentation", ["baseline", "acam_kd"], {"dev mIoU", "val mIoU"}, "summary.json"),
    ("detection", ["baseline"], {"dev AP", "val AP", "dev AP50", "val AP75"}, "summary_detection.json"),
])
def test_retrain_teacher_with_a_changed_config_leaves_the_shipped_teacher_untouched(task, methods, metrics, summary,
                                                                                   tmp_path, capsys):
    module, command = TASKS[task]
    before = _shipped_hashes(module.TEACHER_ASSET)
    argv = [*command.split()[1:], "--quick", "--retrain-teacher", "--methods", *methods, "--cache-dir",
            str(tmp_path / "cache"), "--out", str(tmp_path / "out"), "--threads", "1"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "teacher: retrained" in text and "differs from the shipped teacher" in text
    assert "the shipped files are untouched" in text
    assert _shipped_hashes(module.TEACHER_ASSET) == before
    record = json.loads((tmp_path / "out" / "teacher" / f"{module.TEACHER_ASSET}.json").read_text())
    assert record["train"]["max_iters"] == module.DemoConfig.quick_config().teacher_iters  # the changed config
    assert record["sha256"] == assets.file_sha256(tmp_path / "out" / "teacher" / f"{module.TEACHER_ASSET}.pt")
    assert record["command"] == f"{command} --retrain-teacher --threads 1" and metrics <= set(record["metric"])
    assert record["kind"] == f"densekd demo teacher ({task})" and record["threads"] == 1
    summary = json.loads((tmp_path / "out" / summary).read_text())
    assert summary["teacher"]["origin"] == "retrained" and summary["teacher"]["path"].startswith(str(tmp_path))


@pytest.mark.parametrize("task", TASKS)
def test_a_corrupt_shipped_teacher_says_so_and_offers_the_retrain(task, fake_assets, tmp_path, capsys):
    module, command = TASKS[task]
    pt = fake_assets / f"{module.TEACHER_ASSET}.pt"
    data = bytearray(pt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pt.write_bytes(bytes(data))
    argv = [*command.split()[1:], "--quick", "--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "is corrupt or was replaced" in err and f"{command} --retrain-teacher" in err


@pytest.mark.parametrize("task", TASKS)
def test_a_missing_shipped_teacher_says_so(task, fake_assets, tmp_path):
    module, command = TASKS[task]
    (fake_assets / f"{module.TEACHER_ASSET}.pt").unlink()
    cfg = module.DemoConfig.quick_config(cache_dir=str(tmp_path / "c"), out_dir=str(tmp_path / "o"))
    with pytest.raises(DenseKDError, match=rf"weights file .* is missing; run `{command} --retrain-teacher`"):
        module.run_demo(cfg, log=lambda *_: None)


def test_student_runs_folder_is_keyed_by_the_settings_and_the_weights_only(tmp_path):
    """A finished student run is reused only when it is the same run: bookkeeping (seeds, jobs, threads, methods,
    folders) does not change its folder; any setting or other starting weights do."""
    cfg = segmentation.DemoConfig(out_dir=str(tmp_path))
    d = common.student_runs_dir(cfg, "runs", "abc")
    assert d.parent == tmp_path and d.name.startswith("runs-")
    same = replace(cfg, seeds=5, jobs=2, threads=1, methods=("baseline",), cache_dir="x", quick=True)
    assert common.student_runs_dir(same, "runs", "abc") == d
    assert common.student_runs_dir(replace(cfg, student_iters=401), "runs", "abc") != d
    assert common.student_runs_dir(cfg, "runs", "abd") != d
    det = detection.DemoConfig(out_dir=str(tmp_path))
    assert common.student_runs_dir(det, "runs-det", "abc", None) != common.student_runs_dir(det, "runs-det", "abc", "b")
