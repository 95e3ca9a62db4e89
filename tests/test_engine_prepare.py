"""The preparation stage wired into the engine (densekd/engine/prepare.py, densekd/losses/fitting.py): MasKD's
receptive tokens and FreeKD's frequency prompts fitted on the frozen teacher (its task loss + Dice) before
distillation, for detection (RetinaNet) and segmentation; the generic level replacement hook."""
from __future__ import annotations

import os
import warnings
from collections import OrderedDict

import pytest
import torch
from torch import nn

from densekd.engine.prepare import default_teacher_task_loss, loss_mode, replace_level
from densekd.engine.trainer import Trainer


class _Multi(nn.Module):
    """A dict-output 'fpn' and a head called once per level."""

    def __init__(self) -> None:
        super().__init__()
        self.fpn = _Fpn()
        self.head = nn.Conv2d(2, 1, 1)

    def forward(self, x):
        return [self.head(v) for v in self.fpn(x).values()]


class _Fpn(nn.Module):
    def forward(self, x):
        return OrderedDict([("a", x), ("b", x[..., ::2, ::2])])


def test_replace_level_dict_and_calls():
    torch.manual_seed(0)
    m = _Multi()
    x = torch.rand(1, 2, 4, 4)
    ref = m(x)
    new_b = torch.zeros(1, 2, 2, 2)
    with replace_level(m, "fpn", 1, new_b):  # level 1 of the FPN dict = key "b"
        out = m(x)
    assert torch.equal(out[0], ref[0]) and torch.allclose(out[1], m.head.bias.view(1, 1, 1, 1).expand(1, 1, 2, 2))
    with replace_level(m, "head", 0, torch.ones(1, 1, 4, 4)):  # first call of a shared head
        out = m(x)
    assert torch.equal(out[0], torch.ones(1, 1, 4, 4)) and torch.equal(out[1], ref[1])
    with replace_level(m, "fpn:b", 0, new_b):  # keyed spec: its only level
        out = m(x)
    assert not torch.equal(out[1], ref[1])
    assert torch.equal(m(x)[1], ref[1])  # hook removed after the block


def test_loss_mode_keeps_norm_layers_in_eval():
    m = nn.Sequential(nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1), nn.Dropout(0.5))
    m.eval()
    with loss_mode(m):
        assert m.training and not m[1].training and not m[2].training
    assert not m.training and not m[0].training


def _tokens(trainer):
    mods = [m for m in trainer.model.kd_losses.values()]
    return [torch.cat([p.detach().flatten() for p in m.ascm.parameters()]) for m in mods], mods


def test_detection_maskd_tokens_fitted_before_training(make_config, teacher_ckpt, tmp_path, capsys):
    cfg = make_config(tmp_path / "o", teacher=teacher_ckpt, max_iters=1)
    cfg["distill"] = {"method": "maskd", "kwargs": {"num_masks": 2, "masks": "spatial", "fit_steps": 2,
                                                    "fit_lr": 0.05}}
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # "never fitted" would be raised here
        tr = Trainer(cfg)
        init, mods = _tokens(tr)
        assert len(mods) == 5 and not any(m.prepared for m in mods)  # P3–P7, one MasKD module each
        tr.run()  # fits first, then trains
        after, _ = _tokens(tr)
    tr.close()
    assert all(m.prepared for m in mods)
    assert all(not p.requires_grad for m in mods for p in m.ascm.parameters())
    printed = capsys.readouterr().out
    assert printed.count("prepared MasKD at") == 5 and "2 steps" in printed
    assert not any(torch.allclose(a, b) for a, b in zip(after, init))  # the tokens moved
    state = torch.load(os.path.join(tmp_path / "o", "checkpoint.pth"), weights_only=False)
    assert all(bool(v) for k, v in state["kd_losses"].items() if k.endswith("tokens_fitted"))
    # a resumed run does not fit again and keeps the saved tokens
    tr2 = Trainer(cfg, ["train.max_iters=2"])
    tr2.run()
    again, _ = _tokens(tr2)
    tr2.close()
    assert "prepared MasKD" not in capsys.readouterr().out
    assert all(torch.equal(a, b) for a, b in zip(after, again))


def cityscapes_config(tmp_path, method, kwargs, num_images=2, size=32):
    """PSPNet R18 student, DeepLabV3 R18 teacher (random, one block per stage, 19 classes) on generated
    Cityscapes-layout images, one training iteration after the preparation stage."""
    from densekd.data.segmentation import make_toy_segmentation

    make_toy_segmentation(tmp_path / "cs", "cityscapes", num_images=num_images, size=(size, size), num_classes=3)
    tiny = {"layers": [1, 1, 1, 1], "num_classes": 19, "decoder_channels": 16}
    return {
        "task": "segmentation", "output_dir": str(tmp_path / "o"),
        "model": {"student": {"arch": "pspnet", "backbone": "resnet18", **tiny},
                  "teacher": {"arch": "deeplabv3", "backbone": "resnet18", **tiny, "random_init": True}},
        "data": {"format": "cityscapes", "root": str(tmp_path / "cs"), "crop_size": [size, size]},
        "distill": {"method": method, "kwargs": kwargs},
        "train": {"max_iters": 1, "batch_size": 2, "num_workers": 0, "eval_every": -1, "checkpoint_every": 0},
    }


@pytest.mark.parametrize("method, size, name, steps, check", [
    ("maskd", 32, "MasKD", 3, lambda mod: mod.num_masks == 19),  # M = number of classes
    ("freekd", 40, "FreeKD", 2, lambda mod: mod.num_prompts == 6),  # logits 5×5; the official T, not the classes
])
def test_segmentation_default_pairs_fitted_with_cross_entropy(tmp_path, capsys, method, size, name, steps, check):
    cfg = cityscapes_config(tmp_path, method, {"fit_steps": steps, "fit_lr": 0.05}, size=size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # random teacher
        warnings.simplefilter("error", RuntimeWarning)  # "never fitted" would be raised here
        tr = Trainer(cfg)
        (mod,) = tr.model.kd_losses.values()
        assert not mod.prepared and check(mod)
        tr.run()
    tr.close()
    assert mod.prepared
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(f"prepared {name}")][0]
    assert f"{steps} steps" in line


def test_teacher_task_loss_needs_the_replaced_level():
    """prepare_kd_losses on a plain Distiller (any capture spec the teacher's loss flows through, here
    layer4); a teacher loss that does not depend on the replaced level is an error, not random tokens."""
    from densekd import Distiller, Pair
    from densekd.engine.prepare import prepare_kd_losses
    from densekd.errors import ConfigError
    from densekd.tasks import get_task

    from densekd.models.detection import build_detector

    task = get_task("detection")
    s, t = (build_detector("retinanet", "resnet18", num_classes=2, min_size=64, max_size=64) for _ in range(2))
    x = [torch.rand(3, 64, 64)]
    tg = [{"boxes": torch.tensor([[2.0, 2.0, 30.0, 30.0]]), "labels": torch.tensor([1])}]
    d = Distiller(s, t, [Pair("backbone.body.layer4", loss="maskd",
                                             kwargs={"num_masks": 2, "fit_steps": 1})], example_inputs=(x,))
    prepare_kd_losses(d, task, lambda: iter([((x,), tg)]), log=lambda m: None)
    assert all(m.prepared for m in d.kd_losses.values())
    d2 = Distiller(s, t, [Pair("backbone.body.layer4", loss="maskd", kwargs={"num_masks": 2})],
                   example_inputs=(x,))
    with pytest.raises(ConfigError, match="does not depend on its 'backbone.body.layer4' level"):
        prepare_kd_losses(d2, _NoGradTask(task), lambda: iter([((x,), tg)]), log=lambda m: None)


class _NoGradTask:
    def __init__(self, task):
        self.task = task

    def task_loss(self):
        return None

    def teacher_task_loss(self, teacher, inputs, targets):
        with torch.no_grad():
            return default_teacher_task_loss(self.task, teacher, inputs, targets)


DDP_SCRIPT = """
import json, os, sys, warnings
import torch
from densekd.engine import Trainer
from densekd.engine import distributed as du

warnings.simplefilter("ignore")
cfg = json.load(open(sys.argv[1]))
_, created = du.setup()
t = Trainer(cfg)
t.run()
torch.save(t.model.kd_losses.state_dict(), os.path.join(sys.argv[2], f"kd{du.rank()}.pth"))
du.cleanup(created)
"""


def test_two_process_ddp_ranks_share_rank0_tokens(tmp_path):
    """Each rank fits on its own data shard; afterwards every rank holds rank 0's tokens."""
    import json
    import subprocess
    import sys

    cfg = cityscapes_config(tmp_path, "maskd", {"fit_steps": 2, "fit_lr": 0.05}, num_images=4)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    (tmp_path / "run.py").write_text(DDP_SCRIPT)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(tmp_path / "run.py"), str(tmp_path / "cfg.json"), str(tmp_path)]
    r = subprocess.run(cmd, env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = (torch.load(tmp_path / f"kd{i}.pth", weights_only=True) for i in (0, 1))
    assert a.keys() == b.keys() and any(k.endswith("tokens_fitted") and bool(v) for k, v in a.items())
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (r.stdout + r.stderr).count("prepared MasKD") == 1  # rank 0 reports


def _final_student(out):
    return torch.load(os.path.join(out, "student_final.pth"), map_location="cpu", weights_only=False)


@pytest.mark.parametrize("method", ["freekd", "maskd"])
def test_prepare_cache_reuses_a_fit_bit_for_bit(tmp_path, capsys, method):
    """train.prepare_cache: the first run fits and keeps the module; a run that differs only in distill.weight loads
    it (no fitting) and ends with the very weights of a run that fits; another seed (another initialisation) fits
    anew; a damaged entry is refitted."""
    cache = str(tmp_path / "cache")
    base = cityscapes_config(tmp_path, method, {"fit_steps": 2, "fit_lr": 0.05}, size=40)
    base["train"].update({"max_iters": 2, "prepare_cache": cache})

    def run(name, **over):
        cfg = {**base, "output_dir": str(tmp_path / name), **{k: v for k, v in over.items() if k in ("seed",)}}
        cfg["train"] = {**base["train"], **over.get("train", {})}
        cfg["distill"] = {**base["distill"], "weight": over.get("weight", 1.0)}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # random teacher
            tr = Trainer(cfg)
            tr.run()
            mods = list(tr.model.kd_losses.values())
            tr.close()
        out = capsys.readouterr().out
        return mods, [ln for ln in out.splitlines() if ln.startswith(("prepared ", "preparation cache:"))]

    _, lines = run("fit")
    assert len(lines) == 1 and "on the frozen teacher: 2 steps" in lines[0] and "kept in the preparation cache" in lines[0]
    assert len(os.listdir(cache)) == 1
    mods, lines = run("hit", weight=0.5)
    assert len(lines) == 1 and "from the preparation cache" in lines[0] and "2 steps" in lines[0]
    assert all(m.prepared for m in mods)
    assert all(not p.requires_grad for m in mods for n, p in m.named_parameters() if n in ("prompts", "tokens"))
    _, _ = run("nocache", weight=0.5, train={"prepare_cache": None})
    a, b = _final_student(tmp_path / "hit"), _final_student(tmp_path / "nocache")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # the cached fit is the fit
    base["data"] = {**base["data"], "val_split": "train"}  # what is evaluated does not change the fit
    _, lines = run("other_eval")
    assert "from the preparation cache" in lines[0]
    _, lines = run("seed1", seed=1)
    assert "on the frozen teacher" in lines[0] and len(os.listdir(cache)) == 2
    for f in os.listdir(cache):
        with open(os.path.join(cache, f), "wb") as fh:
            fh.write(b"not a checkpoint")
    _, lines = run("damaged")
    assert lines[0].startswith("preparation cache: ") and "is unreadable" in lines[0] and lines[0].endswith("fitting again")
    assert "on the frozen teacher" in lines[1] and "kept in the preparation cache" in lines[1]
