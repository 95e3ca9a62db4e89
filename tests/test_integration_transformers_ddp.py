"""Two-process CPU DDP (torchrun, gloo) of DistillationTrainer: the ranks see different batches, so their KD
modules' gradients differ; after 2 steps both ranks hold the same student (DDP) and the same KD modules (the
trainer's averaging)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

SCRIPT = """
import os, sys
import torch
from torch.utils.data import Dataset
from transformers import SegformerConfig, SegformerForSemanticSegmentation, TrainingArguments
from densekd.integrations.transformers import DistillationTrainer


class Data(Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {"pixel_values": torch.rand(3, 32, 32, generator=g), "labels": torch.randint(0, 3, (32, 32), generator=g)}


def model(width, seed):
    torch.manual_seed(seed)
    return SegformerForSemanticSegmentation(SegformerConfig(
        depths=[1, 1, 1, 1], sr_ratios=[8, 4, 2, 1], hidden_sizes=[width, 2 * width, 3 * width, 4 * width],
        num_attention_heads=[1, 1, 1, 1], decoder_hidden_size=16, num_labels=3))


out = sys.argv[1]
args = TrainingArguments(os.path.join(out, "run"), max_steps=2, per_device_train_batch_size=2, report_to="none",
                         use_cpu=True, disable_tqdm=True, save_strategy="no", ddp_backend="gloo", seed=0)
tr = DistillationTrainer(model=model(8, 0), teacher=model(16, 1), method="fitnet", check=False, args=args,
                         train_dataset=Data())
local = []
average = tr._average_kd_gradients


def spy():
    local.append({i: p.grad.detach().clone() for i, p in enumerate(tr.kd_parameters())})
    average()


tr._average_kd_gradients = spy
tr.train()
rank = tr.args.process_index
torch.save({"world": tr.args.world_size, "student": tr.model.state_dict(), "kd": tr.distiller.kd_losses.state_dict(),
            "local": local}, os.path.join(out, f"rank{rank}.pth"))
"""


def test_two_process_cpu_ddp(tmp_path):
    (tmp_path / "run.py").write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(tmp_path / "run.py"), str(tmp_path)]
    r = subprocess.run(cmd, env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    a = torch.load(tmp_path / "rank0.pth", weights_only=True)
    b = torch.load(tmp_path / "rank1.pth", weights_only=True)
    assert a["world"] == b["world"] == 2
    assert len(a["local"]) == len(b["local"]) == 2  # averaged once per optimizer step
    assert any(not torch.equal(a["local"][0][i], b["local"][0][i]) for i in a["local"][0])  # different batches
    # BatchNorm running statistics are each rank's own after its last forward (DDP broadcasts rank 0's buffers at
    # the start of every forward, as for any DDP model): the parameters and the KD modules must agree
    stats = ("running_mean", "running_var", "num_batches_tracked")
    for part in ("student", "kd"):
        assert a[part].keys() == b[part].keys() and a[part]
        for k in a[part]:
            if part == "student" and k.endswith(stats):
                continue
            assert torch.equal(a[part][k], b[part][k]), (part, k)
