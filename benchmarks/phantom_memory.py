"""Peak memory of writing one paper-scale phantom case (1072 x 470 x 470) to Zarr.

Runs ``meunet phantom --paper-scale`` in a child process, reads the child's
peak resident set size (``getrusage(RUSAGE_CHILDREN).ru_maxrss``) and its
wall time, verifies the written volume, prints a table and writes it to
``benchmarks/results/phantom_memory.md``.

    .venv/bin/python benchmarks/phantom_memory.py [--out DIR] [--keep]
"""

from __future__ import annotations

import argparse
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "phantom_memory.md"
LIMIT_GIB = 2.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="output folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the written case")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="meunet-paper-phantom-"))
    exe = Path(sys.executable).parent / "meunet"
    cmd = [str(exe), "phantom", "--out", str(out), "--paper-scale", "--seed", "0", "--quiet"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    seconds = time.perf_counter() - t0
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB on Linux

    from meunet.data.io import open_volume

    image = open_volume(out / "case_000" / "image.zarr")
    label = open_volume(out / "case_000" / "label.zarr")
    disk_gib = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**30
    rows = [
        ("command", "`" + " ".join(["meunet", *cmd[1:]]).replace(str(out), "OUT") + "`"),
        ("volume (z, y, x)", f"{image.shape}, image {image.dtype}, label {label.dtype}"),
        ("voxels", f"{image.size / 1e6:.0f} M ({image.nbytes / 2**30:.2f} GiB image uncompressed)"),
        ("peak RSS of the process", f"{peak_gib:.2f} GiB (limit {LIMIT_GIB:.0f} GiB)"),
        ("wall time", f"{seconds:.0f} s"),
        ("on disk (Zarr, zstd)", f"{disk_gib:.2f} GiB"),
        (
            "machine",
            f"{platform.machine()}, {shutil.os.cpu_count()} CPUs, Python {platform.python_version()}",
        ),
    ]
    table = "| measure | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
    text = f"# Paper-scale phantom case written to Zarr\n\nMade by `python benchmarks/phantom_memory.py`.\n\n{table}\n"
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    if not args.keep and args.out is None:
        shutil.rmtree(out)
    return 0 if peak_gib < LIMIT_GIB else 1


if __name__ == "__main__":
    sys.exit(main())
