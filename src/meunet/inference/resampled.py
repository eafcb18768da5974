"""Prediction at the training resolution, written at the input's (``predict --resample-back``).

A network learns features at the voxel size it was trained at. A scan taken
at another resolution is resampled to that voxel size (cubic B-spline,
streamed: :func:`~meunet.data.resample.resample_volume`), predicted there,
and its labels resampled back (nearest neighbour) onto the scan's own grid,
so the output has the scan's shape, spacing, origin and direction. The
checkpoint records its training voxel size (``spacing``); the intermediate
volumes are work stores beside the output (``OUTPUT.*.partial.zarr``),
removed at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from meunet.data.volume import Volume
from meunet.errors import MeunetError

#: Relative difference of voxel sizes below which no resampling is done.
SAME_SPACING = 1e-6


def model_spacing(model: Path) -> list[float] | None:
    """The (z, y, x) voxel size a checkpoint (or a cascade.json's stage 2) was trained at."""
    from meunet.models import load_checkpoint

    if model.suffix == ".json":
        from meunet.training.run import CascadeManifest

        model = model.parent / CascadeManifest.read(model).stage2.checkpoint
    spacing = load_checkpoint(model).get("spacing")
    return [float(s) for s in spacing] if spacing else None


def predict_resampled(
    model: Path,
    vols: Sequence[Volume],
    output: str | Path,
    opts: Any,
    predict: Callable[..., Path],
) -> Path:
    """Resample ``vols`` to ``model``'s training voxel size, predict, and resample back.

    Args:
        model: A checkpoint or cascade.json that records its training spacing.
        vols: The input channels (their spacing must be known).
        output: The labels, on the inputs' grid.
        opts: :class:`meunet.PredictOptions` (``resample_back`` and ``spacing``, already
            applied to ``vols``, are dropped for the inner prediction).
        predict: :func:`meunet.predict`.

    Raises:
        MeunetError: the checkpoint records no spacing, or an input's is unknown.
    """
    from meunet.data.io import open_volume, write_volume
    from meunet.data.io.ownership import prepare_output, remove_owned
    from meunet.data.resample import resample_ratio, resample_volume

    if opts.stage1:
        raise MeunetError(
            f"{model}: --stage1 maps lie on the scan's grid, not the training voxel size's: "
            "predict the whole cascade from its cascade.json with --resample-back instead"
        )
    trained = model_spacing(model)
    if trained is None:
        raise MeunetError(
            f"{model}: it records no training voxel size (trained on files without spacing, or "
            "by an older meunet), so --resample-back cannot know what to resample to: "
            "resample the scan with `meunet resample --spacing Z Y X` and predict without it"
        )
    first = vols[0]
    for vol in vols:
        if not vol.spacing_known:
            raise MeunetError(
                f"{vol.path}: its voxel size is unknown, so it cannot be resampled to the "
                f"training's {tuple(trained)}: give it one (`meunet convert --spacing Z Y X`) "
                "or predict without --resample-back"
            )
        if not np.allclose(vol.spacing, first.spacing, rtol=SAME_SPACING):
            raise MeunetError(
                f"{vol.path}: spacing {vol.spacing} differs from {first.path}'s {first.spacing}; "
                "the input channels must share one grid"
            )
    inner = opts.with_(resample_back=False, spacing=None)  # the volumes carry a given one
    ratio = resample_ratio(first.spacing, target=trained)
    if np.allclose(ratio, 1.0, rtol=0, atol=SAME_SPACING):
        return predict(model, vols, output, options=inner)  # already at the training's

    target = str(output).rstrip("/")
    prepare_output(target, vols, opts.overwrite)  # refuse before any work
    inputs = [f"{target}.input{i}.partial.zarr" for i in range(len(vols))]
    labels = f"{target}.labels.partial.zarr"
    back = f"{target}.back.partial.zarr"
    for vol, work in zip(vols, inputs, strict=True):
        resample_volume(vol, work, spacing=trained, progress=opts.progress)
    predict(model, inputs, labels, options=inner.with_(overwrite=False))
    with open_volume(labels) as low:
        factor = [n_low / n for n_low, n in zip(low.shape, first.shape, strict=True)]
    shape = resample_volume(labels, back, factor=factor, labels=True, progress=opts.progress)
    if tuple(shape) != tuple(first.shape):  # resampled_shape(n_low, n_low / n) is n
        raise AssertionError(f"labels resampled back to {shape}, not {first.shape}")
    with open_volume(back) as done:
        write_volume(
            target, done, overwrite=opts.overwrite, inputs=vols, **first.geometry(),
            spacing_known=True,
        )  # fmt: skip
    for work in [*inputs, labels, back]:  # kept after a failure: a rerun replaces them
        remove_owned(work)
    return Path(target)
