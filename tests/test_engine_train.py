"""The training engine on CPU: outputs, exact resume, schedules, AMP rules, SIGTERM, checkpoint format."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

import densekd
from densekd.config import ScheduleConfig
from densekd.engine import Trainer, TrainingInterrupted
from densekd.engine.schedule import lr_factor
from densekd.errors import ConfigError

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_plain_training_writes_logs_weights_and_metrics(make_config, tmp_path):
    out = tmp_path / "plain"
    metrics = densekd.train(make_config(out, eval_every=1))  # evaluate after iteration 1 and at the end
    assert set(metrics) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    for f in ("checkpoint.pth", "student_final.pth", "log.csv", "config.yaml", "metrics.json", "coco_bbox.json"):
        assert (out / f).is_file(), f
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(out / "tb"))
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert [r["iter"] for r in rows] == ["1", "2"] and "loss" in rows[0] and "classification" in rows[0]
    evals = [json.loads(line) for line in open(out / "eval.csv")]
    assert [e["iter"] for e in evals] == [1, 2] and evals[1]["AP"] == metrics["AP"]
    ck = _load(out / "checkpoint.pth")  # weights_only=True: tensors and primitive containers only
    assert ck["iteration"] == 2 and ck["kd_losses"] == {} and ck["sampler"] == {"epoch": 1, "batch": 0, "seed": 0, "world_size": 1}
    final = _load(out / "student_final.pth")
    assert final.keys() == ck["student"].keys()
    assert all(torch.equal(final[k], ck["student"][k]) for k in final)
    # a checkpoint of another model in output_dir is one clear error, not a state-dict traceback
    with pytest.raises(ConfigError, match=r"^train.resume: .*checkpoint.pth' does not fit this config \(.*train.resume=false"):
        Trainer(make_config(out), ["model.student.arch=fcos"])
    # CLI evaluation of the final weights reproduces the end-of-training metrics
    assert densekd.evaluate(make_config(out), str(out / "student_final.pth")) == pytest.approx(metrics)


def _states_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_is_bit_exact(make_config, teacher_ckpt, tmp_path):
    """2N iterations == N iterations + resume + N iterations (CPU, distillation, random flips)."""
    sched = {"warmup_iters": 2, "steps": [4], "type": "step"}
    kw = dict(teacher=teacher_ckpt, eval_every=-1, schedule=sched, batch_size=1)
    # 4 images, batch 1 → 4 iterations per epoch: N = 3 resumes mid-epoch, 2N = 6 crosses an epoch
    densekd.train(make_config(tmp_path / "full", max_iters=6, **kw))
    densekd.train(make_config(tmp_path / "split", max_iters=3, **kw))
    mid = _load(tmp_path / "split" / "checkpoint.pth")
    assert mid["iteration"] == 3 and mid["sampler"]["batch"] == 3
    (tmp_path / "split" / ".tmp_killed.pth").write_bytes(b"partial write")  # as a kill -9 during save leaves it
    t = Trainer(make_config(tmp_path / "split", max_iters=6, **kw))
    assert t.iteration == 3 and any("resumed from" in m for m in t.messages)
    t.run()
    assert not (tmp_path / "split" / ".tmp_killed.pth").exists()
    full, split = _load(tmp_path / "full" / "checkpoint.pth"), _load(tmp_path / "split" / "checkpoint.pth")
    assert split["iteration"] == 6
    _states_equal(full["student"], split["student"])
    _states_equal(full["kd_losses"], split["kd_losses"])
    fo, so = full["optimizer"]["state"], split["optimizer"]["state"]
    assert fo.keys() == so.keys() and all(torch.equal(fo[i]["momentum_buffer"], so[i]["momentum_buffer"]) for i in fo)
    assert torch.equal(full["rng"]["torch"], split["rng"]["torch"])
    rows = list(csv.DictReader(open(tmp_path / "split" / "log.csv")))
    assert [r["iter"] for r in rows] == [str(i) for i in range(1, 7)]
    full_rows = list(csv.DictReader(open(tmp_path / "full" / "log.csv")))
    assert [r["loss"] for r in rows] == [r["loss"] for r in full_rows]


def test_schedules():
    s = ScheduleConfig(type="step", warmup_iters=10, warmup_factor=0.001, steps=[50, 80], gamma=0.1)
    assert lr_factor(s, 0, 100) == pytest.approx(0.001)
    assert lr_factor(s, 5, 100) == pytest.approx(0.001 * 0.5 + 0.5)
    assert lr_factor(s, 10, 100) == 1.0 and lr_factor(s, 50, 100) == pytest.approx(0.1)
    assert lr_factor(s, 80, 100) == pytest.approx(0.01)
    assert lr_factor(ScheduleConfig(type="cosine"), 50, 100) == pytest.approx(0.5)
    assert lr_factor(ScheduleConfig(type="cosine"), 100, 100) == pytest.approx(0.0)
    assert lr_factor(ScheduleConfig(type="poly", power=2.0), 50, 100) == pytest.approx(0.25)
    assert lr_factor(ScheduleConfig(type="constant"), 99, 100) == 1.0


def test_bf16_autocast_on_cpu(make_config, tmp_path):
    # Faster R-CNN: at 64 px RetinaNet/FCOS's P7 is 1×1, where CPU bf16 conv backward gave NaN weight
    # gradients in torch 2.14 (intermittently) — a kernel issue, not the engine's.
    out = tmp_path / "bf16"
    densekd.train(make_config(out, arch="faster_rcnn", eval_every=-1, amp="bf16", max_iters=1))
    row = next(csv.DictReader(open(out / "log.csv")))
    assert float(row["loss"]) > 0


def test_adamw_cosine_grad_clip(make_config, tmp_path):
    out = tmp_path / "adamw"
    cfg = make_config(out, eval_every=-1, grad_clip=1.0,
                      optimizer={"type": "adamw", "lr": 1e-3, "weight_decay": 0.05},
                      schedule={"type": "cosine", "warmup_iters": 1})
    densekd.train(cfg)
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert float(rows[0]["lr"]) == pytest.approx(1e-3 * 0.001)  # warmup start
    assert float(rows[1]["lr"]) == pytest.approx(1e-3 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi / 2)).item()))
    assert "grad_norm" in rows[0] and float(rows[0]["grad_norm"]) > 0
    ck = _load(out / "checkpoint.pth")
    assert "exp_avg" in next(iter(ck["optimizer"]["state"].values()))
    m = json.load(open(out / "metrics.json"))  # eval_every=-1: no evaluation, only the run's own numbers
    assert set(m) == {"iteration", "train_seconds", "train_iterations"} and m["iteration"] == 2
    assert m["train_iterations"] == 2 and m["train_seconds"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_fp16_on_cpu_is_a_clear_error(make_config, tmp_path):
    with pytest.raises(ConfigError, match="^train.amp: fp16 needs a CUDA device .*use bf16 or none on CPU$"):
        densekd.train(make_config(tmp_path, amp="fp16"))


def test_batch_larger_than_dataset_and_bad_kwargs(make_config, teacher_ckpt, tmp_path):
    with pytest.raises(ConfigError, match="^train.batch_size: 8 per process × 1 process"):
        densekd.train(make_config(tmp_path, batch_size=8))
    cfg = make_config(tmp_path, teacher=teacher_ckpt)
    cfg["distill"]["kwargs"] = {"bogus": 1}
    cfg["distill"]["method"] = "nope_kd"
    with pytest.raises(densekd.UnknownNameError, match="unknown loss 'nope_kd'"):
        densekd.train(cfg)
    cfg["distill"]["method"] = "acam_kd"
    with pytest.raises(ConfigError, match=r"^distill.kwargs: build_loss\('acam_kd'\): .*bogus"):
        densekd.train(cfg)



def test_teacher_without_weights_is_refused(make_config, teacher_ckpt, tmp_path):
    cfg = make_config(tmp_path, teacher=teacher_ckpt)
    cfg["model"]["teacher"]["checkpoint"] = None
    with pytest.raises(ConfigError, match="^model.teacher: a teacher needs trained weights"):
        densekd.train(cfg)
    del cfg["model"]["teacher"]
    with pytest.raises(ConfigError, match="^model.teacher: required when the config has a distill section"):
        densekd.train(cfg)


def test_explicit_pairs_take_method_defaults(make_config, teacher_ckpt, tmp_path):
    cfg = make_config(tmp_path, teacher=teacher_ckpt, max_iters=1, method="test_mse")
    cfg["distill"]["pairs"] = [{"student": "backbone:0"}, {"student": "backbone:p7", "weight": 2.0}]
    cfg["distill"]["weight"] = 0.5
    t = Trainer(cfg)
    assert [p.loss for p in t.model.pairs] == ["test_mse", "test_mse"]
    assert [p.weight for p in t.model.pairs] == [0.5, 1.0]
    assert sorted(t.model.kd_losses) == ["0|backbone:0", "1|backbone:p7"]
    t.evaluate()  # the Distiller's hooks on the student must not keep the validation features
    assert t.model._s_cap.raw("backbone") == [] and t.model._ctx_cap.raw("transform") == []
    cfg["distill"]["pairs"] = [{"studnt": "backbone:0"}]
    with pytest.raises(ConfigError, match=r"^distill.pairs\[0\]: unknown pair key\(s\) \['studnt'\]"):
        Trainer(cfg)


def test_sigterm_leaves_a_loadable_checkpoint(make_config, teacher_ckpt, tmp_path):
    out = tmp_path / "term"
    cfg = make_config(out, teacher=teacher_ckpt, max_iters=100000, eval_every=-1, checkpoint_every=0)
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, HERE]), "OMP_NUM_THREADS": "1"}
    code = "import _kd_test_loss, sys; from densekd.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", code, "train", str(p)], env=env, cwd=str(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / "log.csv"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and len(open(log).read().splitlines()) >= 3:  # header + 2 iterations
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "stopped by SIGTERM at iteration" in err
    ck = _load(out / "checkpoint.pth")
    assert ck["iteration"] >= 2 and ck["format"] == "densekd-checkpoint-v1"
    assert not [f for f in os.listdir(out) if f.startswith(".tmp_")]
    t = Trainer(cfg, [f"train.max_iters={ck['iteration'] + 1}"])
    assert t.iteration == ck["iteration"]
    t.run()
    assert _load(out / "checkpoint.pth")["iteration"] == ck["iteration"] + 1


def test_worker_processes_and_resume_position_do_not_change_the_data(tiny_coco):
    """Per-sample seeding: the same random flips and batches with 0 or 2 loader workers, and a loader
    started mid-epoch yields exactly the rest of that epoch."""
    from torch.utils.data import DataLoader

    from densekd.data.coco import CocoDetection, collate_detection
    from densekd.engine.data import ResumableBatchSampler, SeededDataset

    ds = SeededDataset(CocoDetection(*tiny_coco, train=True, flip_prob=0.5))

    def batches(workers, epoch=1, start=0):
        sampler = ResumableBatchSampler(len(ds), 1, seed=5)
        sampler.set_position(epoch, start)
        loader = DataLoader(ds, batch_sampler=sampler, num_workers=workers, collate_fn=collate_detection)
        return [(imgs[0], tg[0]["boxes"], tg[0]["image_id"]) for imgs, tg in loader]

    a, b, rest = batches(0), batches(2), batches(0, start=2)
    assert len(a) == len(b) == 4 and len(rest) == 2
    for x, y in zip(a, b):
        assert torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) and x[2] == y[2]
    for x, y in zip(a[2:], rest):
        assert torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) and x[2] == y[2]
    plain = CocoDetection(*tiny_coco)
    seen = [torch.equal(im, plain[plain.ids.index(i)][0]) for e in range(3) for im, _, i in batches(0, epoch=e)]
    assert any(seen) and not all(seen)  # the flip is random, and differs between epochs/samples


def test_num_classes_must_match_the_data(make_config, tmp_path):
    with pytest.raises(ConfigError, match=r"^model.num_classes: expected 2 \(categories in .*annotations.json\), got 5$"):
        densekd.train(make_config(tmp_path), ["model.num_classes=5"])


def _subnormal_survives() -> bool:
    return bool(torch.tensor([1e-39]).mul(1.0).item() != 0.0)


def test_cpu_trainer_flushes_subnormals_while_it_lives(make_config, teacher_ckpt, tmp_path):
    """train.flush_denormal (default true): subnormal floats are zero while a CPU Trainer lives, and only then."""
    if not torch.set_flush_denormal(False) and not _subnormal_survives():
        pytest.skip("this CPU flushes subnormals always")
    assert _subnormal_survives()
    tr = Trainer(make_config(tmp_path / "on", teacher=teacher_ckpt, method="cwd"))
    try:
        if not tr._flushed:
            pytest.skip("torch.set_flush_denormal is not supported on this CPU")
        assert not _subnormal_survives()
    finally:
        tr.close()
    assert _subnormal_survives()  # undone: the user's process keeps its own floating-point mode
    tr = Trainer(make_config(tmp_path / "off", teacher=teacher_ckpt, method="cwd"), ["train.flush_denormal=false"])
    try:
        assert not tr._flushed and _subnormal_survives()
    finally:
        tr.close()


def test_cpu_trainer_keeps_freed_memory_while_it_lives(make_config, teacher_ckpt, tmp_path, monkeypatch):
    """train.malloc_keep (default true): a CPU Trainer asks malloc to keep freed memory and gives the default back
    when it closes; false leaves malloc alone (what malloc then does: tests/test_malloc.py)."""
    from densekd.engine import malloc

    calls = []
    monkeypatch.setattr(malloc, "keep_freed_memory", lambda: calls.append("keep") or True)
    monkeypatch.setattr(malloc, "restore", lambda: calls.append("restore") or True)
    tr = Trainer(make_config(tmp_path / "on", teacher=teacher_ckpt, method="cwd"))
    try:
        assert tr.malloc_kept and calls == ["keep"]
    finally:
        tr.close()
    assert calls == ["keep", "restore"] and not tr.malloc_kept
    tr.close()  # a second close restores nothing twice
    assert calls == ["keep", "restore"]
    tr = Trainer(make_config(tmp_path / "off", teacher=teacher_ckpt, method="cwd"), ["train.malloc_keep=false"])
    try:
        assert not tr.malloc_kept
    finally:
        tr.close()
    assert calls == ["keep", "restore"]


def test_a_trainer_never_closed_gives_its_malloc_hold_back_when_collected(make_config, teacher_ckpt, tmp_path,
                                                                         monkeypatch):
    """A notebook that builds Trainers and drops them without close(): each hold is given back when its Trainer
    is garbage-collected, once (close() after the fact, or the collection after close(), gives nothing twice)."""
    import gc

    from densekd.engine import malloc

    calls = []
    monkeypatch.setattr(malloc, "keep_freed_memory", lambda: calls.append("keep") or True)
    monkeypatch.setattr(malloc, "restore", lambda: calls.append("restore") or True)
    tr = Trainer(make_config(tmp_path / "dropped", teacher=teacher_ckpt, method="fitnet"))
    assert tr.malloc_kept and calls == ["keep"]
    del tr
    gc.collect()
    assert calls == ["keep", "restore"]
    tr = Trainer(make_config(tmp_path / "closed", teacher=teacher_ckpt, method="fitnet"))
    tr.close()
    del tr
    gc.collect()
    assert calls == ["keep", "restore", "keep", "restore"]


def test_malloc_watch_gives_defaults_back_when_memory_keeps_growing(make_config, teacher_ckpt, tmp_path, monkeypatch):
    """A kept heap that keeps growing (GrowthWatch fires): malloc's defaults come back once, with one warning;
    a watch that never fires leaves the run silent."""
    import warnings as w

    from densekd.engine import malloc

    restored = []
    monkeypatch.setattr(malloc, "keep_freed_memory", lambda: True)
    monkeypatch.setattr(malloc, "restore", lambda: restored.append(1) or True)
    monkeypatch.setattr(malloc, "_holders", 0)  # no other run holds it (Trainers of other tests may)
    real = malloc.GrowthWatch
    monkeypatch.setattr(malloc, "GrowthWatch", lambda **kw: real(settle=1, factor=0.0, **kw))  # every step "grew"
    tr = Trainer(make_config(tmp_path / "grow", teacher=teacher_ckpt, method="fitnet"), ["train.max_iters=3"])
    with pytest.warns(UserWarning, match=r"train.malloc_keep: resident memory grew from .* malloc's defaults are "
                                         r"back for the rest of this run"):
        tr.run()
    assert restored == [1] and not tr.malloc_kept and tr.malloc_watch is None
    tr.close()
    assert restored == [1]  # not restored twice
    monkeypatch.setattr(malloc, "GrowthWatch", lambda **kw: real(settle=1, factor=1e9, **kw))
    tr = Trainer(make_config(tmp_path / "flat", teacher=teacher_ckpt, method="fitnet"), ["train.max_iters=3"])
    with w.catch_warnings(record=True) as caught:
        w.simplefilter("always")
        tr.run()
    tr.close()
    assert not [c for c in caught if "malloc_keep" in str(c.message)] and restored == [1, 1]


def test_malloc_keep_changes_no_number(make_config, teacher_ckpt, tmp_path):
    """train.malloc_keep moves where tensors live, not what they hold: the same distilled run with it on and off
    ends with the same student, bit for bit."""
    finals = []
    for keep in ("true", "false"):
        out = tmp_path / keep
        tr = Trainer(make_config(out, teacher=teacher_ckpt, method="fitnet"),
                     ["train.max_iters=3", f"train.malloc_keep={keep}"])
        try:
            assert tr.malloc_kept == (keep == "true" and malloc_available())
            tr.run()
        finally:
            tr.close()
        finals.append(_load(out / "student_final.pth"))
    _states_equal(*finals)


def malloc_available() -> bool:
    from densekd.engine import malloc

    return malloc._libc() is not None
