"""benchmarks/head_to_head.py: one method against others on the same seeds, from a compare folder's runs.json."""
import json

import pytest
from _benchmark_script import load_benchmark


def _script():
    return load_benchmark("head_to_head")


def _runs(tmp_path):
    runs = {"baseline": [{"seed": 0, "mIoU": 0.60}, {"seed": 1, "mIoU": 0.62}, {"seed": 2, "mIoU": 0.61}],
            "fitnet": [{"seed": 0, "mIoU": 0.63}, {"seed": 1, "mIoU": 0.64}, {"seed": 2, "mIoU": 0.65}],
            "acam_kd": [{"seed": 2, "mIoU": 0.66}, {"seed": 0, "mIoU": 0.64}, {"seed": 1, "mIoU": 0.65}]}
    path = tmp_path / "runs.json"
    path.write_text(json.dumps(runs), encoding="utf-8")
    return path


def test_differences_are_paired_by_seed_with_their_verdict(tmp_path, capsys):
    assert _script().main([str(_runs(tmp_path)), "--method", "acam_kd", "--against", "baseline", "fitnet"]) == 0
    out = capsys.readouterr().out.splitlines()
    # acam_kd − baseline per seed: +4, +3, +5 (×100, runs listed out of seed order); − fitnet: +1 on every seed
    assert out[2] == "| baseline | +4.00 ± 1.00 | +4.00, +3.00, +5.00 | yes |"
    assert out[3].startswith("| fitnet | +1.00 ± 0.00 | +1.00, +1.00, +1.00 |")


def test_a_method_without_runs_is_named(tmp_path):
    with pytest.raises(SystemExit, match=r"head_to_head: no runs for pkd in .*runs.json; have baseline, fitnet, acam_kd"):
        _script().main([str(_runs(tmp_path)), "--method", "acam_kd", "--against", "pkd"])
