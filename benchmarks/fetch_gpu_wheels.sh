#!/usr/bin/env bash
# Fetch, here, the wheels that benchmarks/gpu_check.sh installs on the device machine (Python 3.12,
# no package index there; its image has torch, numpy, scipy, pyyaml, tqdm, matplotlib, h5py, pytest,
# but not monai or nibabel). They land in .whl/ (git-ignored), which the device call carries.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "monai==1.6.1" "nibabel==5.4.2"
ls -l .whl
