"""``meunet resample``: resample a volume by a factor or to a spacing."""

from __future__ import annotations

import argparse
import sys

from meunet.cli.options import HELP_OVERWRITE, add_chunks_option

HELP = "resample a volume by a factor or to a spacing (streamed, any format)"
DESCRIPTION = (
    "Resample a volume by a factor or to a target spacing: cubic B-spline for "
    "images, nearest neighbour for labels (--labels). Streamed slab by slab, so any size "
    "fits in bounded memory; the output keeps the input's dtype, direction and extent, "
    "with the new spacing."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input")
    p.add_argument("output")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument(
        "--factor",
        type=float,
        nargs="+",
        metavar="F",
        help="voxel-size multiplier, one number or Z Y X: 2 halves the voxels per axis, "
        "0.5 doubles them",
    )
    how.add_argument(
        "--spacing",
        type=float,
        nargs=3,
        metavar=("Z", "Y", "X"),
        help="target voxel size, in the input's unit",
    )
    p.add_argument(
        "--labels",
        action="store_true",
        help="a label volume: nearest neighbour, no new values (default: an image, cubic B-spline)",
    )
    add_chunks_option(p)
    p.add_argument("--overwrite", action="store_true", help=HELP_OVERWRITE)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from meunet.data.io import open_volume
    from meunet.data.resample import resample_volume

    with open_volume(args.input) as vol:
        dtype, known = vol.dtype, getattr(vol, "spacing_known", True)
    if not known and args.spacing:
        print(
            f"note: {args.input} stores no voxel size: taken as 1, 1, 1 for --spacing; "
            "meunet convert --spacing Z Y X gives it one first",
            file=sys.stderr,
        )
    if dtype.kind in "biu" and not args.labels:  # a spline would invent label values
        print(
            f"note: {args.input} holds integers ({dtype}): resampled as an image (cubic "
            "B-spline, rounded); pass --labels if it is a label volume",
            file=sys.stderr,
        )
    shape = resample_volume(
        args.input,
        args.output,
        factor=args.factor,
        spacing=args.spacing,
        labels=args.labels,
        chunks=args.chunks,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    with open_volume(args.output) as out:
        how = "nearest neighbour" if args.labels else "cubic B-spline"
        print(f"wrote {args.output}: shape {shape} (z, y, x), spacing {out.spacing} ({how})")
        if not out.spacing_known:
            print(
                f"note: {args.output}'s spacing is recorded as unknown, as its input's was "
                "(resample --spacing, or convert --spacing, states a voxel size)",
                file=sys.stderr,
            )
    return 0
