"""``meunet split-volume``: cut one labelled volume into blocks, written as cases."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from meunet.cli.options import add_cut_options, at_least

HELP = "cut one labelled volume into N blocks, written as cases with a dataset.yaml"
DESCRIPTION = (
    "Cut one labelled volume (image channels and label) into blocks along "
    "chosen axes and write each as a case, with a dataset.yaml that check and train "
    "accept. Streamed: no volume is read whole. Without --val the last block validates."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_cut_options(p)
    p.add_argument(
        "--blocks",
        type=at_least(1),
        nargs=3,
        required=True,
        metavar=("NZ", "NY", "NX"),
        help="blocks along z, y and x, e.g. 1 2 2 for four blocks of a thin stack",
    )


def run(args: argparse.Namespace) -> int:
    from meunet.data.io import open_volume
    from meunet.data.split import grid_regions

    with open_volume(args.label) as label:
        shape = label.shape
    return write_cases(args, grid_regions(shape, args.blocks, args.min_size), "split-volume")


def write_cases(args: argparse.Namespace, regions: list[Any], command: str) -> int:
    """Write the regions of ``split-volume`` and ``crop`` as cases; print what was written."""
    from meunet.data.split import assign_splits, cut_volume

    path, warnings = cut_volume(
        args.image,
        args.label,
        args.out,
        regions,
        splits=assign_splits(regions, args.val, args.test),
        fmt=args.format,
        copy=not args.no_copy,
        classes=args.classes,
        channels=args.channels,
        spacing=args.spacing,
        min_size=args.min_size,
        overwrite=args.overwrite,
        progress=not args.quiet,
        command=command,
    )
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    how = "as bbox: regions of the inputs (nothing copied)" if args.no_copy else "copied"
    print(f"wrote {len(regions)} case(s) {how} and {path}")
    print(f"next: meunet check {path}")
    return 0
