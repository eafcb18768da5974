"""``meunet predict``: segment a volume with a checkpoint or a cascade, streaming."""

from __future__ import annotations

import argparse

from meunet.cli.options import (
    HELP_OVERWRITE,
    add_spacing_option,
    at_least,
    at_least_or_auto,
    fraction,
)

HELP = "segment a volume (any size) with a trained checkpoint, streaming"
DESCRIPTION = (
    "Segment a volume (any size) with a trained checkpoint, streaming. "
    "An unfinished output of the same prediction (same model, inputs and settings), "
    "left by a run that was interrupted, is resumed where it stopped. Any other output "
    "meunet wrote is replaced; a path meunet did not write is refused unless --overwrite, "
    "and an input is never replaced, even with --overwrite. The output is locked while "
    "the prediction runs."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        required=True,
        help="checkpoint (best.pt), or the cascade.json that train-cascade writes",
    )
    p.add_argument(
        "--input", required=True, action="append", help="input volume; repeat once per channel"
    )
    p.add_argument(
        "--stage1",
        action="append",
        default=[],
        help="stage-1 label volume for a stage-2 model (repeat per branch)",
    )
    p.add_argument(
        "--output", required=True, help="output labels: .zarr (streamed), .nii.gz, .tif, .h5, ..."
    )
    p.add_argument("--overwrite", action="store_true", help=HELP_OVERWRITE)
    p.add_argument(
        "--patch",
        nargs="+",
        default=None,
        metavar="SIDE",
        help="window: one side, or three (z y x), e.g. --patch 16 96 96 (default: the "
        "checkpoint's infer_patch, E for a meU-net, else P; a cascade.json uses each stage's own)",
    )
    p.add_argument(
        "--fusion",
        choices=("vote", "prob"),
        default=None,  # the checkpoint's (its training config's inference.fusion)
        help="weighted one-hot votes (the paper's) or probabilities (default: the fusion the "
        "model was validated with, recorded in its checkpoint)",
    )
    p.add_argument(
        "--batch",
        type=at_least_or_auto(1),
        default=2,
        help="windows per forward pass, or auto: as many as half the free GPU memory holds "
        "(up to 8; 2 on a CPU) (default 2)",
    )
    p.add_argument(
        "--precision",
        choices=("auto", "bf16", "fp16", "fp32"),
        default=None,
        help="inference precision (default auto: bf16 autocast on a GPU that supports it, else "
        "fp16; fp32 on a CPU)",
    )
    p.add_argument(
        "--overlap",
        type=fraction,
        default=0.5,
        help="fraction of a window its neighbour overlaps (default 0.5, the paper's)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument(
        "--max-memory",
        default=None,
        help="memory budget, e.g. 2GB: lowers --batch to fit, or refuses",
    )
    p.add_argument(
        "--dask",
        default=None,
        metavar="CLUSTER",
        help="predict blockwise on Dask workers: local:N (N local processes) or tcp://SCHEDULER:PORT",
    )
    p.add_argument(
        "--block-depth",
        type=at_least(0),
        default=0,
        help="with --dask: z-slices per block core (default: about 4 blocks per worker)",
    )
    add_spacing_option(
        p,
        "the input's voxel size, overriding its file's (a file may store none); the labels "
        "take it too",
    )
    p.add_argument(
        "--data",
        default=None,
        metavar="DATASET.yaml",
        help="take the input's voxel size from this dataset spec's spacing: (where it sets one)",
    )
    p.add_argument(
        "--resample-back",
        action="store_true",
        help="resample the input to the voxel size the model was trained at (B-spline, "
        "streamed), predict there, and write the labels on the input's own grid (nearest)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from meunet.api import PredictOptions, predict
    from meunet.data.patch_size import parse_patch

    spacing = tuple(args.spacing) if args.spacing else None
    if args.data and spacing is None:
        from meunet.data.spec import load_spec

        spacing = load_spec(args.data).spacing
    options = PredictOptions(
        patch=parse_patch(args.patch, "--patch") if args.patch else 0,
        fusion=args.fusion,
        batch_size=args.batch,
        precision=args.precision,
        overlap=args.overlap,
        device=args.device,
        stage1=tuple(args.stage1),
        max_memory=args.max_memory,
        executor=f"dask:{args.dask}" if args.dask else "local",
        block_depth=args.block_depth,
        overwrite=args.overwrite,
        spacing=spacing,
        resample_back=args.resample_back,
        progress=not args.quiet,
    )
    out = predict(args.model, args.input, args.output, options=options)
    print(f"wrote {out}")
    return 0
