#!/usr/bin/env bash
# The accuracy protocol (issue 12) on one GPU, inside a time limit: the small sizes (the
# networks two CPU cores can train) on 3 seeds of the context phantom (or --datasets ...),
# every configuration: the learnability control, the same-memory U-net, U-net at P, meU-net
# k = 1.5 and 1.75, and the post, pre and low-resolution cascades (post and pre adopt the
# meU-nets as their stage 1), JOBS trainings at once (small networks leave a GPU mostly idle).
# Training stops 50 s before LIMIT and each network's best checkpoint so far is scored at
# windows P, E(1.5) and E(1.75); the table says which were stopped so. Writes accuracy.md /
# .json / .log and the jobs' training logs (accuracy_jobs.tgz) under $OUT (default
# /tmp/meunet-out; copy the table to benchmarks/results/). On a machine with a CUDA GPU, from
# the repository root:
#
#   bash benchmarks/gpu_accuracy.sh              # LIMIT=SECONDS bounds it (540), JOBS=N (15)
#   SIZES=paper bash benchmarks/gpu_accuracy.sh  # the paper's channels, P = 64, one seed; writes accuracy_gpu.md
#
# Further arguments go to benchmarks/accuracy.py, e.g. `--configs unet meunet-k175` for fewer
# networks, `--datasets phantom` for the classic phantom, or `--resume-from` an earlier call's
# accuracy.json to keep its finished networks.
#
# Needs python3 with a CUDA build of torch. On a machine without network access, put wheels
# of meunet's other dependencies for that Python in .wheels/ first (see gpu_inference.sh);
# they are installed into /tmp/site.
set -euo pipefail
OUT="${OUT:-/tmp/meunet-out}"
LIMIT="${LIMIT:-540}"
mkdir -p "$OUT"
if compgen -G ".wheels/*.whl" > /dev/null; then
  python3 -m pip install --quiet --upgrade --no-deps --no-index --target /tmp/site .wheels/*.whl
fi
export PYTHONPATH="$PWD/src:/tmp/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -c "import torch, zarr; assert torch.cuda.is_available(); print(torch.__version__, torch.cuda.get_device_name(), 'zarr', zarr.__version__)"
if [ "${SIZES:-small}" = paper ]; then
  args=(--sizes paper --deadline $((LIMIT - 20))) out=accuracy_gpu
else
  args=(--datasets context --set device=cuda --jobs "${JOBS:-15}" --deadline $((LIMIT - 20)))
  out=accuracy
fi
# the caller's --out and --work replace the defaults, so the report's command line names each once
work=/tmp/acc given=("$@")
for i in "${!given[@]}"; do
  if [ "${given[$i]}" = --work ]; then work="${given[$((i + 1))]:-$work}"; fi
done
if [[ " $* " != *" --out "* ]]; then args+=(--out "$OUT/$out"); fi
if [[ " $* " != *" --work "* ]]; then args+=(--work "$work"); fi
status=0
timeout "$LIMIT" python3 benchmarks/accuracy.py "${args[@]}" "$@" 2>&1 \
  | tee "$OUT/accuracy.log" | tail -60 || status=$?
(cd "$work" && find . -name log.txt -o -name log.csv | tar czf "$OUT/accuracy_jobs.tgz" -T -) || true
exit "$status"
