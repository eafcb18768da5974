"""Stream a volume from any format into another, slab by slab."""

from __future__ import annotations

from pathlib import Path

from meunet.data.io import detect_format, open_volume, write_volume
from meunet.data.volume import Spacing
from meunet.errors import SettingError


def convert(
    src: str | Path,
    dst: str | Path,
    chunks: tuple[int, int, int] | None = None,
    spacing: Spacing | None = None,
    zarr_format: int = 3,
    progress: bool = True,
    overwrite: bool = False,
) -> None:
    """Convert ``src`` to ``dst``, keeping values, dtype, spacing, origin and direction.

    To Zarr, HDF5, NumPy and TIFF the memory used is one slab; reading a gzip
    NIfTI/NRRD in z order is one pass over its stream, so converting it to
    Zarr once makes every later crop cheap. ``dst`` is never ``src`` (nor
    inside it); an existing ``dst`` that meunet did not write is refused
    unless ``overwrite``.
    """
    if chunks is not None and (len(chunks) != 3 or min(chunks) < 1):
        raise SettingError(f"chunks must be three numbers >= 1 (z, y, x), got {list(chunks)}")
    vol = open_volume(src, spacing=spacing)
    try:
        options = {}
        if detect_format(dst, must_exist=False) == "zarr":
            options = {"chunks": chunks, "zarr_format": zarr_format, "progress": progress}
        write_volume(dst, vol, overwrite=overwrite, **options)
    finally:
        vol.close()
