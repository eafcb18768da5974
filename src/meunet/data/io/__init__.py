"""Open and write 3D volumes in the formats microCT and medical users have.

``open_volume(path)`` returns a lazy :class:`~meunet.data.volume.Volume` whose
slicing reads only the crop asked for; ``write_volume(path, data)`` writes an
array or a lazy volume, slab by slab where the format allows.

=============  =========================================  ============  ============
format         paths                                      lazy crops    streamed write
=============  =========================================  ============  ============
Zarr, OME-Zarr ``x.zarr``, ``x.ome.zarr`` (v3 and v2)      yes           yes
HDF5           ``x.h5``, ``x.h5:/group/dataset``           yes           yes
NumPy          ``x.npy`` (memory-mapped)                   yes           yes
TIFF           ``x.tif`` (multi-page), folder of slices    yes*          yes
NIfTI          ``x.nii``; ``x.nii.gz``                     ``.nii`` only no
NRRD           ``x.nrrd``, ``x.seg.nrrd``, ``x.nhdr``      raw only      no
PNG            folder of 2D slices, ``x.png`` (1 slice)    yes*          no (read only)
=============  =========================================  ============  ============

(*) uncompressed multi-page TIFF is memory-mapped; compressed TIFF and slice
folders (TIFF or PNG) read whole 2D pages of the z-range asked for.

A path may name a region of a volume: ``scan.zarr[0:20,0:256,256:512]``
(start:stop per axis z, y, x, stop excluded) opens only those voxels, with
the origin of the region's first voxel (``bbox:`` in a dataset.yaml is
written this way, see :mod:`meunet.data.spec`).

Segment names and an assumed (unknown) spacing travel with the voxels from
a volume read to one written; see :mod:`meunet.data.io.sidecar`.

Gzip streams cannot be read at random: a crop of a ``.nii.gz`` or gzip
``.nrrd`` decompresses the file up to the crop. Convert such volumes once with
``meunet convert IN OUT.zarr`` before training or predicting on them.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from meunet.data.io.sidecar import as_segments, read_sidecar, sidecar_path, write_sidecar
from meunet.data.io.zarr_io import ZarrSlabWriter
from meunet.data.volume import (
    IDENTITY,
    Bbox,
    Direction,
    Spacing,
    Volume,
    as_bbox,
    as_direction,
    as_spacing,
    region,
)
from meunet.errors import FormatError, MeunetError, VolumeError

__all__ = ["ZarrSlabWriter", "detect_format", "open_volume", "split_region", "write_volume"]

_SUFFIXES = {
    ".nii": "nifti", ".nii.gz": "nifti",
    ".nrrd": "nrrd", ".nhdr": "nrrd", ".seg.nrrd": "nrrd",
    ".tif": "tiff", ".tiff": "tiff",
    ".zarr": "zarr", ".ome.zarr": "zarr",
    ".h5": "hdf5", ".hdf5": "hdf5", ".hdf": "hdf5",
    ".npy": "numpy",
    ".png": "png",
}  # fmt: skip
_MODULES = {
    "zarr": "zarr_io", "hdf5": "hdf5_io", "numpy": "numpy_io",
    "tiff": "tiff_io", "nifti": "nifti_io", "nrrd": "nrrd_io", "png": "png_io",
}  # fmt: skip
_ORIENTED = ("nifti", "nrrd", "zarr")  # formats whose writer keeps direction and space
_READ_ONLY = ("png",)  # formats meunet reads but does not write
_ZARR_MARKERS = ("zarr.json", ".zarray", ".zgroup")
_SLICE_SUFFIXES = {"tiff": (".tif", ".tiff"), "png": (".png",)}
_NATIVE_META = ("zarr", "hdf5")  # formats whose writer keeps segments and spacing_known
_REGION = re.compile(  # PATH[z0:z1,y0:y1,x0:x1]
    r"^(.*)\[\s*(\d+)\s*:\s*(\d+)\s*,\s*(\d+)\s*:\s*(\d+)\s*,\s*(\d+)\s*:\s*(\d+)\s*\]$"
)
_SUPPORTED = ", ".join(sorted(_SUFFIXES)) + ", or a folder of 2D TIFF or PNG slices"


def split_hdf5_path(path: str) -> tuple[str, str | None]:
    """Split ``file.h5:/dataset`` into the file and the dataset (None if absent)."""
    for ext in (".h5", ".hdf5", ".hdf"):
        i = path.lower().find(ext + ":")
        if i >= 0:
            return path[: i + len(ext)], path[i + len(ext) + 1 :] or None
    return path, None


def split_region(path: str | Path) -> tuple[str, Bbox | None]:
    """Split ``scan.zarr[z0:z1,y0:y1,x0:x1]`` into the path and the box (None if absent).

    A path that exists as written is never split, whatever its name.

    Example:
        >>> split_region("scan.zarr[0:20,0:256,256:512]")
        ('scan.zarr', ((0, 20), (0, 256), (256, 512)))
    """
    text = str(path)
    m = _REGION.match(text)
    if m is None or os.path.exists(text):
        return text, None
    n = [int(v) for v in m.groups()[1:]]
    return m.group(1), as_bbox([n[0:2], n[2:4], n[4:6]], text)


def detect_format(path: str | Path, must_exist: bool = True) -> str:
    """Name the format of ``path`` from its suffix (and, for folders, its content).

    Args:
        path: A file or folder.
        must_exist: False for an output path, which may not exist yet; a
            format meunet only reads (PNG) is then refused.

    Raises:
        FormatError: a suffix or folder content meunet does not read (or write).
    """
    text = str(path).rstrip("/")
    file_part, _ = split_hdf5_path(text)
    name = os.path.basename(file_part).lower()
    suffix = next((s for s in sorted(_SUFFIXES, key=len, reverse=True) if name.endswith(s)), "")
    fmt = _SUFFIXES.get(suffix)
    if fmt is None and must_exist and os.path.isdir(text):
        fmt = _folder_format(text)
    if fmt is None and not must_exist and (name == "" or "." not in name):
        fmt = "tiff"  # a new folder of slices
    if fmt is None:
        raise FormatError(
            f"{path}: unknown volume format; meunet reads {_SUPPORTED}: "
            "convert it to one of these (e.g. with Fiji or SimpleITK), or correct the path"
        )
    if not must_exist and fmt in _READ_ONLY:
        raise FormatError(
            f"{path}: meunet reads {fmt.upper()} but does not write it; write a folder of "
            "TIFF slices (a path without suffix), .tif, .zarr, .nii.gz or .nrrd instead"
        )
    return fmt


def _folder_format(folder: str) -> str:
    """A Zarr store, or a folder of TIFF or of PNG slices, told by what it holds."""
    if any(os.path.exists(os.path.join(folder, m)) for m in _ZARR_MARKERS):
        return "zarr"
    names = [n.lower() for n in os.listdir(folder) if not n.startswith(".")]
    kinds = [f for f, sfx in _SLICE_SUFFIXES.items() if any(n.endswith(sfx) for n in names)]
    if len(kinds) == 1:
        return kinds[0]
    if kinds:
        raise FormatError(
            f"{folder}: folder holds both TIFF and PNG slices; a volume is one kind of slice: "
            "move the strays out"
        )
    found = sorted({os.path.splitext(n)[1] or n for n in names})[:5]
    raise FormatError(
        f"{folder}: folder holds no .tif/.tiff or .png slices and is not a Zarr store "
        f"(found: {', '.join(found) or 'nothing'}); meunet reads {_SUPPORTED}: convert the "
        "slices to TIFF or PNG, or correct the path"
    )


def open_volume(path: str | Path, spacing: Spacing | None = None) -> Volume:
    """Open a 3D volume lazily, whatever its format.

    Args:
        path: File or folder; HDF5 takes ``file.h5:/dataset``; a suffix
            ``[z0:z1,y0:y1,x0:x1]`` opens that region alone.
        spacing: (z, y, x) voxel size overriding the one stored in the file.

    Returns:
        A :class:`Volume` whose slicing reads only the crop asked for
        (see the module table for the formats where that is not possible).

    Raises:
        VolumeError: missing, unreadable, corrupt or non-3D files, with the path.

    Example:
        >>> vol = open_volume("fly01.zarr")            # doctest: +SKIP
        >>> vol.shape, vol.spacing                     # doctest: +SKIP
        ((1072, 470, 470), (2.95, 2.95, 2.95))
    """
    text, box = split_region(path)
    file_part, _ = split_hdf5_path(text)
    if not os.path.exists(file_part):
        raise VolumeError(
            f"{file_part}: file not found; check the path "
            "(paths in a dataset.yaml are relative to the folder of that file)"
        )
    fmt = detect_format(text)
    try:
        vol = _module(fmt).read(text)
        if fmt not in _NATIVE_META:
            side = read_sidecar(file_part)
            if side.get("segments") and not vol.meta.get("segments"):
                vol.meta["segments"] = as_segments(side["segments"], file_part + ".json")
            if side.get("spacing_known") is False:
                vol.spacing_known = False
    except (VolumeError, MemoryError):
        raise
    except Exception as e:  # every reader library fails on corrupt files in its own way
        raise VolumeError(
            f"{text}: cannot read this {fmt} file ({type(e).__name__}: {e}); "
            f"it is corrupt or truncated, or not really a {fmt} file: re-export or re-copy it"
        ) from e
    if spacing is not None:
        vol.spacing = as_spacing(spacing, text)
        vol.spacing_known = True
    if box is not None:
        try:
            vol = region(vol, box)
        except VolumeError:
            vol.close()
            raise
    return vol


def _module(fmt: str) -> ModuleType:
    """The reader/writer module of a format: it defines ``read(path)`` and ``write(...)``."""
    return importlib.import_module(f"meunet.data.io.{_MODULES[fmt]}")


def write_volume(
    path: str | Path,
    data: np.ndarray | Volume,
    spacing: Spacing | None = None,
    origin: Spacing | None = None,
    direction: Direction | None = None,
    space: str | None = None,
    overwrite: bool = False,
    inputs: Sequence[Any] = (),
    segments: Any = None,
    spacing_known: bool | None = None,
    **kwargs: Any,
) -> None:
    """Write a 3D array or lazy volume; the format follows the suffix.

    Zarr, HDF5, NumPy and TIFF are written slab by slab, so a lazy volume
    larger than RAM can be written; NIfTI and NRRD need the whole array.
    Files are written under a temporary name and renamed when complete;
    Zarr arrays are marked complete when done. Spacing, origin, direction
    and space default to those of ``data`` when it is a :class:`Volume`,
    else to 1, 0, identity and none. NIfTI, NRRD and Zarr keep the
    direction (see :mod:`meunet.data.volume`); HDF5, NumPy and TIFF store
    spacing and origin only. Segment names and an unknown spacing are kept
    too (:mod:`meunet.data.io.sidecar`).

    Args:
        path: Output path; HDF5 takes ``file.h5:/dataset`` (default ``/volume``).
        data: (z, y, x) array or :class:`Volume`.
        spacing: (z, y, x) voxel size.
        origin: (z, y, x) position of the first voxel.
        direction: World direction of each array axis (3x3, columns z, y, x).
        space: World frame of origin and direction (``"RAS"``, ``"LPS"``, ``""``).
        overwrite: Replace an existing path that meunet did not write; meunet
            replaces its own outputs anyway, and never an input (``data``, or
            ``inputs``), see :mod:`meunet.data.io.ownership`.
        inputs: Further paths or volumes ``data`` is made from.
        segments: Segment names of a label volume (``[{name, label}]`` or
            ``{label: name}``); default: those of ``data`` when it is a Volume.
        spacing_known: False records that the spacing was assumed, not
            measured; default: ``data``'s when it is a Volume, else True.
        **kwargs: Format options (Zarr: ``chunks``, ``zarr_format``, ``ome``;
            HDF5: ``chunks``, ``compression``; TIFF: ``compression``).
    """
    if getattr(data, "ndim", None) != 3:
        raise ValueError(
            f"{path}: meunet writes 3D volumes, got shape {getattr(data, 'shape', '?')}"
        )
    if spacing is None:
        spacing = data.spacing if isinstance(data, Volume) else (1.0, 1.0, 1.0)
    if origin is None:
        origin = data.origin if isinstance(data, Volume) else (0.0, 0.0, 0.0)
    if direction is None:
        direction = data.direction if isinstance(data, Volume) else IDENTITY
    if space is None:
        space = data.space if isinstance(data, Volume) else ""
    if segments is None and isinstance(data, Volume):
        segments = data.meta.get("segments")
    segments = as_segments(segments, str(path))
    if spacing_known is None:
        spacing_known = data.spacing_known if isinstance(data, Volume) else True
    spacing = as_spacing(spacing, str(path))
    fmt = detect_format(path, must_exist=False)
    if fmt in _ORIENTED:
        kwargs = {"direction": as_direction(direction, str(path)), "space": space, **kwargs}
    if fmt in _NATIVE_META:
        kwargs = {"segments": segments, "spacing_known": spacing_known, **kwargs}
    elif fmt == "nrrd" and segments:
        kwargs = {"segments": segments, **kwargs}
    from meunet.data.io.ownership import claim_output, mark, marker_info, unmark

    sources = [*inputs, data] if isinstance(data, Volume) else list(inputs)
    file_part = split_hdf5_path(str(path))[0]
    side = sidecar_path(file_part)
    with claim_output(path, sources, overwrite):
        # an HDF5 file meunet adds a dataset to stays the user's; any other output is meunet's
        ours = fmt != "hdf5" or not os.path.exists(file_part) or marker_info(file_part) is not None
        # A NumPy file's sidecar is part of the output (its spacing); another format's
        # sidecar is rewritten or removed only if meunet wrote it, or with overwrite.
        if fmt not in (*_NATIVE_META, "numpy") and os.path.exists(side) and not overwrite:
            if marker_info(side) is None:
                raise MeunetError(
                    f"{side}: exists beside the output {path} and meunet did not write it; "
                    "meunet keeps segment names and an unknown spacing there: move it away, or "
                    "pass --overwrite to replace it"
                )
        Path(file_part).parent.mkdir(parents=True, exist_ok=True)
        _module(fmt).write(str(path), data, spacing, origin, **kwargs)
        if fmt not in _NATIVE_META:
            write_sidecar(file_part, segments if fmt != "nrrd" else [], bool(spacing_known))
            if fmt != "numpy" and os.path.exists(side):
                mark(side, "write")
            elif fmt != "numpy":
                unmark(side)  # the sidecar was removed: so is its marker
        if ours:
            mark(file_part, "write")
