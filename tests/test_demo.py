"""``densekd demo``: the --quick smoke run end to end, teacher cache, metric, models and bad arguments."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from densekd.cli import main
from densekd.demo import DemoConfig, TinySegNet, evaluate_miou, run_demo
from densekd.errors import ConfigError

FIGURES = ("curves", "spatial_masks", "channel_masks", "mask_stats")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    return root, ["demo", "--quick", "--seeds", "2", "--cache-dir", str(root / "cache"), "--out", str(root / "out"),
                  "--threads", "1"]


def test_quick_demo_end_to_end(quick_run, capsys):
    root, argv = quick_run
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "SMOKE RUN" in text
    for row in ("| teacher", "| student ", "| student + ACAM-KD", "| gain (ACAM-KD − plain)"):
        assert row in text
    assert "±" in text and "2 seed(s)" in text and "std" in text  # mean ± std over the 2 seeds
    summary = json.loads((root / "out" / "summary.json").read_text())
    assert len(summary["results"]["student"]) == len(summary["results"]["student + ACAM-KD"]) == 2
    for key in FIGURES:
        path = summary["figures"][key]
        assert path in text  # the output names every picture
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size[0] > 100
    # the ACAM-KD student logged its masks' statistics at every evaluation point
    stats = summary["results"]["student + ACAM-KD"][0]["mask_stats"]
    assert [it for it, _ in stats] == [1, 10, 20]  # first step, then every evaluation point
    assert {"classifier/spatial/mean", "classifier/channel/dice", "trunk/spatial/entropy"} <= set(stats[0][1])
    # same architecture, so the same parameter count: ACAM-KD modules are not part of the student
    assert summary["results"]["student"][0]["params"] == summary["results"]["student + ACAM-KD"][0]["params"]


def test_quick_demo_reuses_cached_teacher(quick_run, capsys):
    root, argv = quick_run
    main(argv)  # builds (or reuses, if the first test ran) the teacher
    capsys.readouterr()
    main(argv[:3] + ["1"] + argv[4:])
    text = capsys.readouterr().out
    assert "teacher: loaded from cache" in text and "| teacher (cached)" in text
    assert "data: " in text and "(cached;" in text


def test_tiny_segnet_shapes():
    m = TinySegNet(4)
    x = torch.randn(2, 3, 32, 32)
    assert m(x).shape == (2, 11, 32, 32)
    assert m.classifier(m.head(m.trunk(m.stem(x)))).shape == (2, 11, 8, 8)  # distilled logits at stride 4


class _Oracle(torch.nn.Module):
    def __init__(self, y, wrong_class=None):
        super().__init__()
        self.y, self.wrong = y, wrong_class

    def forward(self, x):
        y = self.y[: len(x)].clone()
        if self.wrong is not None:
            y[y == self.wrong] = 0
        return torch.nn.functional.one_hot(y, 11).permute(0, 3, 1, 2).float()


def test_evaluate_miou():
    y = torch.zeros(2, 8, 8, dtype=torch.long)
    y[0, :4, :4] = 3
    y[1, 4:, 4:] = 7
    x = torch.zeros(2, 3, 8, 8)
    assert evaluate_miou(_Oracle(y), x, y) == pytest.approx(100.0)
    # class 7 predicted as background: IoU(7) = 0, IoU(0) = 96/(96 + 16), IoU(3) = 1 → mean of the 3 classes seen
    assert evaluate_miou(_Oracle(y, wrong_class=7), x, y) == pytest.approx(100 * (1 + 96 / 112 + 0) / 3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(task="classification"), "demo: --task must be 'segmentation' or 'detection', got 'classification'"),
        (dict(task="detection"), "demo: --task detection is not available yet"),
        (dict(seeds=0), "demo: --seeds must be ≥ 1, got 0"),
        (dict(eval_split="test"), "demo: --eval-split must be 'val' or 'dev', got 'test'"),
        (dict(kd_levels=("logits", "fpn")), "demo: kd_levels must be a non-empty subset of ['feature', 'logits']"),
        (dict(student_iters=0), "demo: student_iters must be ≥ 1, got 0"),
    ],
)
def test_bad_config(tmp_path, kwargs, message):
    cfg = DemoConfig.quick_config(cache_dir=str(tmp_path), out_dir=str(tmp_path / "out"), **kwargs)
    with pytest.raises(ConfigError) as exc:
        run_demo(cfg)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_cli_rejects_unknown_task(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--task", "nope"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def test_optimizer_groups_scale_only_the_mask_modules():
    from densekd import losses  # noqa: F401  (registers acam_kd)
    from densekd.demo import _ce, _pairs, make_optimizer
    from densekd.distiller import Distiller

    cfg = DemoConfig.quick_config(mask_lr_scale=0.1, lr=1e-3)
    student, teacher = TinySegNet(4), TinySegNet(8)
    d = Distiller(student, teacher, _pairs(cfg), task_loss=_ce, example_inputs=(torch.randn(2, 3, 32, 32),))
    opt = make_optimizer(cfg, student, d)
    main_group, mask_group = opt.param_groups
    assert main_group["lr"] == pytest.approx(1e-3) and mask_group["lr"] == pytest.approx(1e-4)
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    named = dict(d.kd_losses.named_parameters())
    align = {id(p) for n, p in named.items() if ".align." in n}
    assert ids(student.parameters()) | align == ids(main_group["params"])
    assert ids(mask_group["params"]) == ids(named.values()) - align and mask_group["params"]
    assert len(make_optimizer(cfg, student).param_groups) == 1
