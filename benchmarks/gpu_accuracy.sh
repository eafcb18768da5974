#!/usr/bin/env bash
# The accuracy benchmark's GPU variant, meant for one 9-minute call on one H100 or H200 (its
# step cap is not yet timed on a GPU; LIMIT stops it at 500 s): the paper's channels, P = 64, k = 1.5, AMP and checkpointing, on one seed of the
# context phantom (12 cases of 192^3, cue distance D = 40, so P/2 < D < E/2): U-net at P,
# U-net at E (the learnability control) and meU-net, each trained to early stopping under a
# step cap, each scored at windows P, E(1.5) and E(1.75). Writes accuracy_gpu.md / .json
# under $OUT (default /tmp/meunet-out; copy them to benchmarks/results/). On a machine with
# a CUDA GPU:
#
#   bash benchmarks/gpu_accuracy.sh       # from the repository root; LIMIT=SECONDS caps it (500)
#
# Needs python3 with a CUDA build of torch. On a machine without network access, put wheels
# of meunet's other dependencies for that Python in .wheels/ first (`pip download -d .wheels
# zarr numcodecs ...` elsewhere); they are installed into /tmp/site.
set -euo pipefail
OUT="${OUT:-/tmp/meunet-out}"
mkdir -p "$OUT"
if compgen -G ".wheels/*.whl" > /dev/null; then
  python3 -m pip install --quiet --no-deps --no-index --target /tmp/site .wheels/*.whl
fi
export PYTHONPATH="$PWD/src:/tmp/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -c "import torch, zarr; assert torch.cuda.is_available(); print(torch.__version__, torch.cuda.get_device_name(), 'zarr', zarr.__version__)"
timeout "${LIMIT:-500}" python3 benchmarks/accuracy.py --sizes gpu --work /tmp/acc \
  --out "$OUT/accuracy_gpu" 2>&1 | tee "$OUT/accuracy_gpu.log" | tail -40
