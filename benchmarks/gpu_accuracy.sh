#!/usr/bin/env bash
# One call on a lent GPU machine: the accuracy benchmark's GPU path (paper-like sizes:
# the paper's channels, 96^3 standard patches, AMP, checkpointing) on one phantom seed,
# with the epochs cut to fit one call. It checks that training, cascades and streaming
# prediction run on CUDA; its numbers are a smoke check, not a benchmark result.
#
# Needs torch with CUDA; the rest comes from wheels in .wheels/ (zarr and friends for
# Python 3.12, fetched beforehand with `pip download`), since the machine is offline:
#   run(command="bash benchmarks/gpu_accuracy.sh", carry=[".wheels"], timeout_s=560)
set -euo pipefail
OUT="${OUT:-/tmp/meunet-out}"
mkdir -p "$OUT"
python3 -m pip install --quiet --no-deps --no-index --target /tmp/site .wheels/*.whl
export PYTHONPATH="$PWD/src:/tmp/site" PYTHONUNBUFFERED=1
python3 -c "import torch, zarr; assert torch.cuda.is_available(); print(torch.__version__, torch.cuda.get_device_name(), 'zarr', zarr.__version__)"
timeout "${LIMIT:-480}" python3 benchmarks/accuracy.py --sizes gpu --datasets phantom --seeds 0 \
  --set "epochs=${EPOCHS:-4}" --set patches_per_epoch=32 --phantom-shape 192 128 128 --work /tmp/acc --out "$OUT/accuracy-gpu-smoke" 2>&1 | tee "$OUT/accuracy-gpu-smoke.log" | tail -40
