"""NIfTI volumes (``.nii``, ``.nii.gz``) through nibabel.

NIfTI stores x fastest; meunet's (z, y, x) order is the file's (i, j, k)
reversed. Uncompressed ``.nii`` crops read only their bytes. A ``.nii.gz``
cannot be read at random: each crop decompresses the stream up to it (slabs
read in order are cheap, random crops are not); convert it once with
``meunet convert IN OUT.zarr``. The file's affine is kept in ``meta`` so that
a prediction written with ``affine=`` overlays its input in any viewer.
"""

from __future__ import annotations

from typing import Any

import nibabel as nib
import numpy as np

from meunet.data.io.atomic import atomic_path
from meunet.data.volume import Slices, Spacing, Volume, as_spacing
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
    affine = np.asarray(img.affine, dtype=float)
    gz = path.lower().endswith(".gz")

    def read_crop(slices: Slices) -> np.ndarray:
        sz, sy, sx = slices
        return np.asarray(proxy[(sx, sy, sz, *extra)]).transpose(2, 1, 0)

    dtype = np.asarray(proxy[(slice(0, 1),) * 3 + extra]).dtype  # after any scl_slope scaling
    return Volume(
        path=path,
        shape=(z, y, x),
        dtype=dtype,
        spacing=as_spacing((zooms[2], zooms[1], zooms[0]), path),
        origin=(float(affine[2, 3]), float(affine[1, 3]), float(affine[0, 3])),
        read_crop=read_crop,
        format="nifti",
        lazy=not gz,
        meta={"affine": affine.tolist()},
    )


def write(
    path: str,
    data: np.ndarray,
    spacing: Spacing,
    origin: Spacing,
    affine: Any = None,
) -> None:
    """Write a (z, y, x) array as NIfTI-1 (gzip for ``.nii.gz``).

    ``affine`` (4x4, of the file's i, j, k axes) takes precedence over
    spacing and origin; pass ``volume.meta["affine"]`` to keep an input's
    orientation.
    """
    spacing = as_spacing(spacing, path)
    if affine is None:
        affine = np.diag([spacing[2], spacing[1], spacing[0], 1.0])
        affine[:3, 3] = [origin[2], origin[1], origin[0]]
    img = nib.Nifti1Image(np.asarray(data).transpose(2, 1, 0), np.asarray(affine, dtype=float))
    img.header.set_zooms((spacing[2], spacing[1], spacing[0]))
    img.header.set_xyzt_units("mm")
    suffix = ".nii.gz" if path.lower().endswith(".gz") else ".nii"
    with atomic_path(path) as tmp:
        # nibabel picks compression from the file name, so the temporary name keeps the suffix
        nib.save(img, tmp + suffix)
        import os

        os.replace(tmp + suffix, tmp)
