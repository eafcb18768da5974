#!/usr/bin/env bash
# The GPU inference table (issue 13): meunet's streaming predictor against MONAI's
# sliding_window_inference on one GPU, in one run: the paper's U-net (random weights), 128^3
# windows, overlap 0.5, the paper-scale phantom case (1072 x 470 x 470, made first in under a
# minute). Records seconds, host peak RSS, GPU peak memory and GPU busy fraction.
# Then profiles meunet's row once (benchmarks/profile_predict.py: the GPU's idle time by what
# the host was doing meanwhile). Sized to finish inside a 9-minute call on one H100 or H200.
# Writes inference_gpu.md, profile_predict.md and their logs under $OUT (default
# /tmp/meunet-out; copy the tables to benchmarks/results/). On a machine with a CUDA GPU:
#
#   bash benchmarks/gpu_inference.sh      # from the repository root; LIMIT=SECONDS caps the table
#                                         # (420; 0: none), PROFILE_LIMIT the profile (120; 0: none),
#                                         # GPU_TESTS=0 skips the GPU tests
#
# Needs python3 with a CUDA build of torch. On a machine without network access, put wheels
# of meunet's other dependencies and of MONAI for that Python in .wheels/ first, e.g. for
# Python 3.12: `pip download -d .wheels --no-deps --only-binary=:all: --python-version 3.12
# --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 zarr numcodecs donfig google-crc32c
# crc32c typing_extensions monai pytest pluggy iniconfig` elsewhere; they are installed into
# /tmp/site. Without MONAI the meunet rows are still made; with pytest, the engine's GPU tests
# (`-m gpu`, under a minute) run first and write gpu_tests.log.
set -euo pipefail
OUT="${OUT:-/tmp/meunet-out}"
mkdir -p "$OUT"
if compgen -G ".wheels/*.whl" > /dev/null; then
  python3 -m pip install --quiet --upgrade --no-deps --no-index --target /tmp/site .wheels/*.whl
fi
export PYTHONPATH="$PWD/src:/tmp/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 - <<'PY'
import importlib.util
import torch
assert torch.cuda.is_available(), "no CUDA device"
missing = [m for m in ("zarr", "numcodecs", "scipy", "yaml", "tqdm") if importlib.util.find_spec(m) is None]
assert not missing, f"missing {missing}: put their wheels in .wheels/ (see this script's header)"
print(torch.__version__, torch.cuda.get_device_name(),
      "MONAI:", "yes" if importlib.util.find_spec("monai") else "no (its rows are left out)")
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
if [ "${GPU_TESTS:-1}" = 1 ] && python3 -c "import pytest" 2>/dev/null; then
  timeout 90 python3 -m pytest -q -p no:cacheprovider -m gpu tests/inference/test_engine.py \
    2>&1 | tee "$OUT/gpu_tests.log" | tail -5 || true
fi
if [ "${LIMIT:-420}" -gt 0 ]; then
  timeout "${LIMIT:-420}" python3 benchmarks/inference.py --device cuda \
    --out "$OUT/inference_gpu.md" 2>&1 | tee "$OUT/inference_gpu.log" | tail -40
fi
if [ "${PROFILE_LIMIT:-120}" -gt 0 ]; then
  timeout "${PROFILE_LIMIT:-120}" python3 benchmarks/profile_predict.py --device cuda \
    --out "$OUT/profile_predict.md" 2>&1 | tee "$OUT/profile_predict.log" | tail -25 || true
fi
