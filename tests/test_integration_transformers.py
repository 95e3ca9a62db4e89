"""densekd.integrations.transformers: distillation inside the Hugging Face Trainer, on tiny models built from
configs offline (no Hub download), 2 training steps each.

SegFormer: 32×32 toy images of coloured rectangles (3 classes); the teacher is trained for 40 steps by the plain
Trainer (about a second) so that the doctor's teacher-vs-chance check has something to find. RT-DETR / D-FINE:
random 64×64 images with one or two boxes; their teachers are random (the checks that need a trained teacher are
SegFormer's).
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")  # in the dev extra, so CI always runs these

from torch.utils.data import Dataset  # noqa: E402
from transformers import (  # noqa: E402
    DFineConfig,
    DFineForObjectDetection,
    RTDetrConfig,
    RTDetrForObjectDetection,
    SegformerConfig,
    SegformerForImageClassification,
    SegformerForSemanticSegmentation,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from densekd import health  # noqa: E402
from densekd.data.segmentation import make_toy_segmentation  # noqa: E402
from densekd.errors import ConfigError, UnknownNameError  # noqa: E402
from densekd.integrations.transformers import (  # noqa: E402
    KD_STATE_FILE,
    DistillationTrainer,
    HealthCheckError,
    default_pairs,
    doctor,
    model_task,
)
from densekd.integrations.transformers.data import Collate, build  # noqa: E402
from densekd.integrations.transformers.families import detection_context  # noqa: E402


def _one_line(e: BaseException) -> str:
    msg = str(e)
    assert "\n" not in msg, msg
    return msg


def seg_model(width: int = 8, seed: int = 0, num_labels: int = 3, **kw) -> SegformerForSemanticSegmentation:
    torch.manual_seed(seed)
    cfg = SegformerConfig(depths=[1, 1, 1, 1], sr_ratios=[8, 4, 2, 1], hidden_sizes=[width, 2 * width, 3 * width,
                          4 * width], num_attention_heads=[1, 1, 1, 1], decoder_hidden_size=16, num_labels=num_labels,
                          **kw)
    return SegformerForSemanticSegmentation(cfg)


def args(out, **kw) -> TrainingArguments:
    base = dict(max_steps=2, per_device_train_batch_size=4, per_device_eval_batch_size=4, learning_rate=1e-3,
                report_to="none", use_cpu=True, disable_tqdm=True, save_strategy="no", logging_steps=1, seed=0)
    return TrainingArguments(str(out), **{**base, **kw})


@pytest.fixture(scope="module")
def seg_data(tmp_path_factory):
    root = make_toy_segmentation(tmp_path_factory.mktemp("toy"), "folder", num_images=8, size=(32, 32), num_classes=3)
    kw = dict(num_labels=3, crop_size=(32, 32), scale_range=(1.0, 1.0), flip=False)
    return build("folder", str(root), "train", True, **kw), build("folder", str(root), "val", False, **kw)


@pytest.fixture(scope="module")
def seg_teacher(seg_data, tmp_path_factory):
    """A SegFormer (width 16) trained 40 steps on the toy data by the plain Trainer: well above chance."""
    t = seg_model(16, seed=1)
    Trainer(model=t, args=args(tmp_path_factory.mktemp("teacher"), max_steps=40, learning_rate=1e-2,
                               per_device_train_batch_size=8, logging_strategy="no"),
            train_dataset=seg_data[0], data_collator=Collate()).train()
    return t.eval()


def seg_trainer(seg_data, teacher, out, student=None, **kw) -> DistillationTrainer:
    targs = kw.pop("targs", {})
    return DistillationTrainer(model=student if student is not None else seg_model(8), teacher=teacher,
                               args=args(out, **targs), train_dataset=seg_data[0], eval_dataset=seg_data[1],
                               data_collator=Collate(), **kw)


@pytest.fixture(scope="module")
def seg_run(seg_data, seg_teacher, tmp_path_factory):
    """(trainer, KD state before training, teacher state before) of a 2-step ACAM-KD run with checkpoints."""
    out = tmp_path_factory.mktemp("kd")
    t_before = {k: v.clone() for k, v in seg_teacher.state_dict().items()}
    tr = seg_trainer(seg_data, seg_teacher, out, targs=dict(save_strategy="steps", save_steps=1), check=True)
    kd_before = {k: v.clone() for k, v in tr.distiller.kd_losses.state_dict().items()}
    s_before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    tr.train()
    return tr, kd_before, t_before, s_before


# --------------------------------------------------------------------------- SegFormer: the run
def test_segformer_default_pairs_are_the_logits(seg_run):
    tr = seg_run[0]
    (p,) = tr.distiller.pairs
    assert (p.student, p.teacher_spec, p.loss, p.kwargs) == ("decode_head.classifier", "decode_head.classifier",
                                                             "acam_kd", {"num_masks": 3})
    (lv,) = tr.distiller.levels
    assert lv.student_shape == (4, 3, 8, 8) and lv.teacher_shape == (4, 3, 8, 8) and lv.stride("student") == 4


def test_kd_terms_in_the_trainer_logs(seg_run):
    tr = seg_run[0]
    rows = [r for r in tr.state.log_history if "loss" in r]
    assert len(rows) == 2
    for r in rows:
        assert {"loss_task", "loss_kd", "kd_channel", "kd_spatial", "kd_div"} <= set(r)
        assert r["loss_kd"] == pytest.approx(r["kd_channel"] + r["kd_spatial"] + r["kd_div"], rel=1e-5)
        assert r["loss"] == pytest.approx(r["loss_task"] + r["loss_kd"], rel=1e-5)  # no accumulation: one batch


def test_distilled_loss_reaches_the_student_never_the_teacher(seg_run, seg_data):
    tr, _, t_before, s_before = seg_run
    assert all(not p.requires_grad and p.grad is None for p in tr.teacher.parameters())
    assert not tr.teacher.training
    for k, v in tr.teacher.state_dict().items():
        assert torch.equal(v, t_before[k]), k
    assert any(not torch.equal(v, s_before[k]) for k, v in tr.model.state_dict().items())
    tr.model.train()
    losses = tr.distill_step(tr.model, tr.first_batch())
    params = [p for p in tr.model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(losses["loss_kd"], params, allow_unused=True)
    assert sum(1 for g in grads if g is not None and g.abs().sum() > 0) > len(params) // 2
    assert all(p.grad is None for p in tr.teacher.parameters())


def test_kd_modules_train_with_the_student(seg_run):
    tr, kd_before, _, _ = seg_run
    groups = tr.optimizer.param_groups
    assert {id(p) for p in tr.kd_parameters()} == {id(p) for p in groups[-1]["params"]}
    assert groups[-1]["lr"] == groups[0]["lr"]  # the scheduler drives them too
    now = tr.distiller.kd_losses.state_dict()
    moved = [k for k, v in kd_before.items() if v.is_floating_point() and not torch.equal(now[k], v)]
    assert len(moved) > len(now) // 2


def test_saved_student_is_exactly_the_plain_model(seg_run, tmp_path):
    tr = seg_run[0]
    tr.save_model(str(tmp_path / "final"))
    assert not (tmp_path / "final" / KD_STATE_FILE).exists()
    loaded = SegformerForSemanticSegmentation.from_pretrained(str(tmp_path / "final"))
    plain = seg_model(8).state_dict()
    sd = loaded.state_dict()
    assert list(sd) == list(plain)  # no KD module, no teacher, no prefix
    for k, v in tr.model.state_dict().items():
        assert torch.equal(sd[k], v), k


def test_checkpoint_holds_the_kd_state_loadable_with_weights_only(seg_run):
    tr = seg_run[0]
    ckpt = Path(tr.args.output_dir) / "checkpoint-2"
    entry = torch.load(ckpt / KD_STATE_FILE, weights_only=True)
    assert entry["method"] == "acam_kd" and entry["pairs"][0]["student"] == "decode_head.classifier"
    assert set(entry["state"]) == set(tr.distiller.kd_losses.state_dict())
    assert (ckpt / "model.safetensors").is_file() and (ckpt / "optimizer.pt").is_file()


def test_pre_training_checks_ran_through_health(seg_run):
    report = seg_run[0].kd_report
    assert isinstance(report, health.DoctorReport) and report.failures == []
    text = report.text()
    assert "OK   teacher: mIoU" in text and "chance there is" in text
    assert "INFO pair 0: decode_head.classifier [4, 3, 8, 8]" in text
    assert "OK   gradient: nothing reaches the teacher" in text and "the KD terms reach the student" in text


def test_checks_call_the_doctors_code(seg_data, seg_teacher, tmp_path, monkeypatch):
    called = []
    for name in ("teacher_metric_checks", "level_checks", "batch_checks", "chance_level"):
        real = getattr(health, name)
        monkeypatch.setattr(health, name, lambda *a, _r=real, _n=name, **k: called.append(_n) or _r(*a, **k))
    seg_trainer(seg_data, seg_teacher, tmp_path).run_checks()
    assert called == ["chance_level", "teacher_metric_checks", "level_checks", "batch_checks"]


def test_weight_zero_is_the_plain_trainer_bit_for_bit(seg_data, seg_teacher, tmp_path):
    """The dry run and the checks move no random stream, buffer or mode: with weight 0 the student trains exactly
    as under the plain Trainer (same initialisation, data order, dropout). At 2 threads (the suite's; an earlier
    test may leave torch at 1). At 1 thread one tensor differs: the bias of the captured classifier, by 1.2e-10
    after the run, every weight equal bit for bit; not the doctor's dry run (the same without it), not gradient
    clipping (the same with max_grad_norm=0), the logits' gradient at step 1 equal bit for bit — a summation-order
    difference in that bias's gradient, not a behaviour; measured 2026-12-05)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _weight_zero_is_plain(seg_data, seg_teacher, tmp_path)
    finally:
        torch.set_num_threads(threads)


def _weight_zero_is_plain(seg_data, seg_teacher, tmp_path):
    plain = seg_model(8, seed=5, classifier_dropout_prob=0.5)
    Trainer(model=plain, args=args(tmp_path / "p"), train_dataset=seg_data[0], data_collator=Collate()).train()
    kd = seg_trainer(seg_data, seg_teacher, tmp_path / "k", student=seg_model(8, seed=5, classifier_dropout_prob=0.5),
                     method="fitnet", weight=0.0, check=False)
    report = doctor(kd, log=lambda line: None)  # every check runs (and, at weight 0, fails: no KD gradient)
    assert [c.topic for c in report.failures] == ["gradient"]
    kd.train()
    for k, v in plain.state_dict().items():
        assert torch.equal(kd.model.state_dict()[k], v), k


def test_kd_terms_fp32_under_mixed_precision(seg_data, seg_teacher, tmp_path):
    tr = seg_trainer(seg_data, seg_teacher, tmp_path, targs=dict(bf16=True, max_steps=1), method="fitnet", check=False)
    seen = {}

    def record(key, value) -> None:  # hooks must return None (a value would replace the output)
        seen.setdefault(key, value)

    tr.model.decode_head.classifier.register_forward_hook(lambda m, i, o: record("student", o.dtype))
    # (on a module before the teacher's last captured one: the capture hook stops its forward there)
    tr.teacher.decode_head.linear_fuse.register_forward_hook(lambda m, i, o: record("teacher", o.dtype))
    for mod in tr.distiller.kd_losses.values():
        mod.register_forward_pre_hook(lambda m, a: record("kd", (a[0].dtype, a[1].dtype,
                                                                 torch.is_autocast_enabled("cpu"))))
    tr.train()
    assert seen["student"] == torch.bfloat16 and seen["teacher"] == torch.bfloat16  # the forward ran in bf16
    assert seen["kd"] == (torch.float32, torch.float32, False)
    assert math.isfinite(tr.state.log_history[0]["loss_kd"])


def test_compute_loss_func_is_the_task_loss(seg_data, seg_teacher, tmp_path):
    calls = []

    def loss_fn(outputs, labels, num_items_in_batch=None):
        calls.append(tuple(labels.shape))
        return outputs.logits.float().mean() * 0 + 5.0

    tr = seg_trainer(seg_data, seg_teacher, tmp_path, method="fitnet", check=False, compute_loss_func=loss_fn,
                     targs=dict(max_steps=1))
    tr.train()
    assert calls == [(4, 32, 32)] and tr.state.log_history[0]["loss_task"] == pytest.approx(5.0)


# --------------------------------------------------------------------------- resume
class _StopAfterFirstSave(TrainerCallback):
    def on_save(self, args, state, control, **kw):
        raise KeyboardInterrupt


class _Record(TrainerCallback):
    def __init__(self, trainer):
        self.trainer, self.seen = trainer, {}

    def on_train_begin(self, args, state, control, **kw):
        tr = self.trainer
        self.seen = {"step": state.global_step, "opt": len(tr.optimizer.state_dict()["state"]),
                     "kd": {k: v.clone() for k, v in tr.distiller.kd_losses.state_dict().items()}}


def test_resume_restores_the_kd_modules(seg_data, seg_teacher, tmp_path):
    targs = dict(save_strategy="steps", save_steps=1)
    tr = seg_trainer(seg_data, seg_teacher, tmp_path, targs=targs, method="fitnet", check=False,
                     callbacks=[_StopAfterFirstSave()])
    with pytest.raises(KeyboardInterrupt):
        tr.train()
    ckpt = tmp_path / "checkpoint-1"
    saved = torch.load(ckpt / KD_STATE_FILE, weights_only=True)["state"]
    again = seg_trainer(seg_data, seg_teacher, tmp_path, targs=targs, method="fitnet", check=False)
    rec = _Record(again)
    again.add_callback(rec)
    assert any(not torch.equal(v, saved[k]) for k, v in again.distiller.kd_losses.state_dict().items())
    again.train(resume_from_checkpoint=str(ckpt))
    assert rec.seen["step"] == 1 and rec.seen["opt"] > 0
    for k, v in saved.items():
        assert torch.equal(rec.seen["kd"][k], v), k
    assert again.state.global_step == 2


def test_resume_from_a_checkpoint_of_another_run_is_one_line(seg_data, seg_teacher, tmp_path):
    plain_dir = tmp_path / "plain"
    Trainer(model=seg_model(8), args=args(plain_dir, save_strategy="steps", save_steps=1, max_steps=1),
            train_dataset=seg_data[0], data_collator=Collate()).train()
    tr = seg_trainer(seg_data, seg_teacher, tmp_path / "kd", method="fitnet", check=False)
    with pytest.raises(ConfigError) as e:
        tr.train(resume_from_checkpoint=str(plain_dir / "checkpoint-1"))
    assert _one_line(e.value) == (f"resume: {plain_dir / 'checkpoint-1'} has no {KD_STATE_FILE}: it was not written "
                                  f"by densekd's DistillationTrainer (resume a plain run with the plain Trainer)")
    first = seg_trainer(seg_data, seg_teacher, tmp_path / "a", targs=dict(save_strategy="steps", save_steps=1,
                                                                          max_steps=1), method="fitnet", check=False)
    first.train()
    other = seg_trainer(seg_data, seg_teacher, tmp_path / "b", method="acam_kd", check=False)
    with pytest.raises(ConfigError, match=r"^resume: .*checkpoint-1 was distilled with pairs \['fitnet:decode_head"
                                          r".classifier'\], this trainer has \['acam_kd:decode_head.classifier'\]"):
        other.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-1"))


# --------------------------------------------------------------------------- doctor: warnings and failures
def test_ratio_warning_fires_and_names_the_weight(seg_data, seg_teacher, tmp_path):
    tr = seg_trainer(seg_data, seg_teacher, tmp_path, method="fitnet", weight=1e5)
    with pytest.warns(UserWarning, match=r"densekd: one batch: decode_head.classifier: KD/task loss ratio \S+ > 10: "
                                         r"the KD term dominates the task; weight=\S+ would bring it to 1"):
        report = tr.run_checks()
    assert report.failures == [] and len(report.warnings) >= 1


def test_ratio_warning_silent_when_balanced(seg_data, seg_teacher, tmp_path, recwarn):
    tr = seg_trainer(seg_data, seg_teacher, tmp_path, method="fitnet", weight=1e5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = tr.run_checks()
    line = next(c.message for c in report.checks if "KD/task" in c.message and c.status == health.INFO)
    ratio = float(line.split("KD/task ")[1].split(";")[0])
    balanced = seg_trainer(seg_data, seg_teacher, tmp_path, method="fitnet", weight=1e5 / ratio)
    report = balanced.run_checks()
    assert not [w for w in recwarn if "densekd" in str(w.message)] and report.warnings == []


def test_teacher_at_chance_stops_the_run(seg_data, tmp_path):
    teacher = seg_model(16, seed=3)
    with torch.no_grad():  # predicts the most frequent class (0, background) everywhere: exactly chance
        teacher.decode_head.classifier.weight.zero_()
        teacher.decode_head.classifier.bias.copy_(torch.tensor([1.0, 0.0, 0.0]))
    tr = seg_trainer(seg_data, teacher, tmp_path, method="fitnet")
    with pytest.raises(HealthCheckError) as e:
        tr.train()
    assert _one_line(e.value).startswith("densekd check failed: teacher: mIoU ")
    assert "is at chance level" in str(e.value) and str(e.value).endswith("pass check=False to train anyway")
    assert tr.state.global_step == 0


def test_no_eval_dataset_warns_and_an_eval_dataset_silences_it(seg_data, seg_teacher, tmp_path, recwarn):
    tr = DistillationTrainer(model=seg_model(8), teacher=seg_teacher, args=args(tmp_path), method="fitnet",
                             train_dataset=seg_data[0], data_collator=Collate())
    with pytest.warns(UserWarning, match="no eval_dataset given, so the teacher's metric is not checked"):
        tr.run_checks()
    recwarn.clear()
    seg_trainer(seg_data, seg_teacher, tmp_path, method="fitnet").run_checks()
    assert not [w for w in recwarn if "eval_dataset" in str(w.message)]


# --------------------------------------------------------------------------- bad input: one line each
def test_teacher_of_another_task(seg_data, tmp_path):
    torch.manual_seed(0)
    cls = SegformerForImageClassification(SegformerConfig(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 24, 32],
                                                          num_attention_heads=[1, 1, 1, 1], num_labels=3))
    with pytest.raises(ConfigError) as e:
        seg_trainer(seg_data, cls, tmp_path)
    assert _one_line(e.value) == ("the teacher SegformerForImageClassification is a image classification model, the "
                                  "student SegformerForSemanticSegmentation a semantic segmentation model: distil a "
                                  "teacher of the student's task")
    with pytest.raises(ConfigError, match=r"^the teacher RTDetrForObjectDetection is a object detection model"):
        seg_trainer(seg_data, rtdetr_model(), tmp_path)


def test_teacher_of_another_label_set(seg_data, seg_teacher, tmp_path):
    with pytest.raises(ConfigError) as e:
        seg_trainer(seg_data, seg_model(8, num_labels=5), tmp_path)
    assert _one_line(e.value) == ("the teacher predicts 5 labels (LABEL_0, LABEL_1, LABEL_2, ...), the student 3 "
                                  "(LABEL_0, LABEL_1, LABEL_2): the teacher must be fine-tuned on the student's label "
                                  "set")
    named = seg_model(8, id2label={0: "road", 1: "car", 2: "sky"})
    other = seg_model(8, id2label={0: "road", 1: "sky", 2: "car"})
    with pytest.raises(ConfigError, match=r"^label 1 is 'sky' for the teacher but 'car' for the student"):
        seg_trainer(seg_data, other, tmp_path, student=named)


def test_pair_naming_a_module_the_model_lacks(seg_data, seg_teacher, tmp_path):
    with pytest.raises(UnknownNameError) as e:
        seg_trainer(seg_data, seg_teacher, tmp_path, pairs=["decode_head.clasifier"])
    assert _one_line(e.value).startswith("pair 0: the student has no module 'decode_head.clasifier' (no module named "
                                         "'decode_head.clasifier' in SegformerForSemanticSegmentation; closest: "
                                         "decode_head.classifier, ")
    with pytest.raises(UnknownNameError, match=r"^pair 0: the teacher has no module 'segformer.stage.3' \(.*closest: "
                                               r"segformer.stages.3"):
        seg_trainer(seg_data, seg_teacher, tmp_path, pairs=[("segformer.stages.3", "segformer.stage.3")])


def test_shapes_that_cannot_be_aligned(seg_data, seg_teacher, tmp_path):
    with pytest.raises(ValueError) as e:
        seg_trainer(seg_data, seg_teacher, tmp_path, pairs=[("decode_head.classifier", "segformer.stages.3")])
    assert _one_line(e.value) == ("spatial sizes differ: student decode_head.classifier (4, 3, 8, 8) vs teacher "
                                  "segformer.stages.3 (4, 64, 1, 1); set resize=True on this pair to interpolate the "
                                  "student map")
    with pytest.raises(ConfigError, match=r"^pair 0: the student's 'decode_head.linear_projections.0' gives a tensor of "
                                          r"shape \[4, 64, 16\], not a \[B, C, H, W\] feature map$"):
        seg_trainer(seg_data, seg_teacher, tmp_path, pairs=["decode_head.linear_projections.0"])


def test_other_bad_inputs(seg_data, seg_teacher, tmp_path):
    with pytest.raises(UnknownNameError, match=r"^unknown loss 'acam'; did you mean acam_kd\? \(available: "):
        seg_trainer(seg_data, seg_teacher, tmp_path, method="acam")
    with pytest.raises(UnknownNameError, match=r"^pair 0 \(decode_head.classifier\): unknown method 'acam'; available"):
        seg_trainer(seg_data, seg_teacher, tmp_path, pairs=[{"student": "decode_head.classifier", "loss": "acam"}])
    with pytest.raises(ConfigError, match=r"^DistillationTrainer needs teacher="):
        DistillationTrainer(model=seg_model(8), args=args(tmp_path))
    opt = torch.optim.SGD(seg_model(8).parameters(), lr=0.1)
    with pytest.raises(ConfigError, match=r"^optimizers=: DistillationTrainer builds the optimizer itself"):
        seg_trainer(seg_data, seg_teacher, tmp_path, optimizers=(opt, None))
    with pytest.raises(ConfigError, match=r"^MasKD \(pair 0\) must be fitted on the teacher before training"):
        seg_trainer(seg_data, seg_teacher, tmp_path, method="maskd")
    with pytest.raises(ConfigError, match=r"^distill.method: fgd needs ground-truth boxes"):
        seg_trainer(seg_data, seg_teacher, tmp_path, method="fgd")
    with pytest.raises(ConfigError, match=r"^teacher '.*missing' could not be loaded: "):
        seg_trainer(seg_data, str(tmp_path / "missing"), tmp_path)


def test_segmentation_pairs_per_method():
    s, t = seg_model(8), seg_model(16)
    (c,) = default_pairs(s, t, "cirkd")
    assert (c.student, c.aux, c.kwargs) == ("decode_head.activation", {"logits": ("decode_head.classifier",) * 2},
                                            {"num_classes": 3})
    (f,) = default_pairs(s, t, "fitnet", weight=0.5)
    assert (f.student, f.weight, f.kwargs) == ("decode_head.classifier", 0.5, {})
    assert model_task(s) == "semantic segmentation"


# --------------------------------------------------------------------------- DETR family
def rtdetr_model(width: int = 16, seed: int = 0) -> RTDetrForObjectDetection:
    torch.manual_seed(seed)
    bb = dict(model_type="rt_detr_resnet", embedding_size=8, hidden_sizes=[8, 16, 24, width], depths=[1, 1, 1, 1],
              layer_type="basic", out_indices=[2, 3, 4])
    cfg = RTDetrConfig(backbone_config=bb, encoder_in_channels=[16, 24, width], encoder_hidden_dim=width,
                       encoder_ffn_dim=32, encoder_attention_heads=2, d_model=width, decoder_in_channels=[width] * 3,
                       decoder_ffn_dim=32, decoder_layers=1, decoder_attention_heads=2, num_queries=10, num_denoising=4,
                       num_labels=3)
    return RTDetrForObjectDetection(cfg)


def dfine_model(width: int = 16, seed: int = 0) -> DFineForObjectDetection:
    torch.manual_seed(seed)
    bb = dict(model_type="hgnet_v2", stem_channels=[3, 8, 8], stage_in_channels=[8, 16, 24, 32],
              stage_mid_channels=[8, 8, 16, 16], stage_out_channels=[16, 24, 32, 48], stage_num_blocks=[1, 1, 1, 1],
              stage_downsample=[False, True, True, True], stage_light_block=[False, False, True, True],
              stage_kernel_size=[3, 3, 5, 5], stage_numb_of_layers=[1, 1, 1, 1], hidden_sizes=[16, 24, 32, 48],
              out_indices=[2, 3, 4])
    cfg = DFineConfig(backbone_config=bb, encoder_in_channels=[24, 32, 48], encoder_hidden_dim=width,
                      encoder_ffn_dim=32, encoder_attention_heads=2, d_model=width, decoder_in_channels=[width] * 3,
                      decoder_ffn_dim=32, decoder_layers=2, decoder_attention_heads=2, num_queries=10, num_denoising=4,
                      num_labels=3, lqe_hidden_dim=8, depth_mult=0.34)
    return DFineForObjectDetection(cfg)


class Boxes(Dataset):
    def __init__(self, n: int = 8):
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(n, 3, 64, 64, generator=g)
        self.labels = [{"class_labels": torch.randint(0, 3, (1 + i % 2,), generator=g),
                        "boxes": torch.rand(1 + i % 2, 4, generator=g) * 0.3 + torch.tensor([0.35, 0.35, 0.1, 0.1])}
                       for i in range(n)]

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"pixel_values": self.x[i], "labels": self.labels[i]}


def collate_boxes(items):
    return {"pixel_values": torch.stack([b["pixel_values"] for b in items]), "labels": [b["labels"] for b in items]}


@pytest.mark.parametrize("build_model", [rtdetr_model, dfine_model], ids=["rt_detr", "d_fine"])
def test_detr_family_two_steps(build_model, tmp_path):
    student, teacher = build_model(16, 0), build_model(32, 1)
    t_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    s_before = {k: v.clone() for k, v in student.state_dict().items()}
    tr = DistillationTrainer(model=student, teacher=teacher, args=args(tmp_path), method="acam_kd", check=False,
                             train_dataset=Boxes(), data_collator=collate_boxes)
    assert [(p.student, p.teacher_spec) for p in tr.distiller.pairs] == \
        [(f"model.decoder_input_proj.{i}",) * 2 for i in range(3)]
    assert [lv.teacher_shape[1:] for lv in tr.distiller.levels] == [(32, 8, 8), (32, 4, 4), (32, 2, 2)]
    assert [lv.student_shape[1] for lv in tr.distiller.levels] == [16, 16, 16]  # widths differ: 1×1 aligners
    tr.train()
    rows = [r for r in tr.state.log_history if "loss" in r]
    assert len(rows) == 2 and all(r["loss_kd"] > 0 and {"kd_channel", "kd_spatial"} <= set(r) for r in rows)
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, t_before[k]), k
    assert any(not torch.equal(v, s_before[k]) for k, v in student.state_dict().items())
    student.train()
    losses = tr.distill_step(student, tr.first_batch())
    g = torch.autograd.grad(losses["loss_kd"], [p for p in student.parameters() if p.requires_grad], allow_unused=True)
    assert any(x is not None and x.abs().sum() > 0 for x in g)
    assert all(p.grad is None for p in teacher.parameters())


def test_fgd_gets_the_boxes_in_pixels(tmp_path):
    x = torch.zeros(2, 3, 64, 32)
    ctx = detection_context(x, [{"class_labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.25, 0.5, 0.5]])},
                                {"class_labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}])
    assert ctx.image_size == (64, 32) and ctx.box_valid.tolist() == [[True], [False]]
    assert torch.allclose(ctx.boxes[0, 0], torch.tensor([8.0, 0.0, 24.0, 32.0])) and ctx.labels[0, 0] == 2
    tr = DistillationTrainer(model=rtdetr_model(16), teacher=rtdetr_model(16, 1), args=args(tmp_path), method="fgd",
                             check=False, train_dataset=Boxes(), data_collator=collate_boxes)
    seen = []
    for m in tr.distiller.kd_losses.values():
        m.register_forward_pre_hook(lambda mod, a: seen.append(a[2].boxes.clone()))
    batch = tr.first_batch()  # what the first training step gets (the sampler is seeded), nothing consumed
    tr.train()
    expect = detection_context(batch["pixel_values"], batch["labels"]).boxes
    assert len(seen) == 2 * 3 and torch.equal(seen[0], expect)  # 2 steps × 3 levels; the first step's boxes


def test_detr_bad_methods_and_the_teacher_at_chance(tmp_path):
    with pytest.raises(ConfigError, match=r"^method hinton_kd distils softmax class scores per pixel"):
        default_pairs(rtdetr_model(), rtdetr_model(), "hinton_kd")
    with pytest.raises(ConfigError, match=r"^method samkd's logit term needs per-level dense classification logits"):
        default_pairs(rtdetr_model(), rtdetr_model(), "samkd")
    tr = DistillationTrainer(model=rtdetr_model(16), teacher=rtdetr_model(32, 1), args=args(tmp_path), method="fitnet",
                             train_dataset=Boxes(), eval_dataset=Boxes(4), data_collator=collate_boxes)
    with pytest.raises(HealthCheckError, match=r"^densekd check failed: teacher: AP \S+ on 4 evaluation image\(s\) "
                                               r"\(1 batch\(es\)\) is at chance level"):
        tr.train()
