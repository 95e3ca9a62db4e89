"""densekd.engine.malloc: with malloc's defaults every round of large blocks is faulted in afresh; with freed
memory kept, rounds after the first few fault in (almost) nothing; restore() gives the kept memory back. Run in
a subprocess: the settings are the whole process's."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from densekd.engine import malloc

SCRIPT = r"""
import json, resource, sys
import torch
from densekd.engine import malloc

def rounds(n=6, sizes_mib=(64, 32, 8, 64)):  # a step's worth of activations, freed at its end
    out = []
    for _ in range(n):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        xs = [torch.ones(m * 2**18) for m in sizes_mib]
        del xs
        out.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) * 4096 / (sum(sizes_mib) * 2**20))
    return out

res = {"default": rounds()}
res["kept"] = malloc.keep_freed_memory()
res["keep"] = rounds()
before = malloc.resident_bytes()
res["restored"] = malloc.restore()
res["given_back"] = (before - malloc.resident_bytes()) / 2**20
print(json.dumps(res))
"""


def test_kept_memory_is_not_faulted_in_again():
    if malloc._libc() is None:
        pytest.skip("no glibc here: malloc_keep does nothing (tested below)")
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["kept"] and res["restored"]
    assert all(f > 0.7 for f in res["default"])  # the blocks of 32 MiB or more are mapped and faulted in afresh
    assert res["keep"][-1] < 0.1 and res["keep"][-2] < 0.1  # once the heap has settled, freed blocks are reused
    assert res["given_back"] > 100  # restore() trims the kept heap: MiB no longer resident


def test_no_glibc_does_nothing(monkeypatch):
    monkeypatch.setattr(malloc.sys, "platform", "darwin")
    assert malloc._libc() is None
    assert malloc.keep_freed_memory() is False and malloc.restore() is False


def _script():
    from _benchmark_script import load_benchmark

    return load_benchmark("malloc_keep")


def test_benchmark_writes_both_rows(tmp_path):
    """benchmarks/malloc_keep.py: one row per allocator mode, each from its own process (values not asserted)."""
    out = tmp_path / "mk.md"
    assert _script().main(["--out", str(out), "--steps", "1", "--short", "64", "--long", "64", "--threads", "1"]) == 0
    rows = [ln for ln in out.read_text().splitlines() if ln.startswith("| defaults") or ln.startswith("| kept")]
    assert [r.split(" | ")[0] for r in rows] == ["| defaults", "| kept (train.malloc_keep)"]
    assert "--steps 1 --short 64 --long 64 --threads 1`" in out.read_text()


def test_benchmark_rejects_sizes_off_the_grid(capsys):
    with pytest.raises(SystemExit):
        _script().main(["--out", "-", "--short", "100"])
    assert "--short must be a multiple of 32 and --long at least --short" in capsys.readouterr().err


def test_each_keep_is_undone_by_one_restore(monkeypatch):
    """Two holders (two Trainers alive): the defaults come back only when the last one restores."""
    calls = []

    class FakeLibc:
        def mallopt(self, param, value):
            calls.append((param, value))
            return 1

        def malloc_trim(self, pad):
            calls.append(("trim", pad))
            return 1

    monkeypatch.setattr(malloc, "_libc", lambda: FakeLibc())
    monkeypatch.setattr(malloc, "_holders", 0)
    assert malloc.keep_freed_memory() and malloc.keep_freed_memory()
    assert calls == [(malloc.M_MMAP_MAX, 0), (malloc.M_TRIM_THRESHOLD, -1)] * 2
    calls.clear()
    assert malloc.restore() and calls == []  # the other holder keeps it
    assert malloc.restore()
    assert calls == [(malloc.M_MMAP_MAX, malloc.DEFAULT_MMAP_MAX),
                     (malloc.M_TRIM_THRESHOLD, malloc.DEFAULT_TRIM_THRESHOLD), ("trim", 0)]


def test_growth_watch_fires_once_past_its_factor(monkeypatch):
    restored = []
    monkeypatch.setattr(malloc, "restore", lambda: restored.append(1) or True)
    monkeypatch.setattr(malloc, "_holders", 0)  # no other run holds it (Trainers of other tests may)
    watch = malloc.GrowthWatch(settle=2, factor=1.5)
    assert watch.step(2e9) is None and watch.step(4e9) is None  # settling: the base is the last of these, 4 GB
    assert watch.step(5.9e9) is None and restored == []  # under 1.5x
    msg = watch.step(6.1e9)
    assert msg.startswith("train.malloc_keep: resident memory grew from 4.00 GB after step 2 to 6.10 GB after "
                          "step 4 (more than 1.5x)") and msg.endswith("Set train.malloc_keep=false to start so")
    assert restored == [1] and watch.step(9e9) is None and restored == [1]  # once
    assert "malloc's defaults are back for the rest of this run" in msg


def test_growth_watch_says_when_another_run_still_keeps_memory(monkeypatch):
    """Two Trainers in one process: the watch of one drops only its own hold, and its warning says so."""
    monkeypatch.setattr(malloc, "restore", lambda: True)
    monkeypatch.setattr(malloc, "_holders", 1)  # the other Trainer's hold, still there after this one's restore
    watch = malloc.GrowthWatch(settle=1, factor=1.5)
    assert watch.step(1e9) is None
    msg = watch.step(2e9)
    assert "malloc's defaults come back only when the 1 other run(s) in this process" in msg
    assert "are back for the rest of this run" not in msg


def test_resident_bytes_reads_this_process():
    if malloc._libc() is None:
        pytest.skip("Linux only")
    assert malloc.resident_bytes() > 10 * 2**20
