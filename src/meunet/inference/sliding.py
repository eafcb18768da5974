"""Sliding-window prediction of an in-memory volume (validation during training).

A thin layer over the window engine (:mod:`meunet.inference.engine`), with
an in-memory sink: the same windows, fusion and labels as the streaming
predictor, voxel for voxel.
"""

from __future__ import annotations

import numpy as np
import torch

from meunet.data.patch_size import PatchSize
from meunet.inference.engine import Channels, run_windows
from meunet.inference.sinks import ArraySink
from meunet.inference.windows import (  # the geometry's home; kept importable here
    FUSIONS,
    argmax_classes,
    centre_weights,
    check_windows,
    vote_dtype,
    window_step,
)
from meunet.models import UNet3D

__all__ = [
    "FUSIONS",
    "argmax_classes",
    "centre_weights",
    "check_windows",
    "predict_array",
    "vote_dtype",
    "window_step",
]


@torch.no_grad()
def predict_array(
    model: UNet3D,
    image: np.ndarray,
    patch: PatchSize,
    extra: np.ndarray | None = None,
    fusion: str = "vote",
    batch_size: int | str = 2,
    device: str | torch.device = "cpu",
    overlap: float = 0.5,
    precision: str = "auto",
) -> np.ndarray:
    """Labels (uint8, z, y, x) of a normalised (channels, z, y, x) image.

    Args:
        model: Network in any mode (it is put in eval mode and restored).
        image: Normalised image, (channels, z, y, x).
        patch: Window: a side, or (z, y, x) sides (:mod:`meunet.data.patch_size`).
        extra: Stage-1 one-hot maps (n, z, y, x) for a stage-2 network.
        fusion: ``"vote"`` (weighted one-hot, the paper's) or ``"prob"``.
        batch_size: Windows per forward pass, or ``"auto"``.
        device: Where the network runs, and fusion with it.
        overlap: Fraction of a window its neighbour overlaps (0.5: the paper's).
        precision: ``"auto"`` (bf16 or fp16 autocast on CUDA, fp32 elsewhere),
            ``"bf16"``, ``"fp16"`` or ``"fp32"``.
    """
    step = check_windows(patch, fusion, batch_size, overlap)
    was_training = model.training
    model.eval()
    sink = ArraySink((image.shape[1], image.shape[2], image.shape[3]))
    maps = None if extra is None else Channels.array(extra)
    try:
        run_windows(model, Channels.array(image), sink, patch, step, maps, fusion, batch_size,
                    device, precision)  # fmt: skip
    finally:
        model.train(was_training)
    return sink.array
