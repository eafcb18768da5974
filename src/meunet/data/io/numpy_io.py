"""NumPy ``.npy`` volumes, memory-mapped.

A ``.npy`` file holds no voxel size: it is kept in a sidecar ``x.npy.json``
(``{"spacing": [z, y, x], "origin": [z, y, x]}``) when written by meunet, and
is 1 otherwise, marked unknown (set ``spacing:`` in dataset.yaml).
"""

from __future__ import annotations

import json
import os

import numpy as np

from meunet.data.io.atomic import atomic_path
from meunet.data.volume import Spacing, Volume, as_spacing, memmap_reader, slab_depth
from meunet.errors import VolumeError


def _sidecar(path: str) -> str:
    return path + ".json"


def read(path: str) -> Volume:
    """Open a ``.npy`` file as a memory map (reads only the pages a crop touches)."""
    arr = np.load(path, mmap_mode="r", allow_pickle=False)
    if arr.ndim != 3:
        raise VolumeError(f"{path}: array has shape {arr.shape}; meunet reads 3D volumes")
    spacing: Spacing = (1.0, 1.0, 1.0)
    origin: Spacing = (0.0, 0.0, 0.0)
    known = False
    if os.path.exists(_sidecar(path)):
        with open(_sidecar(path)) as f:
            side = json.load(f)
        known = "spacing" in side
        spacing = as_spacing(side.get("spacing", spacing), _sidecar(path))
        o = side.get("origin", origin)
        origin = (float(o[0]), float(o[1]), float(o[2]))

    return Volume(
        path=path,
        shape=(arr.shape[0], arr.shape[1], arr.shape[2]),
        dtype=arr.dtype,
        spacing=spacing,
        spacing_known=known,
        origin=origin,
        read_crop=memmap_reader(arr),
        format="numpy",
    )


def write(path: str, data: np.ndarray | Volume, spacing: Spacing, origin: Spacing) -> None:
    """Write slab by slab into a memory-mapped ``.npy``, plus the spacing sidecar."""
    with atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=data.dtype, shape=tuple(data.shape))
        depth = slab_depth(data.shape, data.dtype)
        for z0 in range(0, data.shape[0], depth):
            out[z0 : z0 + depth] = data[z0 : z0 + depth]
        out.flush()
        del out
    side = {"spacing": list(as_spacing(spacing, path)), "origin": [float(v) for v in origin]}
    with atomic_path(_sidecar(path)) as tmp:
        with open(tmp, "w") as f:
            json.dump(side, f)
