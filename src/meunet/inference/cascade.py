"""Predict with a whole cascade (``cascade.json`` written by ``meunet train-cascade``).

Stage-1 branches stream their labels to Zarr volumes beside the output;
stage 2 then reads them lazily as its extra inputs. No full-volume float map
is ever held. A low-resolution stage 1 needs its input downsampled: that
copy is made in memory (one case at a time), the only step that is not
streamed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from meunet.data.io import open_volume, split_hdf5_path, write_volume
from meunet.data.io.ownership import claim_output, make_folder, remove_owned
from meunet.data.patch_size import PatchSize
from meunet.data.resample import downsample_image, upsample_labels
from meunet.data.sampling import channel_stats
from meunet.data.volume import Volume
from meunet.errors import MeunetError
from meunet.inference.stream import predict_volume
from meunet.inference.windows import check_windows, resolve_precision
from meunet.models import UNet3D, load_model


def predict_branch(
    model: UNet3D,
    inputs: list[Volume],
    target: str | Path,
    patch: PatchSize,
    downsample: int = 1,
    fusion: str = "vote",
    batch_size: int | str = 2,
    device: str | torch.device = "cpu",
    progress: bool = True,
    overlap: float = 0.5,
    stats: list[tuple[float, float]] | None = None,
    precision: str = "auto",
) -> Volume:
    """Stage-1 labels of one volume, at its own resolution, written to ``target`` (Zarr).

    Used both to make the stage-1 maps stage 2 trains on and at inference, so
    that stage 2 sees maps made the same way. A low-resolution branch
    (``downsample > 1``) predicts on a downsampled copy of the inputs (made in
    memory) and upsamples its labels by nearest neighbour. ``stats``: the
    inputs' (mean, sd), when already known (used at full resolution only).
    ``precision`` and ``batch_size="auto"``: as for
    :func:`~meunet.inference.stream.predict_volume`.
    """
    check_windows(patch, fusion, batch_size, overlap)  # before the downsampled copy is written
    resolve_precision(precision, device)
    if downsample == 1:
        predict_volume(
            model, inputs, target, patch, (), fusion, batch_size, device, progress, overlap, stats,
            precision=precision,
        )  # fmt: skip
        return open_volume(target)
    small = make_folder(f"{target}.x{downsample}", "predict")
    vols = []
    for c, vol in enumerate(inputs):
        write_volume(small / f"c{c}.zarr", downsample_image(vol[...], downsample))
        vols.append(open_volume(small / f"c{c}.zarr"))
    pred = small / "pred.zarr"
    predict_volume(model, vols, pred, patch, (), fusion, batch_size, device, progress, overlap,
                   precision=precision)  # fmt: skip
    labels = upsample_labels(np.asarray(open_volume(pred)[...]), downsample, inputs[0].shape)
    write_volume(target, labels, **inputs[0].geometry(), spacing_known=inputs[0].spacing_known)
    remove_owned(small)
    return open_volume(target)


def read_manifest(manifest: Path) -> tuple[list[dict], dict]:
    """The stage-1 branches and stage 2 of a ``cascade.json`` (paths relative to its folder).

    Each entry's ``infer_patch`` is the window it is predicted with; a manifest
    written before that was recorded gets its ``patch``, the window its
    stage-1 maps were made with when stage 2 was trained.
    """
    try:
        spec = json.loads(manifest.read_text())
        stage1, stage2 = spec["stage1"], spec["stage2"]
        for entry in (*stage1, stage2):
            entry.setdefault("infer_patch", entry["patch"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise MeunetError(
            f"{manifest}: not a cascade.json written by meunet train-cascade ({e})"
        ) from None
    return stage1, stage2


def predict_cascade(
    manifest: str | Path,
    inputs: list[Volume],
    output: str | Path,
    fusion: str = "vote",
    batch_size: int | str = 2,
    device: str | torch.device = "cpu",
    progress: bool = True,
    overlap: float = 0.5,
    overwrite: bool = False,
    precision: str = "auto",
) -> Path:
    """Run every stage-1 branch, then stage 2, on one (possibly larger than RAM) volume.

    Every network and input is loaded and checked before anything is written;
    the output is claimed as :func:`~meunet.inference.stream.predict_volume`
    claims it (``overwrite``: replace a path meunet did not write). ``precision``
    and ``batch_size="auto"``: as for :func:`~meunet.inference.stream.predict_volume`.
    """
    manifest = Path(manifest)
    stage1, stage2 = read_manifest(manifest)
    check_windows(stage2["infer_patch"], fusion, batch_size, overlap)  # before anything is written
    resolve_precision(precision, device)
    root = manifest.parent
    models = [load_model(root / b["checkpoint"], map_location=device) for b in stage1]
    final = load_model(root / stage2["checkpoint"], map_location=device)
    stats = [channel_stats(v) for v in inputs]  # refuses NaN before anything is written
    output = str(output)
    with claim_output(output, inputs, overwrite, command="predict"):
        work = make_folder(f"{split_hdf5_path(output)[0]}.stage1", "predict")
        maps = []
        for i, (branch, model) in enumerate(zip(stage1, models, strict=True)):
            target = work / f"branch{i}.zarr"
            factor = int(branch.get("downsample", 1))
            args = (fusion, batch_size, device, progress, overlap, stats, precision)
            maps.append(predict_branch(model, inputs, target, branch["infer_patch"], factor, *args))
        window = stage2["infer_patch"]
        out = predict_volume(
            final, inputs, output, window, maps, fusion, batch_size, device, progress, overlap,
            stats, overwrite, precision,
        )  # fmt: skip
        remove_owned(work)
    return out
