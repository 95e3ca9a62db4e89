"""``DistillationTrainer``: a ``transformers.Trainer`` that distils the student from a frozen teacher.

The Trainer's model is the plain student, so everything the Trainer does with it (device placement, DDP,
``save_pretrained``, ``push_to_hub``, ``load_best_model_at_end``, evaluation) is unchanged. Distillation is a
:class:`densekd.Distiller` beside it: forward hooks capture the paired modules by name, the frozen teacher runs
under ``torch.inference_mode`` only as far as the pairs need (under the Trainer's mixed precision), and one densekd
loss module per level adds its weighted terms to the model's own loss.

- The KD modules (aligners, ACAM-KD's attention and masks, ...) are built from the shapes of a dry run on the first
  training batch and join the optimizer as one more parameter group (same learning rate and weight decay); gradient
  clipping covers them with the student.
- KD terms are computed in float32 with autocast off (``Distiller(kd_fp32=True)``), whatever the precision
  (``bf16=True`` / ``fp16=True``) the forward runs in.
- Checkpoints (``checkpoint-N/``) hold the plain student as the Trainer writes it and, beside the optimizer
  state, ``densekd_kd.pt`` (the KD modules' state, method, pairs; plain tensors and strings, loads with
  ``weights_only=True``); ``train(resume_from_checkpoint=...)`` restores it. ``save_model`` /
  ``save_pretrained`` write the student only: ``from_pretrained`` gives exactly the plain model.
- Training logs gain ``loss_task``, ``loss_kd`` and each KD term summed over levels (``kd_<term>``), averaged
  over the logging interval like ``loss``.
- Before training (fresh runs, ``check=True``) the doctor's checks run through :mod:`densekd.health`
  (:func:`densekd.integrations.transformers.checks.doctor`): the teacher's metric against chance on a few
  evaluation batches, per level the KD/task loss and gradient-norm ratios, nothing reaching the teacher. A failure
  stops the run (one line); warnings are issued as ``UserWarning``\\ s. The checks leave every random stream, buffer
  and mode as they were, so a distilled run and a plain one with the same seed see the same data and dropout.
"""
from __future__ import annotations

import inspect
import itertools
import os
import warnings
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any, Sequence

import torch
from torch import Tensor, nn
from transformers import Trainer

from ...distiller import Distiller, Pair
from ...errors import ConfigError, DenseKDError
from ...run_folder import TERM_PREFIX
from .._state import module_state_preserved, rng_preserved
from .families import (
    OBJECT_DETECTION,
    SEMANTIC_SEGMENTATION,
    check_pair_of_models,
    check_pairs,
    default_pairs,
    detection_context,
    model_task,
    normalize_pairs,
)

__all__ = ["DistillationTrainer", "KD_STATE_FILE", "HealthCheckError", "load_model"]

#: the KD modules' state in a checkpoint folder (beside optimizer.pt)
KD_STATE_FILE = "densekd_kd.pt"
_KD_FORMAT = 1


class HealthCheckError(DenseKDError):
    """A pre-training check failed (the teacher at chance, a KD term with no gradient, a teacher not frozen)."""


def load_model(model: Any, role: str, task: str | None = None) -> nn.Module:
    """A Hugging Face model: the model itself, or a local directory / Hub id loaded with ``from_pretrained`` by
    the auto class of ``task`` (``"semantic segmentation"``, ``"object detection"``)."""
    if isinstance(model, nn.Module):
        return model
    if isinstance(model, (str, os.PathLike)):
        import transformers

        cls = {SEMANTIC_SEGMENTATION: transformers.AutoModelForSemanticSegmentation,
               OBJECT_DETECTION: transformers.AutoModelForObjectDetection}.get(task or "", transformers.AutoModel)
        try:
            return cls.from_pretrained(str(model))
        except (OSError, ValueError) as e:
            raise ConfigError(f"{role} {str(model)!r} could not be loaded: {str(e).strip().splitlines()[0]}") from None
    raise ConfigError(f"{role} must be a Hugging Face model or a directory / Hub id, got {type(model).__name__}")


def _pair_record(p: Pair) -> dict[str, Any]:
    return {**asdict(p), "aux": {k: list(v) for k, v in p.aux.items()}}


class DistillationTrainer(Trainer):
    """``transformers.Trainer`` for the student (``model``), distilled from ``teacher`` with densekd's ``method``.

    Args:
        model: the student (a ``PreTrainedModel``); every other Trainer argument is the Trainer's.
        teacher: a trained model of the student's task and label set (any width or family), or a directory /
            Hub id for ``from_pretrained``. It is frozen, kept in eval mode and never saved.
        method: a registered densekd loss (``densekd.losses.available_losses()``), used by the default pairs.
        pairs: ``None`` for the family's default pairs (:mod:`.families`), or module names
            (``"decode_head.classifier"``), ``(student, teacher)`` name tuples, dicts or :class:`~densekd.Pair`\\ s.
        weight / method_kwargs: every pair's weight and the loss's keyword arguments (for pairs given by name).
        check: run the doctor's checks when a fresh ``train()`` starts (``check_batches`` evaluation batches for
            the teacher's metric).
    """

    #: the KD terms are per-batch means like the task loss: the Trainer divides the sum by the accumulation steps
    loss_is_scaled_for_ga = False

    def __init__(self, model: nn.Module | None = None, args: Any = None, *, teacher: Any = None,
                 method: str = "acam_kd", pairs: Sequence[Any] | None = None, weight: float = 1.0,
                 method_kwargs: Mapping[str, Any] | None = None, check: bool = True, check_batches: int = 4,
                 **trainer_kwargs: Any) -> None:
        if model is None or not isinstance(model, nn.Module):
            raise ConfigError("DistillationTrainer needs model= (the student, a Hugging Face model)")
        if teacher is None:
            raise ConfigError("DistillationTrainer needs teacher= (a trained model of the student's task)")
        if trainer_kwargs.get("model_init") is not None:
            raise ConfigError("model_init= is not supported by DistillationTrainer: pass the student as model=")
        if any(o is not None for o in trainer_kwargs.get("optimizers", (None, None))):
            raise ConfigError("optimizers=: DistillationTrainer builds the optimizer itself (the KD modules train with "
                              "the student); choose it with args.optim or optimizer_cls_and_kwargs=")
        if check_batches < 1:
            raise ConfigError(f"check_batches: expected a positive int, got {check_batches}")
        teacher = load_model(teacher, "teacher", model_task(model))
        self.task = check_pair_of_models(model, teacher)
        kwargs = dict(method_kwargs or {})
        if pairs is None:
            pairs = default_pairs(model, teacher, method, weight, kwargs)
        else:
            pairs = normalize_pairs(pairs, method, weight, kwargs)
        check_pairs(pairs, model, teacher)
        self.kd_method, self.kd_weight, self.kd_check, self.check_batches = method, float(weight), check, check_batches
        self.kd_report: Any = None  # the DoctorReport of the pre-training checks
        super().__init__(model=model, args=args, **trainer_kwargs)
        device = next(self.model.parameters()).device
        self.teacher = teacher.to(device)
        self._main_input = getattr(self.model, "main_input_name", "pixel_values")
        self._teacher_args = self._accepted(teacher)
        self._running: nn.Module | None = None  # the (possibly wrapped) student of the current step
        self._outputs: Any = None
        self._log_sums: dict[str, Tensor] = {}
        self._log_count = 0
        ignore = getattr(self.model.config, "semantic_loss_ignore_index", 255)
        self.distiller = Distiller(self.model, teacher, pairs, call=self._call, ignore_index=ignore, kd_fp32=True)
        self._build()

    # ----------------------------------------------------------------- building
    @staticmethod
    def _accepted(model: nn.Module) -> set[str] | None:
        params = inspect.signature(model.forward).parameters.values()
        return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}

    def _split(self, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, Any], Any]:
        """(pixel values, other model inputs, labels) of a collated batch."""
        if self._main_input not in batch:
            raise ConfigError(f"the batch has no {self._main_input!r} (keys: {', '.join(map(str, batch))}); the "
                              f"data collator must give the model's inputs")
        rest = {k: v for k, v in batch.items() if k not in (self._main_input, "labels")}
        return batch[self._main_input], rest, batch.get("labels")

    def first_batch(self) -> dict[str, Any]:
        """The first training batch as the training loop collates it, on the model's device; no random stream moves."""
        with rng_preserved():
            batch = next(iter(self.get_train_dataloader()))
        return self._prepare_inputs(batch)

    def _build(self) -> None:
        if self.train_dataset is None:
            raise ConfigError("DistillationTrainer needs train_dataset= (the KD modules are built from the shapes of "
                              "its first batch)")
        pv, rest, _ = self._split(self.first_batch())
        with rng_preserved(), module_state_preserved(self.model):
            self.distiller.setup(pv, rest)
        for info in self.distiller.levels:
            for role, shape, name in (("student", info.student_shape, info.student),
                                      ("teacher", info.teacher_shape, info.teacher)):
                if len(shape) != 4:
                    raise ConfigError(f"pair {info.pair}: the {role}'s {name!r} gives a tensor of shape {list(shape)}, "
                                      f"not a [B, C, H, W] feature map")
        for key, mod in self.distiller.kd_losses.items():
            if getattr(mod, "needs_preparation", False):
                raise ConfigError(f"{type(mod).__name__} (pair {key.split('|')[0]}) must be fitted on the teacher "
                                  f"before training, which DistillationTrainer does not do: use `densekd train` or "
                                  f"another method")

    def kd_parameters(self) -> list[nn.Parameter]:
        """The KD modules' trainable parameters (the optimizer's last parameter group)."""
        return [p for p in self.distiller.kd_losses.parameters() if p.requires_grad]

    # ----------------------------------------------------------------- running the networks
    def _call(self, model: nn.Module, args: tuple[Any, ...]) -> Any:
        """How the Distiller runs a network: ``(pixel values, other inputs[, labels])`` as keyword arguments. The
        student runs as the Trainer wrapped it (DDP) and returns its own loss (or ``compute_loss_func``'s, when the
        Trainer was given one); the teacher under the Trainer's autocast, without labels."""
        pv, rest = args[0], args[1]
        if model is self.distiller.teacher:
            kw = {k: v for k, v in rest.items() if self._teacher_args is None or k in self._teacher_args}
            with self.accelerator.autocast():
                return model(**{self._main_input: pv}, **kw)
        run = self._running if self._running is not None else model
        if len(args) < 3:
            return run(**{self._main_input: pv}, **rest)
        if self.compute_loss_func is not None:  # the user's task loss, as the plain Trainer would compute it
            out = run(**{self._main_input: pv}, **rest)
            self._outputs = out
            return {"loss_task_main": self.compute_loss_func(out, args[2], num_items_in_batch=None)}
        out = run(**{self._main_input: pv}, **rest, labels=args[2])
        self._outputs = out
        loss = out["loss"] if isinstance(out, Mapping) else out[0]
        if loss is None:
            raise ConfigError(f"the student {type(model).__name__} returned no loss for the batch's labels")
        return {"loss_task_main": loss}

    def context(self, pixel_values: Tensor, labels: Any) -> Any:
        """The loss context of one batch: detection boxes in pixels; ``None`` for segmentation (the Distiller
        takes the label maps itself)."""
        if self.task == OBJECT_DETECTION:
            return detection_context(pixel_values, labels)
        return None

    def distill_step(self, model: nn.Module, inputs: Mapping[str, Any]) -> dict[str, Tensor]:
        """The Distiller's losses (task terms, ``kd/<level>/<term>``, ``loss_task``, ``loss_kd``, ``loss``) of one
        training batch, with ``model`` (the student as the Trainer wraps it) computing the task loss."""
        pv, rest, labels = self._split(inputs)
        if labels is None:
            raise ConfigError("the training batch has no 'labels': the student's own loss needs them")
        self.distiller.kd_losses.train()
        self.distiller.teacher.eval()
        self.distiller.iteration = int(self.state.global_step)
        self.distiller.max_iterations = int(self.state.max_steps) or None
        ctx = self.context(pv, labels)
        if ctx is not None:
            ctx.iteration, ctx.max_iterations = self.distiller.iteration, self.distiller.max_iterations
        self._running = model
        try:
            return self.distiller(pv, rest, targets=labels, context=ctx)
        finally:
            self._running = None

    # ----------------------------------------------------------------- Trainer overrides
    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        if not model.training:  # evaluation: the student's own loss, as the plain Trainer computes it
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        losses = self.distill_step(model, inputs)
        outputs, self._outputs = self._outputs, None
        logged = {"loss_task": losses["loss_task"], "loss_kd": losses["loss_kd"]}
        logged.update({"kd_" + k.removeprefix(TERM_PREFIX): v
                       for k, v in self.distiller.kd_terms(losses).items()})
        for k, v in logged.items():
            v = v.detach().float()
            self._log_sums[k] = self._log_sums[k] + v if k in self._log_sums else v
        self._log_count += 1
        return (losses["loss"], outputs) if return_outputs else losses["loss"]

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._log_count:  # a training row: the KD terms' means since the last one
            for k, v in self._log_sums.items():
                logs[k] = float(v) / self._log_count
            self._log_sums, self._log_count = {}, 0
        super().log(logs, start_time)

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        optimizer = super().create_optimizer(model)
        have = {id(p) for g in optimizer.param_groups for p in g["params"]}
        kd = [p for p in self.kd_parameters() if id(p) not in have]
        if kd:
            optimizer.add_param_group({"params": kd, "weight_decay": self.args.weight_decay})
        return optimizer

    def _clip_grad_norm(self, model: nn.Module) -> Any:
        """Clip the student's and the KD modules' gradients together (the Trainer clips ``model.parameters()``)."""
        if self._has_mixed_mesh_grads(model) or not self.kd_parameters():
            return super()._clip_grad_norm(model)
        params = itertools.chain(model.parameters(), self.kd_parameters())
        return self.accelerator.clip_grad_norm_(params, self.args.max_grad_norm)

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.args.world_size > 1 and self.accelerator.sync_gradients:
            self._average_kd_gradients()
        return loss

    def _average_kd_gradients(self) -> None:
        """Under DDP the KD modules are outside the wrapped model: average their gradients across ranks."""
        import torch.distributed as dist

        params = self.kd_parameters()
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.args.world_size
        i = 0
        for p in params:
            n = p.numel()
            p.grad = flat[i:i + n].view_as(p).clone()
            i += n

    # ----------------------------------------------------------------- checkpoints
    def kd_state(self) -> dict[str, Any]:
        """What ``densekd_kd.pt`` holds: only tensors, numbers and strings (loads with ``weights_only=True``)."""
        return {
            "format": _KD_FORMAT,
            "method": self.kd_method,
            "teacher": str(getattr(self.teacher, "name_or_path", "") or ""),
            "pairs": [_pair_record(p) for p in self.distiller.pairs],
            "state": {k: v.detach().cpu().clone() for k, v in self.distiller.kd_losses.state_dict().items()},
        }

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        if self.args.should_save:
            torch.save(self.kd_state(), os.path.join(output_dir, KD_STATE_FILE))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if checkpoint is not None:
            self.load_kd_state(checkpoint)
        super()._load_optimizer_and_scheduler(checkpoint)

    def load_kd_state(self, checkpoint: str) -> None:
        """Restore the KD modules from a checkpoint folder written by this trainer (one line if it was not, or was
        distilled with other pairs)."""
        path = os.path.join(checkpoint, KD_STATE_FILE)
        if not os.path.isfile(path):
            raise ConfigError(f"resume: {checkpoint} has no {KD_STATE_FILE}: it was not written by densekd's "
                              f"DistillationTrainer (resume a plain run with the plain Trainer)")
        entry = torch.load(path, map_location="cpu", weights_only=True)
        mine = [_pair_record(p) for p in self.distiller.pairs]
        if entry.get("pairs") != mine:
            theirs = [f"{p['loss']}:{p['student']}" for p in entry.get("pairs", [])]
            now = [f"{p['loss']}:{p['student']}" for p in mine]
            raise ConfigError(f"resume: {checkpoint} was distilled with pairs {theirs}, this trainer has {now} "
                              f"(or their weights or kwargs differ): resume with the run's own settings")
        self.distiller.kd_losses.load_state_dict(entry["state"])

    # ----------------------------------------------------------------- training
    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        if self.kd_check and not resume_from_checkpoint:
            self.run_checks()
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def run_checks(self) -> Any:
        """The doctor's checks (see the module docstring); prints each line (main process), warns on warnings, raises
        :class:`HealthCheckError` on a failure. Returns the :class:`~densekd.health.DoctorReport`."""
        from .checks import doctor

        report = doctor(self, batches=self.check_batches, log=print if self.args.should_log else lambda s: None)
        self.kd_report = report
        for c in report.warnings:
            warnings.warn(f"densekd: {c.topic}: {c.message}", UserWarning, stacklevel=3)
        if report.failures:
            first = report.failures[0]
            more = f" (and {len(report.failures) - 1} more failure(s))" if len(report.failures) > 1 else ""
            raise HealthCheckError(f"densekd check failed: {first.topic}: {first.message}{more}; pass check=False to "
                                   f"train anyway")
        return report
