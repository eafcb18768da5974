"""Zarr (v3 and v2) and OME-Zarr: reading, and a chunked writer that takes slabs.

A plain Zarr array keeps its voxel size in the attributes ``spacing`` and
``origin`` (z, y, x). An OME-Zarr group (NGFF 0.4 on Zarr v2, 0.5 on Zarr v3)
is read at level 0 with the voxel size of its ``coordinateTransformations``.

Arrays written by :class:`ZarrSlabWriter` carry ``meunet.complete``: false
until the writer is closed cleanly, so an interrupted conversion or
prediction is refused on open instead of being mistaken for a finished one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import zarr

from meunet.data.volume import Slices, Spacing, Volume, as_spacing
from meunet.errors import VolumeError

DEFAULT_CHUNK = 64


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
    if isinstance(node, zarr.Group):
        ms = _ome_multiscale(dict(node.attrs))
        if ms is not None:
            arr, spacing, origin, spatial = _open_ome(node, path, ms)
        else:
            arrays = [name for name, _ in node.arrays()]
            if len(arrays) != 1:
                raise VolumeError(
                    f"{path}: Zarr group holds arrays {arrays}, not one volume; "
                    f"open one of them, e.g. {path}/{arrays[0] if arrays else 'NAME'}"
                )
            arr = node[arrays[0]]
            spacing, origin = _plain_geometry(arr, path)
    else:
        arr = node
        spacing, origin = _plain_geometry(arr, path)
        if arr.ndim != 3:
            raise VolumeError(f"{path}: Zarr array has shape {arr.shape}; meunet reads 3D volumes")
    state = dict(arr.attrs).get("meunet", {})
    if state.get("complete") is False:
        raise VolumeError(
            f"{path}: this Zarr volume was never finished (its writer stopped before the end); "
            "run the command that wrote it again"
        )
    shape = tuple(int(arr.shape[i]) for i in spatial)

    def read_crop(slices: Slices) -> np.ndarray:
        key: list[Any] = [0] * arr.ndim
        for axis, s in zip(spatial, slices, strict=True):
            key[axis] = s
        return np.asarray(arr[tuple(key)])

    return Volume(
        path=path,
        shape=(shape[0], shape[1], shape[2]),
        dtype=np.dtype(arr.dtype),
        spacing=spacing,
        origin=(origin[0], origin[1], origin[2]),
        read_crop=read_crop,
        format="zarr",
        meta={"chunks": tuple(arr.chunks), "zarr_format": arr.metadata.zarr_format},
    )


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
        chunks: Chunk shape; 64^3 (clipped to the shape) by default.
        zarr_format: 3 (default) or 2.
        ome: Write an OME-Zarr group with one level; default from the suffix.
        compressors: Zarr compressors ("auto": zstd on v3, blosc on v2; None: raw).

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
        chunks: tuple[int, int, int] | None = None,
        zarr_format: int = 3,
        ome: bool | None = None,
        compressors: Any = "auto",
    ) -> None:
        self.path = str(path)
        self.shape = tuple(int(n) for n in shape)
        spacing = as_spacing(spacing, self.path)
        chunks = chunks or tuple(min(DEFAULT_CHUNK, n) for n in self.shape)
        ome = self.path.rstrip("/").endswith(".ome.zarr") if ome is None else ome
        state = {"meunet": {"complete": False}}
        if ome:
            group = zarr.open_group(self.path, mode="w", zarr_format=zarr_format)
            ms = _ome_metadata(spacing, origin)
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
                **_dimension_names(zarr_format),
            )
        else:
            attrs = {"spacing": list(spacing), "origin": [float(v) for v in origin], **state}
            self.array = zarr.create_array(
                self.path,
                shape=self.shape,
                chunks=chunks,
                dtype=dtype,
                zarr_format=zarr_format,
                attributes=attrs,
                overwrite=True,
                compressors=compressors,
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
        self.array.attrs["meunet"] = {"complete": True}

    def __enter__(self) -> ZarrSlabWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()


def _dimension_names(zarr_format: int) -> dict[str, Any]:
    return {"dimension_names": ("z", "y", "x")} if zarr_format == 3 else {}


def _ome_metadata(spacing: Spacing, origin: Spacing) -> dict[str, Any]:
    transforms: list[dict[str, Any]] = [{"type": "scale", "scale": list(spacing)}]
    if any(origin):
        transforms.append({"type": "translation", "translation": [float(v) for v in origin]})
    return {
        "axes": [{"name": n, "type": "space"} for n in "zyx"],
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

    with ZarrSlabWriter(path, data.shape, data.dtype, spacing, origin, **kwargs) as writer:
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
