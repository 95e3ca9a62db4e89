#!/usr/bin/env bash
# The real-size tables on one GPU in one call (issue 20): every setting of benchmarks/real_size.py, every method,
# in fp32 (train.amp=none, teacher_amp=none) and in bf16 (train.amp=bf16, teacher_amp=bf16), each method measured
# in one process (`tables --in-process`), 8 steps after 3 warm-ups; then, if time is left, the teacher forward's
# four variants (`teacher`). Settings go in the order retinanet, faster_rcnn, deeplabv3, fcos; each setting's
# fp32 and bf16 tables run back to back, so a stop leaves whole pairs. No method starts after SECONDS
# (default 540) from the call's start; those left are listed "not run" in the tables.
#
#     bash benchmarks/real_size_gpu.sh OUT_DIR [SECONDS [MORE real_size.py ARGS]]
#     bash benchmarks/real_size_gpu.sh runs/gpu_dry 120 --scale 0.2 --iters 1 --warmup 1 --threads 2  # a dry run
#     python benchmarks/real_size.py brief --out OUT_DIR/fp32     # the README's lines and picture, per precision
#
# Writes OUT_DIR/{fp32,bf16}/<setting>.{json,md}, OUT_DIR/teacher/, OUT_DIR/gpu.txt (nvidia-smi, torch).
set -u
out=${1:?usage: bash benchmarks/real_size_gpu.sh OUT_DIR [SECONDS]}
budget=${2:-540}
start=$(date +%s)
stop=$((start + budget))
py=${PYTHON:-python3}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
  "$py" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__,
'cuda', torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
} | tee "$out/gpu.txt"
methods=(fitnet hinton_kd cwd pkd mgd dmkd fgd maskd freekd cirkd samkd acam_kd acam_kd_paper)  # as the CPU tables
common=(--in-process --stop-at "$stop" --iters 8 --warmup 3 --threads 8 --methods "${methods[@]}")
for s in retinanet faster_rcnn deeplabv3 fcos; do
  "$py" "$here/real_size.py" tables --settings "$s" --out "$out/fp32" --teacher-amp none "${common[@]}" "${@:3}"
  "$py" "$here/real_size.py" tables --settings "$s" --out "$out/bf16" --teacher-amp bf16 --set train.amp=bf16 \
    "${common[@]}" "${@:3}"
done
if [ $(($(date +%s) + 60)) -lt "$stop" ]; then
  timeout $((stop - $(date +%s))) "$py" "$here/real_size.py" teacher --out "$out/teacher" --batch 2 --iters 10 \
    --threads 8 "${@:3}"
fi
echo "real_size_gpu.sh: $(($(date +%s) - start)) s"
