"""Resampling: ``meunet resample``, and downsampled copies for the low-resolution cascade.

Images are resampled with cubic B-splines, labels with nearest neighbour
(``docs/method.md``, *The two-stage cascade*). :func:`resample_volume` resamples any volume by
a factor or to a target spacing, streamed slab by slab. The cascade's copies
(:func:`downsampled_dataset`) resample each case in memory: fine for the
volumes a low-resolution stage is meant for; the copy is written once and
reused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy import ndimage
from tqdm.auto import tqdm

from meunet.data.io import ZarrSlabWriter, open_volume, write_volume
from meunet.data.io.atomic import atomic_path
from meunet.data.spec import DatasetSpec, load_spec
from meunet.data.volume import Spacing, Volume, as_spacing
from meunet.errors import SettingError


def downsample_image(image: np.ndarray, factor: int) -> np.ndarray:
    """Cubic B-spline resampling to ``ceil(n / factor)`` voxels per axis."""
    target = [-(-n // factor) for n in image.shape]
    zoom = [t / n for t, n in zip(target, image.shape, strict=True)]
    return ndimage.zoom(image.astype(np.float32), zoom, order=3, mode="nearest", grid_mode=True)


def downsample_labels(labels: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour onto the grid of :func:`downsample_image` (``ceil(n / factor)`` per axis).

    Output voxel i takes the input voxel under its centre, ``(i + 1/2) n / ceil(n / factor)``:
    for a size divisible by ``factor``, the voxel at the centre of each factor^3 block.
    """
    index = [
        np.minimum(
            ((np.arange(-(-n // factor)) + 0.5) * n / -(-n // factor)).astype(np.intp), n - 1
        )
        for n in labels.shape
    ]
    return np.ascontiguousarray(labels[np.ix_(*index)])


def upsample_labels(labels: np.ndarray, factor: int, shape: tuple[int, int, int]) -> np.ndarray:
    """Nearest-neighbour back to ``shape`` (the inverse grid of :func:`downsample_labels`)."""
    up = labels.repeat(factor, 0).repeat(factor, 1).repeat(factor, 2)
    out = np.zeros(shape, labels.dtype)
    z, y, x = (min(a, b) for a, b in zip(shape, up.shape, strict=True))
    out[:z, :y, :x] = up[:z, :y, :x]
    return out


def downsampled_dataset(
    spec: DatasetSpec, factor: int, out_dir: str | Path, progress: bool = True
) -> DatasetSpec:
    """Write (once) and return a copy of ``spec`` downsampled by ``factor``; labels hold class indices."""
    out = Path(out_dir)
    yaml_path = out / "dataset.yaml"
    if yaml_path.is_file():
        return dataclasses.replace(load_spec(yaml_path), split=spec.split, folds=spec.folds)
    cases = {}
    for cid, case in tqdm(
        spec.cases.items(), desc=f"downsample x{factor}", disable=not progress, leave=False
    ):
        images = []
        for i, path in enumerate(case.images):
            vol = open_volume(path, spacing=spec.spacing)
            name = f"{cid}/image_{i}.zarr"
            spacing = tuple(s * factor for s in vol.spacing)
            write_volume(out / name, downsample_image(vol[...], factor), spacing=spacing)
            images.append(name)
        entry: dict[str, object] = {"image": images}
        if case.label is not None:
            label = spec.remap_labels(open_volume(case.label)[...], str(case.label))
            write_volume(
                out / f"{cid}/label.zarr", downsample_labels(label, factor), spacing=spacing
            )
            entry["label"] = f"{cid}/label.zarr"
        cases[cid] = entry
    raw = {
        "name": f"{spec.name}-x{factor}",
        "description": f"{spec.name} downsampled by {factor} (images cubic B-spline, labels nearest)",
        "classes": list(spec.classes),
        "channels": list(spec.channels),
        "cases": cases,  # no split: the copy caches volumes, the caller's spec keeps the split
    }
    with atomic_path(yaml_path) as tmp:  # written last: its presence means the copy is complete
        Path(tmp).write_text(yaml.safe_dump(raw, sort_keys=False))
    return dataclasses.replace(load_spec(yaml_path), split=spec.split, folds=spec.folds)


# ---------------------------------------------------------------------------
# `meunet resample`: any volume, by factor or to a spacing, streamed slab by slab

#: Extra input voxels read on each side of a block: the cubic B-spline prefilter
#: is an IIR filter along each axis whose influence decays as 0.268^d, so after 12
#: voxels a block seam is below float32 precision (``tests/data/test_resample.py``
#: compares a streamed result with the whole-volume one).
HALO = 12


def resample_ratio(
    spacing: Spacing,
    factor: float | Sequence[float] | None = None,
    target: Sequence[float] | None = None,
) -> tuple[float, float, float]:
    """Output voxel size over input voxel size per axis, from a factor or a target spacing.

    ``factor`` multiplies the voxel size: 2 halves the voxels per axis
    (downsampling), 0.5 doubles them; one number or (z, y, x).
    """
    if (factor is None) == (target is None):
        raise SettingError("give exactly one of a factor and a target spacing")
    if target is not None:
        new = as_spacing(target, "target spacing")
        return tuple(n / s for n, s in zip(new, spacing, strict=True))  # type: ignore[return-value]
    values = [factor] * 3 if np.isscalar(factor) else list(factor)  # type: ignore[list-item]
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or not all(np.isfinite(f) and f > 0 for f in values):
        raise SettingError(
            f"factor must be one positive number or three (z, y, x), e.g. 2 or 1 2 2; got {factor}"
        )
    return tuple(float(f) for f in values)  # type: ignore[return-value]


def resampled_shape(shape: Sequence[int], ratio: Sequence[float]) -> tuple[int, int, int]:
    """Voxels per axis after resampling: ``n / ratio`` rounded half up, at least 1."""
    return tuple(max(1, int(np.floor(n / r + 0.5))) for n, r in zip(shape, ratio, strict=True))  # type: ignore[return-value]


def _coordinates(n_out: int, ratio: float, start: int = 0) -> np.ndarray:
    """Input coordinate of output voxels ``start ..``: voxel edges aligned, ``(i + 1/2) r - 1/2``."""
    return (np.arange(start, start + n_out) + 0.5) * ratio - 0.5


def _nearest(n_out: int, ratio: float, n: int, start: int = 0) -> np.ndarray:
    """Input index under the centre of output voxels ``start ..`` (nearest neighbour)."""
    return np.minimum(((np.arange(start, start + n_out) + 0.5) * ratio).astype(np.intp), n - 1)


def _cast(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Interpolated values in the input's dtype: integers rounded and clipped to its range."""
    if dtype.kind == "b":
        return values >= 0.5
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype, copy=False)


def _spline(
    data: np.ndarray, ratio: Sequence[float], offset: Sequence[float], out_shape: Sequence[int]
) -> np.ndarray:
    """Cubic B-spline samples of ``data`` (prefiltered here) at ``ratio * i + offset`` per axis."""
    return ndimage.affine_transform(
        np.asarray(data, np.float64),
        np.asarray(ratio, np.float64),  # a diagonal matrix: separable, no rotation
        offset=list(offset),
        output_shape=tuple(out_shape),
        output=np.float64,
        order=3,
        mode="nearest",
        prefilter=True,
    )


def resample_array(data: np.ndarray, ratio: Sequence[float], labels: bool = False) -> np.ndarray:
    """Resample a whole in-memory volume (the reference :func:`resample_volume` streams).

    Output voxel ``i`` samples the input at ``(i + 1/2) r - 1/2`` per axis (voxel
    edges aligned, so the volume keeps its extent): cubic B-spline for images
    (in the input's dtype; integers rounded and clipped), the voxel under the
    centre for labels.
    """
    shape = resampled_shape(data.shape, ratio)
    if labels:
        index = [_nearest(m, r, n) for m, r, n in zip(shape, ratio, data.shape, strict=True)]
        return np.ascontiguousarray(data[np.ix_(*index)])
    out = _spline(data, ratio, [(r - 1) / 2 for r in ratio], shape)
    return _cast(out, data.dtype)


def resampled_geometry(vol: Volume, ratio: Sequence[float]) -> dict[str, Any]:
    """``vol.geometry()`` after resampling by ``ratio``: new spacing, same extent and direction.

    The origin (the first voxel's centre) moves by half the change of voxel
    size along each axis, so that the resampled volume overlays its input.
    """
    geometry = vol.geometry()
    spacing = np.asarray(vol.spacing, np.float64)
    shift = np.asarray(vol.direction, np.float64) @ ((np.asarray(ratio) - 1) / 2 * spacing)
    geometry["spacing"] = tuple(float(s) for s in spacing * np.asarray(ratio))
    geometry["origin"] = tuple(float(o) for o in np.asarray(vol.origin) + shift)
    return geometry


def _source_range(o0: int, o1: int, ratio: float, n: int, labels: bool) -> tuple[int, int]:
    """Input range ``[lo, hi)`` along one axis that output voxels ``[o0, o1)`` need.

    For the spline: the 4 voxels of the cubic's support plus a halo of
    :data:`HALO` each side, so that the prefilter, run on the crop alone,
    matches the whole-volume one.
    """
    if labels:
        index = _nearest(o1 - o0, ratio, n, o0)
        return int(index[0]), int(index[-1]) + 1
    first, last = _coordinates(o1 - o0, ratio, o0)[[0, -1]]
    lo = int(np.floor(first)) - 1 - HALO
    hi = int(np.floor(last)) + 3 + HALO
    return max(0, lo), min(n, hi)


def _block(
    vol: Volume, start: Sequence[int], stop: Sequence[int], ratio: Sequence[float], labels: bool
) -> np.ndarray:
    """Output voxels ``[start, stop)`` (per axis), from the input crop they need."""
    axes = list(zip(start, stop, ratio, vol.shape, strict=True))
    ranges = [_source_range(a, b, r, n, labels) for a, b, r, n in axes]
    crop = vol[tuple(slice(lo, hi) for lo, hi in ranges)]
    if labels:
        index = [
            _nearest(b - a, r, n, a) - lo
            for (a, b, r, n), (lo, _) in zip(axes, ranges, strict=True)
        ]
        return crop[np.ix_(*index)]
    offset = [r * a + (r - 1) / 2 - lo for (a, _, r, _), (lo, _) in zip(axes, ranges, strict=True)]
    return _cast(_spline(crop, ratio, offset, [b - a for a, b, _, _ in axes]), vol.dtype)


def _stream(
    vol: Volume,
    writer: ZarrSlabWriter,
    ratio: Sequence[float],
    labels: bool,
    block: Sequence[int],
    progress: bool,
) -> None:
    """Resample ``vol`` into ``writer`` one z-slab at a time, each in blocks of ``block``."""
    nz, ny, nx = writer.shape
    dz, dy, dx = block
    with tqdm(
        total=nz, desc=f"resample {Path(vol.path).name}", unit="slice", disable=not progress
    ) as bar:
        for z0 in range(0, nz, dz):
            z1 = min(nz, z0 + dz)
            slab = np.empty((z1 - z0, ny, nx), vol.dtype)
            for y0 in range(0, ny, dy):
                for x0 in range(0, nx, dx):
                    y1, x1 = min(ny, y0 + dy), min(nx, x0 + dx)
                    slab[:, y0:y1, x0:x1] = _block(vol, (z0, y0, x0), (z1, y1, x1), ratio, labels)
            writer.write(z0, slab)
            bar.update(z1 - z0)


def _block_shape(
    out_shape: Sequence[int], ratio: Sequence[float], chunk_z: int
) -> tuple[int, int, int]:
    """Output block (z, y, x) whose input crop with halo stays near 128 MiB of float64.

    Whole planes when they fit, else tiles in y and x too (each with its own
    halo); as many z-slices as the budget allows, chunk-aligned when possible.
    """
    budget = (128 << 20) // 8
    pad = 2 * HALO + 6
    _, dy, dx = (int(n) for n in out_shape)

    def plane(dy: int, dx: int) -> float:  # input values of one crop's z-slice
        return (dy * ratio[1] + pad) * (dx * ratio[2] + pad)

    while plane(dy, dx) * (ratio[0] + pad) > budget // 2 and max(dy, dx) > 64:
        if dy >= dx:
            dy = -(-dy // 2)
        else:
            dx = -(-dx // 2)
    per_z = ratio[0] * plane(dy, dx) + out_shape[1] * out_shape[2]  # crop rows + output slab
    dz = int(max(1, min(out_shape[0], (budget - pad * plane(dy, dx)) // per_z)))
    return (dz // chunk_z * chunk_z if dz >= chunk_z else dz), dy, dx


def resample_volume(
    src: str | Path | Volume,
    dst: str | Path,
    factor: float | Sequence[float] | None = None,
    spacing: Sequence[float] | None = None,
    labels: bool = False,
    chunks: tuple[int, int, int] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    block: tuple[int, int, int] | None = None,
) -> tuple[int, int, int]:
    """Resample ``src`` by ``factor`` or to ``spacing`` and write ``dst`` (any format).

    Images are interpolated with cubic B-splines (the prefilter runs per block
    on a halo of :data:`HALO` voxels each side, so blocks join without seams),
    labels with nearest neighbour (``labels=True``: no new values). The work is
    streamed slab by slab to Zarr, so memory stays bounded whatever the size;
    another output format is written from that Zarr at the end (a work store
    ``DST.partial.zarr`` beside it, removed afterwards). The output has the new
    spacing, the input's direction and extent (see :func:`resampled_geometry`),
    the input's dtype and segment names. An input whose spacing is unknown
    (assumed 1) gives an output marked unknown when resampled by a factor,
    and known when resampled to a target spacing, which states the voxel size. Outputs are claimed as ``convert`` claims them:
    never an input, and a path meunet did not write only with ``overwrite``.

    Args:
        src: Input volume (a path, or an open :class:`Volume`, e.g. one opened with a
            spacing that overrides its file's).
        dst: Output path; the format follows the suffix.
        factor: Voxel-size multiplier, one number or (z, y, x): 2 halves the
            voxels per axis, 0.5 doubles them.
        spacing: Target (z, y, x) voxel size, in the input's unit.
        labels: Nearest neighbour, for label volumes.
        chunks: Zarr chunk shape of the output (default 64^3).
        overwrite: Replace a path that meunet did not write.
        progress: Show a progress bar.
        block: Output voxels (z, y, x) computed at a time (default: whole
            planes, or tiles of them, from an input crop of about 128 MiB as
            float64; the spline's copies take the peak to a few times that).

    Returns:
        The output shape (z, y, x).

    Example:
        >>> resample_volume("ct.nii.gz", "ct_2mm.zarr", spacing=(2, 2, 2))  # doctest: +SKIP
    """
    from meunet.data.io import detect_format, split_hdf5_path
    from meunet.data.io.ownership import claim_output, remove_owned

    vol = src if isinstance(src, Volume) else open_volume(src)
    try:
        ratio = resample_ratio(vol.spacing, factor, spacing)
        out_shape = resampled_shape(vol.shape, ratio)
        geometry = resampled_geometry(vol, ratio)
        direct = detect_format(dst, must_exist=False) == "zarr"
        work = str(dst).rstrip("/") if direct else f"{split_hdf5_path(str(dst))[0]}.partial.zarr"
        described = {
            "spacing_known": vol.spacing_known or spacing is not None,
            "segments": vol.meta.get("segments"),
        }
        with claim_output(dst, [vol], overwrite, command="resample"):
            with ZarrSlabWriter(
                work, out_shape, vol.dtype, chunks=chunks, inputs=[vol], overwrite=overwrite,
                **geometry, **described,
            ) as writer:  # fmt: skip
                block = block or _block_shape(out_shape, ratio, writer.array.chunks[0])
                _stream(vol, writer, ratio, labels, block, progress)
            if not direct:
                try:
                    with open_volume(work) as done:
                        write_volume(dst, done, overwrite=overwrite, inputs=[vol], **geometry)
                finally:
                    remove_owned(work)
    finally:
        if vol is not src:
            vol.close()
    return out_shape
