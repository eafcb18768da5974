"""The window grid shared by the training sampler and the sliding-window predictor."""

from __future__ import annotations


def grid_positions(n: int, patch: int, step: int | None = None) -> list[int]:
    """Starts of the half-overlap windows covering an axis of ``n`` voxels.

    Positions are 0, s, 2s, ... (s = ``step``, by default ``patch // 2``) up to
    the first whose window reaches the end (``pos + patch >= n``); the rest is
    zero padding.

    Example:
        >>> grid_positions(33, 16)
        [0, 8, 16, 24]
        >>> grid_positions(10, 16)
        [0]
    """
    if n < 1 or patch < 2 or patch % 2:
        raise ValueError(f"need n >= 1 and an even patch >= 2, got n={n}, patch={patch}")
    step = patch // 2 if step is None else step
    if not 1 <= step <= patch:
        raise ValueError(f"window step must lie in 1..{patch}, got {step}")
    out = [0]
    while out[-1] + patch < n:
        out.append(out[-1] + step)
    return out
