"""TIFF volumes: one multi-page file, or a folder of 2D slices in natural sort order.

An uncompressed multi-page file is memory-mapped, so a crop reads only its
bytes; a compressed file or a folder of slices reads the whole 2D pages of the
z-range asked for. Voxel size comes from meunet's own JSON description
(``spacing`` in z, y, x), else from ImageJ's ``spacing`` and the X/Y
resolution tags, else it is 1; unless all three axes are stored the spacing
is marked unknown (``Volume.spacing_known``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from natsort import natsorted

from meunet.data.io.atomic import atomic_path
from meunet.data.io.ownership import make_folder, remove_owned
from meunet.data.volume import (
    Slices,
    Spacing,
    Volume,
    as_spacing,
    memmap_reader,
    slab_depth,
    slice_stack_reader,
)
from meunet.errors import VolumeError

TIFF_SUFFIXES = (".tif", ".tiff")


def _resolution_spacing(page: Any) -> tuple[float, float] | None:
    try:
        xn, xd = page.tags["XResolution"].value
        yn, yd = page.tags["YResolution"].value
    except KeyError:
        return None
    if xn <= 0 or yn <= 0 or (xn == xd == 1 and yn == yd == 1):
        return None
    return yd / yn, xd / xn


def _spacing_origin(tif: tifffile.TiffFile, path: str) -> tuple[Spacing, Spacing, bool]:
    """Spacing, origin, and whether the file stores the spacing of all three axes."""
    origin: Spacing = (0.0, 0.0, 0.0)
    shaped = tif.shaped_metadata[0] if tif.shaped_metadata else {}
    if "origin" in shaped:
        o = shaped["origin"]
        origin = (float(o[0]), float(o[1]), float(o[2]))
    if "spacing" in shaped and len(shaped["spacing"]) == 3:
        return as_spacing(shaped["spacing"], path), origin, True
    yx = _resolution_spacing(tif.pages[0])
    z = None
    if tif.imagej_metadata and "spacing" in tif.imagej_metadata:
        z = float(tif.imagej_metadata["spacing"])
    known = yx is not None and z is not None
    yx = yx or (1.0, 1.0)
    return as_spacing((z or 1.0, yx[0], yx[1]), path), origin, known


def _check_3d(shape: tuple[int, ...], path: str, axes: str = "") -> tuple[int, int, int]:
    squeezed = tuple(n for n in shape if n != 1) if len(shape) > 3 else shape
    if len(squeezed) == 2:
        squeezed = (1, *squeezed)
    if len(squeezed) != 3:
        raise VolumeError(
            f"{path}: TIFF holds an image of shape {shape} (axes {axes or '?'}); meunet reads "
            "single-channel 3D stacks: save one grey-level channel per file"
        )
    return (squeezed[0], squeezed[1], squeezed[2])


def read(path: str) -> Volume:
    """Open a multi-page TIFF file, or a folder of 2D TIFF slices."""
    if os.path.isdir(path):
        return _open_folder(path)
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        shape = _check_3d(tuple(series.shape), path, series.axes)
        dtype = np.dtype(series.dtype)
        spacing, origin, known = _spacing_origin(tif, path)
    try:
        mm = tifffile.memmap(path, mode="r")
        if mm.shape != shape:
            mm = mm.reshape(shape)
    except ValueError:  # compressed or scattered pages: read page by page
        mm = None

    def read_pages(slices: Slices) -> np.ndarray:
        pages = list(range(shape[0]))[slices[0]]
        data = tifffile.imread(path, key=pages).reshape(len(pages), shape[1], shape[2])
        return data[:, slices[1], slices[2]]

    return Volume(
        path=path,
        shape=shape,
        dtype=dtype,
        spacing=spacing,
        spacing_known=known,
        origin=origin,
        read_crop=memmap_reader(mm) if mm is not None else read_pages,
        format="tiff",
        meta={"memmap": mm is not None},
    )


def slice_files(folder: str) -> list[str]:
    """TIFF files of a folder in natural sort order (slice_2 before slice_10)."""
    names = [
        n for n in os.listdir(folder) if n.lower().endswith(TIFF_SUFFIXES) and not n.startswith(".")
    ]
    return [os.path.join(folder, n) for n in natsorted(names)]


def _page_header(path: str) -> tuple[tuple[int, ...], np.dtype]:
    with tifffile.TiffFile(path) as tif:
        return tuple(tif.series[0].shape), np.dtype(tif.series[0].dtype)


def _open_folder(folder: str) -> Volume:
    files = slice_files(folder)
    if not files:
        raise VolumeError(f"{folder}: folder holds no .tif/.tiff slices")
    with tifffile.TiffFile(files[0]) as tif:
        page_shape = tuple(tif.series[0].shape)
        dtype = np.dtype(tif.series[0].dtype)
        spacing, origin, known = _spacing_origin(tif, files[0])
    if len(page_shape) != 2:
        raise VolumeError(
            f"{files[0]}: slice has shape {page_shape}; a folder of slices needs 2D grey-level images"
        )
    read_crop = slice_stack_reader(folder, files, _page_header, tifffile.imread)

    return Volume(
        path=folder,
        shape=(len(files), page_shape[0], page_shape[1]),
        dtype=dtype,
        spacing=spacing,
        spacing_known=known,
        origin=origin,
        read_crop=read_crop,
        format="tiff",
        meta={"slices": len(files)},
    )


def write(
    path: str,
    data: np.ndarray | Volume,
    spacing: Spacing,
    origin: Spacing,
    compression: str | None = None,
) -> None:
    """Write a multi-page file (suffix .tif/.tiff) or a folder of slices (no suffix).

    Pages are written one slab at a time; uncompressed by default so that the
    file can be memory-mapped when read.
    """
    meta = {"spacing": list(spacing), "origin": [float(v) for v in origin], "axes": "ZYX"}
    resolution = (1.0 / spacing[2], 1.0 / spacing[1])
    depth = slab_depth(data.shape, data.dtype)

    def pages() -> Any:
        for z0 in range(0, data.shape[0], depth):
            yield from np.asarray(data[z0 : z0 + depth])

    if Path(path).suffix.lower() in TIFF_SUFFIXES:
        with atomic_path(path) as tmp:
            with tifffile.TiffWriter(tmp, bigtiff=data.nbytes > 2**31 - 2**25) as tw:
                tw.write(
                    pages(),
                    shape=tuple(data.shape),
                    dtype=data.dtype,
                    metadata=meta,
                    resolution=resolution,
                    compression=compression,
                    photometric="minisblack",  # else 3 or 4 slices are taken for RGB(A)
                )
        return
    # a folder of slices, built beside the target and renamed when complete;
    # only folders carrying meunet's marker are ever deleted (see ownership)
    path = path.rstrip("/") or path
    head, tail = os.path.split(path)
    tmp = os.path.join(head, f".{tail}.partial")
    remove_owned(tmp)
    make_folder(tmp, "write")
    width = max(4, len(str(data.shape[0] - 1)))
    for z, page in enumerate(pages()):
        tifffile.imwrite(
            os.path.join(tmp, f"slice_{z:0{width}d}.tif"),
            page,
            metadata={**meta, "axes": "YX"},
            resolution=resolution,
            compression=compression,
        )
    remove_owned(path)
    os.replace(tmp, path)
