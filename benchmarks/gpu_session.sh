#!/usr/bin/env bash
# The GPU measurements still open, in one call of at most 9 minutes on one H100 or H200: the
# profile of one prediction (benchmarks/profile_predict.py via gpu_inference.sh, about a
# minute; TABLE_LIMIT=SECONDS adds the whole prediction table before it), then the accuracy
# protocol (benchmarks/gpu_accuracy.sh) in the time left of TOTAL seconds (540). Arguments go
# to benchmarks/accuracy.py. Results land under $OUT (default /tmp/meunet-out). E.g., the
# cascades on the context phantom, keeping the committed table's finished networks:
#
#   bash benchmarks/gpu_session.sh --resume-from benchmarks/results/accuracy.json \
#     --configs meunet-k175 meunet-k150 cascade-post cascade-pre cascade-lowres
#
# Wheels for a machine without network access: see gpu_inference.sh.
set -uo pipefail
start=$SECONDS
export OUT="${OUT:-/tmp/meunet-out}"
LIMIT="${TABLE_LIMIT:-0}" PROFILE_LIMIT="${PROFILE_LIMIT:-90}" GPU_TESTS="${GPU_TESTS:-0}" \
  bash benchmarks/gpu_inference.sh || echo "gpu_inference.sh failed ($?); going on" >&2
LIMIT=$((${TOTAL:-540} - (SECONDS - start))) bash benchmarks/gpu_accuracy.sh "$@"
