"""Where the time of one ``meunet predict`` goes, and why the GPU waits.

Runs the first row of ``inference_gpu.md`` (the paper's U-net with random
weights, 128^3 windows, overlap 0.5, default precision, the paper-scale
phantom case as Zarr) once under ``torch.profiler`` and writes a table:

- **device busy**: the share of the prediction during which the device ran a
  kernel, a copy or a memset (exact, from the trace; ``nvidia-smi``'s busy is
  a coarser sample of the same);
- **host seconds by phase**: the engine's named ranges (``meunet.stats``,
  ``meunet.read-wait``, ``meunet.forward``, ...; see
  :func:`meunet.inference.engine.phase`), innermost first; "other" is the
  rest of ``predict_volume`` (the model to the device, the output's signature);
- **device idle seconds by phase** (on a GPU): for every gap between the
  device's activities, what the host was doing meanwhile. Idle during
  ``forward`` means kernels are launched slower than they run; during
  ``read-wait``, the reader is behind; during ``stats``, the statistics pass
  that precedes the first window; during ``first-forward``, the device's
  kernels being loaded and chosen;
- the kernels that took the most device time.

    .venv/bin/python benchmarks/profile_predict.py --device cuda           # profile_predict.md
    .venv/bin/python benchmarks/profile_predict.py --shape 192 470 470     # a slab, on a CPU

Run by ``benchmarks/gpu_inference.sh`` after the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

Interval = tuple[float, float]
RESULTS = Path(__file__).resolve().parent / "results"
DEVICE_CATEGORIES = {"kernel", "gpu_memcpy", "gpu_memset"}


def union(intervals: Iterable[Interval]) -> list[Interval]:
    """Sorted, disjoint intervals covering the same time as ``intervals``."""
    out: list[list[float]] = []
    for s, e in sorted(intervals):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


def gaps(busy: Sequence[Interval], span: Interval) -> list[Interval]:
    """The parts of ``span`` not covered by the sorted, disjoint ``busy`` intervals."""
    out, t = [], span[0]
    for s, e in busy:
        if s > t:
            out.append((t, min(s, span[1])))
        t = max(t, e)
        if t >= span[1]:
            break
    if t < span[1]:
        out.append((t, span[1]))
    return [(s, e) for s, e in out if e > s]


def innermost(ranges: Sequence[tuple[str, float, float]]) -> list[tuple[str, float, float]]:
    """Nested named ranges split into disjoint pieces, each named by the innermost range there."""
    marks = []
    for i, (_, s, e) in enumerate(ranges):
        marks += [(s, 1, -e, i), (e, 0, 0.0, i)]  # ends before starts; outer before inner
    marks.sort()
    stack: list[int] = []
    out: list[tuple[str, float, float]] = []
    last = None
    for t, start, _, i in marks:
        if stack and last is not None and t > last:
            out.append((ranges[stack[-1]][0], last, t))
        if start:
            stack.append(i)
        else:
            stack.remove(i)
        last = t
    return out


def seconds_by_name(
    pieces: Sequence[tuple[str, float, float]], within: Sequence[Interval]
) -> dict[str, float]:
    """How much of ``within`` (sorted, disjoint) falls in each named piece (sorted, disjoint)."""
    totals: dict[str, float] = defaultdict(float)
    j = 0
    for s, e in within:
        covered = 0.0
        while j < len(pieces) and pieces[j][2] <= s:
            j += 1
        k = j
        while k < len(pieces) and pieces[k][1] < e:
            name, ps, pe = pieces[k]
            overlap = min(e, pe) - max(s, ps)
            if overlap > 0:
                totals[name] += overlap
                covered += overlap
            k += 1
        totals["outside predict"] += (e - s) - covered
    return {k: v for k, v in totals.items() if v > 0}


def analyse(trace: dict) -> dict:
    """Busy share, host and device-idle time by phase, and top kernels, of a Chrome trace (µs)."""
    events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X"]
    ranges = [(e["name"].removeprefix("meunet."), e["ts"], e["ts"] + e["dur"])
              for e in events if e.get("cat") == "user_annotation" and e["name"].startswith("meunet.")]  # fmt: skip
    outer = [r for r in ranges if r[0] == "predict"]
    if not outer:
        raise SystemExit("no meunet.predict range in the trace")
    span = (outer[0][1], outer[0][2])
    pieces = innermost([("other" if n == "predict" else n, s, e) for n, s, e in ranges])
    device = [(e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") in DEVICE_CATEGORIES]
    busy = union(
        (max(s, span[0]), min(e, span[1])) for s, e in device if e > span[0] and s < span[1]
    )
    kernels: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for e in events:
        if e.get("cat") in DEVICE_CATEGORIES:
            kernels[e["name"]][0] += e["dur"]
            kernels[e["name"]][1] += 1
    seconds = (span[1] - span[0]) / 1e6
    return {
        "seconds": seconds,
        "device_events": len(device),
        "busy": sum(e - s for s, e in busy) / 1e6 / seconds if device else None,
        "host": {k: v / 1e6 for k, v in seconds_by_name(pieces, [span]).items()},
        "idle": {k: v / 1e6 for k, v in seconds_by_name(pieces, gaps(busy, span)).items()} if device else {},
        "kernels": sorted(((n, t / 1e6, c) for n, (t, c) in kernels.items()), key=lambda k: -k[1])[:12],
    }  # fmt: skip


def report(result: dict, setup: str) -> list[str]:
    lines = ["# Where one `meunet predict` spends its time", "", setup, ""]
    busy = result["busy"]
    lines += [
        f"Prediction: {result['seconds']:.2f} s; device busy "
        + ("n/a (no device activity in the trace: a CPU run)" if busy is None else f"{busy:.0%}")
        + ".",
        "",
        "| phase | host s | share | device idle s |",
        "|---|---|---|---|",
    ]
    total = result["seconds"]
    for name, s in sorted(result["host"].items(), key=lambda kv: -kv[1]):
        idle = result["idle"].get(name)
        lines.append(
            f"| {name} | {s:.2f} | {s / total:.0%} | {'n/a' if busy is None else f'{idle or 0:.2f}'} |"
        )
    if result["kernels"]:
        lines += ["", "| device activity | s | count |", "|---|---|---|"]
        lines += [f"| `{n[:90]}` | {t:.3f} | {c} |" for n, t, c in result["kernels"]]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument(
        "--shape", type=int, nargs=3, default=(1072, 470, 470), metavar=("Z", "Y", "X")
    )
    parser.add_argument("--window", type=int, default=128)
    parser.add_argument("--batch", default="2", help="windows per forward pass, or auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--out", type=Path, default=RESULTS / "profile_predict.md")
    args = parser.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from inference import _ensure_data  # the same phantom case as the inference tables
    from meunet.data.io import open_volume
    from meunet.device import device_name
    from meunet.inference.stream import predict_volume
    from meunet.models import create_model

    image, _ = _ensure_data(tuple(args.shape))
    vol = open_volume(image)
    cuda = args.device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    if cuda:
        torch.zeros(1, device=args.device)  # the CUDA context, outside the profile
    batch = args.batch if args.batch == "auto" else int(args.batch)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "labels.zarr"
        t0 = time.perf_counter()
        with profile(activities=activities) as prof, record_function("meunet.predict"):
            model = create_model("unet")
            predict_volume(model, [vol], out, args.window, batch_size=batch, device=args.device,
                           progress=False, precision=args.precision)  # fmt: skip
            if cuda:
                torch.cuda.synchronize()
        wall = time.perf_counter() - t0
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        result = analyse(json.loads(trace.read_text()))
    card = device_name(args.device) + ("" if cuda else f", {torch.get_num_threads()} threads")
    shape = " x ".join(map(str, args.shape))
    setup = (
        f"Made by `python benchmarks/profile_predict.py --device {args.device} --batch {args.batch}` on "
        f"{card}, torch {torch.__version__}: the paper's U-net (random weights), {args.window}^3 windows, "
        f"overlap 0.5, precision {args.precision}, the phantom case of {shape} voxels (uint16, Zarr). "
        f"{wall:.1f} s under the profiler (which slows the host). Host: time on the calling thread by the "
        "innermost engine phase; device idle: the gaps between the device's activities, by what the "
        "calling thread was doing meanwhile."
    )  # fmt: skip
    lines = report(result, setup)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
