"""The lazy volume every reader returns.

Axis order is (z, y, x) everywhere in meunet: z is the slowest-varying axis
(the slice index of a TIFF stack, the third NIfTI/NRRD axis), x the fastest.
``spacing`` is the voxel size in the same order, in the file's physical unit
(millimetres for NIfTI and NRRD, usually micrometres for microCT TIFF and
Zarr). Readers of formats stored the other way round (NIfTI, NRRD) transpose.

Orientation is one representation for every format: ``origin`` (the world
position of the first voxel), ``spacing`` and ``direction``, a 3x3 matrix
whose column ``a`` is the world direction of array axis ``a``. World
coordinates are written in the same reversed order as the axes (third,
second, first world axis), so the voxel at index ``n = (z, y, x)`` lies at
``origin + direction @ (spacing * n)``; an identity direction is the
axis-aligned grid of formats that store no orientation. ``space`` names the
world frame (``"RAS"`` for NIfTI, the ``space`` of an NRRD such as
``"LPS"``, ``""`` where the file names none). Each format module converts
its native form (NIfTI affine, NRRD space directions) to and from this one.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from meunet.errors import RegionError, SettingError, VolumeError

Spacing = tuple[float, float, float]
Slices = tuple[slice, slice, slice]
#: Rows of a 3x3 matrix; column ``a`` is the world direction of array axis ``a`` (z, y, x).
Direction = tuple[Spacing, Spacing, Spacing]
IDENTITY: Direction = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))

#: Reads the crop given by three step-positive slices, already clipped to the shape,
#: and returns it as a (z, y, x) array.
CropReader = Callable[[Slices], np.ndarray]


def normalize_key(key: Any, shape: tuple[int, ...]) -> tuple[Slices, tuple[int, ...]]:
    """Turn a NumPy-style basic index into three clipped slices and the axes to drop.

    Integers, slices with a positive step and one ``Ellipsis`` are supported;
    integer axes are read as length-1 slices and dropped afterwards.

    Example:
        >>> normalize_key((5, ..., slice(0, 2)), (10, 20, 30))
        ((slice(5, 6, 1), slice(0, 20, 1), slice(0, 2, 1)), (0,))
    """
    if not isinstance(key, tuple):
        key = (key,)
    if sum(k is Ellipsis for k in key) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    if Ellipsis in key:
        i = key.index(Ellipsis)
        key = key[:i] + (slice(None),) * (len(shape) - len(key) + 1) + key[i + 1 :]
    if len(key) > len(shape):
        raise IndexError(f"too many indices for a volume of shape {shape}: {len(key)} given")
    key = key + (slice(None),) * (len(shape) - len(key))
    slices: list[slice] = []
    dropped: list[int] = []
    for axis, (k, n) in enumerate(zip(key, shape, strict=True)):
        if isinstance(k, (int, np.integer)):
            i = int(k) + n if k < 0 else int(k)
            if not 0 <= i < n:
                raise IndexError(f"index {k} is out of bounds for axis {axis} with size {n}")
            slices.append(slice(i, i + 1, 1))
            dropped.append(axis)
        elif isinstance(k, slice):
            start, stop, step = k.indices(n)
            if step <= 0:
                raise IndexError(
                    "volumes support only positive slice steps; flip the result instead"
                )
            slices.append(slice(start, max(start, stop), step))
        else:
            raise IndexError(
                f"unsupported index {k!r}: use integers and slices (read a crop, then index it)"
            )
    return (slices[0], slices[1], slices[2]), tuple(dropped)


@dataclass(eq=False)
class Volume:
    """A 3D image on disk whose slicing reads only the crop asked for.

    Attributes:
        path: Where the volume lives (for HDF5, ``file.h5:/dataset``).
        shape: (z, y, x) size in voxels.
        dtype: Data type of the values slicing returns.
        spacing: (z, y, x) voxel size.
        spacing_known: False where the file stores no voxel size (PNG, TIFF
            without resolution tags, NumPy without sidecar, HDF5 or Zarr without
            a ``spacing`` attribute, NRRD without spacings) and 1 is assumed;
            a spacing given to ``open_volume`` (dataset.yaml's ``spacing:``)
            makes it known.
        origin: (z, y, x) position of the first voxel, in the spacing's unit.
        direction: World direction of each array axis (columns; see the module
            docstring); identity for an axis-aligned grid.
        space: World frame of ``origin`` and ``direction`` (``"RAS"``,
            ``"LPS"``...; ``""``: none named).
        format: Short name of the file format (``"zarr"``, ``"nifti"``...).
        lazy: False where the format forces reading more than the crop
            (gzip-compressed NIfTI/NRRD); ``meunet convert`` makes such files lazy.
        meta: Format-specific extras (e.g. segment names of a ``.seg.nrrd``).

    Example:
        >>> vol = open_volume("scan.zarr")       # doctest: +SKIP
        >>> crop = vol[100:164, 200:264, 0:64]   # reads one 64^3 crop
    """

    path: str
    shape: tuple[int, int, int]
    dtype: np.dtype
    spacing: Spacing
    read_crop: CropReader = field(repr=False)
    origin: Spacing = (0.0, 0.0, 0.0)
    direction: Direction = IDENTITY
    space: str = ""
    spacing_known: bool = True
    format: str = ""
    lazy: bool = True
    meta: dict[str, Any] = field(default_factory=dict, repr=False)
    close: Callable[[], None] = field(default=lambda: None, repr=False)

    @property
    def ndim(self) -> int:
        return 3

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def geometry(self) -> dict[str, Any]:
        """Spacing, origin, direction and space, as ``write_volume`` keywords.

        Example:
            >>> write_volume("labels.nii.gz", labels, **scan.geometry())  # doctest: +SKIP
        """
        return {
            "spacing": tuple(self.spacing),
            "origin": tuple(self.origin),
            "direction": tuple(tuple(row) for row in self.direction),
            "space": self.space,
        }

    def __getitem__(self, key: Any) -> np.ndarray:
        slices, dropped = normalize_key(key, self.shape)
        want = tuple(len(range(s.start, s.stop, s.step)) for s in slices)
        if 0 in want:
            out = np.empty(want, dtype=self.dtype)
        else:
            try:
                out = np.asarray(self.read_crop(slices))
            except (MemoryError, KeyboardInterrupt, VolumeError):
                raise  # a VolumeError already names the file and the fix
            except Exception as e:  # the reader library met a truncated or corrupt file
                crop = ", ".join(f"{s.start}:{s.stop}" for s in slices)
                raise VolumeError(
                    f"{self.path}: cannot read this {self.format} file at [{crop}] "
                    f"({type(e).__name__}: {e}); it is corrupt or truncated: re-export or re-copy it"
                ) from e
            if out.shape != want:  # a reader bug, or a file that lies about its size
                raise RuntimeError(f"{self.path}: read {out.shape} for crop {want}")
        return out.reshape([n for i, n in enumerate(want) if i not in dropped])

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        arr = self[...]
        return arr if dtype is None else arr.astype(dtype, copy=False)

    def read(self) -> np.ndarray:
        """Read the whole volume into memory."""
        return self[...]

    def slabs(self, depth: int | None = None) -> Any:
        """Yield ``(z0, array)`` slabs along z, each at most ``depth`` slices.

        The default depth keeps a slab near 64 MiB.
        """
        depth = depth or slab_depth(self.shape, self.dtype)
        for z0 in range(0, self.shape[0], depth):
            yield z0, self[z0 : z0 + depth]

    def __enter__(self) -> Volume:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: A box of voxels: (start, stop) per axis (z, y, x), half-open, as a slice takes them.
Bbox = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


def format_bbox(box: Bbox) -> str:
    """``[z0:z1,y0:y1,x0:x1]``, the text by which a path names a region (see ``open_volume``)."""
    return "[" + ",".join(f"{a}:{b}" for a, b in box) + "]"


def as_bbox(value: Any, where: str) -> Bbox:
    """Validate a box: three ``[start, stop]`` pairs of whole numbers, ``0 <= start < stop``.

    Example:
        >>> as_bbox([[0, 20], [0, 256], [256, 512]], "bbox")
        ((0, 20), (0, 256), (256, 512))
    """
    try:
        pairs = [tuple(v) for v in value]
    except TypeError:
        pairs = []
    whole = all(
        isinstance(n, (int, np.integer)) and not isinstance(n, bool) for pair in pairs for n in pair
    )
    if len(pairs) != 3 or any(len(pair) != 2 for pair in pairs) or not whole:
        raise SettingError(
            f"{where}: a box is three [start, stop] pairs of voxel indices (z, y, x), "
            f"e.g. [[0, 20], [0, 256], [256, 512]], got {value!r}"
        )
    for axis, (a, b) in zip("zyx", pairs, strict=True):
        if not 0 <= a < b:
            raise SettingError(
                f"{where}: box along {axis} is [{a}, {b}]; it needs 0 <= start < stop "
                "(stop is excluded, as in a slice)"
            )
    return tuple((int(a), int(b)) for a, b in pairs)  # type: ignore[return-value]


def region(vol: Volume, box: Bbox) -> Volume:
    """The voxels ``box`` of ``vol`` as a lazy volume of their own.

    Reading it reads only from the region; the spacing, direction and space
    are the volume's, and the origin is that of the region's first voxel.

    Raises:
        RegionError: the box reaches outside the volume, naming the shape.
    """
    for axis, (_, b), n in zip("zyx", box, vol.shape, strict=True):
        if b > n:
            raise RegionError(
                f"{vol.path}{format_bbox(box)}: the box ends at {b} along {axis}, beyond the "
                f"volume's {n} voxels (shape {vol.shape}, z, y, x); keep every stop within the shape"
            )
    start = np.array([a for a, _ in box], dtype=np.float64)
    shift = np.asarray(vol.direction, np.float64) @ (start * np.asarray(vol.spacing))
    (z0, _), (y0, _), (x0, _) = box

    def read_crop(slices: Slices) -> np.ndarray:
        z, y, x = slices
        return vol.read_crop(
            (
                slice(z.start + z0, z.stop + z0, z.step),
                slice(y.start + y0, y.stop + y0, y.step),
                slice(x.start + x0, x.stop + x0, x.step),
            )
        )

    o = np.asarray(vol.origin, np.float64) + shift
    return Volume(
        path=f"{vol.path}{format_bbox(box)}",
        shape=(box[0][1] - z0, box[1][1] - y0, box[2][1] - x0),
        dtype=vol.dtype,
        spacing=vol.spacing,
        read_crop=read_crop,
        origin=(float(o[0]), float(o[1]), float(o[2])),
        direction=vol.direction,
        space=vol.space,
        spacing_known=vol.spacing_known,
        format=vol.format,
        lazy=vol.lazy,
        meta=dict(vol.meta),
        close=vol.close,
    )


def slab_depth(shape: tuple[int, ...], dtype: np.dtype | type, target_bytes: int = 64 << 20) -> int:
    """Number of z-slices whose bytes stay near ``target_bytes`` (at least one)."""
    per_slice = int(np.prod(shape[1:])) * np.dtype(dtype).itemsize
    return max(1, min(int(shape[0]), target_bytes // max(per_slice, 1)))


def as_spacing(value: Any, where: str) -> Spacing:
    """Validate a (z, y, x) spacing: three positive finite numbers."""
    try:
        sp = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise SettingError(
            f"{where}: spacing must be three numbers (z, y, x), got {value!r}"
        ) from None
    if len(sp) != 3 or not all(np.isfinite(sp)) or min(sp) <= 0:
        raise SettingError(
            f"{where}: spacing must be three positive numbers (z, y, x), got {value!r}"
        )
    return (sp[0], sp[1], sp[2])


def as_direction(value: Any, where: str) -> Direction:
    """Validate a direction: a 3x3 matrix of finite numbers with independent columns."""
    try:
        m = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        m = np.zeros(0)
    if m.shape != (3, 3) or not np.all(np.isfinite(m)) or abs(np.linalg.det(m)) < 1e-12:
        raise ValueError(
            f"{where}: direction must be a 3x3 matrix of independent columns "
            f"(one per axis z, y, x), got {value!r}"
        )
    (a, b, c), (d, e, f), (g, h, i) = m.tolist()
    return ((a, b, c), (d, e, f), (g, h, i))


def slice_stack_reader(
    folder: str,
    files: Sequence[str],
    header: Callable[[str], tuple[tuple[int, ...], np.dtype]],
    read: Callable[[str], np.ndarray],
) -> CropReader:
    """Crop reader over a folder of 2D slice files (one file a z-slice, read lazily).

    Every file's ``header`` (shape, dtype) must match the first's; a crop
    reads only the files of its z-range, with ``read``.
    """
    page_shape, dtype = header(files[0])
    for f in files[1:]:
        s, d = header(f)
        if s != page_shape or d != dtype:
            raise VolumeError(
                f"{f}: slice has shape {s} and dtype {d}, but {os.path.basename(files[0])} has "
                f"{page_shape} and {dtype}; every slice of {folder} must match (remove strays)"
            )

    def read_crop(slices: Slices) -> np.ndarray:
        chosen = files[slices[0]]
        yx = tuple(len(range(s.start, s.stop, s.step)) for s in slices[1:])
        out = np.empty((len(chosen), *yx), dtype=dtype)
        for i, f in enumerate(chosen):
            out[i] = read(f)[slices[1], slices[2]]
        return out

    return read_crop


def memmap_reader(mm: np.memmap) -> CropReader:
    """Crop reader over a memory map that reads from disk only what a crop needs.

    The kernel's read-around would otherwise load megabytes around every page
    a small crop touches (260 MiB for a 64^3 crop of a 2 GiB volume, measured);
    random access is declared for the map, and whole z-slabs (the sequential
    reads of check, convert and predict) ask for read-ahead of exactly their bytes.
    """
    raw = getattr(mm, "_mmap", None)
    if raw is not None:
        raw.madvise(mmap.MADV_RANDOM)

    def read_crop(slices: Slices) -> np.ndarray:
        z, y, x = slices
        whole_planes = (y.start, y.stop, x.start, x.stop) == (0, mm.shape[1], 0, mm.shape[2])
        if raw is not None and whole_planes:
            start = mm.offset + z.start * mm.strides[0]
            aligned = start - start % mmap.ALLOCATIONGRANULARITY
            length = min((z.stop - z.start) * mm.strides[0] + start - aligned, len(raw) - aligned)
            raw.madvise(mmap.MADV_WILLNEED, aligned, length)
        return np.array(mm[slices])  # a copy: the caller owns it, the map stays untouched

    return read_crop
