"""HDF5 volumes: ``file.h5:/path/to/dataset``.

Voxel size is read from the dataset attribute ``spacing`` (z, y, x), or
``element_size_um`` (the ilastik / Fiji convention, also z, y, x); without
either it is 1, marked unknown. Segment names and an assumed spacing are
the attributes ``segments`` (JSON text) and ``spacing_known`` (false).
"""

from __future__ import annotations

import json
from typing import Any

import h5py
import numpy as np

from meunet.data.io.atomic import atomic_path
from meunet.data.io.sidecar import as_segments
from meunet.data.volume import Slices, Spacing, Volume, as_spacing, slab_depth
from meunet.errors import VolumeError

DEFAULT_DATASET = "volume"


def _volumes_in(f: h5py.File) -> list[str]:
    names: list[str] = []
    f.visititems(
        lambda name, obj: (
            names.append(name) if isinstance(obj, h5py.Dataset) and obj.ndim >= 3 else None
        )
    )
    return names


def read(path: str) -> Volume:
    """Open one dataset of an HDF5 file lazily (h5py reads only the hyperslab)."""
    from meunet.data.io import split_hdf5_path

    file_path, name = split_hdf5_path(path)
    name = name.strip("/") if name else None
    f = h5py.File(file_path, "r")
    try:
        if name is None:
            found = _volumes_in(f)
            if len(found) != 1:
                raise VolumeError(
                    f"{file_path}: holds {len(found)} volumes {found[:5]}; "
                    f"name one as {file_path}:/DATASET"
                )
            name = found[0]
        if name not in f or not isinstance(f[name], h5py.Dataset):
            raise VolumeError(
                f"{file_path}: no dataset {name!r}; it holds {_volumes_in(f)[:5]}: "
                f"name one as {file_path}:/DATASET"
            )
        ds = f[name]
        if ds.ndim != 3:
            raise VolumeError(f"{path}: dataset has shape {ds.shape}; meunet reads 3D volumes")
        attrs = dict(ds.attrs)
        spacing = as_spacing(attrs.get("spacing", attrs.get("element_size_um", (1, 1, 1))), path)
        known = "spacing" in attrs or "element_size_um" in attrs
        known = known and bool(attrs.get("spacing_known", True))
        segments = as_segments(json.loads(attrs["segments"]) if "segments" in attrs else None, path)
        o = attrs.get("origin", (0.0, 0.0, 0.0))
    except BaseException:
        f.close()
        raise

    def read_crop(slices: Slices) -> np.ndarray:
        return ds[slices]

    return Volume(
        path=f"{file_path}:/{name.lstrip('/')}",
        shape=(ds.shape[0], ds.shape[1], ds.shape[2]),
        dtype=ds.dtype,
        spacing=spacing,
        spacing_known=known,
        origin=(float(o[0]), float(o[1]), float(o[2])),
        read_crop=read_crop,
        format="hdf5",
        meta={"chunks": ds.chunks, "segments": segments},
        close=f.close,
    )


def write(
    path: str,
    data: np.ndarray | Volume,
    spacing: Spacing,
    origin: Spacing,
    chunks: tuple[int, int, int] | bool | None = True,
    compression: str | None = None,
    segments: Any = None,
    spacing_known: bool = True,
) -> None:
    """Write one dataset, slab by slab. An existing file gets the dataset added or replaced."""
    import os
    import shutil

    from meunet.data.io import split_hdf5_path

    file_path, name = split_hdf5_path(path)
    name = name or DEFAULT_DATASET
    with atomic_path(file_path) as tmp:
        if os.path.exists(file_path):
            shutil.copyfile(file_path, tmp)
        with h5py.File(tmp, "a") as f:
            if name in f:
                del f[name]
            if chunks is True:
                chunks = tuple(min(64, n) for n in data.shape)
            ds = f.create_dataset(
                name,
                shape=data.shape,
                dtype=data.dtype,
                chunks=chunks or None,
                compression=compression,
            )
            ds.attrs["spacing"] = np.asarray(as_spacing(spacing, path))
            ds.attrs["origin"] = np.asarray(origin, dtype=float)
            ds.attrs["meunet"] = "written by meunet"  # ownership: meunet may replace it
            if segments:  # JSON text: HDF5 attributes hold no list of mappings
                ds.attrs["segments"] = json.dumps(as_segments(segments, path))
            if not spacing_known:
                ds.attrs["spacing_known"] = False
            depth = slab_depth(data.shape, data.dtype)
            for z0 in range(0, data.shape[0], depth):
                ds[z0 : z0 + depth] = np.asarray(data[z0 : z0 + depth])
