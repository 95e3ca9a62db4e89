"""KD health: the checks ``densekd doctor`` runs before training and the guards the engine runs during it.

Distillation fails in two quiet ways: it does nothing (a teacher that was never loaded, a KD term that is 0
or puts no gradient on the student, masks that collapsed) or it wrecks training (a KD term thousands of times
the task loss). This package says so, in one line each, before the run is lost. It sits below the engine: the
engine runs its guards and writes ``health.json`` with it; it never imports the engine.

* :mod:`~densekd.health.checks` — the checks (:class:`Check` lines);
* :mod:`~densekd.health.guards` — :class:`TrainingGuards`, run by the engine during training;
* :mod:`~densekd.health.record` — ``health.json`` (:func:`write_health`, :func:`read_health`, :func:`run_warnings`).

**Before training** — ``densekd doctor CONFIG [key=value …] [--batches N]`` (:mod:`densekd.tools.doctor`, above
the engine: it builds what ``densekd train`` would build) trains nothing and prints one report:

* teacher: where its weights came from (:func:`teacher_source`); its metric on up to N validation batches
  against chance on the same batches (:func:`chance_level`): **failure** at chance ("is its checkpoint the
  right one?"); a warning when it does not beat the student's starting point there (:func:`teacher_checks`);
* every pair and level: student and teacher module, shape, channels, stride, aligner, resize
  (:func:`level_checks`);
* one training batch, forward and backward (:func:`one_batch_checks`): per level the KD term and the
  gradient norm it puts on the student, the task term's beside it, and their ratios; a warning when a ratio is
  above 10 or below 0.01, with the ``distill.weight`` that would bring it to 1 (both scale linearly with
  it); **failure** when a KD term puts no gradient on the student or anything reaches the teacher; and the
  cost (:func:`cost_checks`): the matrix-product FLOPs of that forward for the student, the teacher and the KD
  modules per level (``torch.utils.flop_counter``), with a warning when the KD modules' exceed the student's
  (attention over positions grows with the square of a level's H·W: ACAM-KD or SAMKD on an FPN's P2 can cost
  many student steps), naming the level that does most of it.

Both verdicts run without the engine too: :func:`teacher_metric_checks` (a teacher's metric against chance and
the student's) and :func:`batch_checks` (one batch through any :class:`~densekd.Distiller`), so an integration
(:mod:`densekd.integrations.transformers`) runs the doctor's code, not a copy.

Exit status of the command: 0 no failure (warnings allowed), 1 a check failed, 2 the config cannot be built.

**During training** — :class:`TrainingGuards`, run by the engine (:mod:`densekd.engine.trainer`, on by
default, ``train.guards: false`` turns them off). At start the cheap checks above print one line each
(teacher source, levels); at iteration 1 the KD/task loss and gradient ratios per level (the doctor's
thresholds) and the cost line of a fresh run's first forward (:meth:`TrainingGuards.cost`, the doctor's). Then,
per level, into ``log.csv`` and TensorBoard (column names in the trainer's docstring): the KD/task loss ratio
every ``log_every``, the gradient-norm ratio at iteration 1 and every ``train.grad_ratio_every`` iterations, the student–teacher feature distance (:func:`feature_distance`) and,
for KD modules with ``mask_statistics()`` (ACAM-KD), each mask statistic. One-line warnings, each printed
once and kept for the end-of-run summary and ``health.json``, when

* a KD term (each ``kd/<level>/loss_*``) falls below 1 % of its first value while the feature distance has
  not fallen to half of its own (collapse: distillation switched itself off; terms a loss lists in
  ``regularizer_terms``, such as ACAM-KD's Dice diversity, do not count);
* ACAM-KD masks' mean leaves [0.01, 0.99], or the spatial masks' smallest per-mask spatial std falls below
  1e-3 once they have left their initial state (≈ 0.5 everywhere, constant too): after having been above
  1e-3, or with a mask's mean more than 0.25 from 0.5, i.e. gates ≈ 0 or 1 over the whole image
  (collapse, saturation; docs/methods.md, "Optimisation of the mask modules");
* ACAM-KD's M spatial masks are still one mask (mean pairwise Dice ≥ 0.99) a quarter or more into the run while
  each varies over the image (docs/methods.md, "When the masks are one mask");
* the KD/task gradient-norm ratio exceeds 100 (divergence ahead);
* one level's KD/task gradient-norm ratio is 10× or more the median of the other levels' (one level, e.g. the
  1×1 P6/P7 maps of a small detector's FPN, dominates the distillation): the warning names the level and the
  pair weight that brings it to the others' median.
"""
from .checks import (CHANCE_MARGIN, FAIL, INFO, KD_COST_HIGH, OK, PRIMARY_METRICS, RATIO_HIGH, RATIO_LOW, WARN,
                     Check, DoctorReport, aligner_text, batch_checks, chance_level, cost_checks, cost_split,
                     feature_distance, flop_text, level_checks, level_terms, module_flops, one_batch_checks,
                     primary_value, ratio_checks, suggested_weight, teacher_checks, teacher_metric_checks,
                     teacher_source, total_norm)
from .guards import (COLLAPSE_FRACTION, DISTANCE_FALLEN, GRAD_RATIO_DIVERGENCE, LEVEL_DOMINANCE, MASK_GATE_SHIFT,
                     MASK_MEAN_HIGH, MASK_MEAN_LOW, MASK_SAME_AFTER, MASK_SAME_DICE, MASK_STD_MIN, MASK_STD_WAS_SPATIAL,
                     TrainingGuards)
from .record import read_health, run_warnings, write_health

__all__ = ["CHANCE_MARGIN", "COLLAPSE_FRACTION", "DISTANCE_FALLEN", "FAIL", "GRAD_RATIO_DIVERGENCE", "INFO",
           "KD_COST_HIGH", "LEVEL_DOMINANCE", "MASK_GATE_SHIFT", "MASK_MEAN_HIGH", "MASK_MEAN_LOW", "MASK_SAME_AFTER",
           "MASK_SAME_DICE", "MASK_STD_MIN", "MASK_STD_WAS_SPATIAL", "OK", "PRIMARY_METRICS", "RATIO_HIGH",
           "RATIO_LOW", "WARN", "Check", "DoctorReport", "TrainingGuards", "aligner_text", "batch_checks",
           "chance_level", "cost_checks", "cost_split", "feature_distance", "flop_text", "level_checks", "level_terms",
           "module_flops", "one_batch_checks", "primary_value", "ratio_checks", "read_health", "run_warnings",
           "suggested_weight", "teacher_checks", "teacher_metric_checks", "teacher_source", "total_norm",
           "write_health"]
