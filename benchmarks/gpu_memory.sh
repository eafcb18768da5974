#!/usr/bin/env bash
# One call on a lent GPU machine: the paper's memory tables at the paper's own sizes
# (160^3 / 240^3 patches, batch 4, AMP and checkpointing), written to
# benchmarks/results/memory_gpu.{md,json} and copied to $OUT. Needs only torch with CUDA.
#
#   run(command="bash benchmarks/gpu_memory.sh", timeout_s=540)
set -euo pipefail
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA'; print(torch.__version__, torch.cuda.get_device_name())"
timeout 480 python3 benchmarks/memory_table.py --device cuda --paper-sizes
mkdir -p "${OUT:-/tmp/meunet-out}"
cp benchmarks/results/memory_gpu.md benchmarks/results/memory_gpu.json "${OUT:-/tmp/meunet-out}/"
