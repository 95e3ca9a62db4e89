"""densekd bench: the table assembly (pure) on hand-made rows, and one tiny end-to-end run (2 iterations,
2 methods, each in its own subprocess) that checks the table's rows and columns — never timing values."""
from __future__ import annotations

import json
import re

import pytest

from densekd.tools.bench import bench, bench_table
from densekd.cli import main
from densekd.errors import ConfigError

ROWS = [
    {"method": "baseline", "sec_per_iter": 0.5, "peak_mem_bytes": 100 * 2**20, "mem_kind": "cuda",
     "teacher_fwd_sec": None, "iters": 10, "warmup": 2, "device": "GPU X"},
    {"method": "acam_kd", "sec_per_iter": 0.75, "peak_mem_bytes": 250 * 2**20, "mem_kind": "cuda",
     "teacher_fwd_sec": 0.125, "student_step_sec": 0.5, "modules_sec": 0.125, "iters": 10, "warmup": 2,
     "device": "GPU X"},
]


def test_bench_table_ratios_and_columns():
    lines = bench_table(ROWS).splitlines()
    assert lines[0] == ("| method | s/iter | × baseline | peak CUDA mem (MiB) | × baseline | teacher fwd (s) "
                        "| KD modules (s) | modules / student step |")
    assert lines[1] == "|---|---|---|---|---|---|---|---|"
    assert lines[2] == "| baseline | 0.5000 | 1.00× | 100.0 | 1.00× | — | — | — |"
    assert lines[3] == "| acam_kd | 0.7500 | 1.50× | 250.0 | 2.50× | 0.1250 | 0.1250 | +25.0 % |"
    assert "median over 10 iterations after 2 warm-up" in lines[-1] and "GPU X" in lines[-1]
    assert "KD modules = full step − plain student step − teacher forward" in lines[-1]


def test_bench_table_without_baseline_or_zero_memory():
    cpu = [dict(r, mem_kind="cpu_rss_delta") for r in ROWS]
    cpu[0]["peak_mem_bytes"] = 0  # RSS did not grow: no ratio, not a division by zero
    lines = bench_table(cpu).splitlines()
    assert "peak RSS Δ (MiB)" in lines[0]
    assert lines[3].split(" | ")[4] == "—"
    lines = bench_table(cpu[1:]).splitlines()  # no plain-student row
    assert lines[2] == "| acam_kd | 0.7500 | — | 250.0 | — | 0.1250 | 0.1250 | +25.0 % |"


def test_paired_step_ratio_column():
    """× plain step, same process: per-iteration step / the student step interleaved with it, median (min–max);
    absent from the table when no row kept both lists, "—" for a row without them."""
    from densekd.tools.bench import paired_step_ratio

    row = dict(ROWS[1], step_times=[0.75, 0.9, 1.2], student_times=[0.5, 0.5, 0.6])
    assert paired_step_ratio(row) == (1.8, 1.5, 2.0)
    assert paired_step_ratio(ROWS[1]) is None and paired_step_ratio(dict(row, student_times=[0.5])) is None
    lines = bench_table([ROWS[0], row]).splitlines()
    assert lines[0].endswith("| modules / student step | × plain step, same process |")
    assert lines[2].endswith("| — | — |") and lines[3].endswith("| +25.0 % | 1.80× (1.50–2.00) |")
    assert "full step / that plain student step" in lines[-1]
    assert "× plain step" not in bench_table(ROWS)


def test_flops_table_columns_and_rates():
    rows = [dict(ROWS[0], step_flops=2e9, student_step_flops=2e9, teacher_fwd_flops=None, modules_flops=None,
                 modules_floor_flops=None, matmul_gflops=100.0),
            dict(ROWS[1], step_flops=4e9, student_step_flops=2e9, teacher_fwd_flops=1.5e9, modules_flops=0.5e9,
                 modules_floor_flops=0.25e9, matmul_gflops=100.0)]
    table = bench_table(rows)
    lines = table[table.index("| method | step GFLOP"):].splitlines()
    assert lines[0] == ("| method | step GFLOP | GFLOP/s | student step GFLOP | GFLOP/s | teacher fwd GFLOP | GFLOP/s "
                        "| KD modules GFLOP | modules alone s | GFLOP/s | floor GFLOP | floor MB | floor s "
                        "| modules / floor time |")
    # baseline: its step is the student step (0.5 s); acam_kd: 4 GFLOP in 0.75 s, the student's 2 in 0.5 s, the
    # teacher's 1.5 in 0.125 s, the modules' 0.5 in 0.125 s (in-step: no alone run); floor 0.25 GFLOP at
    # 100 GFLOP/s = 2.5 ms → 50×
    assert lines[2] == "| baseline | 2.0 | 4 | 2.0 | 4 | — | — | — | — | — | — | — | — | — |"
    assert lines[3] == "| acam_kd | 4.0 | 5 | 2.0 | 4 | 1.5 | 12 | 0.5 | — | 4 | 0.25 | — | 0.0025 | 50.0× |"
    assert "(100 GFLOP/s, best square product" in lines[-1]
    neg = bench_table([dict(rows[1], modules_sec=-0.01)])  # a modules time below the noise: no rate, no ratio
    assert neg.splitlines()[-3].endswith("| 0.5 | — | — | 0.25 | — | 0.0025 | — |")
    assert "step GFLOP" not in bench_table(ROWS)  # rows measured before FLOPs were counted: no second table


def test_flops_table_modules_alone_and_memory_floor():
    """Measured alone, the modules' own time is the one set against the floor; the floor is the longer of the
    products at the matmul rate and the bytes at the copy rate."""
    row = dict(ROWS[1], step_flops=4e9, student_step_flops=2e9, teacher_fwd_flops=1.5e9, modules_flops=0.5e9,
               modules_floor_flops=0.25e9, matmul_gflops=100.0, modules_alone_sec=0.05,
               modules_alone_times=[0.04, 0.05, 0.09], modules_floor_bytes=200e6, copy_gbps=20.0)
    line = bench_table([row]).splitlines()[-3]
    # 0.5 GFLOP in 0.05 s = 10 GFLOP/s; floor: max(0.25 / 100 = 2.5 ms, 200 MB / 20 GB/s = 10 ms) = 10 ms → 5×
    assert line.endswith("| 0.5 | 0.05 (0.04–0.09) | 10 | 0.25 | 200 | 0.01 | 5.0× |")
    assert "and floor bytes at the copy rate (20.0 GB/s" in bench_table([row]).splitlines()[-1]
    from densekd.tools.bench import floor_seconds

    assert floor_seconds(dict(row, modules_floor_bytes=1e6)) == pytest.approx(2.5e-3)  # products dominate
    assert floor_seconds({"modules_floor_flops": None}) is None


def test_bench_bad_arguments():
    with pytest.raises(ConfigError, match="bench: expected --iters >= 1"):
        bench("x.yaml", ["fitnet"], iters=0)
    with pytest.raises(ConfigError, match="--methods: unknown loss 'fitnett'"):
        bench("x.yaml", ["fitnett"])


def test_bench_end_to_end_two_methods(make_config, teacher_ckpt, tmp_path, capsys):
    import yaml

    cfg = make_config(tmp_path / "o", teacher=teacher_ckpt)
    cfg["train"]["batch_size"] = 1
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "bench"
    rc = main(["bench", str(path), "--methods", "plain", "fitnet", "cwd", "--iters", "2", "--warmup", "0", "--out",
               str(out)])  # the plain student is always measured, first, as baseline, whatever it is called
    assert rc == 0
    table = capsys.readouterr().out
    lines = [ln for ln in table.splitlines() if ln.startswith("| ")]
    assert lines[0].startswith("| method | s/iter | × baseline | peak RSS Δ (MiB) | × baseline | teacher fwd (s) |")
    assert [ln.split(" | ")[0][2:] for ln in lines[1:4]] == ["baseline", "fitnet", "cwd"]
    assert all(len(ln.split(" | ")) == 9 for ln in lines[:4])  # with × plain step, same process (pairs kept)
    assert lines[0].endswith("| × plain step, same process |") and lines[1].endswith("| — |")
    assert re.fullmatch(r"\d+\.\d\d× \(\d+\.\d\d–\d+\.\d\d\) \|", lines[2].split(" | ")[-1])
    assert lines[4].startswith("| method | step GFLOP | GFLOP/s | student step GFLOP |")  # the FLOPs table
    assert [ln.split(" | ")[0][2:] for ln in lines[5:]] == ["baseline", "fitnet", "cwd"]
    assert all(len(ln.split(" | ")) == 14 for ln in lines[4:])
    rows = json.load(open(out / "bench.json"))
    assert [r["method"] for r in rows] == ["baseline", "fitnet", "cwd"]
    assert rows[0]["teacher_fwd_sec"] is None and rows[0]["modules_sec"] is None
    for r in rows[1:]:  # the three paired timings of a KD method are all there (values: never asserted)
        assert r["teacher_fwd_sec"] > 0 and r["student_step_sec"] > 0 and isinstance(r["modules_sec"], float)
    assert all(r["iters"] == 2 and r["mem_kind"] == "cpu_rss_delta" for r in rows)
    # FLOPs: the baseline step is the student step; a KD step = student + teacher + modules (the 1×1 aligners at
    # least); FitNet and CWD perform nothing above their floor
    assert rows[0]["step_flops"] == rows[0]["student_step_flops"] > 0 and rows[0]["teacher_fwd_flops"] is None
    for r in rows[1:]:
        assert r["student_step_flops"] == rows[0]["step_flops"] and r["teacher_fwd_flops"] > 0
        assert r["modules_flops"] == r["step_flops"] - r["student_step_flops"] - r["teacher_fwd_flops"] > 0
        assert r["modules_floor_flops"] == r["modules_flops"] and r["matmul_gflops"] > 0
        # the modules alone: timed as often as the steps, the same products as the in-step difference counts
        assert len(r["modules_alone_times"]) == 2 and r["modules_alone_sec"] > 0 and r["copy_gbps"] > 0
        assert r["modules_alone_flops"] == r["modules_flops"] and r["modules_floor_bytes"] > 0
    assert (out / "bench.md").read_text() == bench_table(rows)


def test_bench_failing_method_is_one_line(make_config, tmp_path):
    cfg = make_config(tmp_path / "o")  # no teacher in the config
    with pytest.raises(ConfigError, match=r"bench: method 'fitnet' failed: model.teacher"):
        from densekd.tools.bench import measure_in_subprocess

        measure_in_subprocess(cfg, "fitnet", 1, 0)


def test_bench_table_guards_column():
    rows = [dict(ROWS[0]), dict(ROWS[1], guards_overhead=0.0061, guards_grad_step=0.55, guards_log_row=0.021,
                                guards_every=100, guards_log_every=50, guards_pairs=30)]
    lines = bench_table(rows).splitlines()
    assert lines[0].endswith("| teacher fwd (s) | KD modules (s) | modules / student step | guards overhead |")
    assert lines[1].count("---") == 9
    assert lines[2].endswith("| — | — | — | — |")
    assert lines[3].endswith("| 0.1250 | 0.1250 | +25.0 % | +0.61 % (gradient-norm step +55 %, log row +2.1 %) |")
    assert lines[-1].startswith("guards overhead: (d_grad / 100 + d_log / 50) / plain step")


def test_bench_measures_the_guards_overhead(make_config, teacher_ckpt, tmp_path):
    cfg = make_config(tmp_path / "o", teacher=teacher_ckpt, method="fitnet", batch_size=1)
    rows = bench(cfg, ["fitnet"], iters=1, warmup=0, guard_pairs=1, log=lambda _: None,
                 overrides=["train.grad_ratio_every=4", "train.log_every=2"])
    assert "guards_overhead" not in rows[0]  # plain: no guards
    import torch

    from densekd.engine import malloc

    for r in rows:  # what each row ran under, for tables from other machines (GPU: also the TF32 switches)
        assert r["amp"] == "none" and r["torch"] == torch.__version__ and "tf32_matmul" not in r
        assert r["malloc_keep"] is (malloc._libc() is not None)  # train.malloc_keep's default, where glibc is
    assert rows[0]["teacher_amp"] is None and rows[1]["teacher_amp"] == "none"
    g = rows[1]
    assert g["guards_pairs"] == 1 and g["guards_every"] == 4 and g["guards_log_every"] == 2
    assert sorted(g["guards_times"]) == ["grad", "off", "off_log", "on_log"]
    assert all(len(v) == 1 and v[0] > 0 for v in g["guards_times"].values())
    assert g["guards_overhead"] == pytest.approx((g["guards_grad_step"] / 4 + g["guards_log_row"] / 2))
    with pytest.raises(ConfigError, match="bench: expected --guards PAIRS >= 1, got -1"):
        bench(cfg, ["fitnet"], guard_pairs=-1)


def test_bench_table_control_column():
    rows = [dict(ROWS[0]), dict(ROWS[1], control_step=0.62, control_score_sec=1.5, control_run=0.071,
                                control_iters=40, control_max_iters=400, control_pairs=30, control_batches=4)]
    lines = bench_table(rows).splitlines()
    assert lines[0].endswith("| modules / student step | control (train.control) |")
    assert lines[2].endswith("| — | — | — | — |")
    assert lines[3].endswith("| +62 % per step for 40 of 400 iterations, scoring 1.50 s: +7.1 % of the run |")
    assert lines[-1].startswith("control: per step, the median of 30 paired differences of engine steps with and "
                                "without the plain twin")


def test_bench_measures_the_control(make_config, teacher_ckpt, tmp_path):
    cfg = make_config(tmp_path / "o", teacher=teacher_ckpt, method="fitnet", batch_size=1)
    rows = bench(cfg, ["fitnet"], iters=1, warmup=0, control_pairs=2, log=lambda _: None,
                 overrides=["train.max_iters=20", "train.control_iters=5"])
    assert "control_step" not in rows[0]  # plain: nothing to control
    c = rows[1]
    assert c["control_pairs"] == 2 and c["control_iters"] == 5 and c["control_max_iters"] == 20
    assert sorted(c["control_times"]) == ["off", "on"] and all(len(v) == 2 for v in c["control_times"].values())
    d = sorted(a - b for a, b in zip(c["control_times"]["on"], c["control_times"]["off"]))
    base = sorted(c["control_times"]["off"])
    assert c["control_step"] == pytest.approx((d[0] + d[1]) / (base[0] + base[1]))
    assert c["control_run"] == pytest.approx((5 * c["control_step"] * (base[0] + base[1]) / 2 + c["control_score_sec"])
                                             / (20 * (base[0] + base[1]) / 2))
    with pytest.raises(ConfigError, match="bench: expected --control PAIRS >= 1, got -1"):
        bench(cfg, ["fitnet"], control_pairs=-1)


def test_bench_builds_a_method_as_the_configs_compare_plan_does(make_config, teacher_ckpt, tmp_path):
    """A config's ``compare:`` plan (its per-method ``set`` and ``kwargs``) reaches the benchmarked run, as it
    reaches compare's runs: without it a method whose plan gives its own pairs (CIRKD on the demo config) failed."""
    from densekd.tools.bench import measure_in_subprocess
    from densekd.tools.compare.plan import plan_from_config, plan_settings

    cfg = make_config(tmp_path / "o", teacher=teacher_ckpt)
    cfg["compare"] = {"set": {"fitnet": ["distill.pairs=[{student: no_such_module}]"]},
                      "kwargs": {"fitnet": {"align": "identity"}}}
    assert plan_settings(plan_from_config(cfg), "fitnet") == (["distill.pairs=[{student: no_such_module}]"],
                                                                {"align": "identity"})
    assert plan_settings(plan_from_config(cfg), "cwd") == ([], {})
    assert plan_settings(None, "fitnet") == ([], {})
    with pytest.raises(ConfigError, match=r"bench: method 'fitnet' failed: .*no_such_module"):
        measure_in_subprocess(cfg, "fitnet", 1, 0)


def test_cpu_as_the_trainer_sets_threads_flushing_and_malloc_and_says_so():
    import torch

    from densekd.engine import malloc
    from densekd.tools.bench import cpu_as_the_trainer

    threads, supported = torch.get_num_threads(), torch.set_flush_denormal(False)  # can this CPU flush them?
    kept = False
    try:
        kept = cpu_as_the_trainer(1)
        assert torch.get_num_threads() == 1
        assert torch.tensor([1e-39]).mul(1.0).item() == 0.0 or not supported  # subnormals flushed where it can
        assert kept == (malloc._libc() is not None)
    finally:
        if kept:
            malloc.restore()
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)
