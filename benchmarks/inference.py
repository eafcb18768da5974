"""Sliding-window inference on the paper-scale phantom: meunet's streaming predictor vs MONAI.

Each run is a fresh process; its peak RSS (``ru_maxrss``) and wall time are
recorded. Same model (a 1x1x1 convolution, so that stitching dominates, as
in the issue's MONAI reference), same window (160^3), overlap 0.5, windows
per batch 2, on the 1072 x 470 x 470 phantom case stored as Zarr. MONAI
needs the whole input and its float outputs in memory; meunet streams.
A last run uses the paper's network with 128^3 windows on a 192-slice slab of
the same case (the memory of the streaming predictor depends on the y, x
extent and the window, not on the depth).

    .venv/bin/pip install -e '.[bench]'     # MONAI, for the comparison
    .venv/bin/python benchmarks/inference.py [--device cpu|cuda] [--skip-monai]

Writes ``benchmarks/results/inference.md`` (``inference_gpu.md`` on CUDA).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
DATA = Path(__file__).resolve().parents[1] / "runs" / "bench" / "paper-phantom"

CHILD = r"""
import json, resource, sys, time
import numpy as np, torch
from torch import nn
from meunet.data.io import open_volume
from meunet.models import UNetConfig, create_model

kind, path, out, window, device = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]

class Pointwise(nn.Module):
    cfg = UNetConfig(in_channels=1, num_classes=3)
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv3d(1, 3, 1)
    def forward(self, x, extra=None):
        return self.conv(x)

vol = open_volume(path)
t0 = time.perf_counter()
if kind.startswith("meunet"):
    from meunet.inference.stream import predict_volume
    model = create_model("unet") if kind == "meunet-paper" else Pointwise()
    fusion = "prob" if kind == "meunet-prob" else "vote"
    predict_volume(model, [vol], out, window, fusion=fusion, batch_size=2, device=device, progress=False)
else:
    from monai.inferers import sliding_window_inference
    from meunet.data.sampling import channel_stats
    mean, std = channel_stats(vol)
    image = torch.from_numpy(((vol[...].astype(np.float32) - mean) / std)[None, None])
    model = Pointwise().to(device).eval()
    mode = kind.split("-")[1]
    with torch.no_grad():
        logits = sliding_window_inference(image, (window,) * 3, 2, model, overlap=0.5, mode=mode, sw_device=device, device="cpu")
    labels = logits.argmax(1)[0].numpy().astype(np.uint8)
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "voxels": vol.size}))
"""


def _ensure_data(progress: bool = True) -> tuple[Path, Path]:
    from meunet.data.io import open_volume, write_volume
    from meunet.data.phantom import make_phantom_dataset

    image = DATA / "case_000" / "image.zarr"
    if not image.exists():
        make_phantom_dataset(DATA, cases=1, shape=(1072, 470, 470), seed=0, progress=progress)
    slab = DATA / "slab192.zarr"
    if not slab.exists():
        vol = open_volume(image)
        write_volume(slab, vol[:192], spacing=vol.spacing)
    return image, slab


def run(kind: str, path: Path, window: int, device: str) -> dict:
    out = DATA / f"pred-{kind}.zarr"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, kind, str(path), str(out), str(window), device],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{proc.stderr[-3000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    r["kind"] = kind
    print(
        f"{kind}: {r['seconds']:.0f} s, peak RSS {r['rss'] / 2**30:.2f} GiB",
        file=sys.stderr,
        flush=True,
    )
    return r


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--skip-monai", action="store_true", help="only meunet (MONAI not installed)"
    )
    args = parser.parse_args()
    image, slab = _ensure_data()
    runs = [
        run("meunet-vote", image, 160, args.device),
        run("meunet-prob", image, 160, args.device),
    ]
    if not args.skip_monai:
        runs += [
            run("monai-constant", image, 160, args.device),
            run("monai-gaussian", image, 160, args.device),
        ]
    runs.append(run("meunet-paper", slab, 128, args.device))
    import torch

    device = (
        torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    )
    lines = [
        "# Sliding-window inference at paper scale",
        "",
        f"Made by `python benchmarks/inference.py{' --device ' + args.device if args.device != 'cpu' else ''}` on {device}, torch {torch.__version__}.",
        "",
        "Volume: the paper-scale phantom case (1072 x 470 x 470 voxels, uint16, Zarr). Model: a 1x1x1 convolution "
        "(1 -> 3 classes), so that the cost is the sliding window and its stitching. Window 160^3, overlap 0.5, "
        "2 windows per batch. Peak RSS of the whole process (Python and torch included).",
        "",
        "| predictor | fusion | peak RSS GiB | seconds | voxels / s |",
        "|---|---|---|---|---|",
    ]
    labels = {
        "meunet-vote": ("meunet predict (streaming)", "centre-weighted votes"),
        "meunet-prob": ("meunet predict (streaming)", "centre-weighted probabilities"),
        "monai-constant": ("MONAI sliding_window_inference", "constant"),
        "monai-gaussian": ("MONAI sliding_window_inference", "gaussian"),
    }
    for r in runs[:-1]:
        name, fusion = labels[r["kind"]]
        lines.append(
            f"| {name} | {fusion} | {r['rss'] / 2**30:.2f} | {r['seconds']:.0f} | {r['voxels'] / r['seconds'] / 1e6:.2f} M |"
        )
    paper = runs[-1]
    lines += [
        "",
        f"The paper's network (5 levels, 2.5 M parameters), 128^3 windows, on a 192 x 470 x 470 slab of the same case: "
        f"peak RSS {paper['rss'] / 2**30:.2f} GiB, {paper['seconds']:.0f} s ({paper['voxels'] / paper['seconds'] / 1e6:.3f} M voxels/s).",
    ]
    if not args.skip_monai:
        m, c = runs[0], next(r for r in runs if r["kind"] == "monai-constant")
        lines += [
            "",
            f"meunet (votes) against MONAI (constant): {m['rss'] / c['rss']:.2f}x the peak memory, "
            f"{c['seconds'] / m['seconds']:.2f}x the speed (target: at most 0.5x the memory, at least 1x the speed).",
        ]
    text = "\n".join(lines) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / ("inference.md" if args.device == "cpu" else "inference_gpu.md")).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
