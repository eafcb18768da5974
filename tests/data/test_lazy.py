"""A 64^3 crop of a 2 GiB volume reads the crop, not the volume.

Each volume is written once per module; the crop is read in a fresh
subprocess. The subprocess first evicts the volume's files from the page
cache (fsync, then ``posix_fadvise(DONTNEED)``), reads the crop, and reports:
the bytes of the files that are in the page cache afterwards (what the read
brought in from disk, read-ahead included, whether through ``read()`` or a
memory map: counted with ``mincore``), the bytes that went through ``read()``
calls (``rchar``), the anonymous memory gained (``RssAnon``) and the peak
allocated by Python and NumPy (tracemalloc).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from meunet.data.io import open_volume, write_volume

SHAPE = (512, 1024, 1024)  # float32: 2 GiB
CROP = np.s_[200:264, 500:564, 300:364]  # 64^3, not aligned with the 64^3 chunks
BOUND = 64 << 20  # what a crop may cost, against 2 GiB for the volume

PROBE = r"""
import ctypes, json, mmap, os, sys, tracemalloc
import numpy as np
from meunet.data.io import open_volume

libc = ctypes.CDLL(None, use_errno=True)
PAGE = os.sysconf("SC_PAGE_SIZE")
root = sys.argv[1]
files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs] if os.path.isdir(root) else [root]

def evict():
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)

def cached_bytes():
    total = 0
    for path in files:
        size = os.path.getsize(path)
        if size == 0:
            continue
        with open(path, "rb") as f:
            m = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)
        pages = (size + PAGE - 1) // PAGE
        vec = (ctypes.c_ubyte * pages)()
        addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
        if libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(size), vec) != 0:
            raise OSError(ctypes.get_errno(), "mincore failed")
        total += sum(v & 1 for v in vec) * PAGE
        del addr
        m.close()
    return total

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

def rchar():
    for line in open("/proc/self/io"):
        if line.startswith("rchar:"):
            return int(line.split()[1])

vol = open_volume(root)
evict()
before = (rchar(), status("RssAnon"), cached_bytes())
tracemalloc.start()
crop = vol[200:264, 500:564, 300:364]
peak = tracemalloc.get_traced_memory()[1]
after = (rchar(), status("RssAnon"), cached_bytes())
print(json.dumps({
    "read": after[0] - before[0], "anon": after[1] - before[1], "cached_before": before[2],
    "from_disk": after[2] - before[2], "traced_peak": peak, "shape": crop.shape,
    "sum": float(crop.sum(dtype=np.float64)),
}))
"""


def _slab(z0: int, z1: int) -> np.ndarray:
    """Slab of a cheap, position-dependent pattern (so a crop can be verified)."""
    z = np.arange(z0, z1, dtype=np.float32)[:, None, None]
    y = np.arange(SHAPE[1], dtype=np.float32)[None, :, None]
    x = np.arange(SHAPE[2], dtype=np.float32)[None, None, :]
    return z * 1e-3 + y * 1e-6 + x * 1e-9 * 0 + (x % 7)


class _Pattern:
    """A lazy 2 GiB float32 source that never exists in memory as a whole."""

    shape, dtype, ndim = SHAPE, np.dtype("float32"), 3
    nbytes = int(np.prod(SHAPE)) * 4

    def __getitem__(self, key: slice) -> np.ndarray:
        return _slab(key.start, min(key.stop, SHAPE[0]))


@pytest.fixture(scope="module")
def big_volumes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("big")
    free = shutil.disk_usage(root).free
    if free < 10 << 30:
        pytest.skip(f"needs ~9 GiB of free disk for four 2 GiB volumes, {free >> 30} GiB free")
    paths = {
        "zarr": root / "v.zarr",
        "hdf5": root / "v.h5",
        "numpy": root / "v.npy",
        "tiff": root / "v.tif",
    }
    source = _Pattern()
    write_volume(
        paths["zarr"], source, compressors=None
    )  # raw chunks: bytes on disk = bytes of data
    write_volume(paths["hdf5"], source)
    write_volume(paths["numpy"], source)
    write_volume(paths["tiff"], source)
    return paths


@pytest.mark.parametrize("fmt", ["zarr", "hdf5", "numpy", "tiff"])
def test_crop_of_2gib_volume_reads_only_the_crop(big_volumes: dict[str, Path], fmt: str) -> None:
    path = big_volumes[fmt]
    vol = open_volume(path)
    assert vol.nbytes == 2 << 30
    if fmt == "tiff":
        assert vol.meta["memmap"], "an uncompressed multi-page TIFF must be memory-mapped"
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True, check=True
    )
    m = json.loads(out.stdout)
    assert tuple(m["shape"]) == (64, 64, 64)
    expected = _slab(200, 264)[:, 500:564, 300:364]
    assert m["sum"] == pytest.approx(float(expected.sum(dtype=np.float64)), rel=1e-6)
    print(
        f"{fmt}: from disk {m['from_disk'] >> 10} KiB, read() {m['read'] >> 10} KiB, "
        f"anon {m['anon'] >> 10} KiB, traced peak {m['traced_peak'] >> 10} KiB"
    )
    assert m["cached_before"] < BOUND, "the page cache was not emptied: the measure would be void"
    assert m["from_disk"] < BOUND, f"{fmt}: the crop read {m['from_disk'] >> 20} MiB of 2048 MiB"
    assert m["read"] < BOUND, f"{fmt}: the crop read() {m['read'] >> 20} MiB of 2048 MiB"
    assert m["anon"] < BOUND and m["traced_peak"] < BOUND
