"""benchmarks/real_size.py tables, brief and alone: its row order, which methods apply where, and that a call writes after every
method and a resumed call keeps what an earlier one measured (the measurement itself is densekd bench's,
tests/test_bench.py; here it is replaced by a stub that records what it was asked)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from _benchmark_script import load_benchmark

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _threads(monkeypatch):
    """main() sets OMP_NUM_THREADS and torch's thread count for its subprocesses: both restored after each test."""
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def rs():
    return load_benchmark("real_size")


def test_method_order_papers_first_ablations_last(rs):
    assert rs.method_order(["acam_kd_spatial", "acam_kd", "fitnet", "zzz", "fgd", "acam_kd_paper"]) == [
        "fitnet", "fgd", "acam_kd", "acam_kd_paper", "acam_kd_spatial", "zzz"]


def test_applicable(rs):
    assert rs.applicable("retinanet", "cirkd")[0] is False and rs.applicable("retinanet", "hinton_kd")[0] is False
    assert rs.applicable("deeplabv3", "fgd") == (False, [], "needs boxes")
    ok, extra, _ = rs.applicable("faster_rcnn", "samkd")
    assert ok and "distill.kwargs={use_logits: false}" in extra
    assert rs.applicable("fcos", "acam_kd") == (True, [], "")


def _row(method, **kw):
    return {"method": method, "sec_per_iter": 2.0, "peak_mem_bytes": 2**20, "mem_kind": "cpu_rss_delta",
            "teacher_fwd_sec": 0.5, "student_step_sec": 1.0, "modules_sec": 0.5, "iters": 5, "warmup": 1,
            "step_times": [1.9, 2.0, 2.2], "device": "cpu", "malloc_keep": True, **kw}


def test_spread_table_uses_the_modules_alone_and_the_roofline_floor(rs):
    r = _row("fitnet", modules_alone_sec=0.05, modules_floor_flops=1e9, matmul_gflops=100.0,
             modules_floor_bytes=400e6, copy_gbps=20.0, wall_sec=61)
    line = rs.spread_table([r]).splitlines()[2]
    # alone 0.05 s over the student step 1 s: +5 %; floor max(10 ms, 20 ms) = 20 ms → 2.5×
    assert line == "| fitnet | 2.000 (1.900–2.200) | +5.0 % | 2.5× | 61 |"


def test_tables_write_each_method_and_resume(rs, tmp_path, monkeypatch):
    import densekd.tools.bench as bench

    asked = []

    def fake(config, method, iters, warmup, overrides):
        asked.append(method)
        if method == "pkd":
            raise RuntimeError("boom")
        return _row(method)

    monkeypatch.setattr(bench, "measure_in_subprocess", fake)
    monkeypatch.setattr(rs, "setting_overrides", lambda name, tmp, scale: [])
    out = tmp_path / "rs"
    args = ["tables", "--out", str(out), "--settings", "deeplabv3", "--iters", "5", "--scale", "0.5",
            "--methods", "fitnet", "fgd", "pkd"]
    assert rs.main(args) == 0
    assert asked == ["baseline", "fitnet", "pkd"]  # fgd needs boxes
    rows = json.loads((out / "deeplabv3.json").read_text())
    assert [r["method"] for r in rows] == ["baseline", "fitnet"] and rows[0]["scale"] == 0.5
    md = (out / "deeplabv3.md").read_text()
    assert "not run: pkd (failed: boom), fgd (needs boxes)" in md
    assert md.rstrip() in (out / "summary.md").read_text()
    asked.clear()
    assert rs.main(args + ["--resume"]) == 0
    assert asked == ["pkd"]  # the rows of the earlier call are kept, the failed method is tried again
    asked.clear()
    assert rs.main([a if a != "0.5" else "0.25" for a in args] + ["--resume"]) == 0
    assert asked == ["baseline", "fitnet", "pkd"]  # another scale: nothing to keep


def test_tables_in_process_and_stop_at(rs, tmp_path, monkeypatch):
    """--in-process measures in this process (densekd.tools.bench.measure, never a subprocess); --stop-at starts
    no method after its time and lists those left as not run."""
    import time

    import densekd.tools.bench as bench

    asked = []

    def fake(config, method, iters, warmup, overrides):
        asked.append(method)
        return _row(method)

    def no_subprocess(*a, **k):
        raise AssertionError("--in-process must not start a subprocess")

    monkeypatch.setattr(bench, "measure", fake)
    monkeypatch.setattr(bench, "measure_in_subprocess", no_subprocess)
    monkeypatch.setattr(rs, "setting_overrides", lambda name, tmp, scale: [])
    out = tmp_path / "rs"
    base = ["tables", "--out", str(out), "--settings", "deeplabv3", "--methods", "fitnet", "cwd", "--in-process"]
    assert rs.main(base + ["--stop-at", str(time.time() + 3600)]) == 0
    assert asked == ["baseline", "fitnet", "cwd"]
    asked.clear()
    assert rs.main(base + ["--stop-at", str(time.time() - 1)]) == 0
    assert asked == []
    md = (out / "deeplabv3.md").read_text()
    assert ("not run: baseline (not started: --stop-at reached), fitnet (not started: --stop-at reached), "
            "cwd (not started: --stop-at reached)") in md


def test_gpu_script_runs_every_setting_in_both_precisions(tmp_path):
    """benchmarks/real_size_gpu.sh, with a stub python that records its calls: fp32 then bf16 per setting, in
    process, with the stop time; the teacher variants only when a minute is left."""
    stub = tmp_path / "py"
    log = tmp_path / "calls"
    stub.write_text(f"#!/usr/bin/env bash\necho \"$*\" >> {log}\n")
    stub.chmod(0o755)
    import subprocess

    env = dict(os.environ, PYTHON=str(stub))
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "real_size_gpu.sh"), str(tmp_path / "out"), "600",
                        "--scale", "0.2"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    calls = [c for c in log.read_text().splitlines() if "real_size.py" in c]
    tables = [c for c in calls if " tables " in c]
    assert [c.split("--settings ")[1].split()[0] for c in tables] == [
        "retinanet", "retinanet", "faster_rcnn", "faster_rcnn", "deeplabv3", "deeplabv3", "fcos", "fcos"]
    assert all("--in-process" in c and "--stop-at" in c and c.endswith("--scale 0.2") for c in tables)
    assert ["bf16" if "train.amp=bf16" in c else "fp32" for c in tables] == ["fp32", "bf16"] * 4
    assert all(("--teacher-amp bf16" in c) == ("train.amp=bf16" in c) for c in tables)
    assert sum(" teacher " in c for c in calls) == 1
    log.unlink()
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "real_size_gpu.sh"), str(tmp_path / "out"), "30"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not any(" teacher " in c for c in log.read_text().splitlines())


def test_brief_table_one_line_per_method(rs, tmp_path):
    rows = [_row("baseline", teacher_fwd_sec=None, student_step_sec=None, modules_sec=None, sec_per_iter=1.0,
                 step_times=[0.9, 1.1]),
            _row("fitnet", modules_alone_sec=0.05, modules_alone_times=[0.04, 0.05, 0.07], modules_flops=2e9,
                 modules_floor_flops=1e9, matmul_gflops=100.0, modules_floor_bytes=400e6, copy_gbps=20.0,
                 student_times=[1.0, 1.25, 0.8], teacher_times=[0.5, 0.5, 0.5])]
    lines = rs.brief_table(rows).splitlines()
    assert lines[2] == "| plain student | 1.00 (0.90–1.10) | 1.00× | — | — | — | — | — | — | — |"
    # fitnet: step 2 s (1.9–2.2) = 2× plain; beside its own student steps 1.9/1, 2/1.25, 2.2/0.8 → 1.9× (1.6–2.75);
    # alone 0.05 s = 5 % of the 1 s student step; floor 20 ms → 2.5×
    assert lines[3] == ("| fitnet | 2.00 (1.90–2.20) | 2.00× | 1.90× (1.60–2.75) | 0.50 | 0.050 (0.040–0.070) | 5.0 % "
                        "| 2.0 | 1.0 | 2.5× |")
    (tmp_path / "fcos.json").write_text(json.dumps([dict(r, scale=0.5) for r in rows]))
    assert rs.main(["brief", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "brief.md").read_text()
    assert text.startswith("**fcos** (fcos_r101_r50_acamkd_2x.yaml, 400×666, batch 2; 5 steps after 1 warm-up")
    assert lines[3] in text
    assert (tmp_path / "brief.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the picture of the same rows
    assert "†" not in text


def test_brief_writes_its_tables_into_a_readme_between_markers(rs, tmp_path):
    rows = [_row("baseline", teacher_fwd_sec=None, sec_per_iter=1.0, step_times=[1.0]), _row("fitnet")]
    (tmp_path / "fcos.json").write_text(json.dumps(rows))
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{rs.BRIEF_BEGIN}\nold table\n{rs.BRIEF_END}\nafter\n")
    assert rs.main(["brief", "--out", str(tmp_path), "--readme", str(readme)]) == 0
    doc = readme.read_text()
    assert "old table" not in doc and doc.startswith("# x\n\nbefore\n") and doc.endswith(f"{rs.BRIEF_END}\nafter\n")
    assert rs.readme_block(doc) == (tmp_path / "brief.md").read_text().strip()
    assert rs.main(["brief", "--out", str(tmp_path), "--readme", str(readme)]) == 0
    assert readme.read_text() == doc  # a second call changes nothing


def test_brief_readme_without_markers_is_an_error(rs, tmp_path):
    (tmp_path / "README.md").write_text("# no markers\n")
    with pytest.raises(SystemExit, match="must hold the line '<!-- real_size.py brief: the tables below"):
        rs.replace_block("# no markers\n", "t", "README.md")
    with pytest.raises(SystemExit, match="after it the line '<!-- real_size.py brief: end -->' once"):
        rs.replace_block(f"{rs.BRIEF_END}\n{rs.BRIEF_BEGIN}\n", "t")


def test_readme_tables_are_the_committed_brief(rs):
    """The README's real-size tables are what `brief` last wrote from the committed rows (rerun `python
    benchmarks/real_size.py brief --out benchmarks/results/real_size --readme README.md` after new rows)."""
    brief = (ROOT / "benchmarks" / "results" / "real_size" / "brief.md").read_text(encoding="utf-8")
    assert rs.readme_block((ROOT / "README.md").read_text(encoding="utf-8")) == brief.strip()


def test_brief_table_marks_cpu_rows_before_malloc_keep(rs):
    """A CPU row without train.malloc_keep (or from before it: no such field) gets a dagger and the table a
    footnote; GPU rows never."""
    rows = [_row("baseline", teacher_fwd_sec=None, malloc_keep=False), _row("fitnet"),
            {k: v for k, v in _row("cwd").items() if k != "malloc_keep"},
            _row("pkd", device="NVIDIA H100 80GB HBM3", malloc_keep=False)]
    lines = rs.brief_table(rows).splitlines()
    assert [ln.split(" | ")[0] for ln in lines[2:6]] == ["| plain student †", "| fitnet", "| cwd †", "| pkd"]
    assert lines[-1].startswith("† measured on a CPU with malloc's defaults (before `train.malloc_keep`")


def test_step_parts_in_units_of_the_student_step_beside_it(rs, tmp_path):
    row = _row("fitnet", step_times=[2.0, 4.0, 2.5], student_times=[1.0, 2.0, 1.0], teacher_times=[0.5, 1.0, 0.25],
               modules_alone_sec=0.25)
    # whole: ratios 2, 2, 2.5 → 2 (2–2.5); teacher: 0.5, 0.5, 0.25 → 0.5; alone 0.25 / median student 1 s;
    # rest 2 − 1 − 0.5 − 0.25
    assert rs.step_parts(row) == (1.0, 0.5, 0.25, 0.25, 2.0, 2.5)
    assert rs.step_parts(dict(row, modules_alone_sec=None))[2:4] == (0.0, 0.5)
    assert rs.step_parts(dict(row, teacher_times=[0.5])) is None and rs.step_parts(_row("baseline")) is None
    quick = dict(row, step_times=[1.1, 1.1, 1.1])  # faster than its parts measured apart: the rest is 0, not < 0
    assert rs.step_parts(quick)[3] == 0.0
    assert rs.plot_parts({"fcos": [_row("baseline")]}, str(tmp_path / "x.png")) is None
    assert not (tmp_path / "x.png").exists()


def test_picture_marks_rows_before_malloc_keep(rs):
    row = _row("fitnet", step_times=[2.0], student_times=[1.0], teacher_times=[0.5], modules_alone_sec=0.25)
    bars = rs.panel_bars({"fcos": [_row("baseline"), row, dict(row, method="cwd", malloc_keep=False)],
                          "retinanet": [_row("baseline")]})
    assert list(bars) == ["fcos"] and [label for label, _, _ in bars["fcos"]] == ["fitnet", "cwd †"]


def test_alone_one_row_per_method_and_subnormal_mode(rs, capsys):
    """real_size.py alone on a tiny DeepLabV3: one row per method and subnormal mode, the process's floating-point
    mode left as it was (timings never asserted)."""
    import torch

    assert rs.main(["alone", "--out", "-", "--settings", "deeplabv3", "--methods", "fitnet", "fgd", "--scale",
                    "0.06", "--iters", "1", "--flush", "both", "--threads", "1"]) == 0
    rows = [ln.split(" | ")[1:3] for ln in capsys.readouterr().out.splitlines() if ln.startswith("| deeplabv3")]
    assert rows == [["fitnet", "flushed"], ["fitnet", "kept"]]  # fgd needs boxes
    assert torch.tensor([1e-39]).mul(1.0).item() != 0.0


def test_cost_counts_each_method_as_the_doctor_does(rs, tmp_path, capsys):
    """real_size.py cost on a tiny DeepLabV3: one row per method with the doctor's split of one forward's FLOPs
    (student, teacher, KD modules), written to cost.md; ACAM-KD's attention counts more than FitNet's aligner."""
    assert rs.main(["cost", "--out", str(tmp_path), "--settings", "deeplabv3", "--methods", "fitnet", "acam_kd", "fgd",
                    "--scale", "0.06", "--threads", "1"]) == 0
    rows = [ln.split(" | ") for ln in capsys.readouterr().out.splitlines() if ln.startswith("| deeplabv3")]
    assert [r[1] for r in rows] == ["fitnet", "acam_kd"]  # fgd needs boxes
    student, teacher, kd = ([float(r[i]) for r in rows] for i in (2, 3, 4))
    assert student[0] == student[1] > 0 and teacher[0] == teacher[1] > 0 and kd[1] > kd[0] >= 0
    assert all(r[6].startswith("classifier [2, 19, ") for r in rows)
    assert (tmp_path / "cost.md").read_text().splitlines()[-2:] == [" | ".join(r) for r in rows]


def test_rest_lines_differences_per_round(rs):
    times = {"step": [(3.0, 1000), (3.5, 1000)], "student": [(1.0, 500), (1.0, 700)],
             "teacher": [(1.0, 10), (1.5, 10)], "student+teacher": [(2.5, 900), (2.5, 900)],
             "alone": [(0.25, 0), (0.25, 0)]}
    lines = rs.rest_lines("fcos", "fitnet", times)
    assert lines[0] == "| fcos | fitnet | step | 3.250 (3.000–3.500) | 0.00 |"
    assert lines[1] == "| fcos | fitnet | student | 1.000 (1.000–1.000) | 0.00 |"
    # both − student − teacher per round: 0.5, 0 → 0.25 s = 25 % of the 1 s student step; step − both: 0.5, 1 → 0.75
    assert lines[-1] == ("fcos / fitnet: both networks in one step cost +0.250 s (+25.0 % of the student step) "
                         "beyond each alone; the KD loss inside the step +0.750 s, alone 0.250 s")


def test_rest_one_row_per_kind(rs, capsys, tmp_path, monkeypatch):
    """real_size.py rest on a tiny DeepLabV3: every kind timed and faults counted (values never asserted); --set
    reaches the Trainer and names the file written."""
    seen = []
    real = rs.setting_trainer

    def spy(name, method, scale, extra=()):
        seen.append(list(extra))
        return real(name, method, scale, extra)

    monkeypatch.setattr(rs, "setting_trainer", spy)
    assert rs.main(["rest", "--out", str(tmp_path), "--settings", "deeplabv3", "--methods", "fitnet", "--scale",
                    "0.06", "--iters", "1", "--threads", "1", "--set", "train.malloc_keep=false"]) == 0
    assert seen == [["train.malloc_keep=false"]]
    out = capsys.readouterr().out
    kinds = [ln.split(" | ")[2] for ln in out.splitlines() if ln.startswith("| deeplabv3")]
    assert kinds == list(rs.REST_KINDS)
    assert "deeplabv3 / fitnet: both networks in one step cost" in out
    text = (tmp_path / "rest_train.malloc_keep-false.md").read_text()
    assert f"(`python benchmarks/real_size.py rest --out {tmp_path} --settings deeplabv3 --methods fitnet --scale 0.06 " \
           "--iters 1 --set train.malloc_keep=false`)" in text
    assert [ln.split(" | ")[2] for ln in text.splitlines() if ln.startswith("| deeplabv3")] == list(rs.REST_KINDS)
    assert text.rstrip().splitlines()[-1].startswith("- deeplabv3 / fitnet: both networks in one step cost")
