"""Sliding-window prediction of an in-memory volume.

The method: ``docs/method.md``, *Sliding-window inference*.

Windows of side P lie on the training sampler's grid
(:func:`meunet.data.sampling.grid_positions`: step P/2 from 0 until one
reaches the end); the volume is zero-padded there. Each window's central half-cube (the middle P/2 along every axis)
votes with weight 2, the rest with weight 1. Fusion ``"vote"`` sums weighted
one-hot votes (the paper's); ``"prob"`` sums weighted softmax probabilities.

This version holds the volume and its accumulators in memory: it serves
validation during training. Volumes larger than RAM go through the
streaming predictor.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from meunet.data.sampling import grid_positions
from meunet.errors import SettingError
from meunet.models import UNet3D

FUSIONS = ("vote", "prob")


def argmax_classes(scores: np.ndarray) -> np.ndarray:
    """``scores.argmax(0).astype(uint8)`` for a few classes, several times faster.

    A running maximum over the class axis; on ties the lower class wins, as
    with ``argmax``.
    """
    best = scores[0].copy()
    winner = np.zeros(best.shape, np.uint8)
    for c in range(1, scores.shape[0]):
        better = scores[c] > best
        winner[better] = c
        np.maximum(best, scores[c], out=best)
    return winner


def centre_weights(patch: int) -> np.ndarray:
    """(P, P, P) weights: 2 in the central half-cube, 1 elsewhere."""
    w = np.ones((patch,) * 3, np.float32)
    lo = patch // 4
    hi = lo + patch // 2
    w[lo:hi, lo:hi, lo:hi] = 2.0
    return w


def window_step(patch: int, overlap: float) -> int:
    """Step between windows of side ``patch`` overlapping by the fraction ``overlap``."""
    if not 0.0 <= overlap < 1.0:
        raise SettingError(f"overlap must lie in [0, 1) (0.5: the paper's), got {overlap}")
    return max(1, round(patch * (1.0 - overlap)))


def check_windows(patch: int, fusion: str, batch_size: int, overlap: float) -> int:
    """Check the sliding-window settings a user chooses; return the step between windows.

    Every predictor calls this before it reads or writes anything.

    Raises:
        SettingError: naming the setting and the values it takes.
    """
    if fusion not in FUSIONS:
        raise SettingError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
    whole = isinstance(batch_size, int | np.integer) and not isinstance(batch_size, bool)
    if not whole or batch_size < 1:
        raise SettingError(
            f"batch size (windows per forward pass) must be a whole number >= 1, got {batch_size!r}"
        )
    return window_step(patch, overlap)


def vote_dtype(patch: int, step: int) -> np.dtype:
    """The smallest unsigned integer type that holds any voxel's weighted vote count.

    A voxel lies in at most ceil(P / step) windows along each axis, and each
    window votes with weight at most 2: at the paper's overlap that is 16
    (uint8); at ``--overlap 0.99`` with P = 40 it is 128000 (uint32).

    Example:
        >>> vote_dtype(64, 32), vote_dtype(32, 4), vote_dtype(40, 1)
        (dtype('uint8'), dtype('uint16'), dtype('uint32'))
    """
    most = 2 * (-(-patch // step)) ** 3
    return np.min_scalar_type(most)


def _windows(shape: tuple[int, int, int], patch: int, step: int) -> Iterator[tuple[int, int, int]]:
    for z in grid_positions(shape[0], patch, step):
        for y in grid_positions(shape[1], patch, step):
            for x in grid_positions(shape[2], patch, step):
                yield z, y, x


@torch.no_grad()
def predict_array(
    model: UNet3D,
    image: np.ndarray,
    patch: int,
    extra: np.ndarray | None = None,
    fusion: str = "vote",
    batch_size: int = 2,
    device: str | torch.device = "cpu",
    overlap: float = 0.5,
) -> np.ndarray:
    """Labels (uint8, z, y, x) of a normalised (channels, z, y, x) image.

    Args:
        model: Network in any mode (it is put in eval mode and restored).
        image: Normalised image, (channels, z, y, x).
        patch: Window side P.
        extra: Stage-1 one-hot maps (n, z, y, x) for a stage-2 network.
        fusion: ``"vote"`` (weighted one-hot, the paper's) or ``"prob"``.
        batch_size: Windows per forward pass.
        device: Where the network runs; fusion happens on the CPU.
        overlap: Fraction of a window its neighbour overlaps (0.5: the paper's).
    """
    step = check_windows(patch, fusion, batch_size, overlap)
    was_training = model.training
    model.eval()
    c, *size = image.shape
    shape = (size[0], size[1], size[2])
    padded = [grid_positions(n, patch, step)[-1] + patch for n in shape]
    img = np.zeros((c, *padded), np.float32)
    img[:, : shape[0], : shape[1], : shape[2]] = image
    ext = None
    if extra is not None:
        ext = np.zeros((extra.shape[0], *padded), np.float32)
        ext[:, : shape[0], : shape[1], : shape[2]] = extra
    classes = model.cfg.num_classes
    acc = np.zeros((classes, *padded), np.float32)
    weights = torch.from_numpy(centre_weights(patch))
    starts = list(_windows(shape, patch, step))

    def crop(a: np.ndarray, s: tuple[int, int, int]) -> np.ndarray:
        return a[:, s[0] : s[0] + patch, s[1] : s[1] + patch, s[2] : s[2] + patch]

    for i in range(0, len(starts), batch_size):
        group = starts[i : i + batch_size]
        x = torch.from_numpy(np.stack([crop(img, s) for s in group])).to(device)
        e = (
            None
            if ext is None
            else torch.from_numpy(np.stack([crop(ext, s) for s in group])).to(device)
        )
        logits = model(x, e).float().cpu()
        if fusion == "vote":
            votes = F.one_hot(logits.argmax(1), classes).movedim(-1, 1).float()
        else:
            votes = torch.softmax(logits, 1)
        votes = (votes * weights).numpy()
        for v, s in zip(votes, group, strict=True):
            crop(acc, s)[...] += v
    model.train(was_training)
    return argmax_classes(acc[:, : shape[0], : shape[1], : shape[2]])
