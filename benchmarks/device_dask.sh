#!/usr/bin/env bash
# The Dask scaling benchmark with 1, 2 and 4 workers, on a machine with enough CPU cores
# that the workers do not share them (it was run on 16 cores; the GPU, if any, is not used):
#
#   bash benchmarks/device_dask.sh        # from the repository root, at most 5 minutes
#
# Writes inference_dask_16cores.md under $OUT (default /tmp/meunet-out); copy it to
# benchmarks/results/. Needs python3 with torch, zarr, dask and distributed. On a machine
# without network access, put wheels of the missing ones for that Python in .wheels/ first
# (`pip download -d .wheels zarr dask distributed ...` elsewhere); they are installed into
# /tmp/site.
set -euo pipefail
OUT="${OUT:-/tmp/meunet-out}"
mkdir -p "$OUT"
if compgen -G ".wheels/*.whl" > /dev/null; then
  python3 -m pip install --quiet --no-deps --no-index --target /tmp/site .wheels/*.whl
fi
export PYTHONPATH="$PWD/src:/tmp/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 CUDA_VISIBLE_DEVICES=""
timeout 300 python3 benchmarks/dask_scaling.py --shape 256 192 192 --workers 1 2 4 \
  --out "$OUT/inference_dask_16cores.md" 2>&1 | tail -25
