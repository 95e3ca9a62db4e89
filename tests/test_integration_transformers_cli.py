"""``densekd hf``: train, distil, check and evaluate SegFormers from the command line, offline, on toy data."""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")

from transformers import SegformerConfig, SegformerForSemanticSegmentation, UperNetConfig  # noqa: E402
from transformers import ConvNextConfig, TrainingArguments, UperNetForSemanticSegmentation  # noqa: E402

from densekd.cli import main  # noqa: E402
from densekd.data.segmentation import make_toy_segmentation  # noqa: E402
from densekd.integrations.transformers import DistillationTrainer  # noqa: E402
from densekd.integrations.transformers.data import Collate, build  # noqa: E402

TINY = {"model_type": "segformer", "depths": [1, 1, 1, 1], "hidden_sizes": [8, 16, 24, 32],
        "num_attention_heads": [1, 1, 1, 1], "sr_ratios": [8, 4, 2, 1], "decoder_hidden_size": 16}
STEPS = ["per_device_train_batch_size=4", "per_device_eval_batch_size=4", "save_strategy=no", "logging_steps=1",
         "disable_tqdm=true", "use_cpu=true"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("hfcli")
    root = make_toy_segmentation(d / "data", "folder", num_images=8, size=(32, 32), num_classes=3)
    (d / "student.json").write_text(json.dumps(TINY))
    (d / "teacher.json").write_text(json.dumps({**TINY, "hidden_sizes": [16, 32, 48, 64]}))
    data = ["--data", str(root), "--num-labels", "3", "--class-names", "bg,a,b", "--crop", "32", "--scale", "1", "1",
            "--no-flip"]
    rc = main(["hf", "train", "--model", str(d / "teacher.json"), *data, "--output-dir", str(d / "teacher"),
               "max_steps=40", "learning_rate=1e-2", *STEPS])
    assert rc == 0
    return d, data


def test_train_saves_the_model_and_its_metric(setup, capsys):
    d, data = setup
    saved = SegformerForSemanticSegmentation.from_pretrained(str(d / "teacher"))
    assert saved.config.id2label == {0: "bg", 1: "a", 2: "b"} and saved.config.hidden_sizes == [16, 32, 48, 64]
    m = json.loads((d / "teacher" / "eval_val.json").read_text())
    assert m["split"] == "val" and m["images"] == 8 and 0 <= m["mIoU"] <= 1
    assert main(["hf", "eval", "--model", str(d / "teacher"), *data, "--split", "val"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["mIoU"] == pytest.approx(m["mIoU"])


def test_distill_two_steps_and_the_plain_student(setup, capsys):
    d, data = setup
    rc = main(["hf", "distill", "--student", str(d / "student.json"), "--teacher", str(d / "teacher"), *data,
               "--output-dir", str(d / "kd"), "--method", "fitnet", "--weight", "0.5", "--no-check", "--seed", "3",
               "max_steps=2", *STEPS])
    assert rc == 0
    out = capsys.readouterr().out
    assert f"densekd hf distill: {d / 'kd'} — mIoU " in out
    student = SegformerForSemanticSegmentation.from_pretrained(str(d / "kd"))
    fresh = SegformerForSemanticSegmentation(SegformerConfig(**{k: v for k, v in TINY.items() if k != "model_type"},
                                                             num_labels=3))
    assert list(student.state_dict()) == list(fresh.state_dict())
    assert student.config.id2label == {0: "bg", 1: "a", 2: "b"}
    assert json.loads((d / "kd" / "eval_val.json").read_text())["images"] == 8


def test_doctor_exit_status_follows_its_report(setup, capsys):
    d, data = setup
    rc = main(["hf", "doctor", "--student", str(d / "student.json"), "--teacher", str(d / "teacher"), *data,
               "--output-dir", str(d / "doc"), "--method", "acam_kd", *STEPS])
    out = capsys.readouterr().out
    assert "densekd doctor: SegformerForSemanticSegmentation ← SegformerForSemanticSegmentation, acam_kd" in out
    assert "INFO pair 0: decode_head.classifier [4, 3, 8, 8]" in out and "nothing reaches the teacher" in out
    assert rc == (1 if "\nFAIL " in out else 0)


def test_bad_input_is_one_line(setup, capsys):
    d, data = setup
    rc = main(["hf", "train", "--model", str(d / "student.json"), *data, "--output-dir", str(d / "x"), "max_step=2"])
    assert rc == 2
    assert capsys.readouterr().err.strip() == ("densekd hf: error: unknown TrainingArguments field 'max_step' "
                                               "(did you mean 'max_steps'?)")
    rc = main(["hf", "distill", "--student", str(d / "student.json"), "--teacher", str(d / "nope"), *data,
               "--output-dir", str(d / "y")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith(f"densekd hf: error: teacher '{d / 'nope'}' could not be loaded: ")
    assert "\n" not in err
    rc = main(["hf", "train", "--model", str(d / "student.json"), *data, "--output-dir", str(d / "x"),
               "lr_scheduler_type=sideways"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("densekd hf: error: TrainingArguments: ") and "sideways" in err
    rc = main(["hf", "train", "--model", str(d / "missing.json"), *data, "--output-dir", str(d / "z")])
    assert rc == 2 and capsys.readouterr().err.strip() == f"densekd hf: error: model config '{d / 'missing.json'}' " \
                                                          f"does not exist"


def test_data_command_writes_the_digits(tmp_path, capsys):
    assert main(["hf", "data", str(tmp_path / "digits"), "--n-train", "4", "--n-val", "2", "--n-dev", "2"]) == 0
    root = capsys.readouterr().out.strip()
    ds = build("folder", root, "dev", False, num_labels=11)
    assert len(ds) == 2 and ds[0]["pixel_values"].shape == (3, 64, 64) and int(ds[0]["labels"].max()) <= 10


def test_upernet_student_from_a_segformer_teacher(setup, tmp_path):
    """Another family on each side: each is paired by its own module names (both logits at stride 4)."""
    d, _ = setup
    torch.manual_seed(0)
    bb = ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                        out_features=["stage1", "stage2", "stage3", "stage4"])
    student = UperNetForSemanticSegmentation(UperNetConfig(backbone_config=bb, hidden_size=16, auxiliary_channels=8,
                                                           num_labels=3))
    root = d / "data"
    train = build("folder", str(root), "train", True, num_labels=3, crop_size=(32, 32), scale_range=(1, 1), flip=False)
    tr = DistillationTrainer(model=student, teacher=str(d / "teacher"), method="acam_kd", check=False,
                             args=TrainingArguments(str(tmp_path), max_steps=1, per_device_train_batch_size=4,
                                                    report_to="none", use_cpu=True, disable_tqdm=True,
                                                    save_strategy="no", logging_steps=1),
                             train_dataset=train, data_collator=Collate())
    (p,) = tr.distiller.pairs
    assert (p.student, p.teacher_spec, p.kwargs) == ("decode_head.classifier", "decode_head.classifier",
                                                     {"num_masks": 3})
    (lv,) = tr.distiller.levels
    assert lv.student_shape == lv.teacher_shape == (4, 3, 8, 8)
    tr.train()
    assert tr.state.log_history[0]["loss_kd"] > 0


def test_key_value_words_read_as_training_arguments_expect(tmp_path, capsys):
    """The project's key=value reader, with ``2e-3`` a number and ``no`` a word (TrainingArguments' values)."""
    from densekd.integrations.hf_cli import _training_args

    args = _training_args(["learning_rate=2e-3", "save_strategy=no", "bf16=false", "max_steps=3", "report_to=[]",
                           "lr_scheduler_type=cosine", "weight_decay=.5"], str(tmp_path), 0)
    assert args.learning_rate == 0.002 and args.max_steps == 3 and args.report_to == [] and args.bf16 is False
    assert str(args.save_strategy.value) == "no" and args.lr_scheduler_type == "cosine" and args.weight_decay == 0.5
    data = ["--data", str(tmp_path / "never-read")]
    for word, expect in [("max_steps", "'max_steps': expected key=value, e.g. max_steps=400"),
                         ("max_steps=[1,", "'max_steps=[1,': the value is not valid YAML (")]:
        rc = main(["hf", "train", "--model", str(tmp_path / "m.json"), *data, "--output-dir", str(tmp_path), word])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and err.startswith(f"densekd hf: error: TrainingArguments field {expect}") and "\n" not in err
    rc = main(["hf", "distill", "--student", "s.json", "--teacher", "t", *data, "--output-dir", str(tmp_path),
               "--kwargs", "num_masks"])
    assert rc == 2 and capsys.readouterr().err.strip() == ("densekd hf: error: --kwargs 'num_masks': expected "
                                                           "key=value, e.g. num_masks=8")
