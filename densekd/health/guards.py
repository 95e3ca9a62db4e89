"""The KD health guards the engine runs during training (:class:`TrainingGuards`; what they log and when they warn:
:mod:`densekd.health`)."""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..run_folder import HEALTH_FILE, LOG_FILE, kd_key, kd_level
from .checks import (OK, WARN, Check, _fmt, _ratio, cost_checks, feature_distance, level_terms, ratio_checks,
                     suggested_weight, total_norm)

#: KD/task gradient-norm ratio above which training warns of divergence
GRAD_RATIO_DIVERGENCE = 100.0
#: one level's KD/task gradient-norm ratio at least this many times the median of the other levels': it dominates
LEVEL_DOMINANCE = 10.0
#: a KD term below this fraction of its first value is "collapsed" (if the feature distance has not fallen)
COLLAPSE_FRACTION = 0.01
#: the feature distance "has fallen" once it is below this fraction of its first value
DISTANCE_FALLEN = 0.5
#: what the constant-spatial-masks warning tells an ACAM-KD user (a loss class may say otherwise: ``constant_spatial_hint``)
ACAM_CONSTANT_SPATIAL_HINT = ('ASCM\'s spatial selection is off; is distill.kwargs.z_norm "none"? "spatial" (the default) '
                              'standardises the fused map over space (docs/methods.md, "Spatial masks must be spatial")')
#: ACAM-KD mask mean band and smallest per-mask spatial std
MASK_MEAN_LOW, MASK_MEAN_HIGH, MASK_STD_MIN = 0.01, 0.99, 1e-3
#: a spatial mask "was spatial" once its per-mask spatial std reached this (fresh masks under z_norm="spatial" start
#: at a spatial std of ~1e-3: units N(0, 0.01²) over a standardised Z — not yet a selection that can "fall")
MASK_STD_WAS_SPATIAL = 1e-2
#: a mask whose mean is this far from 0.5 (its initial value) is a gate, not a fresh mask
MASK_GATE_SHIFT = 0.25
#: ACAM-KD's M spatial masks are "one mask" when their mean pairwise Dice is at least this (1 = identical) ...
MASK_SAME_DICE = 0.99
#: ... at a logged row this far into the run (fresh masks are alike too; on the segmentation demo they part within
#: the first quarter: Dice 0.997 at iteration 50 of 400, 0.57 at 100; on the detection demo's P3 they stay 1.00)
MASK_SAME_AFTER = 0.25


def _mask_shifts(level: str, masks: Mapping[str, Tensor] | None) -> dict[str, float]:
    """``kd/<level>/masks/<family>/shift_max``: the largest distance of one mask's mean (over batch and
    positions) from 0.5, its value at initialisation (σ of units ~ N(0, 0.01²)); 0.5 for a mask that has
    become a gate ≈ 0 or ≈ 1 everywhere. Tells constant gates from freshly initialised masks."""
    out: dict[str, float] = {}
    if not isinstance(masks, Mapping):
        return out
    for fam in ("spatial", "channel"):
        if fam in masks:
            m = masks[fam].detach().float()
            per_mask = m.flatten(2).mean(dim=2).mean(dim=0)  # [M]
            out[kd_key(level, "masks", fam, "shift_max")] = float((per_mask - 0.5).abs().max())
    return out


class _DistanceHook:
    """Forward pre-hook on a KD module: records :func:`feature_distance` while its guards ask for it."""

    def __init__(self, guards: "TrainingGuards", level: str) -> None:
        self.guards, self.level = guards, level

    def __call__(self, module: nn.Module, args: tuple) -> None:
        if self.guards.recording and len(args) >= 2 and isinstance(args[0], Tensor) and isinstance(args[1], Tensor):
            d = feature_distance(module, args[0], args[1])
            if d is not None:
                self.guards.distances[self.level] = d


class TrainingGuards:
    """The in-training checks of one :class:`~densekd.Distiller` (see the module docstring).

    The engine calls, per iteration: :meth:`begin` (before the forward), :meth:`kd_gradients` (after the
    forward, before backward), :meth:`task_gradient` (after backward and unscaling, before clipping); per log
    row: :meth:`row_extras` (before the cross-rank mean), :meth:`ratios` and :meth:`check` (after it).
    Gradient norms are over the student's trainable parameters. The KD term's are measured with
    ``torch.autograd.grad`` (one extra backward per level, graph kept); the task term's is the total
    gradient minus their sum (exact; the training update itself is computed as without guards), or, under
    DDP, where the total is already averaged over ranks, a further ``autograd.grad`` of the task term.
    """

    def __init__(self, distiller: Any, *, distill_weight: float = 1.0, grad_every: int = 100,
                 world_size: int = 1, enabled: bool = True, max_iters: int | None = None) -> None:
        self.distiller = distiller
        self.max_iters = max_iters  # the run's length: the "one mask" check waits for MASK_SAME_AFTER of it
        self.weight = float(distill_weight)
        self.grad_every = int(grad_every)
        self.world_size = world_size
        self.enabled = enabled
        self.modules: dict[str, nn.Module] = {}
        self.level_pair: dict[str, int] = {}  # level → index of its pair in distiller.pairs
        for info in distiller.levels:
            self.modules.setdefault(info.student, distiller.kd_losses[info.key])
            self.level_pair.setdefault(info.student, info.pair)
        self.first: dict[str, float] = {}  # "kd/<level>" and "distance/<level>" at the first row
        self.peaks: dict[str, float] = {}  # largest "spatial_std_min/<level>" so far
        self.fired: list[str] = []
        self.warnings: list[dict[str, Any]] = []
        self.first_lines: list[str] = []  # the iteration-1 lines (kept across a resume)
        self.distances: dict[str, float] = {}
        self.recording = False
        self.grad_now = False
        self.count_now = False  # count the forward's FLOPs (the first iteration of a fresh run): cost()
        self._cost_lines: list[str] = []
        self._pending: dict[str, float] = {}
        self._kd_sum: list[Tensor] | None = None
        self._task_norm: float | None = None
        self._hooks = [m.register_forward_pre_hook(_DistanceHook(self, lv)) for lv, m in self.modules.items()]

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    # -- state (kept in the training checkpoint, so a resumed run keeps its first values and warnings)
    def state_dict(self) -> dict[str, Any]:
        return {"first": dict(self.first), "peaks": dict(self.peaks), "fired": list(self.fired), "warnings": [dict(w) for w in self.warnings],
                "first_lines": list(self.first_lines)}

    def load_state_dict(self, state: Mapping[str, Any] | None) -> None:
        if not state:
            return
        self.first = dict(state.get("first", {}))
        self.peaks = dict(state.get("peaks", {}))
        self.fired = list(state.get("fired", []))
        self.warnings = [dict(w) for w in state.get("warnings", [])]
        self.first_lines = list(state.get("first_lines", []))

    # -- per iteration
    def begin(self, iteration: int, log_now: bool) -> None:
        """Before the forward of 0-based ``iteration``: measure gradient norms at iteration 1 and every
        ``grad_every``-th; record feature distances when this iteration's row is logged."""
        n = iteration + 1
        self.grad_now = self.enabled and self.grad_every > 0 and (n == 1 or n % self.grad_every == 0)
        self.count_now = self.enabled and iteration == 0
        self.recording = self.enabled and log_now

    def kd_gradients(self, losses: Mapping[str, Tensor], params: Sequence[Tensor], scale: float | None = None) -> None:
        """After the forward: the gradient norm each level's KD term puts on ``params``."""
        if not self.grad_now:
            return
        self._kd_sum, self._task_norm = None, None
        for level, terms in level_terms(losses).items():
            v = sum(terms.values())
            if not (isinstance(v, Tensor) and v.requires_grad):
                self._pending[kd_key(level, "grad_norm")] = 0.0
                continue
            gs = torch.autograd.grad(v * scale if scale else v, params, retain_graph=True, allow_unused=True)
            gs = [torch.zeros_like(p) if g is None else g.detach() for g, p in zip(gs, params)]
            if scale:
                gs = [g / scale for g in gs]
            self._pending[kd_key(level, "grad_norm")] = total_norm(gs)
            if self._kd_sum is None:
                self._kd_sum = gs
            else:
                torch._foreach_add_(self._kd_sum, gs)
        if self.world_size > 1:  # the total gradient will be averaged over ranks: measure the task's directly
            t = losses["loss_task"]
            gs = torch.autograd.grad(t * scale if scale else t, params, retain_graph=True, allow_unused=True)
            self._task_norm = total_norm(gs) / (scale or 1.0)
            self._kd_sum = None

    def task_gradient(self, params: Sequence[Tensor]) -> None:
        """After backward (and unscaling): the task term's gradient norm and the KD/task ratios."""
        if not self.grad_now:
            return
        if self._task_norm is not None:
            task = self._task_norm
        else:
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            task = total_norm(torch._foreach_sub(grads, self._kd_sum) if self._kd_sum is not None else grads)
        self._kd_sum, self._task_norm = None, None
        self._pending["task/grad_norm"] = task
        for key in list(self._pending):
            level = kd_level(key, "grad_norm")
            if level is not None:
                self._pending[kd_key(level, "grad_ratio")] = _ratio(self._pending[key], task)

    # -- per log row
    def row_extras(self) -> dict[str, float]:
        """Mask statistics (last forward), feature distances (this row's step) and gradient norms measured
        since the last row, for the log row. Non-finite values are left out."""
        if not self.enabled:
            return {}
        extras: dict[str, float] = {}
        for level, mod in self.modules.items():
            stats = getattr(mod, "mask_statistics", None)
            if callable(stats):
                for k, v in stats().items():
                    extras[kd_key(level, "masks", k)] = float(v)
                extras.update(_mask_shifts(level, getattr(mod, "last_masks", None)))
            if level in self.distances:
                extras[kd_key(level, "distance")] = self.distances[level]
        extras.update(self._pending)
        self._pending = {}
        self.distances = {}
        return {k: v for k, v in extras.items() if math.isfinite(v)}

    def ratios(self, row: Mapping[str, float]) -> dict[str, float]:
        """Per level, the KD/task loss ratio of the row's means: ``kd/<level>/kd_task_ratio``."""
        if not self.enabled or "loss_task" not in row:
            return {}
        out = {}
        for level, terms in level_terms(row).items():
            r = _ratio(sum(terms.values()), row["loss_task"])
            if math.isfinite(r):
                out[kd_key(level, "kd_task_ratio")] = r
        return out

    def _warn(self, key: str, iteration: int, kind: str, level: str, text: str) -> str | None:
        if key in self.fired:
            return None
        self.fired.append(key)
        msg = f"iteration {iteration}: {text}"
        self.warnings.append({"iteration": iteration, "kind": kind, "level": level, "message": msg})
        return msg

    def check(self, iteration: int, row: Mapping[str, float]) -> list[str]:
        """The warnings this row raises for the first time (each is printed once); also keeps them."""
        if not self.enabled:
            return []
        new: list[str | None] = []
        terms_by_level = level_terms(row)
        for level, mod in self.modules.items():
            terms = terms_by_level.get(level, {})
            reg = set(getattr(mod, "regularizer_terms", ()))
            counted = {k: v for k, v in terms.items() if k not in reg}
            dist = row.get(kd_key(level, "distance"))
            d0 = self.first.get(f"distance/{level}")
            if d0 is None and dist is not None:
                self.first[f"distance/{level}"] = d0 = dist
            for term, kd in counted.items():  # each term: one ACAM-KD branch can die while the other lives
                k0 = self.first.get(kd_key(level, term))
                if k0 is None:
                    self.first[kd_key(level, term)] = kd
                elif (k0 > 0 and kd < COLLAPSE_FRACTION * k0 and dist is not None and d0 is not None
                      and dist > DISTANCE_FALLEN * d0):
                    new.append(self._warn(f"collapse|{level}|{term}", iteration, "collapse", level, (
                        f"the KD term {term} at {level} fell to {100 * kd / k0:.3g} % of its first value "
                        f"({_fmt(kd)} vs {_fmt(k0)}) while the student–teacher feature distance has not fallen to "
                        f"half of its own ({_fmt(dist)} vs {_fmt(d0)}): it has stopped distilling")))
            new += self._mask_warnings(iteration, level, mod, row)
            gr = row.get(kd_key(level, "grad_ratio"))
            if gr is not None and gr > GRAD_RATIO_DIVERGENCE:
                gk, gt = row.get(kd_key(level, "grad_norm")), row.get("task/grad_norm")
                new.append(self._warn(f"grad_ratio|{level}", iteration, "divergence", level, (
                    f"at {level} the KD term's gradient on the student is {_fmt(gr)}× the task's (norm "
                    f"{_fmt(gk)} vs {_fmt(gt)}) > {GRAD_RATIO_DIVERGENCE:g}: divergence ahead; "
                    f"distill.weight={_fmt(suggested_weight(self.weight, gr))} would bring it to 1")))
        new += self._dominance_warnings(iteration, row)
        return [m for m in new if m]

    def _dominance_warnings(self, iteration: int, row: Mapping[str, float]) -> list[str | None]:
        """A level whose KD/task gradient-norm ratio is ≥ :data:`LEVEL_DOMINANCE` × the median of the other
        levels' (rows with gradient ratios only): named, with the weight of its pair that evens it."""
        ratios = {lv: row[kd_key(lv, "grad_ratio")] for lv in self.modules
                  if math.isfinite(row.get(kd_key(lv, "grad_ratio"), math.nan)) and row[kd_key(lv, "grad_ratio")] > 0}
        if len(ratios) < 2:
            return []
        out: list[str | None] = []
        for lv, r in ratios.items():
            others = sorted(v for k, v in ratios.items() if k != lv)
            mid = len(others) // 2
            median = others[mid] if len(others) % 2 else 0.5 * (others[mid - 1] + others[mid])
            if r < LEVEL_DOMINANCE * median:
                continue
            i = self.level_pair.get(lv)
            pairs = getattr(self.distiller, "pairs", [])
            shared = i is not None and sum(1 for p in self.level_pair.values() if p == i) > 1
            own = (pairs[i].weight / self.weight) if i is not None and i < len(pairs) and self.weight else 1.0
            fix = (f"give {lv} its own pair with weight {_fmt(own * median / r)}" if shared else
                   f"a weight of {_fmt(own * median / r)} on its pair (distill.pairs[{i}], now {_fmt(own)}) evens it")
            out.append(self._warn(f"dominance|{lv}", iteration, "level_dominance", lv, (
                f"at {lv} the KD term's gradient on the student is {_fmt(r / median)}× the other levels' (KD/task "
                f"gradient-norm ratio {_fmt(r)} vs their median {_fmt(median)}): one level dominates the "
                f"distillation; {fix} (× distill.weight {_fmt(self.weight)})")))
        return out

    def _mask_warnings(self, iteration: int, level: str, mod: nn.Module, row: Mapping[str, float]) -> list[str | None]:
        """ACAM-KD mask collapse and saturation (docs/methods.md, "Optimisation of the mask modules"); MasKD, which
        reuses ACAM-KD's masks with frozen tokens, under its own name and hint (``mask_label``,
        ``constant_spatial_hint`` on the loss class)."""
        out: list[str | None] = []
        label = getattr(mod, "mask_label", "ACAM-KD")
        norm = getattr(mod, "mask_norm", None)
        for fam in ("spatial", "channel"):
            mean = row.get(kd_key(level, "masks", fam, "mean"))
            if mean is None:
                continue
            if mean < MASK_MEAN_LOW:
                if norm == "square":
                    why = ("their sigmoids saturate at 0: under mask_norm=square the KD term is a mask-weighted mean "
                           "and stays on, but the masks' gradients vanish and they no longer select")
                else:
                    why = (f"under mask_norm={norm or 'sum'} loss_{fam} scales with these masks, so it is switched "
                           f"off (docs/methods.md, \"Optimisation of the mask modules\")")
                out.append(self._warn(f"mask_low|{level}|{fam}", iteration, "mask_collapse", level,
                                      f"{label} {fam} masks at {level} collapsed: mean {_fmt(mean)} < "
                                      f"{MASK_MEAN_LOW:g}; {why}"))
            elif mean > MASK_MEAN_HIGH:
                out.append(self._warn(f"mask_high|{level}|{fam}", iteration, "mask_saturation", level,
                                      f"{label} {fam} masks at {level} saturated at 1: mean {_fmt(mean)} > "
                                      f"{MASK_MEAN_HIGH:g}, so they select nothing and the term is a plain "
                                      f"feature distance"))
        std = row.get(kd_key(level, "masks", "spatial", "std_min"))
        # freshly initialised masks are ≈ 0.5 everywhere, (nearly) constant too: the warning needs masks that were
        # spatial at an earlier row (std_min ≥ 1e-2: it "fell") or that have become gates ≈ 0 or 1 everywhere
        peak = self.peaks.get(f"spatial_std_min/{level}", 0.0)
        if std is not None:
            self.peaks[f"spatial_std_min/{level}"] = max(peak, std)
        mean = row.get(kd_key(level, "masks", "spatial", "mean"))
        collapsed = mean is not None and not MASK_MEAN_LOW <= mean <= MASK_MEAN_HIGH  # said above, better
        gates = row.get(kd_key(level, "masks", "spatial", "shift_max"), 0.0) > MASK_GATE_SHIFT
        if std is not None and std < MASK_STD_MIN and (peak >= MASK_STD_WAS_SPATIAL or gates) and not collapsed:
            what = "; some masks are gates ≈ 0 or ≈ 1 everywhere" if gates else ""
            out.append(self._warn(f"mask_std|{level}", iteration, "mask_saturation", level, (
                f"{label} spatial masks at {level} are constant over the image (per-mask spatial std {std:.2g} < "
                f"{MASK_STD_MIN:g}{what}): {getattr(mod, 'constant_spatial_hint', ACAM_CONSTANT_SPATIAL_HINT)}")))
        dice = row.get(kd_key(level, "masks", "spatial", "dice"))
        m = getattr(getattr(getattr(mod, "ascm", None), "spatial_units", None), "shape", (0,))[0]
        late = self.max_iters is not None and iteration >= MASK_SAME_AFTER * self.max_iters
        if (dice is not None and dice >= MASK_SAME_DICE and late and m > 1 and std is not None
                and std >= MASK_STD_WAS_SPATIAL and not collapsed):
            out.append(self._warn(f"mask_same|{level}", iteration, "mask_same", level, (
                f"{label}'s {m} spatial masks at {level} are one and the same mask (mean pairwise Dice "
                f"{dice:.3f} ≥ {MASK_SAME_DICE:g}, {100 * iteration / self.max_iters:.0f} % into the run, each "
                f"varying over the image: smallest per-mask spatial std {std:.2g}): ASCM selects as a single mask "
                f"would and the diversity term does not part them "
                f"(docs/methods.md, \"When the masks are one mask\")")))
        return out

    def cost(self, flops: Mapping[str, int], root: str) -> None:
        """The first iteration's forward FLOPs per module (``FlopCounterMode`` names, ``root`` the called model):
        the doctor's cost line (:func:`~densekd.health.checks.cost_checks`), printed with the iteration-1 lines; a
        warning when the KD modules' matrix work exceeds the student's is kept with the others."""
        self._cost_lines = []
        for c in cost_checks(flops, root, self.distiller.levels):
            line = Check(c.status, "iteration 1", f"cost: {c.message}")
            if c.status == WARN:
                self._warn("cost", 1, "start", "", f"cost: {c.message}")
            self._cost_lines.append(line.line())

    def first_row_checks(self, row: Mapping[str, float]) -> list[str]:
        """The iteration-1 lines, one per level: KD/task loss and gradient-norm ratios with the doctor's
        thresholds (a ``WARN`` line's warning is kept with the others; a gradient ratio above 100 is left to
        :meth:`check`'s divergence warning)."""
        lines: list[str] = []
        if not self.enabled:
            return lines
        for level, terms in level_terms(row).items():
            kd, task = sum(terms.values()), row.get("loss_task", math.nan)
            r = _ratio(kd, task)
            text = f"{level}: KD {_fmt(kd)} vs task {_fmt(task)}, KD/task {_fmt(r)}"
            gk, gt = row.get(kd_key(level, "grad_norm")), row.get("task/grad_norm")
            gr = row.get(kd_key(level, "grad_ratio"), math.nan)
            if gk is not None and gt is not None:
                text += f"; gradient norm on the student: KD {_fmt(gk)} vs task {_fmt(gt)}, ratio {_fmt(gr)}"
            found = ratio_checks(level, "loss", r, self.weight, "iteration 1")
            if not gr > GRAD_RATIO_DIVERGENCE:
                found += ratio_checks(level, "gradient-norm", gr, self.weight, "iteration 1")
            if gk is not None and gk == 0:
                found.append(Check(WARN, "iteration 1", f"the KD term at {level} puts no gradient on the student: "
                                                        f"distillation does nothing there (is the captured output "
                                                        f"detached?)"))
            for c in found:
                self._warn(f"iteration1|{c.message}", 1, "start", level, c.message)
            status = WARN if found else OK
            if found:
                text += " — " + "; ".join(c.message.split(": ", 1)[1] for c in found)
            line = Check(status, "iteration 1", text).line()
            self.first_lines.append(line)
            lines.append(line)
        self.first_lines += self._cost_lines
        lines += self._cost_lines
        return lines

    def summary(self) -> list[str]:
        """End-of-run lines: every warning, or that there was none."""
        if not self.warnings:
            return [f"health: no warnings (KD/task ratios, gradient norms and mask statistics in {LOG_FILE})"]
        return [f"health: {len(self.warnings)} warning(s) during this run (also in {HEALTH_FILE}):"] + \
               [f"  {w['message']}" for w in self.warnings]
