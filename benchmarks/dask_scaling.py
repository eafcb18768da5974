"""Blockwise prediction on a Dask LocalCluster: 1 vs 2 (vs more) workers, against one process.

The paper's network (5 levels, channels 16-128, random weights with set
BatchNorm statistics: the cost does not depend on training) predicts a
phantom case stored as Zarr with 64^3 windows, overlap 0.5. Each Dask
worker is one single-threaded process; the single-process baseline runs
with as many torch threads as there are cores. Every result is checked
equal to the single-process one, voxel for voxel.

    .venv/bin/python benchmarks/dask_scaling.py [--shape 192 160 160] [--workers 1 2]

Writes the table between the markers in ``benchmarks/results/inference.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
BEGIN, END = "<!-- dask-scaling: begin -->", "<!-- dask-scaling: end -->"

SINGLE = r"""
import sys, time, torch
from meunet.data.io import open_volume
from meunet.inference.stream import predict_volume
from meunet.models import load_model
torch.set_num_threads(int(sys.argv[4]))
t0 = time.perf_counter()
predict_volume(load_model(sys.argv[1]), [open_volume(sys.argv[2])], sys.argv[3], 64, progress=False)
print(time.perf_counter() - t0)
"""

DASK = r"""
import sys, time
from distributed import Client, LocalCluster
from meunet.inference.blocks import predict_dask
n = int(sys.argv[4])
with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, Client(cluster) as client:
    client.run(lambda: __import__("torch").set_num_threads(1))
    t0 = time.perf_counter()
    predict_dask(sys.argv[1], [sys.argv[2]], sys.argv[3], client, 64, progress=False)
    print(time.perf_counter() - t0)
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", type=int, nargs=3, default=(192, 160, 160))
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--out", default=str(RESULTS / "inference.md"))
    args = p.parse_args()

    import torch

    from meunet.data.io import open_volume
    from meunet.data.phantom import make_phantom_dataset
    from meunet.models import create_model, save_model

    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        make_phantom_dataset(t / "ph", cases=1, shape=tuple(args.shape), seed=0, progress=False)
        image = str(t / "ph" / "case_000" / "image.zarr")
        torch.manual_seed(0)
        model = create_model("unet")
        with torch.no_grad():
            model.train()(torch.randn(2, 1, 32, 32, 32))
        save_model(t / "model.pt", model.eval(), train_config={"patch": 64})
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}

        def run(code: str, out: str, n: int) -> float:
            done = subprocess.run([sys.executable, "-c", code, str(t / "model.pt"), image, out, str(n)],
                                  capture_output=True, text=True, env=env, check=True)  # fmt: skip
            return float(done.stdout.strip().splitlines()[-1])

        rows = []
        base = run(SINGLE, str(t / "single.zarr"), cores)
        print(f"one process, {cores} threads: {base:.1f} s", file=sys.stderr)
        ref = np.asarray(open_volume(t / "single.zarr")[...])
        rows.append((f"one process, {cores} torch threads", base, True))
        for n in args.workers:
            secs = run(DASK, str(t / f"dask{n}.zarr"), n)
            same = bool(np.array_equal(np.asarray(open_volume(t / f"dask{n}.zarr")[...]), ref))
            rows.append((f"Dask LocalCluster, {n} worker(s) x 1 thread", secs, same))
            print(f"{n} workers: {secs:.1f} s, equal: {same}", file=sys.stderr)
    one = next(s for name, s, _ in rows if "1 worker" in name)
    lines = [
        BEGIN,
        "## Blockwise prediction on a Dask cluster",
        "",
        f"Made by `python benchmarks/dask_scaling.py --shape {' '.join(map(str, args.shape))} "
        f"--workers {' '.join(map(str, args.workers))}` on {platform.machine()}, {cores} cores, torch {torch.__version__}.",
        "",
        f"The paper's network (random weights), 64^3 windows, overlap 0.5, on a {'x'.join(map(str, args.shape))} phantom case (Zarr). "
        "Blocks: about 4 per worker along z, each with a halo of half a window.",
        "",
        "| run | seconds | vs 1 worker | equal to one process |",
        "|---|---|---|---|",
        *(
            f"| {name} | {s:.1f} | {one / s:.2f}x | {'yes' if same else 'NO'} |"
            for name, s, same in rows
        ),
        "",
        f"On {cores} cores; with 2 cores, 2 single-threaded workers can at most double 1 worker's speed, "
        "and one process already uses both cores through torch's threads.",
        END,
    ]
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    old = out.read_text() if out.exists() else ""
    if BEGIN in old:
        old = old[: old.index(BEGIN)] + old[old.index(END) + len(END) :].lstrip("\n")
    out.write_text(old.rstrip("\n") + "\n\n" + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
