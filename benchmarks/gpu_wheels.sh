#!/usr/bin/env bash
# Download (here, where PyPI is reachable) the wheels gpu_check.sh installs on a GPU machine that has
# torch/triton/transformers/peft but no network: into .whl/ (git-ignored), for CPython 3.12 x86-64.
#   bash benchmarks/gpu_wheels.sh            # ~47 MB; then bash benchmarks/gpu_check.sh there
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PYVER=${WHEEL_PYTHON:-3.12}
mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl \
  bitsandbytes==0.50.2 liger-kernel==0.8.5 pydantic==2.14.4 pydantic-core==2.50.5 \
  annotated-types typing-inspection "typing-extensions>=4.16"
du -sh .whl
