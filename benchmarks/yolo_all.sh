#!/usr/bin/env bash
# The whole YOLO benchmark of benchmarks/yolo.md, one training per shared-lock acquisition, seed-major order
# (every method of seed 0, then seed 1, ...). Run from the repository root. Weights: see yolo.md, "Weights".
set -euo pipefail
export OMP_NUM_THREADS=1 MPLBACKEND=Agg
B="python benchmarks/yolo.py"
L="flock -s /work/locks/cpu"
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
# cost: every method's s/step in one process, under the exclusive lock (nothing else of ours running)
flock -x -w 3600 /work/locks/cpu $B speed | grep -v '^\s*$' | grep '^|\|^batch' | tee runs/yolo_bench/speed.md
