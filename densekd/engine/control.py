"""A control inside one run: the distilled student against a plain twin trained on the same batches.

``train.control: true`` (with a ``distill`` section) builds, beside the distilled student, a plain copy of it
— the same initial weights: the student's state once it is built (and, for detection, has inherited from the
teacher), before the first step — with its own optimizer of the same kind and settings, the same
learning-rate schedule, gradient clipping and AMP. For the first ``train.control_iters`` iterations (default:
a tenth of ``train.max_iters``, at least 1) every batch the distilled student trains on also trains the twin,
with the task loss only. Then both are scored, in eval mode, on the validation batches the doctor scores the
teacher on: the first :data:`CONTROL_BATCHES` batches of ``eval.batch_size`` images (``densekd doctor
--control N --batches B``: B), and the twin is dropped.

**Measured noise.** Each batch is scored alone: d_b = metric(distilled, batch b) − metric(twin, batch b), the
task's primary metric (mIoU, AP) on a 0–1 scale. Both models see the same images, so d_b is a paired
difference; its mean over the k batches estimates the effect of KD so far and the standard error
SE = std(d_b, ddof = 1) / √k is the noise of that estimate (how much it moves with which images are scored).
**Warning** when the mean is below −2 SE *and* at least :data:`CONTROL_MIN_GAP` (1 point) below 0: "the
distilled student is worse than its plain twin by more than the measured noise", naming both models' metric
on all k batches together, the mean difference ± SE and k. With one batch there is no spread: the numbers are
kept, with no verdict. The warning is printed, kept in ``health.json`` (``kind: "control"``) and listed again
at the end of the run; the numbers, per batch too, go to ``control.json`` in the run folder and the verdict
line into ``health.json``'s ``checks``. An early snapshot: a method whose benefit appears late can trail the
twin at 10 % of the run and still win at the end (``densekd compare`` decides that; the control catches the
run that KD is wrecking while it runs).

**The twin never changes the distilled run.** It is built and stepped under its own RNG stream
(``torch.random.fork_rng``; the python and numpy streams are restored too), with its own parameters, optimizer
state and normalisation statistics; the batches are the ones the distilled student already got. The scoring
runs the distilled student in eval mode (no statistics update) under a forked RNG as well. So the distilled
student's numbers are the same with and without the control (bit for bit on CPU; tested). Costs: one more
student forward and backward per step during the control iterations, the twin's weights and optimizer state
in memory until then, and 2 × (k + 1) evaluations of k batches at the end of it (``densekd bench --control``
measures the ratio). One process only (not under torchrun).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..health import PRIMARY_METRICS, primary_value
from ..run_folder import CONTROL_FILE, CONTROL_LOSS_KEY
from .student import StudentOnly, build_optimizer

#: validation batches (eval.batch_size each) both students are scored on, as the doctor's teacher check
CONTROL_BATCHES = 4
#: smallest gap (0–1 metric scale: 1 point of mIoU or AP) the warning reports, however small the noise
CONTROL_MIN_GAP = 0.01


def default_control_iters(max_iters: int) -> int:
    """A tenth of the run, at least one iteration."""
    return max(1, max_iters // 10)


# --------------------------------------------------------------------------- the verdict (pure)
@dataclass
class ControlResult:
    """The comparison after ``iteration`` iterations: ``metric`` of the distilled student and of its twin on
    all ``images`` images of the ``len(per_batch)`` batches together, and per batch ``(distilled, twin)``."""

    iteration: int
    metric: str
    distilled: float
    plain: float
    images: int
    per_batch: list[tuple[float, float]] = field(default_factory=list)

    @property
    def differences(self) -> list[float]:
        return [d - p for d, p in self.per_batch]

    @property
    def mean_difference(self) -> float:
        d = self.differences
        return sum(d) / len(d) if d else math.nan

    @property
    def noise(self) -> float:
        """The standard error of the mean per-batch difference (NaN with fewer than 2 batches)."""
        d = self.differences
        if len(d) < 2:
            return math.nan
        m = sum(d) / len(d)
        return math.sqrt(sum((x - m) ** 2 for x in d) / (len(d) - 1) / len(d))

    @property
    def worse(self) -> bool:
        """The distilled student is worse than the twin by more than 2 × the measured noise and 1 point."""
        m, se = self.mean_difference, self.noise
        return math.isfinite(se) and m < -2 * se and -m >= CONTROL_MIN_GAP

    def _numbers(self) -> str:
        k = len(self.per_batch)
        text = (f"the distilled student scores {100 * self.distilled:.2f} {self.metric} on {self.images} validation "
                f"images, its plain twin (same initial weights and batches, no KD) {100 * self.plain:.2f}")
        if k >= 2:
            text += (f"; per batch {100 * self.mean_difference:+.2f} ± {100 * self.noise:.2f} (mean ± standard error "
                     f"of the {k} paired batch differences)")
        return text

    def message(self) -> str:
        """The warning (when :attr:`worse`) or the verdict line."""
        head = f"control after {self.iteration} iterations: {self._numbers()}"
        if len(self.per_batch) < 2:
            return head + "; one batch gives no spread, so no verdict (lower eval.batch_size)"
        if self.worse:
            return (head + f": worse by more than twice the measured noise and by at least "
                           f"{100 * CONTROL_MIN_GAP:g} point; KD is making this student worse so far (try another "
                           f"distill.weight: densekd compare --tune)")
        return head + ": not worse beyond the measured noise"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "per_batch": [list(x) for x in self.per_batch], "mean_difference": self.mean_difference,
                "noise": self.noise, "worse": self.worse, "min_gap": CONTROL_MIN_GAP}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ControlResult":
        return cls(int(d["iteration"]), str(d["metric"]), float(d["distilled"]), float(d["plain"]), int(d["images"]),
                   [(float(a), float(b)) for a, b in d["per_batch"]])


# --------------------------------------------------------------------------- scoring
class _Batches:
    """Already collated batches with the dataset a task's evaluate reads names from."""

    def __init__(self, batches: Sequence[Any], dataset: Any) -> None:
        self.batches, self.dataset = list(batches), dataset

    def __iter__(self) -> Iterator[Any]:
        return iter(self.batches)


@contextlib.contextmanager
def _own_rng(device: torch.device, state: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Within the block the torch (CPU and ``device``), python and numpy RNGs run from ``state`` (or their current
    state); on exit they are restored and the block's final state is left in the yielded dict."""
    devices = [device] if device.type == "cuda" else []
    py, npy = random.getstate(), np.random.get_state()
    out: dict[str, Any] = {}
    with torch.random.fork_rng(devices=devices):
        if state:
            torch.set_rng_state(state["torch"])
            if devices and state.get("cuda") is not None:
                torch.cuda.set_rng_state(state["cuda"], device)
        try:
            yield out
        finally:
            out["torch"] = torch.get_rng_state()
            out["cuda"] = torch.cuda.get_rng_state(device) if devices else None
            random.setstate(py)
            np.random.set_state(npy)


def _metric(metrics: Mapping[str, float]) -> tuple[str, float]:
    found = primary_value(metrics)
    if found is not None:
        return found
    raise ConfigError(f"train.control: the task's evaluation reports none of {', '.join(PRIMARY_METRICS)} "
                      f"(it reports {', '.join(metrics) or 'nothing'})")


def score_pair(task: Any, distilled: nn.Module, plain: nn.Module, val_set: Any, batch_size: int, batches: int,
               device: torch.device, iteration: int) -> ControlResult:
    """Both students on the first ``batches`` validation batches, each batch alone and all together."""
    import contextlib as cl
    import io

    from torch.utils.data import DataLoader

    n_img = min(len(val_set), batches * batch_size)
    loader = DataLoader(val_set, batch_size=batch_size, sampler=list(range(n_img)), num_workers=0,
                        collate_fn=task.collate)
    with _own_rng(device):
        held = [b for b in loader]
        per: list[tuple[float, float]] = []
        with cl.redirect_stdout(io.StringIO()), cl.redirect_stderr(io.StringIO()):  # the evaluators' tables
            for b in held:
                pair = []
                for model in (distilled, plain):
                    pair.append(_metric(task.evaluate(model, _Batches([b], val_set), device, None))[1])
                per.append((pair[0], pair[1]))
            name, d_all = _metric(task.evaluate(distilled, _Batches(held, val_set), device, None))
            _, p_all = _metric(task.evaluate(plain, _Batches(held, val_set), device, None))
    return ControlResult(iteration, name, d_all, p_all, n_img, per)


# --------------------------------------------------------------------------- the twin
class ControlTwin:
    """The plain twin of a :class:`~densekd.engine.trainer.Trainer`'s distilled student (module docstring).

    The trainer calls :meth:`step` after each of its own optimizer steps while :meth:`active`, then
    :meth:`finish` once :meth:`due`; its checkpoint keeps :meth:`state_dict` (the twin while it trains, the
    result after)."""

    def __init__(self, trainer: Any, iters: int, batches: int = CONTROL_BATCHES) -> None:
        cfg = trainer.cfg
        self.iters, self.batches = int(iters), int(batches)
        self.device = trainer.device
        self.result: ControlResult | None = None
        self.note: str | None = None
        with _own_rng(self.device) as rng:  # building consumes random numbers: not the distilled run's
            student = trainer.task.build_model(cfg.model, "student").to(self.device)
        student.load_state_dict(trainer.model.student.state_dict())
        self.model: StudentOnly | None = StudentOnly(student, trainer.task.task_loss())
        self.model.train()
        self.params = [p for p in student.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(cfg.train.optimizer, self.params)
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.scaler = torch.amp.GradScaler("cuda") if cfg.train.amp == "fp16" else None
        self.rng = rng

    @classmethod
    def build(cls, trainer: Any) -> "ControlTwin | None":
        """The twin a config asks for (``train.control``), None when it asks for none or trains no KD."""
        t = trainer.cfg.train
        if not t.control:
            return None
        if trainer.cfg.distill is None:
            trainer.messages.append("control: off (train.control is set, but this run trains the plain student)")
            return None
        if trainer.world > 1:
            raise ConfigError(f"train.control: runs in one process only, got {trainer.world} (torchrun); use "
                              f"`densekd doctor --control N` or a single-process run")
        if trainer.val_set is None or len(trainer.val_set) == 0:
            raise ConfigError("train.control: needs validation data to score the two students on "
                              "(data.val_split / data.val_ann)")
        iters = t.control_iters if t.control_iters is not None else default_control_iters(t.max_iters)
        return cls(trainer, iters)

    # -- the trainer's hooks
    def active(self, iteration: int) -> bool:
        """The twin trains at 0-based ``iteration``."""
        return self.model is not None and iteration < self.iters

    def due(self, iterations_done: int) -> bool:
        return self.model is not None and self.result is None and iterations_done >= self.iters

    def step(self, trainer: Any, inputs: Sequence[Any], targets: Any, lr_factor: float) -> tuple[list[str], list[float]]:
        """One step of the twin on the distilled student's batch; its task loss as ``control/loss_task``
        (:data:`~densekd.run_folder.CONTROL_LOSS_KEY`)."""
        assert self.model is not None
        t = trainer.cfg.train
        for g, lr in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = lr * lr_factor
        with _own_rng(self.device, self.rng) as rng:
            with trainer.autocast():
                loss = self.model(*inputs, targets=targets)["loss"]
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(self.optimizer)
            else:
                loss.backward()
            if t.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(self.params, t.grad_clip)
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
        self.rng = rng
        v = float(loss.detach())
        if not math.isfinite(v):
            raise FloatingPointError(f"train.control: the plain twin's loss is non-finite ({v}) at iteration "
                                     f"{trainer.iteration}: the plain setting itself diverges")
        return [CONTROL_LOSS_KEY], [v]

    def finish(self, trainer: Any) -> ControlResult:
        """Score both students, keep the result, drop the twin."""
        assert self.model is not None
        self.result = score_pair(trainer.task, trainer.model.student, self.model.student, trainer.val_set,
                                 trainer.cfg.eval.batch_size, self.batches, self.device, trainer.iteration)
        self.model, self.optimizer, self.params, self.scaler = None, None, [], None  # type: ignore[assignment]
        return self.result

    def lines(self) -> list[str]:
        """``health.json`` check lines: the verdict, or why there is none."""
        out = [f"{'WARN' if self.result.worse else 'INFO'} control: {self.result.message()}"] if self.result else []
        return out + ([f"INFO control: {self.note}"] if self.note else [])

    def write(self, out_dir: str) -> str:
        path = os.path.join(out_dir, CONTROL_FILE)
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"iters": self.iters, "batches": self.batches, **(self.result.as_dict() if self.result else {}),
                       "note": self.note}, f, indent=1)
        return path

    # -- checkpoint
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"iters": self.iters, "result": self.result.as_dict() if self.result else None,
                                 "note": self.note}
        if self.model is not None:
            state.update(student=self.model.student.state_dict(), optimizer=self.optimizer.state_dict(),
                         scaler=self.scaler.state_dict() if self.scaler is not None else None, rng=self.rng)
        return state

    def load_state_dict(self, state: Mapping[str, Any] | None, iteration: int) -> None:
        """Resume at ``iteration``: the twin as the checkpoint kept it; without one (a checkpoint written
        without the control, after the twin was dropped, ...) the control is off for this run, with a note."""
        if state and state.get("result"):
            self.result = ControlResult.from_dict(state["result"])
            self.note = state.get("note")
            self._drop()
        elif state and "student" in state and iteration < self.iters:
            assert self.model is not None
            self.model.student.load_state_dict(state["student"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scaler is not None and state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            self.rng = state["rng"]
        elif iteration > 0:
            self.note = (f"off: resumed at iteration {iteration} from a checkpoint without the plain twin's "
                         f"state (written without train.control)")
            self._drop()

    def _drop(self) -> None:
        self.model, self.optimizer, self.params, self.scaler = None, None, [], None  # type: ignore[assignment]
