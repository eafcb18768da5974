#!/usr/bin/env bash
# One call on a lent device machine (its 16 CPU cores, not its GPU): the Dask scaling
# benchmark with 1, 2 and 4 workers, on a machine where the workers do not share two cores.
# The machine is offline: zarr, dask and their dependencies come as Python 3.12 wheels in
# .wheels/ (fetched beforehand with `pip download`).
#   run(command="bash benchmarks/device_dask.sh", carry=[".wheels"], timeout_s=360)
set -euo pipefail
OUT="${OUT:-/tmp/meunet-out}"
mkdir -p "$OUT"
python3 -m pip install --quiet --no-deps --no-index --target /tmp/site .wheels/*.whl
export PYTHONPATH="$PWD/src:/tmp/site" PYTHONUNBUFFERED=1 CUDA_VISIBLE_DEVICES=""
timeout 300 python3 benchmarks/dask_scaling.py --shape 256 192 192 --workers 1 2 4 \
  --out "$OUT/inference_dask_16cores.md" 2>&1 | tail -25
