"""Per-volume intensity statistics: the z-score normalisation training and prediction share."""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from meunet.data.volume import Volume, slab_depth
from meunet.errors import VolumeError

STREAM_BYTES = 32 << 20  # float64 bytes of one slab while streaming statistics
#: Slabs read and reduced at once where the format allows reads from several threads. They
#: are merged in z order, so the result does not depend on it.
STATS_THREADS = 4
THREAD_SAFE_FORMATS = frozenset({"zarr", "numpy"})


def channel_stats(
    vol: Volume, advance: Callable[[int], object] | None = None
) -> tuple[float, float]:
    """Mean and standard deviation of a whole volume, streamed in slabs.

    Slabs are merged with Chan et al.'s pairwise update in float64, so the
    result does not depend on the slab size beyond rounding. A standard
    deviation below 1e-8 (a constant image) is returned as 1.0.

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
    depth = slab_depth(vol.shape, np.float64, STREAM_BYTES)

    def moments(z0: int) -> tuple[int, float, float, int]:
        x = np.asarray(vol[z0 : z0 + depth], dtype=np.float64)
        mb = float(x.mean())
        return x.size, mb, float(np.square(x - mb).sum()), len(x)

    threads = STATS_THREADS if vol.format in THREAD_SAFE_FORMATS else 1
    n, mean, m2 = 0, 0.0, 0.0
    with ThreadPoolExecutor(threads) as pool:  # each thread holds one slab at a time
        for nb, mb, m2b, slices in pool.map(moments, range(0, vol.shape[0], depth)):
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
