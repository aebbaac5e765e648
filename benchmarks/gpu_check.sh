#!/usr/bin/env bash
# The device check of issue 16, on a machine with one NVIDIA GPU and no package index: installs
# monai and nibabel from the wheels in .whl/ (benchmarks/fetch_gpu_wheels.sh, run here first),
# runs the CUDA tests, then times the deformable presets (benchmarks/bench_gpu.py). About 5 minutes
# on one H100; the log and the table land in $OUT (or gpu-check/).
#
#   bash benchmarks/fetch_gpu_wheels.sh                       # here, once
#   device: run "bash benchmarks/gpu_check.sh", carry [".whl"], timeout_s 480
#   dry run on a CPU: MONAI_INR_REG_TEST_DEVICE=cpu BENCH_DEVICE=cpu BENCH_SHAPES=40x36x32,64x56 bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu_check: installing the carried wheels failed"; exit 2; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
export MONAI_INR_REG_NO_EXT=1  # the CPU references in the tests use pure PyTorch: no 40 s kernel build
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
python3 -c "import torch, monai; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'monai', monai.__version__)" | tee -a "$OUT/device.txt"
timeout 200 python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py 2>&1 | tee "$OUT/pytest.log"
tests=${PIPESTATUS[0]}
timeout 260 python3 benchmarks/bench_gpu.py ${BENCH_SHAPES:+--shapes $BENCH_SHAPES} ${BENCH_DEVICE:+--device $BENCH_DEVICE} 2>&1 | tee "$OUT/bench_gpu.md"
bench=${PIPESTATUS[0]}
echo "gpu_check: tests exit $tests, bench exit $bench"
exit $(( tests != 0 || bench != 0 ))
