"""The task-agnostic, iteration-based training loop (detection and segmentation alike).

    metrics = densekd.train("configs/detection/retinanet_r101_r50_acamkd_2x.yaml", ["train.max_iters=100"])

One process on CPU, or many with ``torchrun --nproc_per_node=N -m densekd train CONFIG`` (DDP; gloo on CPU,
nccl on GPU). With a ``distill`` section the student is wrapped in a :class:`~densekd.Distiller` with the
frozen teacher; without it the same loop trains the plain student.

Outputs in ``output_dir`` (rank 0 only): ``checkpoint.pth`` (resumable, every ``checkpoint_every``
iterations, at the end and on SIGTERM), ``student_final.pth`` (plain student state dict), ``log.csv``,
``tb/`` (TensorBoard), ``config.yaml``, ``metrics.json`` (the final metrics, plus ``train_seconds``: wall time of
the training loop in this process, evaluation excluded, and ``train_iterations``: how many iterations it ran),
``health.json``, with ``train.control`` ``control.json`` (:mod:`densekd.engine.control`), and the task's
evaluation files.
Temporary checkpoint files a killed write left behind (``.tmp_*.pth``) are removed when a run starts.

``log.csv`` has one row at iteration 1, every ``train.log_every`` iterations and at the last one (means over
the iterations since the previous row; averaged over ranks); TensorBoard gets the same values as
``train/<column>``. Columns (names are stable; ``<level>`` is the student's level label, e.g. ``classifier``
or ``backbone:0``, as in the KD loss keys):

* ``lr``, every task loss term (e.g. ``loss_ce``, ``classification``), ``loss_task``, ``loss_kd``, ``loss``,
  ``grad_norm`` (with ``train.grad_clip``), ``time_per_iter``, ``max_mem_mb`` (CUDA);
* ``control/loss_task``: with ``train.control``, the plain twin's task loss while it trains (empty after);
* ``kd/<level>/<term>``: each weighted KD term (``loss_*``);
* KD health (:mod:`densekd.health`, with a ``distill`` section and ``train.guards: true``, the default):
  ``kd/<level>/kd_task_ratio`` (the level's KD terms over ``loss_task``, of the row's means);
  ``kd/<level>/distance`` (student–teacher feature distance at the row's last iteration, 1 − Pearson
  correlation through the KD module's aligner); ``kd/<level>/grad_norm``, ``task/grad_norm`` and
  ``kd/<level>/grad_ratio`` (gradient norms on the student's parameters, measured at iteration 1 and every
  ``train.grad_ratio_every`` iterations, written in the next row; empty in rows without a measurement);
  for KD modules with ``mask_statistics()`` (ACAM-KD) ``kd/<level>/masks/<family>/<statistic>`` at the
  row's last iteration, e.g. ``kd/classifier/masks/spatial/mean``, ``.../spatial/std_min``,
  ``.../channel/dice`` (families ``spatial`` and ``channel``; statistics as ``ACAMKD.mask_statistics``),
  and the guards' ``kd/<level>/masks/<family>/shift_max`` (the largest distance of one mask's mean from
  0.5, its initial value; 0.5 = a gate ≈ 0 or ≈ 1 everywhere).

Guard warnings (collapse, mask saturation, divergence ahead; with ``train.control`` a student that KD made
worse than its plain twin) are printed once each, listed at the end of the run and kept in ``health.json``
(``{"iteration", "finished", "checks", "warnings": [{"iteration", "kind", "level", "message"}]}``), which also
holds the start-up check lines.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import threading
import time
import warnings
import weakref
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader

from .. import health
from ..config import Config, load_config, to_dict
from ..distiller import Distiller, Pair
from ..errors import ConfigError, DenseKDError
from ..health.checks import module_flops, size_text
from ..ops.flops import flop_counter
from ..run_folder import (CHECKPOINT_FILE, CONFIG_FILE, EVAL_LOG_FILE, HEALTH_FILE, LOG_FILE, METRICS_FILE,
                          STUDENT_FILE, TENSORBOARD_DIR, kd_term)
from ..tasks import get_task
from . import checkpoint as ckpt
from . import distributed as du
from . import malloc
from .control import ControlTwin
from .data import ResumableBatchSampler, SeededDataset, ShardSampler
from .schedule import lr_factor
from .student import StudentOnly, build_optimizer


class TrainingInterrupted(DenseKDError):
    """Training stopped on SIGTERM after writing a checkpoint; rerun the same command to resume."""

    def __init__(self, iteration: int, path: str) -> None:
        super().__init__(f"stopped by SIGTERM at iteration {iteration}; checkpoint saved to {path}; "
                         f"run the same command again to resume")
        self.iteration, self.path = iteration, path


def build_pairs(cfg: Config, task: Any) -> list[Pair]:
    """The config's ``distill.pairs`` (defaults: the method, its kwargs) or the task's canonical points;
    every pair's weight is multiplied by ``distill.weight``."""
    d = cfg.distill
    assert d is not None
    if d.pairs is None:
        pairs = list(task.default_pairs(cfg.model, d.method, d.kwargs))
    else:
        pairs = []
        for i, p in enumerate(d.pairs):
            q = dict(p)
            q.setdefault("loss", d.method)
            if q["loss"] == d.method:
                q["kwargs"] = {**d.kwargs, **(q.get("kwargs") or {})}
            try:
                pairs.append(Pair.coerce(q))
            except ConfigError as e:
                raise ConfigError(f"distill.pairs[{i}]: {e}") from None
    for p in pairs:
        p.weight = p.weight * d.weight
    return pairs


def _autocast_factory(amp: str, device: torch.device) -> Callable[[], Any]:
    if amp == "none":
        return contextlib.nullcontext
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError("train.amp: fp16 needs a CUDA device (it uses GradScaler); use bf16 or none on CPU")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


class Trainer:
    """Builds everything from a config (datasets, student, teacher, Distiller, optimizer, loaders, DDP),
    resumes from ``output_dir/checkpoint.pth`` when asked, and runs the loop (:meth:`run`)."""

    def __init__(self, config: Config | str | Mapping[str, Any], overrides: Sequence[str] | Mapping[str, Any] | None = None) -> None:
        self.cfg = cfg = load_config(config, overrides)
        self.task = get_task(cfg.task)
        t = cfg.train
        self.device, self._created_pg = du.setup()
        # subnormals to zero on a CPU while this Trainer lives (train.flush_denormal; undone by close())
        self._flushed = self.device.type == "cpu" and t.flush_denormal and torch.set_flush_denormal(True)
        # freed memory kept for the next step instead of being unmapped and faulted in again (train.malloc_keep;
        # docs/methods.md, "The CPU allocator"; undone by close())
        self._malloc_hold = malloc.Hold() if self.device.type == "cpu" and t.malloc_keep else None
        if self._malloc_hold is not None:  # given back by close(), the watch, or this Trainer's collection
            weakref.finalize(self, self._malloc_hold.release)
        # memory that keeps growing: the hold given back
        self.malloc_watch = malloc.GrowthWatch(release=self._malloc_hold.release) if self.malloc_kept else None
        self.rank, self.world = du.rank(), du.world_size()
        self.autocast = _autocast_factory(t.amp, self.device)
        _seed_all(cfg.seed)
        self.out = cfg.output_dir
        self.ckpt_path = os.path.join(self.out, CHECKPOINT_FILE)

        # data
        self.train_set = self.task.build_dataset(cfg.data, "train")
        self.val_set = self.task.build_dataset(cfg.data, "val")
        if hasattr(self.task, "check_data"):
            for ds in (self.train_set, self.val_set):
                if ds is not None:
                    self.task.check_data(cfg.model, ds)
        self.sampler = ResumableBatchSampler(len(self.train_set), t.batch_size, self.world, self.rank, cfg.seed)
        self.iters_per_epoch = len(self.sampler)
        if self.iters_per_epoch == 0:
            raise ConfigError(
                f"train.batch_size: {t.batch_size} per process × {self.world} process(es) is more than the "
                f"{len(self.train_set)} training samples"
            )
        seeded = SeededDataset(self.train_set)
        self.loader = DataLoader(seeded, batch_sampler=self.sampler, num_workers=t.num_workers,
                                 collate_fn=self.task.collate, pin_memory=self.device.type == "cuda",
                                 generator=torch.Generator(), persistent_workers=False)

        # models
        self.messages: list[str] = []
        student = self.task.build_model(cfg.model, "student").to(self.device)
        if cfg.distill is not None:
            teacher = self.task.build_model(cfg.model, "teacher").to(self.device)
            if hasattr(self.task, "inherit"):
                msg = self.task.inherit(student, teacher, cfg.model)
                if msg:
                    self.messages.append(msg)
            n = min(t.batch_size, len(self.train_set))
            example = self.task.to_device(self.task.collate([seeded[(i, 0)] for i in range(n)]), self.device)
            inputs, _ = self.task.model_inputs(example)
            try:
                self.model: nn.Module = Distiller(student, teacher, build_pairs(cfg, self.task),
                                                  task_loss=self.task.task_loss(), example_inputs=inputs,
                                                  ignore_index=getattr(self.task, "ignore_index", 255),
                                                  teacher_amp=cfg.distill.teacher_amp,
                                                  teacher_channels_last=cfg.distill.teacher_channels_last)
            except TypeError as e:  # build_loss(...) with a keyword the method does not take
                if str(e).startswith("build_loss("):
                    raise ConfigError(f"distill.kwargs: {e}") from None
                raise
            except ConfigError:
                raise
            except ValueError as e:  # a method's own argument check, or pairs whose shapes cannot match
                raise ConfigError(f"distill: {e}") from None
        else:
            self.model = StudentOnly(student, self.task.task_loss())
        self.model.train()
        self.guards: health.TrainingGuards | None = None
        if isinstance(self.model, Distiller):
            self.guards = health.TrainingGuards(self.model, distill_weight=cfg.distill.weight,
                                                grad_every=t.grad_ratio_every, world_size=self.world,
                                                enabled=t.guards, max_iters=t.max_iters)
        self._student_params = [p for p in self.model.student.parameters() if p.requires_grad]
        # train.control: a plain twin from the student's initial weights (densekd.engine.control)
        self.control: ControlTwin | None = ControlTwin.build(self)

        self.optimizer = build_optimizer(t.optimizer, list(self.model.trainable_parameters()))
        self.scaler = torch.amp.GradScaler("cuda") if t.amp == "fp16" else None
        self._base_lrs = [t.optimizer.lr for _ in self.optimizer.param_groups]
        self.iteration = 0
        if t.resume and os.path.isfile(self.ckpt_path):
            self._load(self.ckpt_path)
            self.messages.append(f"resumed from {self.ckpt_path} at iteration {self.iteration}")

        self.ddp: nn.Module = self.model
        if self.world > 1:
            self.ddp = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device] if self.device.type == "cuda" else None)

    # ---------------------------------------------------------------- checkpoints
    def state(self) -> dict[str, Any]:
        epoch, batch = divmod(self.iteration, self.iters_per_epoch)
        return {
            "format": ckpt.FORMAT,
            "iteration": self.iteration,
            "student": self.model.student_state_dict(),
            "kd_losses": self.model.kd_losses.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "schedule": {"type": self.cfg.train.schedule.type, "iteration": self.iteration},
            "sampler": {"epoch": epoch, "batch": batch, "seed": self.cfg.seed, "world_size": self.world},
            "rng": ckpt.rng_state(),
            "config": to_dict(self.cfg),
            "health": self.guards.state_dict() if self.guards is not None else None,
            "control": self.control.state_dict() if self.control is not None else None,
        }

    def save(self) -> None:
        if du.is_main():
            ckpt.save_atomic(self.state(), self.ckpt_path)
        du.barrier()

    def _load(self, path: str) -> None:
        try:
            state = ckpt.load(path, map_location=self.device)
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f"train.resume: cannot read {path!r}: {str(e).splitlines()[0]}") from None
        if state.get("format") != ckpt.FORMAT:
            raise ConfigError(f"train.resume: {path!r} is not a densekd training checkpoint")
        try:
            self.model.student.load_state_dict(state["student"])
            self.model.kd_losses.load_state_dict(state["kd_losses"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            first = " ".join(str(e).split())[:300]
            raise ConfigError(
                f"train.resume: {path!r} does not fit this config ({first}); use another output_dir or "
                f"train.resume=false to start over"
            ) from None
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.iteration = int(state["iteration"])
        if self.guards is not None:
            self.guards.load_state_dict(state.get("health"))
        if self.control is not None:
            self.control.load_state_dict(state.get("control"), self.iteration)
        ckpt.set_rng_state({**state["rng"], "torch": state["rng"]["torch"].cpu()})
        if state["sampler"].get("world_size") != self.world:
            self.messages.append(
                f"note: checkpoint was written with {state['sampler'].get('world_size')} process(es), now "
                f"{self.world}: the data order after resuming differs from an uninterrupted run")

    # ---------------------------------------------------------------- evaluation
    def evaluate(self) -> dict[str, float]:
        if self.val_set is None:
            return {}
        loader = DataLoader(self.val_set, batch_size=self.cfg.eval.batch_size,
                            sampler=ShardSampler(len(self.val_set), self.world, self.rank),
                            num_workers=self.cfg.train.num_workers, collate_fn=self.task.collate)
        # the Distiller's hooks record only inside its own forward: evaluating the student alone keeps nothing
        return self.task.evaluate(self.model.student, loader, self.device, self.out if du.is_main() else None)

    # ---------------------------------------------------------------- health
    def start_checks(self) -> list[str]:
        """The cheap part of ``densekd doctor`` (:mod:`densekd.health`), one line each: the teacher's weights,
        every pair and level, and what the guards will log. Rank 0 calls it when the run starts."""
        if not isinstance(self.model, Distiller):
            return []
        t = self.cfg.train
        checks = [health.teacher_source(self.cfg.model),
                  *health.level_checks(self.model, getattr(self.cfg.data, "num_classes", None))]
        if self.guards is not None and self.guards.enabled:
            every = (f"at iteration 1 and every train.grad_ratio_every={t.grad_ratio_every} iterations"
                     if t.grad_ratio_every else "never (train.grad_ratio_every=0)")
            checks.append(health.Check(health.INFO, "guards", (
                f"KD/task loss ratio every train.log_every={t.log_every}, gradient-norm ratio {every}, feature "
                f"distance and mask statistics into {LOG_FILE} and {TENSORBOARD_DIR}/; warnings into {HEALTH_FILE}")))
        else:
            checks.append(health.Check(health.INFO, "guards", "off (train.guards: false)"))
        if self.control is not None and self.control.model is not None:
            checks.append(health.Check(health.INFO, "control", (
                f"a plain twin of the student (same initial weights and batches, no KD) trains for the first "
                f"{self.control.iters} iterations; then both are scored on {self.control.batches} validation "
                f"batches (train.control)")))
        return [c.line() for c in checks]

    def _write_health(self, finished: bool) -> None:
        g = self.guards
        control = self.control.lines() if self.control is not None else []
        health.write_health(self.out, self.iteration, self._start_lines + (g.first_lines if g else []) + control,
                            g.warnings if g else [], finished)

    def _finish_control(self) -> list[str]:
        """The control's comparison (:mod:`densekd.engine.control`): its line, and its warning kept with the
        guards' (``health.json``, the end-of-run list) when the distilled student is worse beyond the noise."""
        assert self.control is not None and self.guards is not None
        res = self.control.finish(self)
        if du.is_main():
            self.control.write(self.out)
        if not res.worse:
            return [f"control: {res.message()}"]
        msg = f"iteration {res.iteration}: {res.message()}"
        self.guards.warnings.append({"iteration": res.iteration, "kind": "control", "level": "student",
                                     "message": msg})
        return [f"health warning: {msg}"]

    # ---------------------------------------------------------------- loop
    def train_step(self, inputs: Sequence[Any], targets: Any, log_now: bool = False) -> tuple[list[str], list[float]]:
        """One training iteration on a batch already on the device: learning rate, forward, backward (with the
        guards' gradient norms when due), clipping, optimizer step. Returns the logged names and values.
        ``log_now``: this iteration's row is logged (the guards then record feature distances)."""
        t = self.cfg.train
        it = self.iteration
        factor = lr_factor(t.schedule, it, t.max_iters)
        for g, lr in zip(self.optimizer.param_groups, self._base_lrs):
            g["lr"] = lr * factor
        self.model.iteration, self.model.max_iterations = it, t.max_iters
        guards = self.guards
        if guards is not None:
            guards.begin(it, log_now)
        count = guards is not None and guards.count_now  # the first iteration: what the KD modules cost
        with self.autocast(), (flop_counter() if count else contextlib.nullcontext()) as counter:
            losses = self.ddp(*inputs, targets=targets)
        if count:
            guards.cost(module_flops(counter), type(self.ddp).__name__)
        loss = losses["loss"]
        names = list(losses)
        values = torch.stack([losses[k].detach().float() for k in names]).tolist()
        if not all(math.isfinite(v) for v in values):
            bad = ", ".join(f"{k}={v}" for k, v in zip(names, values))
            hint = ""
            if guards is not None and guards.warnings:
                hint = (f" (after {len(guards.warnings)} health warning(s); the last: "
                        f"{guards.warnings[-1]['message']})")
            raise FloatingPointError(f"non-finite loss at iteration {it}: {bad}{hint}")
        self.optimizer.zero_grad(set_to_none=True)
        measure = guards is not None and guards.grad_now
        if measure:
            guards.kd_gradients(losses, self._student_params,
                                self.scaler.get_scale() if self.scaler is not None else None)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if measure:
            guards.task_gradient(self._student_params)
        if t.grad_clip is not None:
            gn = torch.nn.utils.clip_grad_norm_(
                [p for g in self.optimizer.param_groups for p in g["params"]], t.grad_clip)
            names.append("grad_norm")
            values.append(float(gn))
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.control is not None and self.control.active(it):  # the plain twin, on the same batch
            n2, v2 = self.control.step(self, inputs, targets, factor)
            names, values = names + n2, values + v2
        self.iteration += 1
        return names, values

    def log_row(self, window: Mapping[str, float], n_window: int) -> dict[str, float]:
        """The log row of the iterations since the last one: means over them and ranks, plus the guards'."""
        row = {k: v / n_window for k, v in window.items()}
        if self.guards is not None:
            row.update(self.guards.row_extras())
        row = du.all_reduce_mean(row, self.device)
        if self.guards is not None:
            row.update(self.guards.ratios(row))
        return row

    def run(self) -> dict[str, Any]:
        cfg, t = self.cfg, self.cfg.train
        main = du.is_main()
        self._start_lines: list[str] = []
        if main:
            os.makedirs(self.out, exist_ok=True)
            removed = ckpt.remove_stale_temporaries(self.out)
            if removed:
                self.messages.append(
                    f"removed {len(removed)} stale temporary checkpoint file(s) left by an interrupted write "
                    f"({', '.join(n for n, _ in removed)}, {size_text(sum(b for _, b in removed))})")
            with open(os.path.join(self.out, CONFIG_FILE), "w", encoding="utf-8") as f:
                yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
            self._start_lines = self.start_checks()
            for m in self.messages + self._start_lines:
                print(m, flush=True)
        if isinstance(self.model, Distiller):  # KD modules fitted on the frozen teacher first (e.g. MasKD)
            from .prepare import prepare_for_trainer

            prepare_for_trainer(self)
        logger = _Logger(self.out, self.iteration, t.max_iters) if main else None
        stop = {"flag": False}
        old_handler = None
        if threading.current_thread() is threading.main_thread():
            old_handler = signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__("flag", True))
        metrics: dict[str, Any] = {}
        finished = False
        try:
            epoch, pos = divmod(self.iteration, self.iters_per_epoch)
            self.sampler.set_position(epoch, pos)
            loop_start, loop_start_iter = time.perf_counter(), self.iteration
            data = iter(self.loader)
            window: dict[str, float] = {}
            n_window, t0 = 0, time.perf_counter()
            while self.iteration < t.max_iters:
                try:
                    batch = next(data)
                except StopIteration:
                    epoch += 1
                    self.sampler.set_position(epoch, 0)
                    data = iter(self.loader)
                    continue
                n = self.iteration + 1
                log_now = n == 1 or bool(t.log_every and n % t.log_every == 0) or n == t.max_iters
                batch = self.task.to_device(batch, self.device)
                inputs, targets = self.task.model_inputs(batch)
                names, values = self.train_step(inputs, targets, log_now)
                if self.malloc_watch is not None and (msg := self.malloc_watch.step()):
                    self.malloc_watch = None  # it gave the hold back
                    warnings.warn(msg, UserWarning, stacklevel=2)
                    if logger:
                        logger.write(f"warning: {msg}")
                for k, v in zip(names, values):
                    window[k] = window.get(k, 0.0) + v
                n_window += 1
                last = self.iteration == t.max_iters
                if log_now:
                    row = self.log_row(window, n_window)
                    dt = (time.perf_counter() - t0) / n_window
                    row = {"lr": self.optimizer.param_groups[0]["lr"], **row, "time_per_iter": dt}
                    if self.device.type == "cuda":
                        row["max_mem_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
                    if logger:
                        logger.log(self.iteration, row)
                    if self.guards is not None:
                        lines = self.guards.first_row_checks(row) if self.iteration == 1 else []
                        lines += [f"health warning: {m}" for m in self.guards.check(self.iteration, row)]
                        if logger and lines:
                            for line in lines:
                                logger.write(line)
                            self._write_health(finished=False)
                    window, n_window, t0 = {}, 0, time.perf_counter()
                if self.control is not None and self.control.due(self.iteration):
                    lines = self._finish_control()
                    if logger:
                        for line in lines:
                            logger.write(line)
                        self._write_health(finished=False)
                if logger:
                    logger.bar.update(1)
                if t.checkpoint_every and self.iteration % t.checkpoint_every == 0 and not last:
                    self.save()
                if t.eval_every > 0 and self.iteration % t.eval_every == 0 and not last:
                    m = self.evaluate()
                    if logger and m:
                        logger.log_eval(self.iteration, m)
                if du.any_flag(stop["flag"], self.device):
                    self.save()
                    raise TrainingInterrupted(self.iteration, self.ckpt_path)
            if logger:
                logger.bar.close()
            train_seconds = time.perf_counter() - loop_start  # this process's iterations only (a resumed run: since the resume)
            self.save()
            if main:
                torch.save(self.model.student_state_dict(), os.path.join(self.out, STUDENT_FILE))
            if t.eval_every >= 0:
                metrics = self.evaluate()
                if logger and metrics:
                    logger.log_eval(self.iteration, metrics)
            finished = True
            if main:
                with open(os.path.join(self.out, METRICS_FILE), "w", encoding="utf-8") as f:
                    json.dump({"iteration": self.iteration, **metrics, "train_seconds": round(train_seconds, 2),
                               "train_iterations": self.iteration - loop_start_iter}, f, indent=2)
                print(f"finished {self.iteration} iterations; student weights: "
                      f"{os.path.join(self.out, STUDENT_FILE)}", flush=True)
                if self.guards is not None:
                    print("\n".join(self.guards.summary()), flush=True)
        finally:
            if old_handler is not None:
                signal.signal(signal.SIGTERM, old_handler)
            if logger:
                logger.close()
            if main:
                self._write_health(finished)
        return metrics

    @property
    def malloc_kept(self) -> bool:
        """Whether this run still keeps freed memory in malloc's heap (train.malloc_keep on a CPU, not given back)."""
        return self._malloc_hold is not None and self._malloc_hold.held

    def close(self) -> None:
        if self.guards is not None:
            self.guards.close()
        if self._flushed:
            torch.set_flush_denormal(False)
            self._flushed = False
        if self._malloc_hold is not None:
            self._malloc_hold.release()
        du.cleanup(self._created_pg)


class _Logger:
    """tqdm bar (loss terms, ETA), TensorBoard scalars and a CSV file; rank 0 only."""

    def __init__(self, out: str, start: int, total: int) -> None:
        from tqdm import tqdm

        os.makedirs(out, exist_ok=True)
        self.bar = tqdm(total=total, initial=start, desc="train", dynamic_ncols=True, mininterval=1.0)
        self.csv_path = os.path.join(out, LOG_FILE)
        self.header: list[str] | None = None
        if os.path.isfile(self.csv_path) and start > 0:
            with open(self.csv_path, encoding="utf-8") as f:
                first = f.readline().strip()
            self.header = first.split(",") if first else None
            self._truncate_after(start)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(os.path.join(out, TENSORBOARD_DIR), purge_step=start if start > 0 else None)
        except ImportError:  # pragma: no cover - tensorboard is a dependency
            self.tb = None

    def _truncate_after(self, start: int) -> None:
        """Drop CSV rows logged after the checkpoint being resumed (they will be logged again)."""
        with open(self.csv_path, encoding="utf-8") as f:
            lines = f.readlines()
        keep = lines[:1] + [ln for ln in lines[1:] if ln.split(",", 1)[0].isdigit() and int(ln.split(",", 1)[0]) <= start]
        with open(self.csv_path, "w", encoding="utf-8") as f:
            f.writelines(keep)

    def log(self, it: int, row: dict[str, float]) -> None:
        shown = {"lr": f"{row['lr']:.3g}"}
        for k, v in row.items():  # KD terms summed over levels: kd/<level>/loss_x → kd_loss_x
            lt = kd_term(k)
            if lt is not None:
                name = "kd_" + lt[1]
                shown[name] = shown.get(name, 0.0) + v
        shown.update({k: v for k, v in row.items() if k in ("loss_task", "loss_kd", "loss")})
        shown = {k: (v if isinstance(v, str) else f"{v:.4g}") for k, v in shown.items()}
        self.bar.set_postfix(shown, refresh=False)
        if self.tb is not None:
            for k, v in row.items():
                self.tb.add_scalar(f"train/{k}", v, it)
        if self.header is None:
            self.header = ["iter", *row]
            with open(self.csv_path, "w", encoding="utf-8") as f:
                f.write(",".join(self.header) + "\n")
        with open(self.csv_path, "a", encoding="utf-8") as f:
            f.write(",".join([str(it)] + [f"{row[k]:.6g}" if k in row else "" for k in self.header[1:]]) + "\n")

    def write(self, line: str) -> None:
        """A line printed above the progress bar."""
        self.bar.write(line)

    def log_eval(self, it: int, metrics: Mapping[str, float]) -> None:
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(f"val/{k}", v, it)
        with open(os.path.join(os.path.dirname(self.csv_path), EVAL_LOG_FILE), "a", encoding="utf-8") as f:
            f.write(json.dumps({"iter": it, **metrics}) + "\n")

    def close(self) -> None:
        self.bar.close()
        if self.tb is not None:
            self.tb.close()


def train(config: Config | str | Mapping[str, Any], overrides: Sequence[str] | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Train (distil, when the config has a ``distill`` section) and evaluate; returns the final metrics."""
    _, created = du.setup()  # under torchrun: the process group lives for the whole call
    try:
        return Trainer(config, overrides).run()
    finally:
        du.cleanup(created)


def load_student_weights(model: nn.Module, path: str) -> None:
    """A densekd checkpoint (``student``), a plain state dict or ``{"model": ...}`` into ``model``."""
    if not os.path.isfile(path):
        raise ConfigError(f"--checkpoint: no such file {path!r}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"--checkpoint: cannot read {path!r}: {str(e).splitlines()[0]}") from None
    if isinstance(obj, Mapping):
        for key in ("student", "model", "state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    sd = {k.removeprefix("module."): v for k, v in obj.items()} if isinstance(obj, Mapping) else None
    if sd is None:
        raise ConfigError(f"--checkpoint: {path!r} holds no state dict")
    res = model.load_state_dict(sd, strict=False)
    if res.missing_keys or res.unexpected_keys:
        k = (res.missing_keys or res.unexpected_keys)[0]
        raise ConfigError(f"--checkpoint: {path!r} does not fit the configured student "
                          f"({len(res.missing_keys)} missing, {len(res.unexpected_keys)} unexpected keys, e.g. {k})")


def evaluate(config: Config | str | Mapping[str, Any], checkpoint: str | None = None,
             overrides: Sequence[str] | Mapping[str, Any] | None = None) -> dict[str, float]:
    """Evaluate the config's student with weights from ``checkpoint`` (default:
    ``output_dir/student_final.pth``) on the validation set; returns the metrics (rank 0 prints a table)."""
    cfg = load_config(config, overrides)
    task = get_task(cfg.task)
    device, created = du.setup()
    try:
        val = task.build_dataset(cfg.data, "val")
        if val is None:
            raise ConfigError("data: evaluation needs a validation set (data.val_ann / val_images for detection)")
        model = task.build_model(cfg.model, "student")
        path = checkpoint or os.path.join(cfg.output_dir, STUDENT_FILE)
        load_student_weights(model, path)
        model.to(device)
        loader = DataLoader(val, batch_size=cfg.eval.batch_size,
                            sampler=ShardSampler(len(val), du.world_size(), du.rank()),
                            num_workers=cfg.train.num_workers, collate_fn=task.collate)
        return task.evaluate(model, loader, device, cfg.output_dir if du.is_main() else None)
    finally:
        du.cleanup(created)
