"""Two-process CPU DDP (torchrun, gloo): training finishes, both ranks hold identical weights, and the
evaluation gathers every rank's predictions to rank 0."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

SCRIPT = """
import json, os, sys
import torch
import _kd_test_loss
from densekd.engine import Trainer
from densekd.engine import distributed as du

cfg = json.load(open(sys.argv[1]))
_, created = du.setup()
t = Trainer(cfg)
metrics = t.run()
rank = du.rank()
torch.save({"student": t.model.student_state_dict(), "kd": t.model.kd_losses.state_dict(),
            "world": du.world_size(), "metrics": metrics}, os.path.join(sys.argv[2], f"rank{rank}.pth"))
du.cleanup(created)
"""


def test_two_process_cpu_ddp(make_config, teacher_ckpt, tmp_path):
    out = tmp_path / "ddp"
    cfg = make_config(out, teacher=teacher_ckpt, max_iters=2, batch_size=1, eval_every=0)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    (tmp_path / "run.py").write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, HERE]), "OMP_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(tmp_path / "run.py"), str(tmp_path / "cfg.json"), str(tmp_path)]
    r = subprocess.run(cmd, env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    a = torch.load(tmp_path / "rank0.pth", weights_only=True)
    b = torch.load(tmp_path / "rank1.pth", weights_only=True)
    assert a["world"] == b["world"] == 2
    for part in ("student", "kd"):
        assert a[part].keys() == b[part].keys() and a[part]
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    # the weights moved: training happened (rank 0's checkpoint holds them)
    ck = torch.load(out / "checkpoint.pth", weights_only=True)
    assert ck["iteration"] == 2 and ck["sampler"]["world_size"] == 2
    teacher = torch.load(teacher_ckpt, weights_only=True)
    assert not torch.equal(ck["student"]["head.classification_head.cls_logits.weight"],
                           teacher["head.classification_head.cls_logits.weight"])
    # evaluation: each rank ran 2 of the 4 images, rank 0 scored all 4, every rank got the metrics
    assert a["metrics"] == b["metrics"] and "AP" in a["metrics"]
    assert "COCO bbox evaluation on 4 images" in r.stdout + r.stderr
    assert sorted(os.listdir(out)).count("checkpoint.pth") == 1 and not (out / "rank1").exists()
