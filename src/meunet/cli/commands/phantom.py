"""``meunet phantom``: write the synthetic microCT phantom dataset."""

from __future__ import annotations

import argparse

from meunet.cli.options import add_shape_option, at_least, distance

HELP = "write the synthetic microCT phantom dataset and its dataset.yaml"
DESCRIPTION = None
PAPER_SHAPE = (1072, 470, 470)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--cases",
        type=at_least(1),
        default=None,
        help="number of cases (default 6; 1 with --paper-scale)",
    )
    add_shape_option(p, "volume size (default 128 96 96)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--format", default="zarr", help="file suffix: zarr (default), nii.gz, nrrd, tif, h5, npy"
    )
    p.add_argument(
        "--paper-scale",
        action="store_true",
        help=f"cases of the paper's size {PAPER_SHAPE}, streamed to Zarr",
    )
    p.add_argument(
        "--context",
        type=distance,
        default=0.0,
        metavar="D",
        help="context phantom: a thin-tube voxel is hind-gut iff a bright marker's centre lies "
        "within D voxels, background iff a dark one's does (default 0: the classic phantom)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from meunet.data.phantom import make_phantom_dataset

    shape = PAPER_SHAPE if args.paper_scale else tuple(args.shape)
    cases = 1 if args.paper_scale and args.cases is None else (args.cases or 6)
    path = make_phantom_dataset(
        args.out,
        cases=cases,
        shape=shape,
        seed=args.seed,
        fmt=args.format,
        progress=not args.quiet,
        context_distance=args.context,
    )
    print(f"wrote {cases} case(s) of shape {shape} and {path}")
    return 0
