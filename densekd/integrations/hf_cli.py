"""``densekd hf`` — Hugging Face semantic segmentation from the command line, trained by the ``transformers``
Trainer (imports transformers only when run).

    densekd hf data    DIR [--n-train 1600 --n-val 400 --n-dev 400 --canvas 64]       the built-in digits (folder)
    densekd hf train   --model M --data ROOT --output-dir D [--format folder] [key=value ...]    plain fine-tuning
    densekd hf distill --student M --teacher T --data ROOT --output-dir D [--method acam_kd] [--weight 1]
                       [--pairs decode_head.classifier | s:t ...] [--kwargs num_masks=8] [key=value ...]
    densekd hf eval    --model M --data ROOT [--split val]
    densekd hf doctor  --student M --teacher T --data ROOT [--batches 4]     (exit 0 healthy, 1 a check failed)

``M``: a model directory or Hub id (``from_pretrained``; a student's head is re-made for the data's labels) or a
config JSON with ``model_type`` (a randomly initialised model, seeded by ``--seed``). ``T``: a fine-tuned model
directory or Hub id. Data: a densekd segmentation layout (``--format folder|ade20k|cityscapes|voc``, see
:mod:`densekd.data.segmentation`); training crops ``--crop`` with random scale ``--scale`` and flips, evaluation at
full resolution. Bare ``key=value`` words are ``transformers.TrainingArguments``, read as densekd reads every
``key=value`` (:func:`densekd.config.parse_assignment`: YAML scalars, lists and mappings) except that ``2e-3`` is a
number and ``no`` stays a word: ``max_steps=400 learning_rate=2e-3 bf16=true save_strategy=no``. Put them before
``--pairs`` / ``--kwargs``, which take every word that follows.

``train`` and ``distill`` save the final student with ``save_model`` into the output folder (the plain model:
``from_pretrained(D)`` loads it) and write ``eval_<split>.json`` (mIoU, pixel accuracy on ``--eval-split``).
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from ..config import parse_assignment
from ..errors import ConfigError

_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _assignment(word: str, what: str, example: str) -> tuple[str, Any]:
    """A ``key=value`` word read by :func:`densekd.config.parse_assignment` (a YAML scalar, list or mapping), with
    two readings ``TrainingArguments`` expects: a number YAML leaves a string (``2e-3``) is a float, and a YAML 1.1
    boolean written as a word (``no``, ``off``, ``yes``) stays that word (``save_strategy=no``)."""
    key, value = parse_assignment(word, what, f"key=value, e.g. {example}")
    text = word.partition("=")[2].strip()
    if isinstance(value, bool) and text.lower() not in ("true", "false"):
        return key, text
    if isinstance(value, str) and _NUMBER.fullmatch(value):
        return key, float(value)
    return key, value


def _kv(words: list[str] | None, what: str, example: str) -> dict[str, Any]:
    return dict(_assignment(w, what, example) for w in words or [])


def _training_args(words: list[str], output_dir: str, seed: int) -> Any:
    import dataclasses
    import difflib

    from transformers import TrainingArguments

    args = _kv(words, "TrainingArguments field", "max_steps=400")
    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    for k in args:
        if k not in fields:
            close = difflib.get_close_matches(k, sorted(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown TrainingArguments field {k!r}{hint}")
    for k in ("output_dir", "seed"):
        if k in args:
            raise ConfigError(f"{k}: pass it as --{k.replace('_', '-')}, not as {k}=")
    base = {"report_to": "none", "batch_eval_metrics": True, "remove_unused_columns": False,
            "dataloader_num_workers": 0}
    try:
        return TrainingArguments(output_dir=output_dir, seed=seed, **{**base, **args})
    except (ValueError, TypeError) as e:
        raise ConfigError(f"TrainingArguments: {str(e).strip().splitlines()[0]}") from None


def _data(a: argparse.Namespace, split: str, train: bool) -> Any:
    from .transformers.data import build

    crop = a.crop if len(a.crop) == 2 else a.crop * 2
    names = a.class_names.split(",") if a.class_names else None
    return build(a.format, a.data, split, train, num_labels=a.num_labels, crop_size=crop, scale_range=a.scale,
                 flip=not a.no_flip, ignore_index=a.ignore_index, class_names=names,
                 max_images=a.max_train_images if train else None)


def _labels(ds: Any, like: Any = None) -> dict[int, str]:
    """The data's label names; generic ids take the teacher's names when it has real ones of the same count."""
    names = [str(n) for n in ds.class_names]
    theirs = getattr(getattr(like, "config", None), "id2label", None)
    if theirs and len(theirs) == len(names) and names == [str(i) for i in range(len(names))]:
        return {i: str(theirs.get(i, theirs.get(str(i)))) for i in range(len(names))}
    return dict(enumerate(names))


def load_student(spec: str, id2label: dict[int, str], seed: int, ignore_index: int) -> Any:
    """A segmentation model for ``id2label``: from a config JSON (random init under ``seed``) or ``from_pretrained``."""
    import transformers

    labels = {"num_labels": len(id2label), "id2label": id2label, "label2id": {v: k for k, v in id2label.items()},
              "semantic_loss_ignore_index": ignore_index}
    transformers.set_seed(seed)
    p = Path(spec)
    if p.suffix == ".json":
        if not p.is_file():
            raise ConfigError(f"model config {spec!r} does not exist")
        d = json.loads(p.read_text())
        if "model_type" not in d:
            raise ConfigError(f"model config {spec!r} has no 'model_type' (e.g. \"segformer\")")
        cfg = transformers.AutoConfig.for_model(d.pop("model_type"), **{**d, **labels})
        return transformers.AutoModelForSemanticSegmentation.from_config(cfg)
    try:
        return transformers.AutoModelForSemanticSegmentation.from_pretrained(spec, ignore_mismatched_sizes=True,
                                                                             **labels)
    except (OSError, ValueError) as e:
        raise ConfigError(f"model {spec!r} could not be loaded: {str(e).strip().splitlines()[0]}") from None


def _finish(trainer: Any, a: argparse.Namespace, what: str) -> int:
    from .transformers.metrics import segmentation_metric

    trainer.save_model(a.output_dir)
    m = _evaluate(trainer.model, a, a.eval_split, trainer.args.per_device_eval_batch_size, segmentation_metric)
    path = Path(a.output_dir) / f"eval_{a.eval_split}.json"
    path.write_text(json.dumps(m, indent=1) + "\n")
    print(f"densekd hf {what}: {a.output_dir} — mIoU {100 * m['mIoU']:.2f} on {a.eval_split} ({m['images']} images)")
    return 0


def _evaluate(model: Any, a: argparse.Namespace, split: str, batch_size: int, metric: Any) -> dict[str, Any]:
    from torch.utils.data import DataLoader

    from .transformers.data import Collate

    ds = _data(a, split, train=False)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0, collate_fn=Collate(a.ignore_index))
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    try:
        m = metric(model, ({k: v.to(device) for k, v in b.items()} for b in loader))
    finally:
        model.train(was)
    return {"split": split, "images": len(ds), **m}


def _threads(a: argparse.Namespace) -> None:
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)


def _run_train(a: argparse.Namespace) -> int:
    from transformers import Trainer

    from .transformers.data import Collate
    from .transformers.metrics import SegmentationMetrics

    _threads(a)
    args = _training_args(a.args, a.output_dir, a.seed)  # a bad word fails before any data or model is read
    train = _data(a, a.train_split, train=True)
    model = load_student(a.model, _labels(train), a.seed, a.ignore_index)
    tr = Trainer(model=model, args=args, train_dataset=train, data_collator=Collate(a.ignore_index),
                 eval_dataset=_data(a, a.eval_split, train=False),
                 compute_metrics=SegmentationMetrics(train.num_classes, a.ignore_index))
    tr.train(resume_from_checkpoint=a.resume)
    return _finish(tr, a, "train")


def _distiller(a: argparse.Namespace, check: bool) -> Any:
    from .transformers import DistillationTrainer, load_model
    from .transformers.data import Collate
    from .transformers.families import SEMANTIC_SEGMENTATION
    from .transformers.metrics import SegmentationMetrics

    _threads(a)
    args = _training_args(a.args, a.output_dir, a.seed)  # bad words fail before any data or model is read
    kwargs = _kv(a.kwargs, "--kwargs", "num_masks=8")
    train = _data(a, a.train_split, train=True)
    teacher = load_model(a.teacher, "teacher", SEMANTIC_SEGMENTATION)
    student = load_student(a.student, _labels(train, teacher), a.seed, a.ignore_index)
    pairs = [tuple(w.split(":", 1)) if ":" in w else w for w in a.pairs] if a.pairs else None
    return DistillationTrainer(model=student, teacher=teacher, method=a.method, pairs=pairs, weight=a.weight,
                               method_kwargs=kwargs, check=check,
                               check_batches=getattr(a, "batches", 4), args=args, train_dataset=train,
                               data_collator=Collate(a.ignore_index), eval_dataset=_data(a, a.eval_split, train=False),
                               compute_metrics=SegmentationMetrics(train.num_classes, a.ignore_index))


def _run_distill(a: argparse.Namespace) -> int:
    tr = _distiller(a, check=not a.no_check)
    tr.train(resume_from_checkpoint=a.resume)
    return _finish(tr, a, "distill")


def _run_doctor(a: argparse.Namespace) -> int:
    from .transformers.checks import doctor

    tr = _distiller(a, check=False)
    return doctor(tr, batches=a.batches).exit_status


def _run_eval(a: argparse.Namespace) -> int:
    from .transformers import load_model
    from .transformers.families import SEMANTIC_SEGMENTATION
    from .transformers.metrics import segmentation_metric

    _threads(a)
    model = load_model(a.model, "model", SEMANTIC_SEGMENTATION)
    m = _evaluate(model, a, a.split, a.batch_size, segmentation_metric)
    print(json.dumps(m))
    return 0


def _data_args(p: argparse.ArgumentParser, train: bool = True) -> None:
    p.add_argument("--data", required=True, help="dataset root")
    p.add_argument("--format", default="folder", help="folder | ade20k | cityscapes | voc (default folder)")
    p.add_argument("--num-labels", type=int, default=None, help="number of classes (folder format)")
    p.add_argument("--class-names", default=None, help="comma-separated class names (folder format)")
    p.add_argument("--ignore-index", type=int, default=255, help="label of unlabelled pixels (default 255)")
    p.add_argument("--crop", type=int, nargs="+", default=[512], help="training crop H [W] (default 512)")
    p.add_argument("--scale", type=float, nargs=2, default=[0.5, 2.0], help="random scale range (default 0.5 2.0)")
    p.add_argument("--no-flip", action="store_true", help="no random horizontal flips")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    if train:
        p.add_argument("--train-split", default="train", help="training split folder (default train)")
        p.add_argument("--eval-split", default="val", help="split evaluated at the end (default val)")
        p.add_argument("--max-train-images", type=int, default=None, help="use the first N training images")
        p.add_argument("--output-dir", required=True, help="run folder (checkpoints, final student, eval json)")
        p.add_argument("--seed", type=int, default=0, help="seed of the model's initialisation and the data order")
        p.add_argument("--resume", default=None, help="a checkpoint-N folder of this run to resume from")


def _kd_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--student", required=True, help="student: config JSON, directory or Hub id")
    p.add_argument("--teacher", required=True, help="fine-tuned teacher: directory or Hub id")
    p.add_argument("--method", default="acam_kd", help="densekd method (default acam_kd)")
    p.add_argument("--weight", type=float, default=1.0, help="every pair's weight (default 1)")
    p.add_argument("args", nargs="*", metavar="key=value", help="TrainingArguments fields")
    p.add_argument("--pairs", nargs="+", default=None, metavar="NAME|S:T",
                   help="module names to distil (default: the family's, see docs/transformers.md)")
    p.add_argument("--kwargs", nargs="+", default=None, metavar="key=value", help="the method's keyword arguments")


def _run_data(a: argparse.Namespace) -> int:
    from ..data.digits import make_digits_dataset

    ds = make_digits_dataset(a.dir, seed=a.seed, n_train=a.n_train, n_val=a.n_val, n_dev=a.n_dev, canvas=a.canvas,
                             scale=(a.canvas // 4, a.canvas // 2))
    print(ds.root)
    return 0


def add_subparser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("hf", help="Hugging Face segmentation models in the transformers Trainer: train, distil, "
                                  "evaluate, check")
    s = p.add_subparsers(dest="hf_command", required=True)
    g = s.add_parser("data", help="write the built-in digits segmentation set (folder format, 11 labels) to DIR",
                     description="The segmentation demo's data (densekd demo): canvases of real handwritten digits, "
                                 "splits train (the teacher's pool), dev (for choosing settings) and val (reported).")
    g.add_argument("dir")
    g.add_argument("--n-train", type=int, default=1600)
    g.add_argument("--n-val", type=int, default=400)
    g.add_argument("--n-dev", type=int, default=400)
    g.add_argument("--canvas", type=int, default=64)
    g.add_argument("--seed", type=int, default=0)
    g.set_defaults(func=_run_data)
    t = s.add_parser("train", help="fine-tune a model with the plain Trainer (a teacher, a baseline)")
    t.add_argument("--model", required=True, help="config JSON, directory or Hub id")
    t.add_argument("args", nargs="*", metavar="key=value", help="TrainingArguments fields")
    _data_args(t)
    t.set_defaults(func=_run_train)
    d = s.add_parser("distill", help="distil a student from a fine-tuned teacher (DistillationTrainer)")
    _kd_args(d)
    _data_args(d)
    d.add_argument("--no-check", action="store_true", help="skip the pre-training checks")
    d.set_defaults(func=_run_distill)
    c = s.add_parser("doctor", help="the pre-training checks of a distillation, without training")
    _kd_args(c)
    _data_args(c)
    c.add_argument("--batches", type=int, default=4, help="evaluation batches for the teacher's metric (default 4)")
    c.set_defaults(func=_run_doctor)
    e = s.add_parser("eval", help="mIoU of a saved model on a split")
    e.add_argument("--model", required=True, help="model directory or Hub id")
    e.add_argument("--split", default="val", help="split folder (default val)")
    e.add_argument("--batch-size", type=int, default=8, help="images per batch (default 8)")
    _data_args(e, train=False)
    e.set_defaults(func=_run_eval)

