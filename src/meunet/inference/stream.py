"""Streaming sliding-window prediction for volumes larger than RAM.

Windows lie on the training sampler's grid (step P/2 by default, or
``P * (1 - overlap)``; zero padding at the far ends) and are fused as in :mod:`meunet.inference.sliding` (centre
half-cube weight 2; weighted one-hot votes or weighted probabilities), with
the same result, voxel for voxel: both run the window engine
(:mod:`meunet.inference.engine`), here with the resumable Zarr sink
(:mod:`meunet.inference.sinks`). The volume is processed one row of windows
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

from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from meunet.data.io import detect_format, open_volume, split_hdf5_path, write_volume
from meunet.data.io.ownership import claim_output, prepare_output, remove_owned
from meunet.data.patch_size import PatchSize, compact, format_patch, patch_shape
from meunet.data.sampling import channel_stats, check_class_map, grid_positions
from meunet.data.volume import Volume
from meunet.errors import MeunetError
from meunet.inference.engine import Channels, phase, run_windows
from meunet.inference.sinks import ZarrSink, model_digest, open_output, signature
from meunet.inference.windows import check_windows, resolve_precision
from meunet.models import UNet3D


def estimate_memory(
    model: UNet3D,
    shape: tuple[int, int, int],
    patch: PatchSize,
    batch_size: int,
    fusion: str,
    n_inputs: int,
    n_extra: int,
) -> int:
    """Rough upper estimate of the predictor's memory besides Python and torch themselves.

    Accumulator of one row of windows, the input (and stage-1) slab read for
    it and the next row's slices read ahead (half a slab at the paper's
    overlap), and a forward pass of ``batch_size`` windows (no gradients:
    about three level-1 feature maps alive at once, plus the logits).
    """
    pz, py, px = patch_shape(patch)
    ys, xs = grid_positions(shape[1], py), grid_positions(shape[2], px)  # plane size: any step
    plane = (ys[-1] + py) * (xs[-1] + px)
    classes = model.cfg.num_classes
    acc = classes * pz * plane * (1 if fusion == "vote" else 4)
    slab = (n_inputs * 4 + n_extra * 2) * pz * plane * 3 // 2
    window = pz * py * px * 4 * batch_size
    forward = window * (3 * model.cfg.encoder_channels[0] + 2 * classes + n_inputs)
    return int(acc + slab + forward + model.cfg.extra_channels * window)


@torch.no_grad()
def predict_volume(
    model: UNet3D,
    inputs: Sequence[Volume],
    output: str | Path,
    patch: PatchSize,
    extra: Sequence[Volume] = (),
    fusion: str = "vote",
    batch_size: int | str = 2,
    device: str | torch.device = "cpu",
    progress: bool = True,
    overlap: float = 0.5,
    stats: Sequence[tuple[float, float]] | None = None,
    overwrite: bool = False,
    precision: str = "auto",
    threads: bool = True,
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
        patch: Window: a side, or (z, y, x) sides (even, >= 16).
        extra: Stage-1 label volumes for a stage-2 network (one per branch).
        fusion: ``"vote"`` (weighted one-hot votes, the paper's) or ``"prob"``.
        batch_size: Windows per forward pass; ``"auto"``: from free GPU memory
            (2 on a CPU).
        device: Where the network runs, and fusion with it.
        progress: Show a progress bar over windows.
        overlap: Fraction of a window its neighbour overlaps (0.5: the paper's).
        stats: (mean, sd) per input channel; default: each input's own (a streamed
            pass). A block of a larger volume passes the whole volume's.
        overwrite: Replace an existing output that meunet did not write.
        precision: ``"auto"`` (bf16 autocast on CUDA where the GPU has it, else
            fp16; fp32 on a CPU), ``"bf16"``, ``"fp16"`` or ``"fp32"``.
        threads: Read ahead and write behind in background threads (off: the
            same result, serially).

    Returns:
        The output path.
    """
    patch = compact(patch)  # a cube's side, or (z, y, x) sides
    step = check_windows(patch, fusion, batch_size, overlap)  # before anything is written
    precision = resolve_precision(precision, device)
    if any(p < 16 or p % 2 for p in patch_shape(patch)):
        raise MeunetError(
            f"window side must be an even number >= 16, got {patch}"
            if isinstance(patch, int)
            else f"window sides must be even numbers >= 16, got {format_patch(patch)}"
        )
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
    model.eval().to(device)
    settings = {"patch": patch, "fusion": f"{fusion}/{step}", "config": cfg.to_dict(),
                "precision": precision}  # fmt: skip
    sig = signature(model_digest(model), inputs, extra, settings)
    if stats is None:
        with phase("stats"):
            stats = [channel_stats(v) for v in inputs]
    stats = list(stats)
    sources = [*inputs, *extra]
    with claim_output(output, sources, overwrite, command="predict"):
        if store != output:
            prepare_output(store, sources, overwrite, folder=True)  # the work store
        sides, steps = patch_shape(patch), patch_shape(step)
        arr, done_until = open_output(store, shape, steps[0], inputs[0], sig)
        zs, ys, xs = (grid_positions(n, p, s) for n, p, s in zip(shape, sides, steps, strict=True))
        rows = [z for z in zs if z + sides[0] > done_until]
        with tqdm(total=len(rows) * len(ys) * len(xs), desc=f"predict {Path(output).name}",
                  unit="window", disable=not progress) as bar:  # fmt: skip
            run_windows(
                model, Channels.volumes(inputs, stats), ZarrSink(arr, sig, done_until), patch,
                step, Channels.volumes(extra, labels=True) if extra else None, fusion,
                batch_size, device, precision, threads, bar.update,
            )  # fmt: skip
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
