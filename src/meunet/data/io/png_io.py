"""PNG volumes: a folder of 2D slices in natural sort order, or one 2D image.

Each slice is decoded only when a crop's z-range needs it (PNG has no random
access inside an image, so a crop reads the whole 2D slices of its z-range).
A single ``x.png`` is a volume of one slice, shape (1, Y, X).

Grey 8- and 16-bit PNGs are read as uint8 and uint16, 1-bit as uint8 (0, 1)
and palette PNGs as their palette indices (the usual form of label PNGs). An
RGB or RGBA PNG is read as grey when R, G and B are equal in every pixel (a
grey image saved in colour; alpha is ignored) and refused otherwise: meunet
reads one channel per volume.

PNG stores no voxel size (its ``pHYs`` is a print resolution), so spacing is
1 and marked unknown (``Volume.spacing_known``); set ``spacing:`` in
dataset.yaml. meunet reads PNG but does not write it.
"""

from __future__ import annotations

import os

import numpy as np
from natsort import natsorted
from PIL import Image

from meunet.data.volume import Volume, slice_stack_reader
from meunet.errors import VolumeError

PNG_SUFFIXES = (".png",)
#: Pillow mode -> dtype read; some Pillow versions open 16-bit grey as "I" (PNG has <= 16 bits)
_GREY = {
    "L": np.uint8, "P": np.uint8, "1": np.uint8,
    "I;16": np.uint16, "I;16B": np.uint16, "I": np.uint16,
}  # fmt: skip
_COLOUR = ("RGB", "RGBA", "LA")


def slice_files(folder: str) -> list[str]:
    """PNG files of a folder in natural sort order (slice_2 before slice_10)."""
    names = [
        n for n in os.listdir(folder) if n.lower().endswith(PNG_SUFFIXES) and not n.startswith(".")
    ]
    return [os.path.join(folder, n) for n in natsorted(names)]


def _header(path: str) -> tuple[tuple[int, int], np.dtype]:
    """(Y, X) and the dtype a slice reads as, from the PNG header alone."""
    with Image.open(path) as img:
        if img.format != "PNG":
            raise VolumeError(f"{path}: not a PNG file (it is {img.format}); re-export it as PNG")
        mode, (width, height) = img.mode, img.size
    if mode in _GREY:
        return (height, width), np.dtype(_GREY[mode])
    if mode in _COLOUR:
        return (height, width), np.dtype(np.uint8)  # checked grey when read
    raise VolumeError(
        f"{path}: PNG of mode {mode!r} is not supported; save it as 8- or 16-bit grey"
    )


def _read_slice(path: str, dtype: np.dtype) -> np.ndarray:
    with Image.open(path) as img:
        arr = np.asarray(img)
    if arr.ndim == 3:  # RGB, RGBA, LA: grey only if the colour channels agree
        colour = arr[..., :3] if arr.shape[2] >= 3 else arr[..., :1]
        if not (colour == colour[..., :1]).all():
            raise VolumeError(
                f"{path}: colour PNG (R, G, B differ); meunet reads one grey channel per "
                "volume: save the slices as 8- or 16-bit grey (labels: one class value per pixel)"
            )
        arr = colour[..., 0]
    return arr.astype(dtype, copy=False)


def read(path: str) -> Volume:
    """Open a folder of 2D PNG slices, or one 2D PNG as a 1-slice volume."""
    files = slice_files(path) if os.path.isdir(path) else [path]
    if not files:
        raise VolumeError(f"{path}: folder holds no .png slices")
    page_shape, dtype = _header(files[0])
    read_crop = slice_stack_reader(path, files, _header, lambda f: _read_slice(f, dtype))

    return Volume(
        path=path,
        shape=(len(files), page_shape[0], page_shape[1]),
        dtype=dtype,
        spacing=(1.0, 1.0, 1.0),
        spacing_known=False,
        read_crop=read_crop,
        format="png",
        meta={"slices": len(files)},
    )
