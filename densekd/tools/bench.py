"""``densekd bench``: training cost of each distillation method against plain student training.

    densekd bench configs/compare/digits_segmentation.yaml [key=value ...] --methods fitnet acam_kd samkd \\
        --iters 20 --warmup 5 --out runs/bench/digits

Every method (and ``baseline``, the plain student alone, ``distill=null``) is measured in its own fresh Python
subprocess built from the same config, so models, resolution and batch are identical and peaks of
different methods never mix. In each subprocess the engine's :class:`~densekd.engine.trainer.Trainer`
builds everything; one training batch is moved to the device once and ``warmup + iters`` full training
steps (forward with the teacher, backward, optimizer step; AMP as configured) are run on it, so data
loading is not timed. Reported per method:

* ``s/iter``: median wall time of the last ``iters`` steps (CUDA synchronised around each step);
* ``peak mem``: CUDA → ``torch.cuda.max_memory_allocated`` over those steps (after a reset, so it holds
  the weights, optimizer state and the step's activations); CPU → peak RSS of the process during the steps
  minus its RSS just before them (``resource`` ``ru_maxrss``; the delta is the steps' own memory, weights
  excluded);
* one-time preparation stages (MasKD's token fitting, :mod:`densekd.engine.prepare`) are not timed: they
  run at the start of ``Trainer.run``, which the benchmark does not call;
* ``teacher fwd``: median time of the frozen teacher's forward alone (as the Distiller runs it: inference
  mode, stopped once every captured layer has run) — part of ``s/iter``;
* ``KD modules``: what the method's own modules add to the step (aligners, attention, masks, their losses,
  backward and optimizer update): the full step minus a plain student step (same student, batch and
  optimizer, no teacher) minus the teacher forward, all three timed in the method's process, interleaved
  iteration by iteration, median of the per-iteration differences; and its ratio to that student step;
* ratios to ``baseline``, and ``× plain step, same process`` (:func:`paired_step_ratio`): the full step over
  the plain student step interleaved with it in the method's own process, median (min–max) of the per-iteration
  ratios — the ratio to read where the machine's speed drifts from one process to the next;
* a config with a ``compare:`` plan builds each method as ``densekd compare`` does: the plan's ``set`` overrides
  and ``kwargs`` of that method apply (e.g. CIRKD's own pair, CWD on the logits without an aligner);
* FLOPs (a second table): the matrix-product FLOPs (convolutions, mm/bmm, attention; forward + backward,
  2 per multiply-add) of one full step, of the plain student step, of the teacher forward and of the KD
  modules (full − student − teacher), counted by ``torch.utils.flop_counter.FlopCounterMode`` on one extra
  step of each after the timed ones (:func:`densekd.ops.flops.flop_counter`, which also counts the in-place
  and CPU-attention kernels the counter lacks; element-wise work and the optimizer are not FLOPs here), and
  the achieved GFLOP/s of each (FLOPs / its median seconds). ``floor``: the KD modules' FLOPs minus what each
  level's module performs beyond the floor of its exact form (:meth:`DistillLoss.flops_above_floor`, e.g.
  the products ACAM-KD's attention recomputes); ``modules / floor time``: the KD modules' seconds over the
  time the floor FLOPs take at this device's matrix-product rate (``matmul GFLOP/s``: the best of a few
  square products in the step's precision, measured in the same process, :func:`densekd.ops.flops.matmul_rate`).
  1× would be a module that runs its floor products at the rate of a large square product and nothing else;
* ``modules alone`` (:func:`_modules_alone`): the KD modules without either network — the KD loss forward, its
  backward to the student maps and the KD parameters' update on one batch's captured maps
  (:meth:`~densekd.distiller.Distiller.kd_snapshot`), timed ``iters`` times after the steps, with its own FLOPs.
  Where measured it is the time set against the floor, whose time is then the longer of the floor FLOPs at the
  matmul rate and the bytes any KD loss must move (read each level's student and teacher map, write the student
  map's gradient) at the element-wise copy rate (:func:`densekd.ops.flops.copy_rate`) — :func:`floor_seconds`;
* with ``--guards [PAIRS]`` (default 30) also ``guards overhead``: what the KD health guards
  (:mod:`densekd.health`) add to a training step, measured in the same process by :func:`measure_guards`.
  Their work is not spread over every step: a step that measures gradient norms (iteration 1 and every
  ``train.grad_ratio_every`` = N) runs one extra backward per level; a logged step (every ``log_every`` = L)
  reads the mask statistics, the feature distance and checks the row; the other steps only set two flags.
  So it times, interleaved PAIRS times each (the order rotates), four kinds of full engine steps
  (:meth:`Trainer.train_step`): guards off; guards off + the log row; a gradient-norm step; guards on + the
  log row with its guard work. With d_grad and d_log the medians of the paired differences (gradient-norm
  step − off, log row on − log row off; medians of paired differences, so a load that drifts during the run
  cancels) and t the median plain step: overhead = (d_grad / N + d_log / L) / t, as a fraction of a step.
* with ``--control [PAIRS]`` (default 30) also what ``train.control`` costs (:func:`measure_control`): PAIRS
  interleaved engine steps with and without the plain twin stepping beside the student (the order alternates),
  d_step the median of their paired differences and t the median step without it; and the one-time scoring of
  both students on the validation batches (s_score, timed once). Per step while the twin trains: d_step / t; over
  the whole run, with C = ``train.control_iters`` (default a tenth) of T = ``train.max_iters``:
  (C × d_step + s_score) / (T × t).

:func:`bench_table` (pure) builds the Markdown table from the measured rows.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Mapping, Sequence

from ..errors import ConfigError
from .compare.plan import PLAIN_STUDENT, is_plain
from .compare.report import markdown_table


# --------------------------------------------------------------------------- table (pure)
def _ratio(x: float | None, base: float | None) -> str:
    if x is None or base is None or base <= 0:
        return "—"
    return f"{x / base:.2f}×"


def paired_step_ratio(row: Mapping[str, Any]) -> tuple[float, float, float] | None:
    """The full step over the plain student step timed beside it in the method's own process: median, min and max
    of the per-iteration ratios (``step_times[i] / student_times[i]``; the two are interleaved iteration by
    iteration, so a machine whose speed drifts between one method's process and the next moves both alike). None
    where the row lacks either list (the plain student's own row, rows measured before they were kept)."""
    steps, students = row.get("step_times"), row.get("student_times")
    if not steps or not students or len(steps) != len(students) or min(students) <= 0:
        return None
    ratios = [t / s for t, s in zip(steps, students)]
    return statistics.median(ratios), min(ratios), max(ratios)


def paired_text(row: Mapping[str, Any]) -> str:
    """:func:`paired_step_ratio` as a table cell: ``median× (min–max)``, or ``—``."""
    p = paired_step_ratio(row)
    return "—" if p is None else f"{p[0]:.2f}× ({p[1]:.2f}–{p[2]:.2f})"


def bench_table(rows: Sequence[Mapping[str, Any]], baseline: str = PLAIN_STUDENT) -> str:
    """Markdown table from measured rows.

    Each row: ``{"method", "sec_per_iter", "peak_mem_bytes", "mem_kind" ("cuda" | "cpu_rss_delta"),
    "teacher_fwd_sec", "student_step_sec", "modules_sec" (the three None without a teacher), "iters",
    "warmup"}``. Ratios are to the row named ``baseline`` (``—`` if it is absent or zero), except the last
    column: the KD modules' time over the plain student step measured in the same process (paired).
    Rows keep their order."""
    base = next((r for r in rows if r["method"] == baseline), None)
    kind = next((r.get("mem_kind") for r in rows if r.get("mem_kind")), "cpu_rss_delta")
    mem_head = "peak CUDA mem (MiB)" if kind == "cuda" else "peak RSS Δ (MiB)"
    guards = any(r.get("guards_overhead") is not None for r in rows)
    control = any(r.get("control_step") is not None for r in rows)
    paired = any(paired_step_ratio(r) is not None for r in rows)
    head = ["method", "s/iter", f"× {baseline}", mem_head, f"× {baseline}", "teacher fwd (s)", "KD modules (s)",
            "modules / student step"] + (["× plain step, same process"] if paired else []) \
        + (["guards overhead"] if guards else []) + (["control (train.control)"] if control else [])
    body = []
    for r in rows:
        t, m, tf = r.get("sec_per_iter"), r.get("peak_mem_bytes"), r.get("teacher_fwd_sec")
        mod, st = r.get("modules_sec"), r.get("student_step_sec")
        cells = [
            r["method"],
            "—" if t is None else f"{t:.4f}",
            _ratio(t, base and base.get("sec_per_iter")),
            "—" if m is None else f"{m / 2**20:.1f}",
            _ratio(m, base and base.get("peak_mem_bytes")),
            "—" if tf is None else f"{tf:.4f}",
            "—" if mod is None else f"{mod:.4f}",
            "—" if mod is None or not st else f"{100 * mod / st:+.1f} %",
        ] + ([paired_text(r)] if paired else [])
        if guards:
            g = r.get("guards_overhead")
            cells.append("—" if g is None else (
                f"{100 * g:+.2f} % (gradient-norm step {100 * r['guards_grad_step']:+.0f} %, log row "
                f"{100 * r['guards_log_row']:+.1f} %)"))
        if control:
            c = r.get("control_step")
            cells.append("—" if c is None else (
                f"{100 * c:+.0f} % per step for {r['control_iters']} of {r['control_max_iters']} iterations, "
                f"scoring {r['control_score_sec']:.2f} s: {100 * r['control_run']:+.1f} % of the run"))
        body.append(cells)
    lines = [markdown_table(head, body)]
    if rows:
        r0 = rows[0]
        lines += ["", f"median over {r0.get('iters')} iterations after {r0.get('warmup')} warm-up, one fixed batch; "
                      f"{'CUDA max_memory_allocated' if kind == 'cuda' else 'CPU: peak RSS during the steps minus RSS before them'}; "
                      f"KD modules = full step − plain student step − teacher forward, each timed in the same "
                      f"process, interleaved, median of the per-iteration differences"
                      + ("; × plain step, same process: full step / that plain student step, median (min–max) of "
                         "the per-iteration ratios — unlike the ratios to the baseline row, not moved by a machine "
                         "whose speed drifts between processes" if paired else "") + "; "
                      f"device: {r0.get('device', '?')}"]
        g = next((r for r in rows if r.get("guards_overhead") is not None), None)
        if g is not None:
            lines += ["", f"guards overhead: (d_grad / {g['guards_every']} + d_log / {g['guards_log_every']}) / plain step "
                          f"(train.grad_ratio_every / log_every), from medians of {g['guards_pairs']} interleaved paired "
                          f"steps of each kind in one process; in brackets d_grad and d_log as a share of a step"]
        c = next((r for r in rows if r.get("control_step") is not None), None)
        if c is not None:
            lines += ["", f"control: per step, the median of {c['control_pairs']} paired differences of engine steps "
                          f"with and without the plain twin over the median step without it; of the run: "
                          f"(control_iters × that difference + the one-time scoring on {c['control_batches']} "
                          f"validation batches) / (max_iters × step)"]
    if any(r.get("step_flops") is not None for r in rows):
        lines += ["", flops_table(rows)]
    return "\n".join(lines) + "\n"


def _gflop(f: float | None) -> str:
    if f is None:
        return "—"
    g = f / 1e9
    return f"{g:.1f}" if abs(g) >= 1 else f"{g:.2g}"


def _rate(flops: float | None, sec: float | None) -> str:
    if flops is None or sec is None or sec <= 0 or flops <= 0:
        return "—"
    return f"{flops / sec / 1e9:.0f}"


def _spread_sec(times: Sequence[float] | None) -> str:
    return f" ({min(times):.3g}–{max(times):.3g})" if times else ""


def flops_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The FLOPs table (pure): per row ``step_flops``, ``student_step_flops``, ``teacher_fwd_flops``,
    ``modules_flops``, ``modules_floor_flops``, ``matmul_gflops`` and, where measured, ``modules_alone_sec`` /
    ``modules_alone_times``, ``modules_floor_bytes`` and ``copy_gbps`` (None or absent where they do not apply)
    beside the seconds of :func:`bench_table`'s rows. GFLOP/s = FLOPs / median seconds; ``modules / floor time`` =
    the modules' seconds (alone where measured, else the in-step difference) / :func:`floor_seconds`."""
    lines = ["| method | step GFLOP | GFLOP/s | student step GFLOP | GFLOP/s | teacher fwd GFLOP | GFLOP/s "
             "| KD modules GFLOP | modules alone s | GFLOP/s | floor GFLOP | floor MB | floor s "
             "| modules / floor time |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        st = r.get("student_step_sec") if r.get("teacher_fwd_sec") is not None else r.get("sec_per_iter")
        alone = r.get("modules_alone_sec")
        mod = alone if alone is not None else r.get("modules_sec")
        floor, fsec = r.get("modules_floor_flops"), floor_seconds(r)
        ratio = f"{mod / fsec:.1f}×" if mod is not None and fsec and mod > 0 else "—"
        nbytes = r.get("modules_floor_bytes")
        lines.append("| " + " | ".join([
            r["method"], _gflop(r.get("step_flops")), _rate(r.get("step_flops"), r.get("sec_per_iter")),
            _gflop(r.get("student_step_flops")), _rate(r.get("student_step_flops"), st),
            _gflop(r.get("teacher_fwd_flops")), _rate(r.get("teacher_fwd_flops"), r.get("teacher_fwd_sec")),
            _gflop(r.get("modules_flops")),
            "—" if alone is None else f"{alone:.3g}{_spread_sec(r.get('modules_alone_times'))}",
            _rate(r.get("modules_flops"), mod), _gflop(floor),
            "—" if not nbytes else f"{nbytes / 1e6:.0f}", "—" if not fsec else f"{fsec:.3g}", ratio]) + " |")
    rate = next((r.get("matmul_gflops") for r in rows if r.get("matmul_gflops")), None)
    bw = next((r.get("copy_gbps") for r in rows if r.get("copy_gbps")), None)
    lines += ["", "FLOPs: matrix products only (convolutions, mm/bmm, attention), forward + backward, 2 per "
                  "multiply-add, counted by torch.utils.flop_counter.FlopCounterMode on one step of each kind; "
                  "KD modules = full − student − teacher; modules alone: the KD loss forward, its backward to the "
                  "student maps and the KD parameters' update on one batch's captured maps, without either "
                  "network (median (min–max) of as many runs as steps); floor: the KD modules' FLOPs without what "
                  "their kernels perform beyond the floor of the exact form (e.g. ACAM-KD's recomputed attention "
                  "products) and the bytes any KD loss moves (read each level's student and teacher map, write the "
                  "student map's gradient); floor s: the longer of floor FLOPs at the matmul rate"
                  + (f" ({rate:.0f} GFLOP/s, best square product in the step's precision, same process)" if rate else "")
                  + " and floor bytes at the copy rate"
                  + (f" ({bw:.1f} GB/s, element-wise a + b, same process)" if bw else "")
                  + "; modules / floor time: modules alone s (or, without it, the in-step difference) / floor s"]
    return "\n".join(lines)


# --------------------------------------------------------------------------- one measurement (subprocess)
def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # pragma: no cover - non-Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _peak_rss_bytes() -> int:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def measure_guards(tr: Any, inputs: Sequence[Any], targets: Any, pairs: int = 30) -> dict[str, Any]:
    """What the KD health guards add to an engine step, as a fraction of it (see the module docstring)."""
    import torch

    t = tr.cfg.train
    every = t.grad_ratio_every or 100
    log_every = t.log_every or 1
    cuda = tr.device.type == "cuda"
    guards = tr.guards
    kinds = ("off", "off_log", "grad", "on_log")
    times: dict[str, list[float]] = {k: [] for k in kinds}

    def step(kind: str) -> float:
        guards.enabled = kind in ("grad", "on_log")
        log_now = kind.endswith("_log")
        # a gradient-norm step is iteration N (1-based); the logged steps are iteration N + 1 (no gradient norms)
        tr.iteration = every - 1 if kind == "grad" else every
        if cuda:
            torch.cuda.synchronize(tr.device)
        t0 = time.perf_counter()
        names, values = tr.train_step(inputs, targets, log_now)
        if log_now:  # the log row as the loop builds it (no file written), and the guards' checks of it
            guards.check(tr.iteration, tr.log_row(dict(zip(names, values)), 1))
        if cuda:
            torch.cuda.synchronize(tr.device)
        return time.perf_counter() - t0

    for i in range(pairs):
        for j in range(len(kinds)):
            kind = kinds[(i + j) % len(kinds)]
            times[kind].append(step(kind))
    guards.enabled = True
    med = statistics.median
    d_grad = med([a - b for a, b in zip(times["grad"], times["off"])])
    d_log = med([a - b for a, b in zip(times["on_log"], times["off_log"])])
    base = med(times["off"])
    return {"guards_overhead": (d_grad / every + d_log / log_every) / base, "guards_grad_step": d_grad / base,
            "guards_log_row": d_log / base, "guards_every": every, "guards_log_every": log_every,
            "guards_pairs": pairs, "guards_step_sec": base, "guards_times": times}


def measure_control(tr: Any, inputs: Sequence[Any], targets: Any, pairs: int = 30) -> dict[str, Any]:
    """What ``train.control`` adds to a run, measured in this process (see the module docstring)."""
    import torch

    from ..engine.control import CONTROL_BATCHES, ControlTwin, default_control_iters, score_pair

    t = tr.cfg.train
    if tr.val_set is None or len(tr.val_set) == 0:
        return {}
    twin = ControlTwin(tr, iters=2**62)  # trains at every measured step
    cuda = tr.device.type == "cuda"
    times: dict[str, list[float]] = {"off": [], "on": []}
    every = t.grad_ratio_every
    # an iteration at which the guards measure no gradient norms (1-based n = 1 and multiples of every do)
    start = next((i for i in range(1, 4) if every == 0 or (i + 1) % every != 0), 1)

    def step(kind: str) -> float:
        tr.control = twin if kind == "on" else None
        tr.iteration = start  # the same iteration each time: the same guard work in both kinds
        if cuda:
            torch.cuda.synchronize(tr.device)
        t0 = time.perf_counter()
        tr.train_step(inputs, targets)
        if cuda:
            torch.cuda.synchronize(tr.device)
        return time.perf_counter() - t0

    try:
        for i in range(pairs):
            for kind in (("off", "on") if i % 2 == 0 else ("on", "off")):
                times[kind].append(step(kind))
        t0 = time.perf_counter()
        score_pair(tr.task, tr.model.student, twin.model.student, tr.val_set, tr.cfg.eval.batch_size,
                   CONTROL_BATCHES, tr.device, 0)
        score_sec = time.perf_counter() - t0
    finally:
        tr.control = None
    med = statistics.median
    d = med([a - b for a, b in zip(times["on"], times["off"])])
    base = med(times["off"])
    c_iters = t.control_iters if t.control_iters is not None else default_control_iters(t.max_iters)
    return {"control_step": d / base, "control_score_sec": score_sec,
            "control_run": (c_iters * d + score_sec) / (t.max_iters * base), "control_iters": c_iters,
            "control_max_iters": t.max_iters, "control_pairs": pairs, "control_batches": CONTROL_BATCHES,
            "control_times": times}


def cpu_as_the_trainer(threads: int) -> bool:
    """Set this process up as a CPU Trainer runs (for kernel benchmarks without one): ``threads`` torch threads,
    subnormals flushed to zero (``train.flush_denormal``) and freed memory kept in malloc's heap
    (``train.malloc_keep``). Returns whether malloc took the setting. For a benchmark process: nothing undoes it."""
    import torch

    from ..engine import malloc

    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    return malloc.keep_freed_memory()


def bench_trainer(config: str | Mapping[str, Any], method: str, overrides: Sequence[str], output_dir: str) -> Any:
    """The engine's Trainer for ``method`` on ``config`` as the benchmark measures it: built as ``densekd compare``
    builds the method (the config's ``compare:`` plan), writing to ``output_dir``, no resume, evaluation or twin."""
    from ..engine.trainer import Trainer
    from .compare.plan import method_overrides, plan_from_config, plan_settings, raw_config

    raw = raw_config(config, overrides)
    own_set, own_kwargs = plan_settings(plan_from_config(raw), method)
    ov = list(overrides) + own_set + method_overrides(raw, method, own_kwargs) + [
        f"output_dir={output_dir}", "train.resume=false", "train.eval_every=-1", "train.num_workers=0",
        "train.control=false"]  # a config's own twin would step in measure_guards' steps (--control times it)
    return Trainer(config, ov)


def engine_update(tr: Any, loss: Any) -> None:
    """The engine's update, with or without its grad scaler (KD parameters without a gradient are skipped)."""
    tr.optimizer.zero_grad(set_to_none=True)
    if tr.scaler is not None:
        tr.scaler.scale(loss).backward()
        tr.scaler.step(tr.optimizer)
        tr.scaler.update()
    else:
        loss.backward()
        tr.optimizer.step()


def modules_alone_step(tr: Any, inputs: Sequence[Any], targets: Any) -> tuple[Any, Any]:
    """(run, snapshot): ``run()`` is one pass of the KD modules alone on ``inputs`` — the KD loss forward on the
    :meth:`~densekd.distiller.Distiller.kd_snapshot` of the batch, its backward to the snapshot's student maps and
    the engine's update of the KD parameters — without either network."""
    model = tr.model
    snap = model.kd_snapshot(*inputs, targets=targets)
    leaves = [v for d in snap.student.values() for v in d.values() if v.requires_grad]

    def run() -> None:
        with tr.autocast():
            loss = model.kd_loss(snap)
        engine_update(tr, loss)
        for v in leaves:
            v.grad = None

    return run, snap


def step_fns(tr: Any, inputs: Sequence[Any], targets: Any) -> tuple[Any, Any, Any]:
    """(step(i), student_step(), teacher_forward()) on one batch of the Trainer ``tr``: the full engine step at
    iteration ``i``; the same student, batch and optimizer without teacher and KD modules; the frozen teacher's
    forward as the Distiller runs it, as far as the captures need. No device synchronisation: the caller's."""
    from ..distiller import task_losses

    model = tr.model

    def step(i: int) -> None:
        model.iteration = i
        with tr.autocast():
            loss = tr.ddp(*inputs, targets=targets)["loss"]
        engine_update(tr, loss)  # KD parameters get no gradient in a student step: skipped

    def student_step() -> None:
        with tr.autocast():
            loss = sum(task_losses(model.student, "student", model.task_loss, inputs, targets).values())
        engine_update(tr, loss)

    def teacher_forward() -> None:
        with tr.autocast():
            model.teacher_levels(inputs, model.pairs[0].teacher_spec)

    return step, student_step, teacher_forward


def measure(config: str | Mapping[str, Any], method: str, iters: int, warmup: int,
            overrides: Sequence[str] = (), guard_pairs: int = 0, control_pairs: int = 0) -> dict[str, Any]:
    """Time ``warmup + iters`` training steps of ``method`` (``baseline``: no distillation) in *this* process."""
    import torch

    from ..distiller import Distiller
    from ..ops.flops import copy_rate, matmul_rate

    with tempfile.TemporaryDirectory() as tmp:
        tr = bench_trainer(config, method, overrides, tmp)
        try:
            device = tr.device
            cuda = device.type == "cuda"
            batch = tr.task.to_device(next(iter(tr.loader)), device)
            inputs, targets = tr.task.model_inputs(batch)
            model = tr.model
            model.max_iterations = warmup + iters

            def sync() -> None:
                if cuda:
                    torch.cuda.synchronize(device)

            kd = isinstance(model, Distiller)
            step, student_step, teacher_forward = step_fns(tr, inputs, targets)

            def timed(fn, *a) -> float:
                sync()
                t0 = time.perf_counter()
                fn(*a)
                sync()
                return time.perf_counter() - t0

            for i in range(warmup):
                step(i)
            sync()
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            rss0 = _rss_bytes()
            times, student_times, teacher_times = [], [], []
            for i in range(iters):  # interleaved, so that a change of load hits all three alike
                times.append(timed(step, warmup + i))
                if kd:
                    student_times.append(timed(student_step))
                    teacher_times.append(timed(teacher_forward))
            peak = torch.cuda.max_memory_allocated(device) if cuda else max(0, _peak_rss_bytes() - rss0)
            flops = _count_flops(model, step, student_step, teacher_forward, warmup + iters, kd)
            amp = tr.cfg.train.amp
            dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp, torch.float32)
            flops["matmul_gflops"] = matmul_rate(device, dtype) / 1e9
            if kd:
                model.iteration = warmup + iters
                flops.update(_modules_alone(tr, inputs, targets, timed, iters))
                flops["copy_gbps"] = copy_rate(device, dtype) / 1e9
            teacher_fwd = statistics.median(teacher_times) if kd else None
            student_sec = statistics.median(student_times) if kd else None
            # KD modules on top: full step − student step − teacher forward, paired per iteration
            modules = statistics.median(t - s - f for t, s, f in zip(times, student_times, teacher_times)) if kd else None
            guard_cost: dict[str, Any] = {}
            if guard_pairs > 0 and tr.guards is not None:
                guard_cost = measure_guards(tr, inputs, targets, guard_pairs)
            if control_pairs > 0 and kd:
                guard_cost.update(measure_control(tr, inputs, targets, control_pairs))
            return {**guard_cost, **flops,
                "method": method, "sec_per_iter": statistics.median(times), "peak_mem_bytes": int(peak),
                "mem_kind": "cuda" if cuda else "cpu_rss_delta", "teacher_fwd_sec": teacher_fwd,
                "student_step_sec": student_sec, "modules_sec": modules,
                "iters": iters, "warmup": warmup, "step_times": times, "student_times": student_times,
                "teacher_times": teacher_times,
                "device": torch.cuda.get_device_name(device) if cuda else f"cpu ({torch.get_num_threads()} threads)",
                "amp": amp, "teacher_amp": getattr(tr.cfg.distill, "teacher_amp", None), "torch": torch.__version__,
                "malloc_keep": bool(tr.malloc_kept),
                **({"tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
                    "tf32_cudnn": torch.backends.cudnn.allow_tf32} if cuda else {}),
            }
        finally:
            tr.close()


def _count_flops(model: Any, step: Any, student_step: Any, teacher_forward: Any, i: int, kd: bool
                 ) -> dict[str, Any]:
    """One more step of each kind, under :func:`densekd.ops.flops.flop_counter` (see the module docstring)."""
    from ..ops.flops import flop_counter

    def counted(fn, *a) -> int:
        with flop_counter() as fc:
            fn(*a)
        return int(fc.get_total_flops())

    total = counted(step, i)
    if not kd:
        return {"step_flops": total, "student_step_flops": total, "teacher_fwd_flops": None,
                "modules_flops": None, "modules_floor_flops": None}
    student, teacher = counted(student_step), counted(teacher_forward)
    modules = total - student - teacher
    above = sum(int(model.kd_losses[lv.key].flops_above_floor(lv.student_shape, lv.teacher_shape))
                for lv in model.levels)
    return {"step_flops": total, "student_step_flops": student, "teacher_fwd_flops": teacher,
            "modules_flops": modules, "modules_floor_flops": modules - above}


def _modules_alone(tr: Any, inputs: Any, targets: Any, timed: Any, iters: int) -> dict[str, Any]:
    """The KD modules alone (:func:`modules_alone_step`): ``iters`` timed runs after one warm-up, their FLOPs (one
    more run) and the bytes any KD loss must move at least — read each level's student and teacher map, write the
    student map's gradient."""
    import math

    from ..ops.flops import flop_counter

    run, snap = modules_alone_step(tr, inputs, targets)
    run()
    times = [timed(run) for _ in range(iters)]
    with flop_counter() as fc:
        run()
    size = next((v.element_size() for d in snap.student.values() for v in d.values()), 4)
    floor_bytes = sum(size * (2 * math.prod(lv.student_shape) + math.prod(lv.teacher_shape))
                      for lv in tr.model.levels)
    return {"modules_alone_sec": statistics.median(times), "modules_alone_times": times,
            "modules_alone_flops": int(fc.get_total_flops()), "modules_floor_bytes": int(floor_bytes)}


def floor_seconds(row: Mapping[str, Any]) -> float | None:
    """The KD modules' floor time (roofline): the longer of their floor FLOPs at the matrix-product rate and their
    floor bytes at the element-wise copy rate (None where the row lacks them)."""
    floor, rate = row.get("modules_floor_flops"), row.get("matmul_gflops")
    if floor is None or not rate:
        return None
    t = max(floor, 0) / (rate * 1e9)
    nbytes, bw = row.get("modules_floor_bytes"), row.get("copy_gbps")
    if nbytes and bw:
        t = max(t, nbytes / (bw * 1e9))
    return t or None


_MARK = "DENSEKD_BENCH_RESULT "


def _worker(argv: Sequence[str]) -> int:
    spec = json.loads(argv[0])
    res = measure(spec["config"], spec["method"], spec["iters"], spec["warmup"], spec["overrides"],
                  spec.get("guard_pairs", 0), spec.get("control_pairs", 0))
    print(_MARK + json.dumps(res), flush=True)
    return 0


def measure_in_subprocess(config: str | Mapping[str, Any], method: str, iters: int, warmup: int,
                          overrides: Sequence[str] = (), timeout: float | None = None,
                          guard_pairs: int = 0, control_pairs: int = 0) -> dict[str, Any]:
    """:func:`measure` in a fresh ``python -m densekd.tools.bench`` process (so memory peaks do not mix)."""
    with tempfile.TemporaryDirectory() as tmp:
        if not isinstance(config, (str, os.PathLike)):
            import yaml

            path = os.path.join(tmp, "config.yaml")
            with open(path, "w", encoding="utf-8") as f:
                yaml.safe_dump(dict(config), f)
            config = path
        spec = {"config": os.fspath(config), "method": method, "iters": iters, "warmup": warmup,
                "overrides": list(overrides), "guard_pairs": guard_pairs, "control_pairs": control_pairs}
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        proc = subprocess.run([sys.executable, "-m", "densekd.tools.bench", json.dumps(spec)], capture_output=True,
                              text=True, env=env, timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith(_MARK):
            return json.loads(line[len(_MARK):])
    err = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    last = err[-1] if err else f"exit status {proc.returncode}, no output"
    head, sep, msg = last.partition(": ")
    if sep and head.rsplit(".", 1)[-1].endswith("Error"):  # "densekd.errors.ConfigError: msg" → "msg"
        last = msg
    raise ConfigError(f"bench: method {method!r} failed: {last}")


def bench(config: str | Mapping[str, Any], methods: Sequence[str], iters: int = 20, warmup: int = 5,
          overrides: Sequence[str] = (), out: str | None = None, log=print, guard_pairs: int = 0,
          control_pairs: int = 0) -> list[dict[str, Any]]:
    """Measure the plain student (``baseline``) and every method (each in its own subprocess); write ``bench.md`` /
    ``bench.json`` to ``out`` when given; returns the rows (``baseline`` first). ``guard_pairs > 0``: also the KD health
    guards' cost for every method (:func:`measure_guards`); ``control_pairs > 0``: also ``train.control``'s
    (:func:`measure_control`)."""
    from .compare.plan import check_methods

    if iters < 1 or warmup < 0:
        raise ConfigError(f"bench: expected --iters >= 1 and --warmup >= 0, got {iters} / {warmup}")
    if guard_pairs < 0:
        raise ConfigError(f"bench: expected --guards PAIRS >= 1, got {guard_pairs}")
    if control_pairs < 0:
        raise ConfigError(f"bench: expected --control PAIRS >= 1, got {control_pairs}")
    names = [m for m in methods if not is_plain(m)]
    check_methods(names or [PLAIN_STUDENT])
    rows = []
    for m in [PLAIN_STUDENT, *names]:
        log(f"bench: {m} ({warmup} warm-up + {iters} iterations)")
        rows.append(measure_in_subprocess(config, m, iters, warmup, overrides,
                                          guard_pairs=guard_pairs if m != PLAIN_STUDENT else 0,
                                          control_pairs=control_pairs if m != PLAIN_STUDENT else 0))
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "bench.md"), "w", encoding="utf-8") as f:
            f.write(bench_table(rows))
        with open(os.path.join(out, "bench.json"), "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)
    return rows


# --------------------------------------------------------------------------- CLI
def add_subparser(sub) -> None:
    p = sub.add_parser("bench", help="seconds per iteration and peak memory of each method vs plain training")
    p.add_argument("config", help="YAML config (model, data, batch; its distill section gives the teacher)")
    p.add_argument("--methods", nargs="+", required=True, help="registered loss names (the plain student, baseline, is "
                                                                    "always measured)")
    p.add_argument("--iters", type=int, default=20, help="measured iterations (median), default 20")
    p.add_argument("--warmup", type=int, default=5, help="warm-up iterations, default 5")
    p.add_argument("--out", default=None, help="folder for bench.md / bench.json")
    p.add_argument("--guards", type=int, nargs="?", const=30, default=0, metavar="PAIRS",
                   help="also measure what the KD health guards add to a step (PAIRS interleaved steps of each "
                        "kind; default 30 when given)")
    p.add_argument("--control", type=int, nargs="?", const=30, default=0, metavar="PAIRS",
                   help="also measure what train.control (a plain twin beside the student) adds to a step and to "
                        "the run (PAIRS interleaved steps with and without it; default 30 when given)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted-key overrides")
    p.set_defaults(func=_run_cli)


def _run_cli(args) -> int:
    from .compare.plan import split_methods

    methods, overrides = split_methods(args.methods, args.overrides)
    rows = bench(args.config, methods, args.iters, args.warmup, overrides, args.out, guard_pairs=args.guards,
                 control_pairs=args.control)
    print(bench_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
