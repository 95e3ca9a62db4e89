#!/usr/bin/env bash
# The whole YOLO benchmark of benchmarks/results/yolo.md, one training at a time, seed-major order (every method of
# seed 0, then seed 1, ...). Run from the repository root. Weights: see results/yolo.md, "Weights".
# RUN_WITH: a command every training runs under (e.g. "nice -n 5" on a shared machine; empty by default).
set -euo pipefail
export OMP_NUM_THREADS=1 MPLBACKEND=Agg
B="python benchmarks/yolo.py"
L="${RUN_WITH:-}"
[ -f runs/yolo_bench/data/data.yaml ] || $B data
[ -f runs/yolo_bench/teacher/weights/best.pt ] || $L $B teacher | grep '^{' | tee -a runs/yolo_bench/teacher.jsonl
$L $B ratios | grep '^{' | tee runs/yolo_bench/ratios.jsonl
for seed in ${SEEDS:-0 1 2}; do
  $L $B run --split val --seed "$seed" --method plain
  $L $B run --split val --seed "$seed" --method ultralytics ${W_ULTRALYTICS:+--weight $W_ULTRALYTICS}
  for m in acam_kd mgd cwd fitnet; do
    w_var="W_${m^^}"
    $L $B run --split val --seed "$seed" --method "$m" ${!w_var:+--weight ${!w_var}}
  done
done
$B table runs/yolo_bench/results.jsonl --split val | tee runs/yolo_bench/table_val.md
# cost: every method's s/step in one process (run it on an otherwise idle machine: ratios, interleaved)
$B speed | grep -v '^\s*$' | grep '^|\|^batch' | tee runs/yolo_bench/speed.md
