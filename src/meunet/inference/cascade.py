"""Predict with a whole cascade (``cascade.json`` written by ``meunet train-cascade``).

Stage-1 branches stream their labels to Zarr volumes beside the output;
stage 2 then reads them lazily as its extra inputs. No full-volume float map
is ever held. A low-resolution stage 1 needs its input downsampled: that
copy is made in memory (one case at a time), the only step that is not
streamed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from meunet.data.io import open_volume, write_volume
from meunet.data.resample import downsample_image, upsample_labels
from meunet.data.volume import Volume
from meunet.errors import MeunetError
from meunet.inference.stream import predict_volume
from meunet.models import UNet3D, load_model


def predict_branch(
    model: UNet3D,
    inputs: list[Volume],
    target: str | Path,
    patch: int,
    downsample: int = 1,
    fusion: str = "vote",
    batch_size: int = 2,
    device: str | torch.device = "cpu",
    progress: bool = True,
    overlap: float = 0.5,
) -> Volume:
    """Stage-1 labels of one volume, at its own resolution, written to ``target`` (Zarr).

    Used both to make the stage-1 maps stage 2 trains on and at inference, so
    that stage 2 sees maps made the same way. A low-resolution branch
    (``downsample > 1``) predicts on a downsampled copy of the inputs (made in
    memory) and upsamples its labels by nearest neighbour.
    """
    if downsample == 1:
        predict_volume(
            model, inputs, target, patch, (), fusion, batch_size, device, progress, overlap
        )
        return open_volume(target)
    small = Path(f"{target}.x{downsample}")
    small.mkdir(parents=True, exist_ok=True)
    vols = []
    for c, vol in enumerate(inputs):
        write_volume(small / f"c{c}.zarr", downsample_image(vol[...], downsample))
        vols.append(open_volume(small / f"c{c}.zarr"))
    pred = small / "pred.zarr"
    predict_volume(model, vols, pred, patch, (), fusion, batch_size, device, progress, overlap)
    labels = upsample_labels(np.asarray(open_volume(pred)[...]), downsample, inputs[0].shape)
    write_volume(target, labels, spacing=inputs[0].spacing, origin=inputs[0].origin)
    shutil.rmtree(small)
    return open_volume(target)


def read_manifest(manifest: Path) -> tuple[list[dict], dict]:
    """The stage-1 branches and stage 2 of a ``cascade.json`` (paths relative to its folder)."""
    try:
        spec = json.loads(manifest.read_text())
        stage1, stage2 = spec["stage1"], spec["stage2"]
    except (OSError, ValueError, KeyError) as e:
        raise MeunetError(
            f"{manifest}: not a cascade.json written by meunet train-cascade ({e})"
        ) from None
    return stage1, stage2


def predict_cascade(
    manifest: str | Path,
    inputs: list[Volume],
    output: str | Path,
    fusion: str = "vote",
    batch_size: int = 2,
    device: str | torch.device = "cpu",
    progress: bool = True,
    overlap: float = 0.5,
) -> Path:
    """Run every stage-1 branch, then stage 2, on one (possibly larger than RAM) volume."""
    manifest = Path(manifest)
    stage1, stage2 = read_manifest(manifest)
    root = manifest.parent
    work = Path(f"{output}.stage1")
    work.mkdir(parents=True, exist_ok=True)
    maps = []
    for i, branch in enumerate(stage1):
        model = load_model(root / branch["checkpoint"], map_location=device)
        target = work / f"branch{i}.zarr"
        factor = int(branch.get("downsample", 1))
        args = (fusion, batch_size, device, progress, overlap)
        maps.append(predict_branch(model, inputs, target, branch["patch"], factor, *args))
    model = load_model(root / stage2["checkpoint"], map_location=device)
    out = predict_volume(
        model, inputs, output, stage2["patch"], maps, fusion, batch_size, device, progress, overlap
    )
    shutil.rmtree(work)
    return out
