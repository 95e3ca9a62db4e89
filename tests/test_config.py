"""Config loading: validated dataclasses, one-line errors naming the dotted key, key=value overrides."""
from __future__ import annotations

import pytest

from densekd.cli import main
from densekd.config import ConfigError, apply_overrides, load_config, parse_assignment


def test_valid_config_gets_defaults_and_task_sections(make_config, tmp_path):
    cfg = load_config(make_config(tmp_path))
    assert cfg.task == "detection"
    assert cfg.train.optimizer.type == "sgd" and cfg.train.optimizer.momentum == 0.9
    assert cfg.model.student.arch == "retinanet" and cfg.model.teacher is None
    assert cfg.distill is None and cfg.eval.batch_size == 1


def test_overrides_are_yaml_scalars_on_dotted_keys(make_config, tmp_path):
    cfg = load_config(make_config(tmp_path), ["train.optimizer.lr=0.02", "train.schedule.steps=[10, 20]",
                                               "train.grad_clip=null", "train.optimizer.weight_decay=1e-4",
                                               "model.student.backbone=resnet34"])
    assert cfg.train.optimizer.lr == 0.02 and isinstance(cfg.train.optimizer.lr, float)
    assert cfg.train.schedule.steps == [10, 20]
    assert cfg.train.grad_clip is None
    assert cfg.train.optimizer.weight_decay == 1e-4  # PyYAML reads "1e-4" as a string; accepted as float
    assert cfg.model.student.backbone == "resnet34"


def test_override_creates_a_missing_section(make_config, tmp_path):
    cfg = load_config(make_config(tmp_path), ["distill.method=test_mse", "distill.kwargs.num_masks=6"])
    assert cfg.distill is not None and cfg.distill.method == "test_mse" and cfg.distill.kwargs == {"num_masks": 6}
    assert load_config(make_config(tmp_path, teacher="x"), ["distill=null"]).distill is None


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.optimizer.lr=abc", "train.optimizer.lr: expected float, got 'abc'"),
        ("train.max_iters=1.5", "train.max_iters: expected int, got 1.5"),
        ("train.resume=yes please", "train.resume: expected bool (true/false), got 'yes please'"),
        ("train.amp=fp8", "train.amp: expected one of 'none', 'bf16', 'fp16', got 'fp8'"),
        ("train.optimizr.lr=0.1", "train.optimizr: unknown key (did you mean 'optimizer'?)"),
        ("model.student.archh=fcos", "model.student.archh: unknown key (did you mean 'arch'?)"),
        ("model.student.arch=yolo", "model.student.arch: expected one of retinanet, fcos, faster_rcnn, got 'yolo'"),
        ("data.label_map=ids", "data.label_map: expected one of contiguous, category_id, got 'ids'"),
        ("data.flip_prob=[1]", "data.flip_prob: expected float, got a list"),
        ("train.schedule.steps=[5, x]", "train.schedule.steps[1]: expected int, got 'x'"),
        ("train.batch_size=0", "train.batch_size: expected a positive int, got 0"),
        ("task=detektion", "task: unknown task 'detektion'; did you mean 'detection'?"),
    ],
)
def test_bad_values_are_one_line_naming_the_key(make_config, tmp_path, override, message):
    with pytest.raises(Exception) as e:
        load_config(make_config(tmp_path), [override])
    assert str(e.value).startswith(message), str(e.value)
    assert "\n" not in str(e.value)


def test_bad_override_syntax(make_config, tmp_path):
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(make_config(tmp_path), ["train.max_iters"])
    with pytest.raises(ConfigError, match=r"^override 'train.schedule.steps=\[1': the value is not valid YAML \("):
        load_config(make_config(tmp_path), ["train.schedule.steps=[1"])


def test_parse_assignment_is_the_one_key_value_reader():
    assert parse_assignment("train.max_iters=5", "override") == ("train.max_iters", 5)
    assert parse_assignment(" a.b = [1, 2]", "override") == ("a.b", [1, 2])
    assert parse_assignment("distill=null", "override") == ("distill", None)
    assert parse_assignment("x=", "override") == ("x", None)
    assert parse_assignment("s=a=b", "override") == ("s", "a=b")  # the first '=' splits
    for bad in ("train.max_iters", "=5", " =5"):
        with pytest.raises(ConfigError) as e:
            parse_assignment(bad, "--kwargs", "METHOD.KEY=VALUE, e.g. maskd.fit_steps=200")
        assert str(e.value) == f"--kwargs {bad!r}: expected METHOD.KEY=VALUE, e.g. maskd.fit_steps=200"
    with pytest.raises(ConfigError) as e:
        parse_assignment("k=[1", "override")
    assert str(e.value).startswith("override 'k=[1': the value is not valid YAML (") and "\n" not in str(e.value)


def test_yolo_command_words_use_the_same_reader():
    from densekd.integrations.yolo_cli import _train_args

    assert _train_args(["epochs=3", "amp=false", "name=x"]) == {"epochs": 3, "amp": False, "name": "x"}
    with pytest.raises(ConfigError, match=r"^Ultralytics train argument 'epochs': expected key=value, e\.g\. epochs=100$"):
        _train_args(["epochs"])
    with pytest.raises(ConfigError, match=r"^--kwargs 'num_masks': expected key=value, e\.g\. num_masks=6$"):
        _train_args(["num_masks"], "--kwargs", "num_masks=6")


def test_missing_required_sections(tmp_path):
    with pytest.raises(ConfigError, match="^task: required key is missing"):
        load_config({"model": {}, "data": {}})
    with pytest.raises(ConfigError, match="^model: required key is missing"):
        load_config({"task": "detection", "data": {}})


def test_yaml_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "nope.yaml"))
    p = tmp_path / "bad.yaml"
    p.write_text("task: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(p))


def test_apply_overrides_refuses_to_descend_into_a_scalar():
    with pytest.raises(ConfigError, match="^train: is 3, cannot set train.max_iters"):
        apply_overrides({"train": 3}, ["train.max_iters=2"])


def test_cli_bad_config_is_one_line_and_exit_2(make_config, tmp_path, capsys):
    import yaml

    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(make_config(tmp_path / "out")))
    assert main(["train", str(p), "train.optimizer.lr=abc"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "densekd train: error: train.optimizer.lr: expected float, got 'abc'"
    assert main(["eval", str(p), "--checkpoint", str(tmp_path / "missing.pth")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--checkpoint: no such file" in err and "\n" not in err and "Traceback" not in err
