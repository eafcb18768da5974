"""Streaming sliding-window prediction for volumes larger than RAM.

Windows lie on the training sampler's grid (step P/2 by default, or
``P * (1 - overlap)``; zero padding at the far ends) and are fused as in :mod:`meunet.inference.sliding` (centre
half-cube weight 2; weighted one-hot votes or weighted probabilities), with
the same result, voxel for voxel. The volume is processed one row of windows
(one z-start) at a time: only the accumulator of the P slices that row
covers is held; after each row the first P/2 slices can receive no more
windows, so they are reduced to uint8 labels, written to the output Zarr and
forgotten.

The output Zarr records how far it got (``meunet.done_until``); run the same
prediction again after a crash and it resumes from there, and the result is
the same as an uninterrupted run. "The same" is the output's signature: the
network's weights and settings and each input's content identity (its files'
sizes and modification times and a sample of its voxels; see
:mod:`meunet.data.identity`). An unfinished output of another model or of an
input since replaced, even by a file of the same name and shape, is started
again, not resumed. It is marked complete only at the end, and an incomplete
output is refused when opened.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from tqdm.auto import tqdm

from meunet.data.identity import volume_identity
from meunet.data.io import detect_format, open_volume, split_hdf5_path, write_volume
from meunet.data.io.ownership import (
    claim_output,
    is_owned,
    make_folder,
    prepare_output,
    remove_owned,
)
from meunet.data.io.zarr_io import WRITE_EVERY_CHUNK, geometry_attributes
from meunet.data.sampling import channel_stats, check_class_map, grid_positions
from meunet.data.volume import Volume
from meunet.errors import MeunetError
from meunet.inference.sliding import argmax_classes, centre_weights, check_windows, vote_dtype
from meunet.models import UNet3D


def _signature(
    model: UNet3D, inputs: Sequence[Volume], extra: Sequence[Volume], patch: int, fusion: str
) -> str:
    """What makes two runs the same prediction (for resuming).

    The network's weights and settings, and each input's content identity
    (:func:`~meunet.data.identity.volume_identity`): an input replaced by
    another of the same name and shape is another prediction.
    """
    h = hashlib.sha256()
    for t in model.state_dict().values():
        h.update(t.detach().cpu().numpy().tobytes())
    meta = {
        "inputs": [(v.path, v.shape, str(v.dtype), volume_identity(v)) for v in inputs],
        "extra": [(v.path, v.shape, volume_identity(v)) for v in extra],
        "patch": patch,
        "fusion": fusion,
        "config": model.cfg.to_dict(),
    }
    h.update(json.dumps(meta, sort_keys=True).encode())
    return h.hexdigest()


def _open_output(
    path: str, shape: tuple[int, int, int], step: int, like: Volume, signature: str
) -> tuple[Any, int]:
    """The output array and the first slice still to write (resuming a matching run).

    It takes the geometry (spacing, origin, direction) of the input ``like``.
    """
    if os.path.isdir(path) and is_owned(path):  # predict_volume refused any other
        try:
            arr = zarr.open_array(path, mode="r+").with_config(WRITE_EVERY_CHUNK)
            state = dict(arr.attrs).get("meunet", {})
            if state.get("signature") == signature and tuple(arr.shape) == shape:
                return arr, 0 if state.get("complete") else int(state.get("done_until", 0))
        except Exception:  # another prediction's, or damaged: start again
            pass
    remove_owned(path)
    make_folder(path, "predict")  # marked before any chunk: an interrupted run stays ours
    chunks = (min(step, shape[0]), min(128, shape[1]), min(128, shape[2]))
    arr = zarr.create_array(
        path,
        shape=shape,
        chunks=chunks,
        dtype="uint8",
        attributes={
            **geometry_attributes(**like.geometry()),
            "meunet": {"complete": False, "done_until": 0, "signature": signature},
        },
        dimension_names=("z", "y", "x"),
        config=WRITE_EVERY_CHUNK,
    )
    return arr, 0


def _shift_fill(
    buf: np.ndarray,
    vols: Sequence[Volume],
    stats: Sequence[tuple[float, float]] | None,
    z: int,
    keep: int,
    shape: tuple[int, int, int],
    fill: float,
) -> None:
    """Make ``buf`` hold slices ``z .. z + P`` of every volume (normalised when ``stats``).

    The first ``keep`` slices are already there, at the end of ``buf``, from
    the previous row: they are moved to the front and only the rest is read.
    Outside the volume ``buf`` holds ``fill``.
    """
    patch = buf.shape[1]
    if keep:
        buf[:, :keep] = buf[:, patch - keep :]
    buf[:, keep:] = fill
    z0, z1 = z + keep, min(z + patch, shape[0])
    if z1 <= z0:
        return
    for c, vol in enumerate(vols):
        part = buf[c, keep : keep + z1 - z0, : shape[1], : shape[2]]
        part[...] = vol[z0:z1]
        if stats is not None:
            mean, std = stats[c]
            part -= mean
            part /= std


def estimate_memory(
    model: UNet3D,
    shape: tuple[int, int, int],
    patch: int,
    batch_size: int,
    fusion: str,
    n_inputs: int,
    n_extra: int,
) -> int:
    """Rough upper estimate of the predictor's memory besides Python and torch themselves.

    Accumulator of one row of windows, the input (and stage-1) slab read for
    it, and a forward pass of ``batch_size`` windows (no gradients: about
    three level-1 feature maps alive at once, plus the logits).
    """
    ys, xs = (
        grid_positions(shape[1], patch),
        grid_positions(shape[2], patch),
    )  # plane size: any step
    plane = (ys[-1] + patch) * (xs[-1] + patch)
    classes = model.cfg.num_classes
    acc = classes * patch * plane * (1 if fusion == "vote" else 4)
    slab = (n_inputs + n_extra * (classes + 1)) * patch * plane * 4
    window = patch**3 * 4 * batch_size
    forward = window * (3 * model.cfg.encoder_channels[0] + 2 * classes + n_inputs)
    return int(acc + slab + forward + model.cfg.extra_channels * window)


@torch.no_grad()
def predict_volume(
    model: UNet3D,
    inputs: Sequence[Volume],
    output: str | Path,
    patch: int,
    extra: Sequence[Volume] = (),
    fusion: str = "vote",
    batch_size: int = 2,
    device: str | torch.device = "cpu",
    progress: bool = True,
    overlap: float = 0.5,
    stats: Sequence[tuple[float, float]] | None = None,
    overwrite: bool = False,
) -> Path:
    """Predict labels for a (possibly larger than RAM) volume into ``output``.

    Every input is read once (its statistics; NaN is refused) before the
    output is touched. An unfinished output of the same prediction is
    resumed; any other output of meunet's is replaced; a path meunet did not
    write is refused unless ``overwrite`` (see :mod:`meunet.data.io.ownership`),
    and an input always is. The output is locked while the prediction runs.

    Args:
        model: The network (a plain U-net path is used; eval mode).
        inputs: One lazy volume per input channel, all of one shape.
        output: ``.zarr`` (written as it goes) or any other format (written
            from a Zarr beside it at the end).
        patch: Window side P (even).
        extra: Stage-1 label volumes for a stage-2 network (one per branch).
        fusion: ``"vote"`` (weighted one-hot votes, the paper's) or ``"prob"``.
        batch_size: Windows per forward pass.
        device: Where the network runs; fusion happens on the CPU.
        progress: Show a progress bar over windows.
        overlap: Fraction of a window its neighbour overlaps (0.5: the paper's).
        stats: (mean, sd) per input channel; default: each input's own (a streamed
            pass). A block of a larger volume passes the whole volume's.
        overwrite: Replace an existing output that meunet did not write.

    Returns:
        The output path.
    """
    step = check_windows(patch, fusion, batch_size, overlap)  # before anything is written
    if patch < 16 or patch % 2:
        raise MeunetError(f"window side must be an even number >= 16, got {patch}")
    if not inputs:
        raise MeunetError("no input volume given: pass one per input channel")
    shape = inputs[0].shape
    for vol in [*inputs, *extra]:
        if vol.shape != shape:
            raise MeunetError(
                f"{vol.path}: shape {vol.shape} differs from {inputs[0].path} {shape}; all inputs must share one grid"
            )
    cfg = model.cfg
    if len(inputs) != cfg.in_channels:
        raise MeunetError(
            f"the model takes {cfg.in_channels} input channel(s), {len(inputs)} given: pass one --input per channel"
        )
    if len(extra) * cfg.num_classes != cfg.extra_channels:
        raise MeunetError(
            f"the model takes {cfg.extra_channels // cfg.num_classes} stage-1 map(s), {len(extra)} given"
        )
    for vol in extra:
        check_class_map(vol, cfg.num_classes)
    output = str(output)
    fmt = detect_format(output, must_exist=False)
    # a non-Zarr output is made from a Zarr beside its file (x.h5:/grp/labels: x.h5.partial.zarr)
    store = output if fmt == "zarr" else split_hdf5_path(output)[0] + ".partial.zarr"
    zs, ys, xs = (grid_positions(n, patch, step) for n in shape)
    size = (ys[-1] + patch, xs[-1] + patch)
    model.eval().to(device)
    signature = _signature(model, inputs, extra, patch, f"{fusion}/{step}")
    stats = list(stats) if stats is not None else [channel_stats(v) for v in inputs]
    sources = [*inputs, *extra]
    with claim_output(output, sources, overwrite, command="predict"):
        if store != output:
            prepare_output(store, sources, overwrite, folder=True)  # the work store
        arr, done_until = _open_output(store, shape, step, inputs[0], signature)
        classes = cfg.num_classes
        vote = fusion == "vote"
        acc = np.zeros((classes, patch, *size), vote_dtype(patch, step) if vote else np.float32)
        weights = torch.from_numpy(centre_weights(patch))
        weights_u8 = centre_weights(patch).astype(np.uint8)
        identity = np.eye(classes, dtype=np.uint8)
        rows = [z for z in zs if z + patch > done_until]
        windows = [(y, x) for y in ys for x in xs]
        bar = tqdm(
            total=len(rows) * len(windows),
            desc=f"predict {Path(output).name}",
            unit="window",
            disable=not progress,
        )
        image = np.zeros((len(inputs), patch, *size), np.float32)
        labels = np.full((len(extra), patch, *size), -1, np.int16)  # stage-1 maps; -1 outside
        onehot = np.eye(classes + 1, dtype=np.float32)[:, 1:]  # row 0 (outside) is all zero
        previous = None
        for i, z in enumerate(rows):
            # consecutive rows overlap by P - step slices: keep them, read only the new ones
            keep = patch - step if previous == z - step else 0
            _shift_fill(image, inputs, stats, z, keep, shape, 0.0)
            if extra:
                _shift_fill(labels, extra, None, z, keep, shape, -1)
            previous = z
            for j in range(0, len(windows), batch_size):
                group = windows[j : j + batch_size]
                x = torch.from_numpy(
                    np.stack([image[:, :, y : y + patch, xx : xx + patch] for y, xx in group])
                ).to(device)
                e = None
                if extra:
                    maps = [
                        onehot[labels[:, :, y : y + patch, xx : xx + patch] + 1].transpose(
                            0, 4, 1, 2, 3
                        )
                        for y, xx in group
                    ]
                    e = torch.from_numpy(
                        np.stack([m.reshape(-1, patch, patch, patch) for m in maps])
                    ).to(device)
                logits = model(x, e).float()
                if vote:
                    # weighted one-hot votes: the winner's column of the identity, times the weights
                    for lg, (y, xx) in zip(logits.cpu().numpy(), group, strict=True):
                        votes = identity[:, argmax_classes(lg)]
                        votes *= weights_u8
                        acc[:, :, y : y + patch, xx : xx + patch] += votes
                else:
                    votes = (torch.softmax(logits, 1).cpu() * weights).numpy()
                    for v, (y, xx) in zip(votes, group, strict=True):
                        acc[:, :, y : y + patch, xx : xx + patch] += v
                bar.update(len(group))
            last = i == len(rows) - 1
            end = min(shape[0], z + patch) if last else min(shape[0], z + step)
            if end > done_until:
                lo = max(z, done_until)
                labels_out = argmax_classes(acc[:, lo - z : end - z, : shape[1], : shape[2]])
                arr[lo:end] = labels_out
                done_until = end
                arr.attrs["meunet"] = {
                    "complete": False,
                    "done_until": done_until,
                    "signature": signature,
                }
            acc[:, : patch - step] = acc[:, step:]
            acc[:, patch - step :] = 0
        bar.close()
        arr.attrs["meunet"] = {
            "complete": True,
            "every_chunk": True,
            "done_until": shape[0],
            "signature": signature,
        }
        if fmt != "zarr":
            write_volume(
                output,
                open_volume(store),
                overwrite=overwrite,
                inputs=sources,
                **inputs[0].geometry(),
            )
            remove_owned(store)
        return Path(output)
