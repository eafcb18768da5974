"""Per-volume intensity statistics: the z-score normalisation training and prediction share."""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from meunet.data.volume import Volume, slab_depth
from meunet.errors import VolumeError

STREAM_BYTES = 32 << 20  # float64 bytes reduced at a time while streaming statistics
READ_BYTES = 32 << 20  # bytes of one slab read (rounded to whole z-chunks of a chunked store)
#: Slabs read and reduced at once where the format allows reads from several threads. They
#: are merged in z order, so the result does not depend on it.
STATS_THREADS = 4
THREAD_SAFE_FORMATS = frozenset({"zarr", "numpy"})
_COUNT_PIECE = 1 << 22  # values counted at a time (np.bincount copies them as 8-byte ints)

Moments = tuple[int, float, float]  # voxels, mean, sum of squared deviations


def channel_stats(
    vol: Volume, advance: Callable[[int], object] | None = None
) -> tuple[float, float]:
    """Mean and standard deviation of a whole volume, streamed in slabs.

    Slabs follow the store's z-chunks, so that no chunk is decoded twice,
    and up to :data:`STATS_THREADS` are read at once where the format allows.
    8- and 16-bit integer images (most scans) are counted into a histogram of
    their values, from which both follow exactly; other types are reduced in
    float64 pieces merged with Chan et al.'s pairwise update in z order. The
    result does not depend on the number of threads. A standard deviation
    below 1e-8 (a constant image) is returned as 1.0.

    Args:
        vol: The image.
        advance: Called with the number of z-slices read after each slab (a progress bar).

    Raises:
        VolumeError: if the volume holds NaN or infinite values.
    """
    if vol.dtype.kind not in "biuf":  # complex would lose its imaginary part unseen
        raise VolumeError(
            f"{vol.path}: image dtype {vol.dtype} is not a real number type; "
            "save the image as integers or floats (e.g. the magnitude of complex data)"
        )
    depth = slab_depth(vol.shape, vol.dtype, READ_BYTES)
    chunk = int((vol.meta.get("chunks") or (0,))[0]) if vol.format == "zarr" else 0
    if chunk:
        depth = max(chunk, depth // chunk * chunk)
    threads = STATS_THREADS if vol.format in THREAD_SAFE_FORMATS else 1
    starts = range(0, vol.shape[0], depth)
    if vol.dtype.kind in "ui" and vol.dtype.itemsize <= 2:
        return _histogram_stats(vol, starts, depth, threads, advance)
    piece = slab_depth(vol.shape, np.float64, STREAM_BYTES)

    def moments(z0: int) -> tuple[list[Moments], int]:
        slab = vol[z0 : z0 + depth]
        parts = []
        for p0 in range(0, len(slab), piece):
            x = np.asarray(slab[p0 : p0 + piece], dtype=np.float64)
            mb = float(x.mean())
            parts.append((x.size, mb, float(np.square(x - mb).sum())))
        return parts, len(slab)

    n, mean, m2 = 0, 0.0, 0.0
    with ThreadPoolExecutor(threads) as pool:  # each thread holds one slab at a time
        for parts, slices in pool.map(moments, starts):
            for nb, mb, m2b in parts:
                delta, total = mb - mean, n + nb
                mean += delta * nb / total
                m2 += m2b + delta * delta * n * nb / total
                n = total
            if advance is not None:
                advance(slices)
    std = math.sqrt(m2 / n)
    if not (math.isfinite(mean) and math.isfinite(std)):
        raise VolumeError(f"{vol.path}: image holds NaN or infinite values; fix or re-export it")
    return mean, std if std >= 1e-8 else 1.0


def _histogram_stats(
    vol: Volume,
    starts: range,
    depth: int,
    threads: int,
    advance: Callable[[int], object] | None,
) -> tuple[float, float]:
    """:func:`channel_stats` of an 8- or 16-bit integer image, from the counts of its values."""
    info = np.iinfo(vol.dtype)
    offset, bins = -int(info.min), int(info.max) - int(info.min) + 1

    def count(z0: int) -> tuple[np.ndarray, int]:
        slab = vol[z0 : z0 + depth]
        flat = slab.reshape(-1)
        counts = np.zeros(bins, np.int64)
        for i in range(0, flat.size, _COUNT_PIECE):
            part = flat[i : i + _COUNT_PIECE]
            counts += np.bincount(
                part if offset == 0 else part.astype(np.int32) + offset, minlength=bins
            )
        return counts, len(slab)

    counts = np.zeros(bins, np.int64)
    with ThreadPoolExecutor(threads) as pool:  # each thread holds one slab at a time
        for part, slices in pool.map(count, starts):
            counts += part
            if advance is not None:
                advance(slices)
    values = np.arange(bins, dtype=np.int64) - offset
    n = int(counts.sum())
    mean = int((counts * values).sum()) / n  # the sum is exact in int64
    std = math.sqrt(float((counts * np.square(values - mean)).sum()) / n)
    return mean, std if std >= 1e-8 else 1.0
