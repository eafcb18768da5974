"""Blockwise prediction on a Dask cluster, equal to the single-process result bit for bit.

The volume is cut along z into blocks whose cores are whole multiples of
the window step, each read with a halo of half a window on either side.
Every block runs the streaming predictor (:func:`predict_volume`) on a
worker, reading its slab of the input lazily from a shared store, with the
whole volume's normalisation. Because a core starts on the global window
grid and the halo holds every window that reaches into the core, each core
voxel gets exactly the windows, in the same order and batches, that the
single-process run gives it; windows that differ (cut off by the block's
end) only touch the halo, which is thrown away.

Each core goes into its own chunks of the output Zarr (no two blocks share
a chunk), and a marker records each finished block: a task whose worker
dies is rerun elsewhere by Dask, and rerunning the command skips finished
blocks, if the checkpoint, the settings and the inputs' content identity
(:mod:`meunet.data.identity`) are unchanged; otherwise every block is
predicted again. The output is marked complete only when every block is in.

Clusters: ``local:N`` starts a :class:`distributed.LocalCluster` of N
single-threaded worker processes; ``tcp://host:port`` joins a running
scheduler (for example one started by ``dask-jobqueue`` on Slurm).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from tqdm.auto import tqdm

from meunet.data.io import detect_format, open_volume, split_hdf5_path, write_volume
from meunet.data.io.ownership import claim_output, make_folder, prepare_output, remove_owned
from meunet.data.io.zarr_io import WRITE_EVERY_CHUNK
from meunet.data.patch_size import compact, format_patch, patch_shape
from meunet.data.sampling import channel_stats
from meunet.data.volume import Volume
from meunet.errors import MeunetError
from meunet.inference.sinks import ZarrSink, open_output, signature
from meunet.inference.windows import check_windows, resolve_precision

CONNECT_TIMEOUT = "30s"  # how long to wait for a scheduler to answer


def z_view(vol: Volume, z0: int, z1: int) -> Volume:
    """Slices ``z0:z1`` of ``vol`` as a lazy volume of their own (its origin is slice ``z0``'s)."""

    def read_crop(slices: tuple[slice, slice, slice]) -> np.ndarray:
        z, y, x = slices
        return vol.read_crop((slice(z.start + z0, z.stop + z0, z.step), y, x))

    return Volume(
        path=f"{vol.path}[z {z0}:{z1}]",
        shape=(z1 - z0, vol.shape[1], vol.shape[2]),
        dtype=vol.dtype,
        spacing=vol.spacing,
        read_crop=read_crop,
        origin=tuple(  # type: ignore[arg-type]
            o + row[0] * vol.spacing[0] * z0
            for o, row in zip(vol.origin, vol.direction, strict=True)
        ),
        direction=vol.direction,
        space=vol.space,
        format=vol.format,
    )


def plan_blocks(depth: int, patch: int, step: int, core: int) -> list[tuple[int, int, int, int]]:
    """Blocks ``(core_start, core_stop, read_start, read_stop)`` along z.

    Cores are multiples of ``step`` long (the last takes the rest) and start
    on the window grid; each block reads a halo of ``patch - step`` slices
    (half a window at the paper's overlap; rounded up to whole steps so that
    blocks start on the grid) beyond its core on both sides, clipped to the
    volume.
    """
    if core < step or core % step:
        raise MeunetError(
            f"block depth must be a positive multiple of the window step {step}, got {core}"
        )
    halo = -(-(patch - step) // step) * step
    out = []
    for c0 in range(0, depth, core):
        c1 = min(depth, c0 + core)
        out.append((c0, c1, max(0, c0 - halo), min(depth, c1 + halo)))
    return out


@functools.lru_cache(maxsize=4)
def _model(checkpoint: str, device: str, mtime: float) -> Any:
    """One copy of the network per worker process (``mtime``: reload a changed file)."""
    from meunet.models import load_model

    return load_model(checkpoint, map_location=device)


def predict_block(
    checkpoint: str,
    inputs: Sequence[str],
    extra: Sequence[str],
    output: str,
    block: tuple[int, int, int, int],
    index: int,
    stats: Sequence[tuple[float, float]],
    settings: dict[str, Any],
) -> int:
    """Run on a worker: predict one block and write its core into ``output``; returns ``index``."""
    from meunet.inference.stream import predict_volume

    work = Path(f"{output}.blocks")
    done = work / f"block{index:05d}.done"
    if done.exists():
        return index
    device = settings["device"]
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = _model(checkpoint, device, os.path.getmtime(checkpoint))
    c0, c1, r0, r1 = block
    vols = [z_view(open_volume(p), r0, r1) for p in inputs]
    maps = [z_view(open_volume(p), r0, r1) for p in extra]
    part = work / f"block{index:05d}.zarr"  # resumable on its own if the worker dies mid-block
    predict_volume(
        model, vols, part, settings["patch"], maps, settings["fusion"], settings["batch"],
        device, False, settings["overlap"], stats=stats, precision=settings["precision"],
    )  # fmt: skip
    labels = np.asarray(zarr.open_array(str(part), mode="r")[c0 - r0 : c1 - r0])
    zarr.open_array(output, mode="r+").with_config(WRITE_EVERY_CHUNK)[c0:c1] = labels
    remove_owned(part)
    done.write_text("ok\n")
    return index


@contextlib.contextmanager
def connect(address: str) -> Iterator[Any]:
    """A Dask client for ``local:N`` (a local cluster of N processes, closed on exit) or a scheduler address."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise MeunetError(
            "--dask needs Dask's distributed scheduler: pip install 'dask[distributed]'"
        ) from None
    if address.startswith("local:"):
        try:
            n = int(address.split(":", 1)[1])
        except ValueError:
            n = 0
        if n < 1:
            raise MeunetError(
                f"--dask {address!r}: write local:N with N >= 1 workers, e.g. local:4"
            )
        with (
            LocalCluster(
                n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0"
            ) as cluster,
            Client(cluster) as client,
        ):
            yield client
        return
    if not address.startswith(("tcp://", "tls://", "ucx://", "inproc://")):
        raise MeunetError(
            f"--dask {address!r}: give local:N or a scheduler address such as tcp://host:8786"
        )
    try:
        client = Client(address, timeout=CONNECT_TIMEOUT)
    except OSError as e:
        raise MeunetError(f"--dask {address}: no Dask scheduler answers there ({e})") from None
    with client:
        yield client


def predict_dask(
    checkpoint: str | Path,
    inputs: Sequence[str | Path],
    output: str | Path,
    client: Any,
    patch: int = 0,
    extra: Sequence[str | Path] = (),
    fusion: str = "vote",
    batch_size: int | str = 2,
    device: str = "auto",
    overlap: float = 0.5,
    block_depth: int = 0,
    progress: bool = True,
    overwrite: bool = False,
    precision: str = "auto",
) -> Path:
    """Predict ``inputs`` blockwise on ``client``'s workers into ``output`` (Zarr, or any format at the end).

    Inputs must be readable by every worker at the same paths (a shared
    file system or object store); convert gzip NIfTI/NRRD to Zarr first.
    ``patch`` is the window side; 0 takes the checkpoint's ``infer_patch``.
    The checkpoint and inputs are checked before the output is claimed, as
    :func:`~meunet.inference.stream.predict_volume` claims it. ``precision``
    and ``batch_size="auto"`` are resolved on each worker, for its device (an
    automatic batch may then differ between GPUs of different memory).
    """
    from meunet.models import load_checkpoint
    from meunet.training.config import checkpoint_window

    checkpoint = str(checkpoint)
    ckpt = load_checkpoint(checkpoint)  # a bad checkpoint fails here, before any output exists
    patch = compact(patch) if patch else checkpoint_window(ckpt)  # a side, or (z, y, x) sides
    vols = [open_volume(p) for p in inputs]
    for v in vols:
        if not v.lazy:
            raise MeunetError(
                f"{v.path}: a {v.format} file cannot be read lazily by each block; "
                f"convert it first: meunet convert {v.path} {Path(v.path).name.split('.')[0]}.zarr"
            )
    shape = vols[0].shape
    step = check_windows(patch, fusion, batch_size, overlap)
    resolve_precision(precision, "cpu")  # an unknown precision is refused here
    if any(p < 16 or p % 2 for p in patch_shape(patch)):
        raise MeunetError(
            f"window side must be an even number >= 16, got {patch}"
            if isinstance(patch, int)
            else f"window sides must be even numbers >= 16, got {format_patch(patch)}"
        )
    if block_depth < 0:
        raise MeunetError(
            f"block depth must be >= 0 (0: about 4 blocks per worker), got {block_depth}"
        )
    workers = max(1, len(client.scheduler_info().get("workers", {})))
    pz, sz = patch_shape(patch)[0], patch_shape(step)[0]  # blocks are cut along z
    if not block_depth:  # about four blocks per worker, each at least a window deep
        block_depth = max(pz, -(-shape[0] // (4 * workers)))
    block_depth = -(-block_depth // sz) * sz
    blocks = plan_blocks(shape[0], pz, sz, block_depth)
    settings = {"patch": patch, "fusion": fusion, "batch": batch_size, "overlap": overlap,
                "device": device, "block_depth": block_depth, "precision": precision}  # fmt: skip
    ins, ext = [str(Path(p).resolve()) for p in inputs], [str(Path(p).resolve()) for p in extra]
    weights = hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest()
    sig = signature(weights, [open_volume(p) for p in ins], [open_volume(p) for p in ext], settings)

    output = str(output)
    fmt = detect_format(output, must_exist=False)
    store = output if fmt == "zarr" else split_hdf5_path(output)[0] + ".partial.zarr"
    store = str(Path(store).resolve())
    work = Path(f"{store}.blocks")
    stats = [channel_stats(v) for v in vols]  # the whole volume's, as a single run uses
    sources = [*vols, *extra]
    with claim_output(output, sources, overwrite, command="predict"):
        if store != str(Path(output).resolve()):
            prepare_output(store, sources, overwrite, folder=True)  # the work store
        # z-chunks divide every block's core, so no two blocks ever write one chunk
        zc = max(d for d in range(1, min(block_depth, 64) + 1) if block_depth % d == 0)
        arr, _ = open_output(store, shape, zc, vols[0], sig, work)
        # a fresh key per run: never a result cached from another output
        run = uuid.uuid4().hex[:12]
        todo = [i for i in range(len(blocks)) if not (work / f"block{i:05d}.done").exists()]
        futures = [
            client.submit(
                predict_block, str(Path(checkpoint).resolve()), ins, ext, store, blocks[i], i,
                stats, settings, key=f"meunet-block-{run}-{i}", retries=2, pure=False,
            )
            for i in todo
        ]  # fmt: skip
        from distributed import as_completed

        with tqdm(total=len(blocks), initial=len(blocks) - len(todo), desc=f"predict {Path(output).name}",
                  unit="block", disable=not progress) as bar:  # fmt: skip
            for future in as_completed(futures):
                future.result()  # a block that failed after its retries raises here
                bar.update(1)
        ZarrSink(arr, sig).close()  # every block is in
        remove_owned(work)
        if fmt != "zarr":
            write_volume(
                output, open_volume(store), overwrite=overwrite, inputs=vols, **vols[0].geometry()
            )
            remove_owned(store)
        return Path(output)


def predict_cascade_dask(
    manifest: str | Path,
    inputs: Sequence[str | Path],
    output: str | Path,
    client: Any,
    overwrite: bool = False,
    **kw: Any,
) -> Path:
    """A whole cascade blockwise: each stage-1 branch to a Zarr beside the output, then stage 2.

    Every checkpoint and input is checked before the output is claimed.
    """
    from meunet.inference.cascade import read_manifest
    from meunet.models import load_checkpoint

    manifest = Path(manifest)
    stage1, stage2 = read_manifest(manifest)
    if any(int(b.get("downsample", 1)) != 1 for b in stage1):
        raise MeunetError(
            f"{manifest}: a low-resolution cascade is not predicted blockwise yet; drop --dask"
        )
    settings = (kw.get("fusion", "vote"), kw.get("batch_size", 2), kw.get("overlap", 0.5))
    check_windows(stage2["infer_patch"], *settings)  # before anything is written
    resolve_precision(kw.get("precision", "auto"), "cpu")
    for entry in (*stage1, stage2):
        load_checkpoint(manifest.parent / entry["checkpoint"])
    vols = [open_volume(p) for p in inputs]
    for v in vols:
        channel_stats(v)  # refuses NaN before anything is written
    output = str(output)
    with claim_output(output, vols, overwrite, command="predict"):
        work = make_folder(f"{split_hdf5_path(output)[0]}.stage1", "predict")
        maps = []
        for i, branch in enumerate(stage1):
            target = work / f"branch{i}.zarr"
            window = branch["infer_patch"]
            predict_dask(
                manifest.parent / branch["checkpoint"], inputs, target, client, window, **kw
            )
            maps.append(target)
        window = stage2["infer_patch"]
        out = predict_dask(
            manifest.parent / stage2["checkpoint"], inputs, output, client, window, maps,
            overwrite=overwrite, **kw,
        )  # fmt: skip
        remove_owned(work)
    return out
