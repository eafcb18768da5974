"""NRRD volumes (``.nrrd``, ``.nhdr``) and 3D Slicer segmentations (``.seg.nrrd``).

NRRD stores x fastest; meunet's (z, y, x) order reverses the file's axes.
Raw-encoded data (attached or detached) is memory-mapped; gzip/bzip2/ascii
data is decompressed whole on first access and kept (convert big ones to Zarr).
A ``.seg.nrrd`` is read as its label map; its segment names and label values
are in ``meta["segments"]``.

Geometry: ``space directions`` (one row per file axis) become spacing (the
row lengths) and direction (the unit rows, as (z, y, x) columns), ``space
origin`` the origin, and ``space`` the frame (``"LPS"``, ``"RAS"``,
``"LAS"``, or NRRD's own name for others). Writing reverses this, in the
volume's own frame (LPS where it names none), so a file read and written
back keeps its geometry.
"""

from __future__ import annotations

import os
from typing import Any

import nrrd
import numpy as np

from meunet.data.io.atomic import atomic_path
from meunet.data.io.sidecar import as_segments
from meunet.data.volume import (
    IDENTITY,
    Direction,
    Slices,
    Spacing,
    Volume,
    as_direction,
    as_spacing,
    memmap_reader,
)
from meunet.errors import VolumeError

_TYPES = {
    "i1": ("signed char", "int8", "int8_t"),
    "u1": ("uchar", "unsigned char", "uint8", "uint8_t"),
    "i2": ("short", "short int", "signed short", "signed short int", "int16", "int16_t"),
    "u2": ("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"),
    "i4": ("int", "signed int", "int32", "int32_t"),
    "u4": ("uint", "unsigned int", "uint32", "uint32_t"),
    "i8": ("longlong", "long long", "long long int", "signed long long",
           "signed long long int", "int64", "int64_t"),
    "u8": ("ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t"),
    "f4": ("float",),
    "f8": ("double",),
}  # fmt: skip
_DTYPE = {name: code for code, names in _TYPES.items() for name in names}
_SPACES = {
    "right-anterior-superior": "RAS",
    "left-anterior-superior": "LAS",
    "left-posterior-superior": "LPS",
}
_SPACE_NAMES = {short: name for name, short in _SPACES.items()}


def _dtype(header: dict[str, Any]) -> np.dtype:
    code = _DTYPE[header["type"]]
    order = ">" if header.get("endian") == "big" else "<"
    return np.dtype(order + code if code[1] != "1" else code)


def _geometry(header: dict[str, Any], path: str) -> tuple[Spacing, Spacing, Direction, str]:
    space = str(header.get("space", ""))
    direction = IDENTITY
    if "space directions" in header:
        dirs = np.asarray(header["space directions"], dtype=float)
        rows = np.asarray([r for r in dirs if np.all(np.isfinite(r))][-3:])
        xyz = [float(np.linalg.norm(r)) for r in rows]
        if rows.shape == (3, 3):  # file axes (x, y, z) as rows of world (x, y, z)
            direction = as_direction(rows.T[::-1, ::-1] / np.asarray(xyz[::-1]), path)
    elif "spacings" in header:
        xyz = [float(s) for s in np.asarray(header["spacings"])[-3:]]
    else:
        xyz = [1.0, 1.0, 1.0]
    o = np.asarray(header.get("space origin", (0.0, 0.0, 0.0)), dtype=float)
    origin = (float(o[2]), float(o[1]), float(o[0]))
    return as_spacing(xyz[::-1], path), origin, direction, _SPACES.get(space, space)


def _segments(header: dict[str, Any]) -> list[dict[str, Any]]:
    segs = []
    i = 0
    while f"Segment{i}_Name" in header:
        segs.append({
            "name": header[f"Segment{i}_Name"],
            "label": int(header.get(f"Segment{i}_LabelValue", i + 1)),
            "layer": int(header.get(f"Segment{i}_Layer", 0)),
        })  # fmt: skip
        i += 1
    return segs


def read(path: str) -> Volume:
    """Open an NRRD file or a Slicer ``.seg.nrrd`` label map."""
    with open(path, "rb") as fh:
        header = nrrd.read_header(fh)
        offset = fh.tell()
    sizes = [int(n) for n in header["sizes"]]
    if len(sizes) > 3 and all(n == 1 for n in sizes[:-3]):
        sizes = sizes[-3:]
    if len(sizes) != 3:
        hint = (
            "this segmentation has overlapping segments (several layers): export it from "
            "Slicer as a labelmap volume"
            if path.lower().endswith(".seg.nrrd")
            else "meunet reads 3D single-channel volumes"
        )
        raise VolumeError(f"{path}: NRRD has sizes {header['sizes']}; {hint}")
    shape = (sizes[2], sizes[1], sizes[0])
    dtype = _dtype(header)
    spacing, origin, direction, space = _geometry(header, path)
    encoding = header.get("encoding", "raw")
    data_file = header.get("data file", header.get("datafile"))
    lazy = encoding == "raw" and header.get("line skip", header.get("lineskip", 0)) == 0
    read_crop: Any = None
    if lazy:
        skip = int(header.get("byte skip", header.get("byteskip", 0)))
        if data_file:
            source = os.path.join(os.path.dirname(path), str(data_file))
            offset = 0
        else:
            source = path
        if skip == -1:
            offset = os.path.getsize(source) - int(np.prod(shape)) * dtype.itemsize
        else:
            offset += skip
        read_crop = memmap_reader(
            np.memmap(source, dtype=dtype, mode="r", offset=offset, shape=shape)
        )
    else:
        cache: dict[str, np.ndarray] = {}

        def read_crop(slices: Slices) -> np.ndarray:
            if "data" not in cache:  # compressed: decompress once, keep
                cache["data"] = nrrd.read(path, index_order="C")[0].reshape(shape)
            return np.array(cache["data"][slices])

    return Volume(
        path=path,
        shape=shape,
        dtype=dtype,
        spacing=spacing,
        spacing_known="space directions" in header or "spacings" in header,
        origin=origin,
        direction=direction,
        space=space,
        read_crop=read_crop,
        format="nrrd",
        lazy=lazy,
        meta={"segments": _segments(header), "encoding": encoding},
    )


def write(
    path: str,
    data: np.ndarray,
    spacing: Spacing,
    origin: Spacing,
    direction: Direction = IDENTITY,
    space: str = "",
    encoding: str | None = None,
    segments: Any = None,
) -> None:
    """Write a (z, y, x) array as NRRD with its spacing, origin and direction.

    ``.seg.nrrd`` files are gzip-encoded label maps and carry ``segments``
    (``[{name, label, layer}]`` or ``{label value: name}``; default one per
    value found) so that 3D Slicer shows them as a segmentation; other files
    are raw (memory-mappable) unless ``encoding`` says otherwise, and carry
    ``segments`` in the same header fields when given.
    """
    if path.lower().endswith(".nhdr"):
        raise VolumeError(
            f"{path}: meunet writes attached-header .nrrd files; use the .nrrd suffix"
        )
    data = np.ascontiguousarray(data)
    spacing = as_spacing(spacing, path)
    is_seg = path.lower().endswith(".seg.nrrd")
    columns = np.asarray(direction, dtype=float) * np.asarray(spacing)
    header: dict[str, Any] = {
        "space": _SPACE_NAMES.get(space or "LPS", space),
        "space directions": columns[::-1, ::-1].T,  # one row per file axis (x, y, z)
        "space origin": np.array([origin[2], origin[1], origin[0]], dtype=float),
        "kinds": ["domain"] * 3,
        "encoding": encoding or ("gzip" if is_seg else "raw"),
    }
    listed = as_segments(segments, path)
    if is_seg and not listed:
        listed = as_segments({int(v): f"Segment_{int(v)}" for v in np.unique(data) if v != 0})
    for i, seg in enumerate(sorted(listed, key=lambda s: (s["layer"], s["label"]))):
        header[f"Segment{i}_ID"] = f"Segment_{seg['label']}"
        header[f"Segment{i}_Name"] = seg["name"]
        header[f"Segment{i}_LabelValue"] = str(seg["label"])
        header[f"Segment{i}_Layer"] = str(seg["layer"])
    with atomic_path(path) as tmp:
        nrrd.write(tmp, data, header, index_order="C")
