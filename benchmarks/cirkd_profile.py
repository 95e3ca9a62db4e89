"""Where CIRKD's training step goes, and the floor of its relation terms on this machine.

    OMP_NUM_THREADS=2 python benchmarks/cirkd_profile.py configs/compare/demo_methods.yaml distill.pairs=null \\
        --steps 5 --warmup 3

Builds the training step exactly as ``densekd bench`` does (the engine's Trainer, one fixed batch, the
config's ``compare.set`` overrides for ``cirkd``), then:

1. ``torch.profiler`` over ``--steps`` full steps: the top ten operators by self CPU time, and the CPU time
   inside each part of the CIRKD loss (labelled with ``record_function``: logit KD, the mini-batch relation,
   the bank update, the contrast sets, the two memory relations);
2. the floor of the three relation terms: the shapes each ``relation_kl`` call saw and the time of the bare
   matrix products that any exact fp32 computation of them must do (the teacher's and the student's
   similarities, and the gradient products), each timed alone (median of ``--repeats``), and their FLOPs.

Prints Markdown.
"""
from __future__ import annotations

import argparse
import importlib
import statistics
import tempfile
import time
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from densekd.engine.trainer import Trainer
from densekd.tools.compare.plan import method_overrides, raw_config

cirkd_mod = importlib.import_module("densekd.losses.cirkd")  # the module (the package exports a name cirkd too)

_SHAPES: list[dict[str, Any]] = []


def _labelled(name: str, fn):
    def wrapper(*args, **kwargs):
        with record_function(name):
            return fn(*args, **kwargs)

    return wrapper


def _recording_relation_kl(s_rows, s_cols, t_rows, t_cols, scale=1.0, group=None, rows=None):
    _SHAPES.append({"n": s_rows.shape[0], "m": s_cols.shape[0], "c_s": s_rows.shape[1], "c_t": t_rows.shape[1],
                    "self": s_cols is s_rows, "grad": torch.is_grad_enabled() and s_rows.requires_grad})
    return _relation_kl(s_rows, s_cols, t_rows, t_cols, scale, group, rows)


_relation_kl = cirkd_mod.relation_kl


def _instrument() -> None:
    cirkd_mod.relation_kl = _recording_relation_kl
    cirkd_mod.logit_kd_loss = _labelled("cirkd: logit KD (1)", cirkd_mod.logit_kd_loss)
    cirkd_mod._minibatch_relation = _labelled("cirkd: mini-batch relation (2)-(3)", cirkd_mod._minibatch_relation)
    cls = cirkd_mod.CIRKD
    cls.update_memory = _labelled("cirkd: bank update (4)", cls.update_memory)
    cls.contrast_sets = _labelled("cirkd: contrast sets (5)", cls.contrast_sets)
    cls._memory_relation = _labelled("cirkd: memory relations (6)-(7)", cls._memory_relation)


def _median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _products(shape: dict[str, Any]) -> list[tuple[int, int, int]]:
    """(n, k, m) of each product an exact evaluation of one relation term does: z_t, z_s, ∂/∂rows, ∂/∂cols."""
    n, m, cs, ct = shape["n"], shape["m"], shape["c_s"], shape["c_t"]
    out = [(n, ct, m), (n, cs, m)]
    if shape["grad"]:
        out.append((n, m, cs))  # (p_s − p_t) @ s_cols
        if shape["self"]:
            out.append((m, n, cs))  # (p_s − p_t)ᵀ @ s_rows
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--method", default="cirkd")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    _instrument()
    raw = raw_config(args.config, args.overrides)
    with tempfile.TemporaryDirectory() as tmp:
        ov = list(args.overrides) + method_overrides(raw, args.method) + [
            f"output_dir={tmp}", "train.resume=false", "train.eval_every=-1", "train.num_workers=0"]
        tr = Trainer(args.config, ov)
        try:
            batch = tr.task.to_device(next(iter(tr.loader)), tr.device)
            inputs, targets = tr.task.model_inputs(batch)
            model, opt = tr.model, tr.optimizer
            model.max_iterations = args.warmup + args.steps

            def step(i: int) -> None:
                model.iteration = i
                loss = tr.ddp(*inputs, targets=targets)["loss"]
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            for i in range(args.warmup):
                step(i)
            _SHAPES.clear()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for i in range(args.steps):
                    with record_function("step"):
                        step(args.warmup + i)
        finally:
            tr.close()
    events = prof.key_averages()
    step_us = next(e.cpu_time_total for e in events if e.key == "step") / args.steps
    print(f"## {args.method}: {args.steps} profiled steps, {torch.get_num_threads()} threads, "
          f"{step_us / 1e3:.1f} ms per step under the profiler\n")
    print("### Parts of the loss (CPU time inside each, per step)\n")
    print("| part | ms per step | share of the step |\n|---|---|---|")
    for e in sorted((e for e in events if e.key.startswith("cirkd:")), key=lambda e: -e.cpu_time_total):
        print(f"| {e.key} | {e.cpu_time_total / args.steps / 1e3:.1f} | {e.cpu_time_total / args.steps / step_us:.0%} |")
    print("\n### Top ten operators by self CPU time\n")
    print("| operator | calls per step | self ms per step | share of the step |\n|---|---|---|---|")
    ops = sorted((e for e in events if e.key != "step" and not e.key.startswith("cirkd:")),
                 key=lambda e: -e.self_cpu_time_total)[:10]
    for e in ops:
        print(f"| `{e.key}` | {e.count / args.steps:g} | {e.self_cpu_time_total / args.steps / 1e3:.1f} | "
              f"{e.self_cpu_time_total / args.steps / step_us:.0%} |")
    per_step = _SHAPES[: len(_SHAPES) // args.steps]
    print("\n### Floor: the bare matrix products of the relation terms (fp32, each timed alone)\n")
    print("| term (N rows × M columns) | products (n×k @ k×m) | GFLOP | ms (bare products) |\n|---|---|---|---|")
    total_ms = total_gflop = 0.0
    for shape in per_step:
        prods = _products(shape)
        gflop = sum(2 * n * k * m for n, k, m in prods) / 1e9
        ms = 0.0
        for n, k, m in prods:
            a, b = torch.randn(n, k), torch.randn(k, m)
            out = torch.empty(n, m)
            ms += _median_time(lambda: torch.mm(a, b, out=out), args.repeats) * 1e3
        total_ms += ms
        total_gflop += gflop
        print(f"| {shape['n']} × {shape['m']} (C_s {shape['c_s']}, C_t {shape['c_t']}) | "
              f"{', '.join(f'{n}×{k}@{k}×{m}' for n, k, m in prods)} | {gflop:.2f} | {ms:.1f} |")
    print(f"| total | | {total_gflop:.2f} | {total_ms:.1f} |")
    elems = sum(s["n"] * s["m"] for s in per_step)
    x, y = torch.randn(elems), torch.empty(elems)
    exp_ms = _median_time(lambda: torch.exp(x, out=y), args.repeats) * 1e3
    print(f"\n{elems / 1e6:.1f} M similarity entries per step (each for teacher and student); one `exp` pass over "
          f"them alone: {exp_ms:.1f} ms (the exact KL and its gradient need at least three: the two softmaxes' and "
          f"the student's probabilities).")


if __name__ == "__main__":
    main()
