"""Sliding-window inference on the paper-scale phantom: meunet's streaming predictor vs MONAI.

Each run is a fresh process; its wall time and peak RSS (``ru_maxrss``) are
recorded, and on a GPU its peak GPU memory and the fraction of the run the
GPU was busy (``nvidia-smi`` sampled every 100 ms, else
``torch.cuda.utilization``). The volume is the 1072 x 470 x 470 phantom case
stored as Zarr; overlap 0.5.

On a CPU (``inference.md``): a 1x1x1 convolution with 160^3 windows, 2 per
batch, so that stitching dominates, as in the issue's MONAI reference; MONAI
needs the whole input and its float outputs in memory, meunet streams. A
last run uses the paper's network with 128^3 windows on a 192-slice slab of
the same case (the memory of the streaming predictor depends on the y, x
extent and the window, not on the depth).

On a GPU (``inference_gpu.md``, ``--device cuda``): the paper's U-net
(random weights), 128^3 windows, on the whole case: meunet in its default
precision (bf16 autocast) with 2 windows per batch and with ``batch_size
"auto"``, meunet in fp32, and MONAI's ``sliding_window_inference`` (input in
RAM, output on the GPU) in fp32 and under fp16 autocast, 2 windows per batch.
``--paper-table`` runs that table on a CPU too.

    .venv/bin/pip install -e '.[bench]'     # MONAI, for the comparison
    .venv/bin/python benchmarks/inference.py [--device cpu|cuda] [--skip-monai]
    bash benchmarks/gpu_inference.sh        # the GPU table, on a machine with a CUDA GPU

``--shape Z Y X`` and ``--window`` make a smaller case (a quick check of the
script), ``--out`` writes the table elsewhere.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
BENCH = Path(__file__).resolve().parents[1] / "runs" / "bench"
PAPER_SHAPE = (1072, 470, 470)

CHILD = r"""
import json, resource, subprocess, sys, threading, time
import numpy as np, torch
from torch import nn
from meunet.data.io import open_volume
from meunet.models import UNetConfig, create_model

kind, path, out, window, device, batch, precision = sys.argv[1:8]
window = int(window)
batch = batch if batch == "auto" else int(batch)
cuda = device.startswith("cuda")


class Pointwise(nn.Module):
    cfg = UNetConfig(in_channels=1, num_classes=3)
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv3d(1, 3, 1)
    def forward(self, x, extra=None):
        return self.conv(x)


class GpuSampler:
    # GPU busy fraction and memory in use, sampled in the background; None where unavailable
    def __init__(self):
        self.util, self.mem, self.proc, self.how = [], [], None, None
        self.stop = threading.Event()
        if not cuda:
            return
        try:
            self.proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                 "--format=csv,noheader,nounits", "-lms", "100"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self.how = "nvidia-smi, every 100 ms"
            self.thread = threading.Thread(target=self._smi, daemon=True)
        except OSError:
            self.how = "torch.cuda.utilization, every 100 ms"
            self.thread = threading.Thread(target=self._torch, daemon=True)
        self.thread.start()

    def _smi(self):
        for line in self.proc.stdout:
            try:
                u, m = (float(v) for v in line.split(",")[:2])
            except ValueError:
                continue
            self.util.append(u)
            self.mem.append(m)

    def _torch(self):
        while not self.stop.wait(0.1):
            try:
                self.util.append(float(torch.cuda.utilization()))
            except Exception:
                self.how = None
                return

    def finish(self):
        self.stop.set()
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()
        if self.how is None or not self.util:
            return None, None, None
        return sum(self.util) / len(self.util) / 100, (max(self.mem) * 2**20 if self.mem else None), self.how


vol = open_volume(path)
if cuda:
    torch.zeros(1, device=device)  # the CUDA context, for every predictor alike
    torch.cuda.reset_peak_memory_stats()
sampler = GpuSampler()
t0 = time.perf_counter()
if kind.startswith("meunet"):
    from meunet.inference.stream import predict_volume
    model = create_model("unet") if kind == "meunet-paper" else Pointwise()
    fusion = "prob" if kind == "meunet-prob" else "vote"
    predict_volume(model, [vol], out, window, fusion=fusion, batch_size=batch, device=device,
                   progress=False, precision=precision)
else:
    from monai.inferers import sliding_window_inference
    from meunet.data.sampling import channel_stats
    mean, std = channel_stats(vol)
    image = torch.from_numpy(((vol[...].astype(np.float32) - mean) / std)[None, None])
    model = (create_model("unet") if kind.startswith("monai-paper") else Pointwise()).to(device).eval()
    mode = "constant" if kind.startswith("monai-paper") else kind.split("-")[1]
    amp = torch.autocast(torch.device(device).type, dtype=torch.float16, enabled=precision == "fp16")
    with torch.no_grad(), amp:
        logits = sliding_window_inference(image, (window,) * 3, batch, model, overlap=0.5, mode=mode,
                                          sw_device=device, device=device if cuda else "cpu")
    labels = logits.argmax(1)[0].to(torch.uint8).cpu().numpy()
if cuda:
    torch.cuda.synchronize()
seconds = time.perf_counter() - t0
busy, smi_peak, how = sampler.finish()
result = {"seconds": seconds, "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
          "voxels": vol.size, "busy": busy, "smi_peak": smi_peak, "sampled_with": how}
if cuda:
    result["gpu_peak"] = torch.cuda.max_memory_allocated()
    result["card"] = torch.cuda.get_device_name()
print(json.dumps(result))
"""


def _ensure_data(shape: tuple[int, int, int], progress: bool = True) -> tuple[Path, Path]:
    """The phantom case of ``shape`` as Zarr, and a slab of its first 192 slices."""
    from meunet.data.io import open_volume, write_volume
    from meunet.data.phantom import make_phantom_dataset

    name = "paper-phantom" if shape == PAPER_SHAPE else "phantom-{}x{}x{}".format(*shape)
    data = BENCH / name
    image = data / "case_000" / "image.zarr"
    if not image.exists():
        make_phantom_dataset(data, cases=1, shape=shape, seed=0, progress=progress)
    slab = data / "slab192.zarr"
    if not slab.exists():
        vol = open_volume(image)
        write_volume(slab, vol[:192], spacing=vol.spacing)
    return image, slab


def run(kind: str, path: Path, window: int, device: str, batch: str = "2",
        precision: str = "auto", tag: str = "") -> dict:  # fmt: skip
    """One predictor in a fresh process: its seconds, peak RSS and (on a GPU) memory and busy time."""
    out = path.parent / f"pred-{kind}{tag}.zarr"
    argv = [kind, str(path), str(out), str(window), device, batch, precision]
    proc = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{proc.stderr[-3000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    r.update(kind=kind, batch=batch, precision=precision)
    extra = ""
    if "gpu_peak" in r:
        busy = "n/a" if r["busy"] is None else f"{r['busy']:.0%}"
        extra = f", GPU peak {r['gpu_peak'] / 2**30:.2f} GiB, busy {busy}"
    print(f"{kind} {precision} batch {batch}: {r['seconds']:.1f} s, peak RSS "
          f"{r['rss'] / 2**30:.2f} GiB{extra}", file=sys.stderr, flush=True)  # fmt: skip
    return r


def _gib(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 2**30:.2f}"


def paper_table(args: argparse.Namespace, image: Path) -> list[str]:
    """The paper's U-net on the whole case: meunet's settings and MONAI's, one row each."""
    import torch

    w, dev = args.window or 128, args.device
    monai = not args.skip_monai and importlib.util.find_spec("monai") is not None
    # the rows that matter most first: a call cut short still printed them
    plan = [("meunet-paper", "2", "auto", ""), ("monai-paper", "2", "fp32", ""),
            ("meunet-paper", "auto", "auto", "-auto"), ("monai-paper-fp16", "2", "fp16", ""),
            ("meunet-paper", "2", "fp32", "-fp32")]  # fmt: skip
    runs = [
        run(k, image, w, dev, b, p, t) for k, b, p, t in plan if monai or k.startswith("meunet")
    ]
    first = runs[0]
    card = first.get("card") or f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    shape = " x ".join(str(n) for n in args.shape)
    flags = " ".join(f for f in (f"--device {dev}", "--paper-table" if dev == "cpu" else "",
                                 "--skip-monai" if args.skip_monai else "") if f)  # fmt: skip
    precision = {"auto": "bf16 autocast" if dev.startswith("cuda") else "fp32 (auto)",
                 "fp32": "fp32", "fp16": "fp16 autocast"}  # fmt: skip
    if dev.startswith("cuda") and not torch.cuda.is_bf16_supported():
        precision["auto"] = "fp16 autocast"
    lines = [
        "# Sliding-window inference at paper scale on one GPU" if dev.startswith("cuda")
        else "# Sliding-window inference at paper scale, the GPU table's settings on a CPU",
        "",
        f"Made by `python benchmarks/inference.py {flags}` on {card}, torch {torch.__version__}"
        + (" (by `bash benchmarks/gpu_inference.sh`)." if dev.startswith("cuda") else "."),
        "",
        f"Volume: the phantom case, {shape} voxels, uint16, Zarr. The paper's U-net (5 levels, random "
        f"weights), {w}^3 windows, overlap 0.5. Seconds from the opened volume to the labels (meunet: "
        "written to Zarr, the input's statistics included; MONAI: read and normalised into RAM, "
        "predicted to the GPU, argmax there, labels to the host). Host peak RSS of the whole process; "
        "GPU peak: `torch.cuda.max_memory_allocated`; GPU in use: nvidia-smi's peak (CUDA context "
        f"included); busy: the share of samples in which a kernel ran ({first.get('sampled_with') or 'not sampled'}).",
        "",
        "| predictor | precision | windows / batch | seconds | host peak RSS GiB | GPU peak GiB "
        "| GPU in use GiB | GPU busy |",
        "|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    names = {"meunet-paper": "meunet predict (streaming)",
             "monai-paper": "MONAI sliding_window_inference",
             "monai-paper-fp16": "MONAI sliding_window_inference"}  # fmt: skip
    for r in runs:
        busy = "n/a" if r.get("busy") is None else f"{r['busy']:.0%}"
        lines.append(
            f"| {names[r['kind']]} | {precision[r['precision']]} | {r['batch']} | {r['seconds']:.1f} "
            f"| {r['rss'] / 2**30:.2f} | {_gib(r.get('gpu_peak'))} | {_gib(r.get('smi_peak'))} | {busy} |"
        )
    if monai:
        m, c = runs[0], runs[1]
        lines += [
            "",
            f"meunet (default precision, 2 windows per batch) against MONAI fp32: "
            f"{m['seconds'] / c['seconds']:.2f}x the time, host RSS {m['rss'] / 2**30:.2f} GiB, "
            f"{_ratio(m.get('gpu_peak'), c.get('gpu_peak'))} the GPU memory (targets: at most 1.0x the "
            "time, 2 GiB of host RAM, 1x the GPU memory; GPU busy at least 70 %).",
        ]
    elif not args.skip_monai:
        lines += ["", "MONAI is not installed here (pip install monai): its rows are missing."]
    return lines


def _ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or not b else f"{a / b:.2f}x"


def cpu_table(args: argparse.Namespace, image: Path, slab: Path) -> list[str]:
    """The stitching-bound table (a 1x1x1 convolution, 160^3 windows) and the paper's network on a slab."""
    import torch

    w, dev = args.window or 160, args.device
    runs = [run("meunet-vote", image, w, dev), run("meunet-prob", image, w, dev)]
    if not args.skip_monai:
        runs += [run("monai-constant", image, w, dev), run("monai-gaussian", image, w, dev)]
    paper_window = 128 if not args.window else args.window
    runs.append(run("meunet-paper", slab, paper_window, dev))
    device = f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    depth = min(192, args.shape[0])
    lines = [
        "# Sliding-window inference at paper scale",
        "",
        f"Made by `python benchmarks/inference.py` on {device}, torch {torch.__version__}.",
        "",
        f"Volume: the paper-scale phantom case ({' x '.join(map(str, args.shape))} voxels, uint16, Zarr). "
        f"Model: a 1x1x1 convolution (1 -> 3 classes), so that the cost is the sliding window and its "
        f"stitching. Window {w}^3, overlap 0.5, 2 windows per batch. Peak RSS of the whole process "
        "(Python and torch included).",
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
        f"The paper's network (5 levels, 2.5 M parameters), {paper_window}^3 windows, on a {depth} x "
        f"{args.shape[1]} x {args.shape[2]} slab of the same case: peak RSS {paper['rss'] / 2**30:.2f} GiB, "
        f"{paper['seconds']:.0f} s ({paper['voxels'] / paper['seconds'] / 1e6:.3f} M voxels/s).",
    ]
    if not args.skip_monai:
        m, c = runs[0], next(r for r in runs if r["kind"] == "monai-constant")
        lines += [
            "",
            f"meunet (votes) against MONAI (constant): {m['rss'] / c['rss']:.2f}x the peak memory, "
            f"{c['seconds'] / m['seconds']:.2f}x the speed (target: at most 0.5x the memory, at least 1x the speed).",
        ]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument(
        "--skip-monai", action="store_true", help="only meunet (MONAI not installed)"
    )
    parser.add_argument("--paper-table", action="store_true",
                        help="on a CPU, the GPU table's runs (the paper's U-net on the whole case)")  # fmt: skip
    parser.add_argument("--shape", type=int, nargs=3, default=PAPER_SHAPE, metavar=("Z", "Y", "X"),
                        help="phantom size (default: the paper's 1072 470 470)")  # fmt: skip
    parser.add_argument("--window", type=int, default=0,
                        help="window side (default: 128 for the paper's U-net, 160 for the CPU table)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=None,
                        help="where the table goes (default: benchmarks/results/inference[_gpu].md)")  # fmt: skip
    args = parser.parse_args()
    args.shape = tuple(args.shape)
    image, slab = _ensure_data(args.shape)
    gpu = args.device.startswith("cuda")
    if gpu or args.paper_table:
        lines = paper_table(args, image)
    else:
        lines = cpu_table(args, image, slab)
    text = "\n".join(lines) + "\n"
    out = args.out or RESULTS / ("inference_gpu.md" if gpu else "inference.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
