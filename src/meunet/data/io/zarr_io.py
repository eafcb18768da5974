"""Zarr (v3 and v2) and OME-Zarr: reading, and a chunked writer that takes slabs.

A plain Zarr array keeps its geometry in the attributes ``spacing``,
``origin`` (z, y, x), ``direction`` (3x3, see :mod:`meunet.data.volume`) and
``space``; an OME-Zarr group written by meunet keeps the last two as group
attributes beside its ``coordinateTransformations``, which have no rotation.
Segment names (``segments``) and an assumed spacing (``spacing_known``:
false) are attributes too, see :mod:`meunet.data.io.sidecar`. An OME-Zarr group (NGFF 0.4 on Zarr v2, 0.5 on Zarr v3)
is read at level 0 with the voxel size of its ``coordinateTransformations``.

Arrays written by :class:`ZarrSlabWriter` carry ``meunet.complete``: false
until the writer is closed cleanly, so an interrupted conversion or
prediction is refused on open instead of being mistaken for a finished one.

A chunk missing from the store is an error when a read touches it: Zarr
would silently return the fill value there, and a chunk lost in a copy or a
download would train and evaluate as background. A writer that leaves out
chunks equal to the fill value on purpose (zarr-python does so by default)
makes arrays that meunet reads only once they declare it with the attribute
``"missing_chunks": "fill_value"`` (on the array, or on an OME-Zarr group)::

    zarr.open_array("labels.zarr", mode="r+").attrs["missing_chunks"] = "fill_value"

meunet's own writers store every chunk, empty ones included, and say so
(``meunet.every_chunk``), so a missing chunk in their output is always
damage; arrays finished by earlier meunet versions, which skipped empty
chunks, read missing chunks as the fill value.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from meunet.data.io.sidecar import as_segments
from meunet.data.volume import (
    IDENTITY,
    Direction,
    Slices,
    Spacing,
    Volume,
    as_direction,
    as_spacing,
)
from meunet.errors import VolumeError

DEFAULT_CHUNK = 64
#: The attribute (name, value) by which an array declares that missing chunks mean its fill value.
MISSING_CHUNKS_ATTR = ("missing_chunks", "fill_value")
#: Array options of every array meunet writes: store all-fill chunks too, so that a
#: missing chunk always means damage (zarr-python leaves them out by default).
WRITE_EVERY_CHUNK = {"write_empty_chunks": True}


def _ome_multiscale(attrs: dict[str, Any]) -> dict[str, Any] | None:
    if "ome" in attrs and "multiscales" in attrs["ome"]:  # NGFF 0.5
        return attrs["ome"]["multiscales"][0]
    if "multiscales" in attrs:  # NGFF 0.4
        return attrs["multiscales"][0]
    return None


def _scale_translation(
    transforms: list[dict[str, Any]], ndim: int
) -> tuple[np.ndarray, np.ndarray]:
    scale, translation = np.ones(ndim), np.zeros(ndim)
    for t in transforms or []:
        if t.get("type") == "scale":
            scale = scale * np.asarray(t["scale"], dtype=float)
        elif t.get("type") == "translation":
            translation = translation + np.asarray(t["translation"], dtype=float)
    return scale, translation


def _open_ome(
    group: Any, path: str, ms: dict[str, Any]
) -> tuple[Any, Spacing, Spacing, tuple[int, ...]]:
    level0 = ms["datasets"][0]
    arr = group[level0["path"]]
    axes = ms.get("axes") or [{"name": n, "type": "space"} for n in "zyx"][-arr.ndim :]
    axes = [
        {"name": a, "type": "space" if a in "zyx" else ""} if isinstance(a, str) else a
        for a in axes
    ]
    spatial = [i for i, a in enumerate(axes) if a.get("type") == "space"]
    if len(spatial) != 3:
        raise VolumeError(
            f"{path}: OME-Zarr has {len(spatial)} spatial axes; meunet reads 3D volumes"
        )
    extra = [i for i in range(arr.ndim) if i not in spatial and arr.shape[i] != 1]
    if extra:
        names = [axes[i].get("name") for i in extra]
        raise VolumeError(
            f"{path}: OME-Zarr has non-spatial axes {names} of size > 1 (shape {arr.shape}); "
            "meunet reads one channel per volume: list each channel as its own path in dataset.yaml"
        )
    scale, trans = _scale_translation(level0.get("coordinateTransformations", []), arr.ndim)
    s2, t2 = _scale_translation(ms.get("coordinateTransformations", []), arr.ndim)
    scale, trans = scale * s2, trans * s2 + t2
    spacing = as_spacing(scale[spatial], path)
    origin = tuple(float(v) for v in trans[spatial])
    return arr, spacing, origin, tuple(spatial)


def read(path: str | Path) -> Volume:
    """Open a Zarr array, or an OME-Zarr group at level 0, lazily."""
    path = str(path)
    try:
        node = zarr.open(path, mode="r")
    except Exception as e:  # zarr raises several types for a non-store
        raise VolumeError(f"{path}: not a readable Zarr store ({e})") from None
    spatial: tuple[int, ...] = (0, 1, 2)
    ms: dict[str, Any] | None = None
    if isinstance(node, zarr.Group):
        ms = _ome_multiscale(dict(node.attrs))
        if ms is not None:
            arr, spacing, origin, spatial = _open_ome(node, path, ms)
            direction, space = _orientation(dict(node.attrs), path)
        else:
            arrays = [name for name, _ in node.arrays()]
            if len(arrays) != 1:
                raise VolumeError(
                    f"{path}: Zarr group holds arrays {arrays}, not one volume; "
                    f"open one of them, e.g. {path}/{arrays[0] if arrays else 'NAME'}"
                )
            arr = node[arrays[0]]
            spacing, origin = _plain_geometry(arr, path)
            direction, space = _orientation(dict(arr.attrs), path)
    else:
        arr = node
        spacing, origin = _plain_geometry(arr, path)
        direction, space = _orientation(dict(arr.attrs), path)
        if arr.ndim != 3:
            raise VolumeError(f"{path}: Zarr array has shape {arr.shape}; meunet reads 3D volumes")
    known = ms is not None or "spacing" in arr.attrs  # OME-Zarr requires a scale
    described = {**dict(node.attrs), **dict(arr.attrs)}  # an OME group's, then the array's
    known = known and described.get("spacing_known") is not False
    state = dict(arr.attrs).get("meunet", {})
    if state.get("complete") is False:
        raise VolumeError(
            f"{path}: this Zarr volume was never finished (its writer stopped before the end); "
            "run the command that wrote it again"
        )
    shape = tuple(int(arr.shape[i]) for i in spatial)
    name, value = MISSING_CHUNKS_ATTR
    # meunet before 0.2 finished its arrays without storing all-fill chunks ("every_chunk" unset)
    older_meunet = state.get("complete") is True and not state.get("every_chunk")
    declared = older_meunet or value in (dict(arr.attrs).get(name), dict(node.attrs).get(name))
    guard = None if declared else _ChunkGuard(arr, path)

    def read_crop(slices: Slices) -> np.ndarray:
        key: list[Any] = [0] * arr.ndim
        for axis, s in zip(spatial, slices, strict=True):
            key[axis] = s
        if guard is not None:
            guard.require(key)
        return np.asarray(arr[tuple(key)])

    return Volume(
        path=path,
        shape=(shape[0], shape[1], shape[2]),
        dtype=np.dtype(arr.dtype),
        spacing=spacing,
        spacing_known=known,
        origin=(origin[0], origin[1], origin[2]),
        direction=direction,
        space=space,
        read_crop=read_crop,
        format="zarr",
        meta={
            "chunks": tuple(arr.chunks),
            "zarr_format": arr.metadata.zarr_format,
            "segments": as_segments(described.get("segments"), path),
        },
    )


class _ChunkGuard:
    """Refuses a read that touches a chunk absent from the store.

    Each chunk's key is looked up once, the first time a read touches it; a
    grid of flags (one byte per chunk) remembers the chunks found, so the
    repeated crops of training cost no further lookups.
    """

    def __init__(self, arr: Any, path: str) -> None:
        self.arr, self.path = arr, path
        self.chunk = tuple(int(c) for c in (arr.shards or arr.chunks))  # one stored object each
        self.found = np.zeros(
            [-(-int(n) // c) for n, c in zip(arr.shape, self.chunk, strict=True)], bool
        )

    def require(self, key: list[Any]) -> None:
        """Raise VolumeError unless every chunk under ``key`` (slices and ints) is stored."""
        ranges = []
        for k, c in zip(key, self.chunk, strict=True):
            start, stop = (k.start, k.stop) if isinstance(k, slice) else (k, k + 1)
            ranges.append(range(start // c, -(-stop // c)))
        todo = [g for g in itertools.product(*ranges) if not self.found[g]]
        if not todo:
            return
        from zarr.core.sync import sync

        prefix = self.arr.store_path.path
        keys = [self.arr.metadata.encode_chunk_key(g) for g in todo]

        async def exists() -> list[bool]:
            store = self.arr.store
            return await asyncio.gather(
                *(store.exists(f"{prefix}/{k}" if prefix else k) for k in keys)
            )

        stored = sync(exists())
        missing = [(g, k) for g, k, ok in zip(todo, keys, stored, strict=True) if not ok]
        for g, ok in zip(todo, stored, strict=True):
            self.found[g] = ok
        if missing:
            g, k = missing[0]
            where = ", ".join(
                f"{a * c}:{min((a + 1) * c, int(n))}"
                for a, c, n in zip(g, self.chunk, self.arr.shape, strict=True)
            )
            array = f"{self.path.rstrip('/')}/{prefix}" if prefix else self.path
            fill = self.arr.fill_value
            raise VolumeError(
                f"{self.path}: chunk {array}/{k} (voxels [{where}]) is missing"
                + (f", and {len(missing) - 1} more in this read" if len(missing) > 1 else "")
                + f"; Zarr would read it as the fill value {getattr(fill, 'item', lambda: fill)()}. "
                "Re-copy or re-export the store (an interrupted copy leaves chunks out); "
                "if its writer skipped chunks equal to the fill value on purpose, declare that with "
                f"zarr.open_array({array!r}, mode='r+').attrs[{MISSING_CHUNKS_ATTR[0]!r}] = "
                f"{MISSING_CHUNKS_ATTR[1]!r}"
            )


def _orientation(attrs: dict[str, Any], path: str) -> tuple[Direction, str]:
    return as_direction(attrs.get("direction", IDENTITY), path), str(attrs.get("space", ""))


def geometry_attributes(
    spacing: Spacing,
    origin: Spacing = (0.0, 0.0, 0.0),
    direction: Direction = IDENTITY,
    space: str = "",
) -> dict[str, Any]:
    """The attributes by which a plain Zarr array keeps its geometry (JSON types).

    Example:
        >>> attributes = geometry_attributes(**scan.geometry())  # doctest: +SKIP
    """
    return {
        "spacing": [float(v) for v in spacing],
        "origin": [float(v) for v in origin],
        "direction": [[float(v) for v in row] for row in direction],
        "space": str(space),
    }


def _plain_geometry(arr: Any, path: str) -> tuple[Spacing, Spacing]:
    attrs = dict(arr.attrs)
    spacing = as_spacing(attrs.get("spacing", (1.0, 1.0, 1.0)), path)
    origin = tuple(float(v) for v in attrs.get("origin", (0.0, 0.0, 0.0)))
    return spacing, (origin[0], origin[1], origin[2])


class ZarrSlabWriter:
    """Write a volume to chunked Zarr one z-slab at a time.

    The array is marked incomplete until :meth:`close`; leaving the ``with``
    block through an exception keeps it marked so, and reading it then fails.

    Args:
        path: Output directory (``.zarr``; ``.ome.zarr`` writes an OME-Zarr group).
        shape: (z, y, x) size.
        dtype: Stored data type.
        spacing: (z, y, x) voxel size.
        origin: (z, y, x) position of the first voxel.
        direction: World direction of each axis (3x3, see :mod:`meunet.data.volume`).
        space: World frame of origin and direction (``""``: none named).
        chunks: Chunk shape; 64^3 (clipped to the shape) by default.
        zarr_format: 3 (default) or 2.
        ome: Write an OME-Zarr group with one level; default from the suffix.
        compressors: Zarr compressors ("auto": zstd on v3, blosc on v2; None: raw).
        overwrite: Replace an existing store that meunet did not write (one it
            wrote is replaced anyway; see :mod:`meunet.data.io.ownership`).
        inputs: Paths or volumes the data comes from: the store is never one of them.
        segments: Segment names of a label volume (:mod:`meunet.data.io.sidecar`).
        spacing_known: False records that the spacing was assumed, not measured.

    Example:
        >>> with ZarrSlabWriter("out.zarr", (200, 64, 64), "uint8") as w:  # doctest: +SKIP
        ...     for z0 in range(0, 200, 64):
        ...         w.write(z0, labels[z0 : z0 + 64])
    """

    def __init__(
        self,
        path: str | Path,
        shape: tuple[int, int, int],
        dtype: Any,
        spacing: Spacing = (1.0, 1.0, 1.0),
        origin: Spacing = (0.0, 0.0, 0.0),
        direction: Direction = IDENTITY,
        space: str = "",
        chunks: tuple[int, int, int] | None = None,
        zarr_format: int = 3,
        ome: bool | None = None,
        compressors: Any = "auto",
        overwrite: bool = False,
        inputs: Sequence[Any] = (),
        segments: Any = None,
        spacing_known: bool = True,
    ) -> None:
        from meunet.data.io.ownership import make_folder, prepare_output, remove_owned

        self.path = str(path).rstrip("/") or str(path)
        # never recreate a store that is an input or that meunet did not write
        prepare_output(self.path, inputs, overwrite, folder=True)
        self.shape = tuple(int(n) for n in shape)
        spacing = as_spacing(spacing, self.path)
        geometry = geometry_attributes(spacing, origin, as_direction(direction, self.path), space)
        described: dict[str, Any] = {}
        if segments:
            described["segments"] = as_segments(segments, self.path)
        if not spacing_known:
            described["spacing_known"] = False
        chunks = chunks or tuple(min(DEFAULT_CHUNK, n) for n in self.shape)
        ome = self.path.rstrip("/").endswith(".ome.zarr") if ome is None else ome
        state = {"meunet": {"complete": False}}
        remove_owned(self.path)
        make_folder(self.path)  # the marker first: a crash from here on leaves a store of ours
        if ome:
            group = zarr.create_group(self.path, zarr_format=zarr_format)
            ms = _ome_metadata(spacing, origin, ome_unit(space))
            group.attrs.update({**{k: geometry[k] for k in ("direction", "space")}, **described})
            if zarr_format == 3:
                group.attrs["ome"] = {"version": "0.5", "multiscales": [ms]}
            else:
                group.attrs["multiscales"] = [{"version": "0.4", **ms}]
            self.array = group.create_array(
                "0",
                shape=self.shape,
                chunks=chunks,
                dtype=dtype,
                attributes=state,
                compressors=compressors,
                config=WRITE_EVERY_CHUNK,
                **_dimension_names(zarr_format),
            )
        else:
            attrs = {**geometry, **described, **state}
            self.array = zarr.create_array(
                self.path,
                shape=self.shape,
                chunks=chunks,
                dtype=dtype,
                zarr_format=zarr_format,
                attributes=attrs,
                compressors=compressors,
                config=WRITE_EVERY_CHUNK,
                **_dimension_names(zarr_format),
            )

    def write(self, z0: int, slab: np.ndarray) -> None:
        """Write ``slab`` at z-offset ``z0``; its y, x size must be the volume's."""
        slab = np.asarray(slab)
        if slab.ndim != 3 or slab.shape[1:] != self.shape[1:] or z0 + slab.shape[0] > self.shape[0]:
            raise ValueError(
                f"{self.path}: slab of shape {slab.shape} at z={z0} does not fit {self.shape}"
            )
        self.array[z0 : z0 + slab.shape[0]] = slab

    def close(self) -> None:
        """Mark the array complete."""
        self.array.attrs["meunet"] = {"complete": True, "every_chunk": True}

    def __enter__(self) -> ZarrSlabWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()


def _dimension_names(zarr_format: int) -> dict[str, Any]:
    return {"dimension_names": ("z", "y", "x")} if zarr_format == 3 else {}


def ome_unit(space: str) -> str:
    """The NGFF unit of a volume's spacing: millimetres in a NIfTI/NRRD world frame, else micrometres.

    meunet's volumes carry no unit; a world ``space`` (RAS, LPS, ...) comes
    from NIfTI or NRRD, whose unit is the millimetre, and a volume without one
    is taken to be microCT, measured in micrometres (the phantom's unit).
    """
    return "millimeter" if space else "micrometer"


def _ome_metadata(spacing: Spacing, origin: Spacing, unit: str = "micrometer") -> dict[str, Any]:
    """NGFF multiscales of one level: axes with units, scale = spacing, translation = origin."""
    transforms: list[dict[str, Any]] = [
        {"type": "scale", "scale": [float(v) for v in spacing]},
        {"type": "translation", "translation": [float(v) for v in origin]},
    ]
    return {
        "axes": [{"name": n, "type": "space", "unit": unit} for n in "zyx"],
        "datasets": [{"path": "0", "coordinateTransformations": transforms}],
        "name": "meunet",
    }


def write(
    path: str | Path,
    data: np.ndarray | Volume,
    spacing: Spacing = (1.0, 1.0, 1.0),
    origin: Spacing = (0.0, 0.0, 0.0),
    progress: bool = False,
    **kwargs: Any,
) -> None:
    """Write an array or a lazy volume to Zarr, one chunk-aligned slab at a time."""
    from tqdm.auto import tqdm

    from meunet.data.volume import slab_depth

    inputs = [data] if isinstance(data, Volume) else []
    with ZarrSlabWriter(
        path, data.shape, data.dtype, spacing, origin, inputs=inputs, **kwargs
    ) as writer:
        chunk_z = writer.array.chunks[0]
        depth = max(chunk_z, slab_depth(data.shape, data.dtype) // chunk_z * chunk_z)
        name = Path(str(path)).name
        with tqdm(
            total=data.shape[0], desc=f"write {name}", unit="slice", disable=not progress
        ) as bar:
            for z0 in range(0, data.shape[0], depth):
                slab = np.asarray(data[z0 : z0 + depth])
                writer.write(z0, slab)
                bar.update(slab.shape[0])
