"""NIfTI volumes (``.nii``, ``.nii.gz``) through nibabel.

NIfTI stores x fastest; meunet's (z, y, x) order is the file's (i, j, k)
reversed. Uncompressed ``.nii`` crops read only their bytes. A ``.nii.gz``
cannot be read at random: each crop decompresses the stream up to it (slabs
read in order are cheap, random crops are not); convert it once with
``meunet convert IN OUT.zarr``.

The affine becomes meunet's one orientation (:mod:`meunet.data.volume`):
origin, spacing (the header's voxel sizes) and direction (the affine's
columns divided by them), in the RAS world of NIfTI. Writing reverses this,
so a volume read here and written back keeps its affine exactly; a volume
from an LPS NRRD is turned into RAS on writing.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np

from meunet.data.io.atomic import atomic_path
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


def read(path: str) -> Volume:
    """Open a NIfTI-1/2 file; singleton trailing dimensions are dropped."""
    img = nib.load(path, keep_file_open=True)
    proxy = img.dataobj
    full = tuple(int(n) for n in img.shape)
    if len(full) < 3 or any(n != 1 for n in full[3:]):
        raise VolumeError(
            f"{path}: NIfTI image has shape {full}; meunet reads 3D volumes: "
            "save each channel or time point as its own file and list them in dataset.yaml"
        )
    x, y, z = full[:3]
    extra = (0,) * (len(full) - 3)
    zooms = img.header.get_zooms()[:3]
    spacing = as_spacing((zooms[2], zooms[1], zooms[0]), path)
    affine = np.asarray(img.affine, dtype=float)
    columns = affine[2::-1, 2::-1] / np.asarray(spacing)  # (z, y, x) both ways
    gz = path.lower().endswith(".gz")

    def read_crop(slices: Slices) -> np.ndarray:
        sz, sy, sx = slices
        return np.asarray(proxy[(sx, sy, sz, *extra)]).transpose(2, 1, 0)

    dtype = np.asarray(proxy[(slice(0, 1),) * 3 + extra]).dtype  # after any scl_slope scaling
    return Volume(
        path=path,
        shape=(z, y, x),
        dtype=dtype,
        spacing=spacing,
        origin=(float(affine[2, 3]), float(affine[1, 3]), float(affine[0, 3])),
        direction=as_direction(columns, path),
        space="RAS",
        read_crop=read_crop,
        format="nifti",
        lazy=not gz,
    )


def write(
    path: str,
    data: np.ndarray,
    spacing: Spacing,
    origin: Spacing,
    direction: Direction = IDENTITY,
    space: str = "",
) -> None:
    """Write a (z, y, x) array as NIfTI-1 (gzip for ``.nii.gz``).

    The affine is built from spacing, origin and direction (turned into RAS
    when ``space`` names another anatomical frame, such as ``"LPS"``) and
    stored as both sform and qform (the qform only where the direction is a
    rotation, possibly with a flip), with code "aligned".
    """
    spacing = as_spacing(spacing, path)
    signs = _signs_to_ras(space)
    columns = signs[:, None] * np.asarray(direction, dtype=float) * np.asarray(spacing)
    affine = np.eye(4)
    affine[:3, :3] = columns[::-1, ::-1]
    affine[:3, 3] = (signs * np.asarray(origin, dtype=float))[::-1]
    unit = np.asarray(direction, dtype=float)
    rigid = np.allclose(unit.T @ unit, np.eye(3), atol=1e-6)
    img = nib.Nifti1Image(np.asarray(data).transpose(2, 1, 0), affine)
    img.set_qform(affine, code="aligned" if rigid else "unknown")
    img.set_sform(affine, code="aligned")
    img.header.set_zooms((spacing[2], spacing[1], spacing[0]))
    img.header.set_xyzt_units("mm")
    suffix = ".nii.gz" if path.lower().endswith(".gz") else ".nii"
    with atomic_path(path) as tmp:
        # nibabel picks compression from the file name, so the temporary name keeps the suffix
        nib.save(img, tmp + suffix)
        import os

        os.replace(tmp + suffix, tmp)


def _signs_to_ras(space: str) -> np.ndarray:
    """Per world axis, in (z, y, x) order, the sign that turns ``space`` into RAS.

    ``space`` is a three-letter anatomical frame such as ``"LPS"``; any other
    (none named, or a scanner frame) is written as it is.
    """
    pairs = ("RL", "AP", "SI")
    code = space.upper()
    if len(code) != 3 or not all(c in pair for c, pair in zip(code, pairs, strict=True)):
        return np.ones(3)
    signs = [1.0 if c == pair[0] else -1.0 for c, pair in zip(code, pairs, strict=True)]
    return np.array(signs[::-1])
