#!/usr/bin/env bash
# The paper's memory tables at the paper's own sizes (160^3 / 240^3 patches, batch 4, AMP
# and checkpointing), on a machine with a CUDA GPU:
#
#   bash benchmarks/gpu_memory.sh         # from the repository root, at most 8 minutes
#
# Writes benchmarks/results/memory_gpu.{md,json} and copies them to $OUT (default
# /tmp/meunet-out). Needs only python3 with a CUDA build of torch (meunet is taken from src/),
# so it also runs on a machine without network access.
set -euo pipefail
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA'; print(torch.__version__, torch.cuda.get_device_name())"
timeout 480 python3 benchmarks/memory_table.py --device cuda --paper-sizes
mkdir -p "${OUT:-/tmp/meunet-out}"
cp benchmarks/results/memory_gpu.md benchmarks/results/memory_gpu.json "${OUT:-/tmp/meunet-out}/"
