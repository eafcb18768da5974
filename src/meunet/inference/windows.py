"""Window geometry and the settings of the window engine: steps, weights, fusion, precision, batch.

Windows of side P lie on the training sampler's grid
(:func:`meunet.data.sampling.grid_positions`: step ``P * (1 - overlap)``, P/2
at the paper's overlap, from 0 until one reaches the end; zero padding
beyond). Each window's central half-cube votes with weight 2, the rest with
weight 1. P may be a cube's side or one side per axis, (z, y, x)
(:mod:`meunet.data.patch_size`). :mod:`meunet.inference.engine` runs them.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from meunet.data.patch_size import PatchSize, compact, patch_shape
from meunet.errors import SettingError

FUSIONS = ("vote", "prob")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
CPU_BATCH = 2  # batch_size="auto" on a CPU: today's default, fast enough and small
MAX_AUTO_BATCH = 8  # batch_size="auto" on a GPU: beyond this the GPU is busy anyway
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def centre_weights(patch: PatchSize) -> np.ndarray:
    """(Pz, Py, Px) weights: 2 in the central half along every axis, 1 elsewhere.

    ``patch`` is a cube's side or (z, y, x) sides (:mod:`meunet.data.patch_size`).
    """
    sides = patch_shape(patch)
    w = np.ones(sides, np.float32)
    centre = tuple(slice(p // 4, p // 4 + p // 2) for p in sides)
    w[centre] = 2.0
    return w


def window_step(patch: PatchSize, overlap: float) -> PatchSize:
    """Step between windows of ``patch`` overlapping by the fraction ``overlap`` (per axis for per-axis sides)."""
    if not 0.0 <= overlap < 1.0:
        raise SettingError(f"overlap must lie in [0, 1) (0.5: the paper's), got {overlap}")
    if isinstance(patch, int | np.integer):
        return max(1, round(patch * (1.0 - overlap)))
    steps = [max(1, round(p * (1.0 - overlap))) for p in patch_shape(patch)]
    return (steps[0], steps[1], steps[2])


def check_windows(
    patch: PatchSize, fusion: str, batch_size: int | str, overlap: float
) -> PatchSize:
    """Check the sliding-window settings a user chooses; return the step between windows.

    Every predictor calls this before it reads or writes anything.

    Raises:
        SettingError: naming the setting and the values it takes.
    """
    if fusion not in FUSIONS:
        raise SettingError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
    whole = isinstance(batch_size, int | np.integer) and not isinstance(batch_size, bool)
    if batch_size != "auto" and (not whole or batch_size < 1):  # type: ignore[operator]
        raise SettingError(
            "batch size (windows per forward pass, or 'auto': from free GPU memory) must be a "
            f"whole number >= 1, got {batch_size!r}"
        )
    return window_step(compact(patch), overlap)


def vote_dtype(patch: PatchSize, step: PatchSize) -> np.dtype:
    """The smallest unsigned integer type that holds any voxel's weighted vote count.

    A voxel lies in at most ceil(P / step) windows along each axis, and each
    window votes with weight at most 2: at the paper's overlap that is 16
    (uint8); at ``--overlap 0.99`` with P = 40 it is 128000 (uint32).

    Example:
        >>> vote_dtype(64, 32), vote_dtype(32, 4), vote_dtype(40, 1)
        (dtype('uint8'), dtype('uint16'), dtype('uint32'))
    """
    most = 2 * int(
        np.prod([-(-p // s) for p, s in zip(patch_shape(patch), patch_shape(step), strict=True)])
    )
    return np.min_scalar_type(most)


def argmax_classes(scores: np.ndarray) -> np.ndarray:
    """``scores.argmax(0).astype(uint8)`` for a few classes, several times faster.

    A running maximum over the class axis; on ties the lower class wins, as
    with ``argmax``. :func:`_argmax` is the same on a tensor.
    """
    best = scores[0].copy()
    winner = np.zeros(best.shape, np.uint8)
    for c in range(1, scores.shape[0]):
        better = scores[c] > best
        winner[better] = c
        np.maximum(best, scores[c], out=best)
    return winner


def _argmax(scores: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """:func:`argmax_classes` on the scores' device, along ``dim``, as uint8."""
    first = scores.select(dim, 0)
    best = first.clone()
    winner = torch.zeros(first.shape, dtype=torch.uint8, device=scores.device)
    for c in range(1, scores.shape[dim]):
        other = scores.select(dim, c)
        winner.masked_fill_(other > best, c)
        torch.maximum(best, other, out=best)
    return winner


def _vote_tensor_dtype(patch: PatchSize, step: PatchSize) -> torch.dtype:
    """A torch type for :func:`vote_dtype`'s counts (torch's uint16/uint32 lack arithmetic)."""
    return {1: torch.uint8, 2: torch.int32}.get(vote_dtype(patch, step).itemsize, torch.int64)


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """``"auto"``: bf16 autocast on a CUDA GPU that has it, else fp16; fp32 elsewhere.

    Raises:
        SettingError: an unknown precision.
    """
    if precision not in PRECISIONS:
        raise SettingError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    if torch.device(device).type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def _autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_AUTOCAST[precision])


def auto_batch(per_window: int, free: int, windows_per_row: int) -> int:
    """Windows per forward pass that use at most half of ``free`` bytes of GPU memory.

    ``per_window``: the peak memory of a forward pass of one window. No more
    than :data:`MAX_AUTO_BATCH` (beyond it the GPU is busy anyway) nor than a
    row of windows holds.

    Example:
        >>> auto_batch(1 << 30, 10 << 30, 49), auto_batch(1 << 30, 1 << 30, 49)
        (5, 1)
    """
    fits = int(free // 2 // max(per_window, 1))
    return max(1, min(fits, MAX_AUTO_BATCH, windows_per_row))


def resolve_batch(
    batch_size: int | str,
    model: torch.nn.Module,
    patch: PatchSize,
    channels: tuple[int, int],
    device: torch.device,
    precision: str,
    windows_per_row: int,
) -> int:
    """``batch_size``, or for ``"auto"`` one measured from a forward pass and free GPU memory."""
    if batch_size != "auto":
        return int(batch_size)
    if device.type != "cuda":
        return CPU_BATCH
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    sides = patch_shape(patch)
    x = torch.zeros(1, channels[0], *sides, device=device)
    e = torch.zeros(1, channels[1], *sides, device=device) if channels[1] else None
    with torch.no_grad(), _autocast(precision, device):
        model(x, e)
    per_window = torch.cuda.max_memory_allocated(device) - base
    del x, e
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info(device)
    return auto_batch(per_window, free, windows_per_row)
